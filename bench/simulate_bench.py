"""How long `refit simulate` takes: a year of weekly steps on 50k rows of the demo generator's
"sudden" scenario, per policy, on a scratch database and a file:// store, with the tiny BERT.

    python bench/simulate_bench.py [--rows 50000] [--steps 52] [--policy never --policy drift ...]

Prints the comparison table, the wall time per policy and in all, and writes the outputs (table,
steps.json, simulate.png) into --out.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import scratch_database  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--steps", type=int, default=52)
    parser.add_argument("--scenario", default="sudden")
    parser.add_argument("--policy", action="append", default=None)
    parser.add_argument("--devset-every", type=int, default=4)
    parser.add_argument("--out", type=Path, default=Path("bench-simulate"))
    args = parser.parse_args()
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")

    from refit.core.settings import load_settings
    from refit.sim import backtest as sim
    from refit.sim.policies import Policy

    policies = [Policy.parse(p) for p in args.policy or ["never", "schedule:4", "drift", "drift:2/3:14d"]]
    seconds: dict[str, float] = {}
    last = {"t": time.perf_counter()}

    def on_step(record: dict) -> None:
        now = time.perf_counter()
        seconds[record["policy"]] = seconds.get(record["policy"], 0.0) + now - last["t"]
        last["t"] = now
        print(f"{record['policy']:>24} step {record['step']:>3} {record['seconds']:6.1f} s", flush=True)

    with scratch_database(migrate=False) as engine, tempfile.TemporaryDirectory() as work:
        settings = load_settings(
            database_url=engine.url.render_as_string(hide_password=False),
            store_url=Path(work, "store").as_uri(),
            work_dir=Path(work, "work"),
        )
        started = time.perf_counter()
        result = sim.backtest(
            settings, policies, args.out, scenario=args.scenario, rows=args.rows, steps=args.steps,
            devset_every=args.devset_every or None, on_step=on_step,
        )  # fmt: skip
    print(result["table"])
    for name, value in seconds.items():
        print(f"{name}: {value:.0f} s")
    print(f"all policies: {time.perf_counter() - started:.0f} s; invariant violations: {result['violations']}")


if __name__ == "__main__":
    main()
