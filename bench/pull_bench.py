"""Incremental pull: refit's pull (COPY TO STDOUT, spooled, parsed in chunks by Arrow) against a
bare `COPY (SELECT ...) TO STDOUT` of the same window, in the same run; how its time scales with
the table's size for the same 50k new rows; and its peak memory for a 1M-row window.

Run: python bench/pull_bench.py
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import scratch_database  # noqa: E402
from sqlalchemy import text  # noqa: E402

from refit.data.snapshots import _COPY_COLUMNS, iter_feedback  # noqa: E402

WINDOW = 50_000


def fill(engine, upto: int) -> None:
    """Grow the feedback table to ``upto`` rows of ~400-character reviews with features."""
    with engine.begin() as conn:
        start = conn.execute(text("SELECT coalesce(max(id), 0) FROM feedback")).scalar() + 1
        conn.execute(
            text(
                "INSERT INTO feedback (feedback_id, user_id, item_id, text, satisfaction, label, features,"
                " content_hash, created_at)"
                " SELECT 'b-' || g, 'u' || (g % 5000), 'i' || (g % 800),"
                "  'The kettle is ' || repeat(md5(g::text) || ' works well, ', 9),"
                "  (g % 5) / 4.0, (ARRAY['negative','neutral','positive'])[1 + g % 3],"
                "  jsonb_build_object('device', (ARRAY['ios','android','web'])[1 + g % 3], 'sessions_7d', g % 11),"
                "  md5(g::text), now() - (g || ' seconds')::interval"
                " FROM generate_series(:a, :b) g"
            ),
            {"a": start, "b": upto},
        )
        conn.execute(text("ANALYZE feedback"))


def time_refit(engine, after: int, upto: int) -> float:
    started = time.perf_counter()
    rows = sum(len(chunk) for chunk in iter_feedback(engine, after=after, upto=upto))
    assert rows == upto - after, rows
    return time.perf_counter() - started


def time_copy(engine, after: int, upto: int) -> float:
    with engine.connect() as conn:
        cursor = conn.connection.dbapi_connection.cursor()
        sink = io.BytesIO()
        started = time.perf_counter()
        # the same rows and columns refit's pull asks for
        cursor.copy_expert(
            f"COPY (SELECT {_COPY_COLUMNS} FROM feedback WHERE id > {int(after)} AND id <= {int(upto)}"
            " ORDER BY id) TO STDOUT WITH (FORMAT csv)",
            sink,
        )
        return time.perf_counter() - started


def best(fn, *args, repeat: int = 3) -> float:
    return min(fn(*args) for _ in range(repeat))


MEMORY_PROBE = """
import json, resource, sys
import pyarrow.csv  # library code is counted in the baseline, not in the pull
from refit.data.db import get_engine
from refit.data.snapshots import iter_feedback
engine = get_engine(sys.argv[1])
next(iter_feedback(engine, after=0, upto=1))  # warm the connection and the reader
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
rows = 0
for chunk in iter_feedback(engine, after=0, upto=int(sys.argv[2])):
    rows += len(chunk)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"rows": rows, "baseline_mb": before / 1024, "peak_mb": peak / 1024}))
"""


def main() -> None:
    with scratch_database() as engine:
        fill(engine, 2 * WINDOW)
        small = best(time_refit, engine, WINDOW, 2 * WINDOW)
        print(f"table   100,000 rows: refit pulls the 50k window in {small:.3f} s")

        fill(engine, 1_000_000)
        ours = best(time_refit, engine, 1_000_000 - WINDOW, 1_000_000)
        bare = best(time_copy, engine, 1_000_000 - WINDOW, 1_000_000)
        print(
            f"table 1,000,000 rows, 50k window: COPY TO STDOUT {WINDOW / bare:,.0f} rows/s, "
            f"refit {WINDOW / ours:,.0f} rows/s"
        )
        print(f"ratio refit/COPY      : {bare / ours:.2f}  (goal >= 0.7)")

        url = engine.url.render_as_string(hide_password=False)
        probe = subprocess.run(
            [sys.executable, "-c", MEMORY_PROBE, url, "1000000"], capture_output=True, text=True, check=True
        )
        memory = json.loads(probe.stdout)
        print(
            f"peak memory, 1M-row window: {memory['peak_mb']:.0f} MB resident "
            f"({memory['peak_mb'] - memory['baseline_mb']:.0f} MB above the {memory['baseline_mb']:.0f} MB "
            "interpreter)  (goal < 500 MB)"
        )

        fill(engine, 2_000_000)
        large = best(time_refit, engine, WINDOW, 2 * WINDOW)
        print(f"table 2,000,000 rows: refit pulls the same 50k window in {large:.3f} s")
        print(f"scaling 2M/100k       : {large / small:.2f}  (goal <= 1.3)")


if __name__ == "__main__":
    main()
