"""Postgres source sync: refit's first sync of a source table (validated, redacted, loaded with
its cursor) against a bare `COPY (SELECT ...) TO STDOUT` from the source piped into `COPY FROM
STDIN` of a plain table on refit's database, in the same run; its peak memory; and an incremental
sync of the same number of new rows from a small and a large source table.

The source is a second database on the same server, read through a read-only role of its own,
holding review-like rows (median text about 400 characters, 2% with an email or a phone number).

Run: python bench/sync_bench.py [--rows 1000000] [--new 50000] [--small 100000] [--large 2000000]
(about five minutes at the defaults on two cores; REFIT_BENCH_ADMIN_URL names the server)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import scratch_database, source_database  # noqa: E402
from sqlalchemy import create_engine, text  # noqa: E402

from refit.data.source import SourceSpec, sync_source  # noqa: E402
from refit.data.validate import IngestRules  # noqa: E402
from refit.ops.synth import FILLER, SENTIMENT  # noqa: E402

SOURCE_TABLE = """
CREATE TABLE app_reviews (
    id           BIGSERIAL PRIMARY KEY,
    review_body  TEXT,
    stars        INTEGER,
    user_ref     TEXT,
    device       TEXT,
    sessions     INTEGER,
    created      TIMESTAMPTZ NOT NULL,
    updated_at   TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
)
"""
MAP = (
    ("feedback_id", "id"), ("text", "review_body"), ("rating", "stars"), ("user_id", "user_ref"),
    ("created_at", "created"),
)  # fmt: skip
RULES = IngestRules(labels=("negative", "neutral", "positive"), pii_mode="redact", column_map=MAP)
PHRASES = [p for words in SENTIMENT.values() for p in words] + FILLER


def grow(owner, upto: int) -> None:
    """Grow the source table to ``upto`` rows: 12 to 24 review phrases each, some with PII."""
    with owner.begin() as conn:
        start = conn.execute(text("SELECT coalesce(max(id), 0) FROM app_reviews")).scalar() + 1
        conn.execute(
            text(
                "INSERT INTO app_reviews (id, review_body, stars, user_ref, device, sessions, created)"
                " SELECT g, 'The kettle is ' || array_to_string(ARRAY("
                "   SELECT (CAST(:phrases AS text[]))[1 + (g * 31 + i * 17) % :n]"
                "   FROM generate_series(1, 12 + g % 13) i"
                "  ), ', ') || CASE WHEN g % 100 = 0 THEN ', write to me at jo.doe@example.com'"
                "   WHEN g % 100 = 50 THEN ', call +44 20 7946 0958' ELSE '' END || '.',"
                "  1 + g % 5, 'u' || (g % 5000), (ARRAY['ios', 'android', 'web'])[1 + g % 3], g % 11,"
                "  now() - interval '1 day' - g * interval '1 second'"
                " FROM generate_series(:a, :b) g"
            ),
            {"phrases": PHRASES, "n": len(PHRASES), "a": start, "b": upto},
        )
        conn.execute(text("SELECT setval('app_reviews_id_seq', :b)"), {"b": upto})
    with owner.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE app_reviews"))


def source(owner, reader: str) -> None:
    with owner.begin() as conn:
        conn.execute(text(SOURCE_TABLE))
        conn.execute(text(f"GRANT SELECT ON app_reviews TO {reader}"))


def spec(url: str) -> SourceSpec:
    return SourceSpec(url=url, table="app_reviews", key="id", cursor="id")


def bare_pipe(source_url: str, refit_engine) -> float:
    """`COPY (SELECT ...) TO STDOUT` from the source piped into `COPY FROM STDIN` of a plain
    table with the source's columns (as text) on refit's database; seconds."""
    with refit_engine.begin() as conn:
        conn.execute(
            text(
                "CREATE TABLE bare (id TEXT, review_body TEXT, stars TEXT, user_ref TEXT, device TEXT,"
                " sessions TEXT, created TEXT, updated_at TEXT)"
            )
        )
    reader = create_engine(source_url).raw_connection()
    writer = refit_engine.raw_connection()
    read_end, write_end = os.pipe()
    started = time.perf_counter()

    def produce() -> None:
        with os.fdopen(write_end, "wb") as sink:
            reader.cursor().copy_expert("COPY (SELECT * FROM app_reviews) TO STDOUT", sink)

    thread = threading.Thread(target=produce)
    thread.start()
    with os.fdopen(read_end, "rb") as pipe:
        writer.cursor().copy_expert("COPY bare FROM STDIN", pipe, 1 << 20)
    writer.commit()
    thread.join()
    seconds = time.perf_counter() - started
    reader.close()
    writer.close()
    return seconds


def sync_in_child(refit_url: str, source_url: str) -> dict:
    """One sync in a fresh process: its seconds, its counts, and the process's peak memory."""
    out = subprocess.run(
        [sys.executable, __file__, "--child", refit_url, source_url], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def child(refit_url: str, source_url: str) -> None:
    from refit.data.db import get_engine

    engine = get_engine(refit_url)
    with engine.connect() as conn:  # the driver and the pool, as the interpreter's own
        conn.execute(text("SELECT 1"))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    summary = sync_source(engine, spec(source_url), RULES)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({**summary.as_dict(), "peak_mb": peak / 1024, "before_mb": before / 1024}))


def incremental(rows: int, new: int) -> tuple[float, dict]:
    """Seconds of a sync of ``new`` rows appended to a source of ``rows`` rows already synced."""
    with source_database() as (owner, url, reader), scratch_database() as engine:
        source(owner, reader)
        grow(owner, rows)
        first = sync_source(engine, spec(url), RULES)
        assert first.accepted == rows, first
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE feedback"))
        grow(owner, rows + new)
        summary = sync_source(engine, spec(url), RULES)
        assert summary.accepted == new, summary
        return summary.seconds, summary.as_dict()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000, help="source rows of the first sync")
    parser.add_argument("--new", type=int, default=50_000, help="new rows of the incremental sync")
    parser.add_argument("--small", type=int, default=100_000, help="the small source of the incremental sync")
    parser.add_argument("--large", type=int, default=2_000_000, help="the large source of the incremental sync")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return

    with source_database() as (owner, url, reader):
        source(owner, reader)
        grow(owner, args.rows)
        with scratch_database(migrate=False) as engine:
            bare = bare_pipe(url, engine)
        with scratch_database() as engine:
            first = sync_in_child(engine.url.render_as_string(hide_password=False), url)
    assert first["accepted"] == args.rows, first
    ours = first["seconds"]
    print(f"first sync of {args.rows:,} rows")
    print(f"  COPY TO STDOUT | COPY FROM STDIN : {args.rows / bare:>10,.0f} rows/s ({bare:.2f} s)")
    print(f"  refit sync                       : {args.rows / ours:>10,.0f} rows/s ({ours:.2f} s)")
    print(f"  ratio refit/COPY                 : {bare / ours:.2f}  (goal >= 0.5)")
    print(f"  peak memory                      : {first['peak_mb']:.0f} MB  (goal < 500 MB;")
    print(f"                                     {first['before_mb']:.0f} MB of it before the sync began)")

    small, _ = incremental(args.small, args.new)
    large, _ = incremental(args.large, args.new)
    print(f"incremental sync of {args.new:,} new rows")
    print(f"  at {args.small:>10,} source rows : {small:.2f} s")
    print(f"  at {args.large:>10,} source rows : {large:.2f} s")
    print(f"  ratio large/small            : {large / small:.2f}  (goal <= 1.3)")


if __name__ == "__main__":
    main()
