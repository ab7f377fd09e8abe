"""Ingest throughput: `refit ingest` of a CSV file of realistic feedback (median text about 400
characters, 2% with an email or a phone number; validated, PII redacted, loaded with COPY) against
a plain `COPY ... FROM STDIN` of the same file into a bare table of text columns, in the same run.

A third figure shows where the floor is: the rows as refit stores them, already validated,
copied with one `COPY` (binary, as refit sends them) straight into refit's `feedback` table (its
defaults, constraints and six indexes), with no Python work at all.

Run: python bench/ingest_bench.py [--rows 200000] [--repeat 2]
(REFIT_BENCH_ADMIN_URL names the Postgres server; about two minutes at the defaults)
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import long_feedback, scratch_database  # noqa: E402
from sqlalchemy import text  # noqa: E402

from refit.data.ingest import ingest  # noqa: E402
from refit.data.validate import IngestRules  # noqa: E402
from refit.ops.synth import write_feedback  # noqa: E402

RULES = IngestRules(labels=("negative", "neutral", "positive"), pii_mode="redact")


def raw_copy(engine, path: Path, columns: list[str]) -> float:
    with engine.begin() as conn:
        conn.execute(text(f"CREATE TABLE bare ({', '.join(f'{c} TEXT' for c in columns)})"))
    started = time.perf_counter()
    with engine.begin() as conn, open(path, "rb") as handle:
        cursor = conn.connection.dbapi_connection.cursor()
        cursor.copy_expert("COPY bare FROM STDIN WITH (FORMAT csv, HEADER true)", handle)
    return time.perf_counter() - started


STORED = "feedback_id, user_id, item_id, text, satisfaction, label, features, content_hash, created_at, origin"


def stored_copy(source_engine) -> float:
    """Seconds of one COPY into a fresh ``feedback`` of the rows ``source_engine`` stores."""
    buffer = io.BytesIO()
    with source_engine.connect() as conn:
        conn.connection.dbapi_connection.cursor().copy_expert(
            f"COPY (SELECT {STORED} FROM feedback ORDER BY id) TO STDOUT WITH (FORMAT binary)", buffer
        )
    buffer.seek(0)
    with scratch_database() as engine:
        started = time.perf_counter()
        with engine.begin() as conn:
            cursor = conn.connection.dbapi_connection.cursor()
            cursor.copy_expert(f"COPY feedback ({STORED}) FROM STDIN WITH (FORMAT binary)", buffer, 1 << 20)
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    rows = long_feedback(args.rows, seed=1)
    lengths = sorted(len(r["text"]) for r in rows)
    with tempfile.TemporaryDirectory() as tmp:
        path = write_feedback(rows, Path(tmp) / "feedback.csv")
        size_mb = path.stat().st_size / 1e6
        print(f"{args.rows} rows, median text {statistics.median(lengths):.0f} chars, file {size_mb:.0f} MB")
        raw_times, refit_times, floor_times = [], [], []
        for _ in range(args.repeat):
            with scratch_database(migrate=False) as engine:
                raw_times.append(raw_copy(engine, path, list(rows[0])))
            with scratch_database() as engine:
                summary = ingest(engine, path, RULES)
                assert summary.accepted == args.rows, summary
                refit_times.append(summary.seconds)
                floor_times.append(stored_copy(engine))
    raw, ours, floor = min(raw_times), min(refit_times), min(floor_times)
    print(f"plain COPY FROM STDIN       : {args.rows / raw:>10,.0f} rows/s ({raw:.2f} s)")
    print(f"refit ingest                : {args.rows / ours:>10,.0f} rows/s ({ours:.2f} s)")
    print(f"ratio refit/COPY            : {raw / ours:.2f}  (goal >= 0.5)")
    print(f"COPY of the stored rows into feedback, no validation: {args.rows / floor:,.0f} rows/s ({floor:.2f} s),")
    print(f"  {raw / floor:.2f} of the plain COPY: the most any ingest into that table can reach")


if __name__ == "__main__":
    main()
