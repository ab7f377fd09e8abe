"""`refit ablate` with the real packaged BERT (all-MiniLM-L6-v2) on the demo data.

    python bench/ablate_bench.py [--seeds 3] [--train-rows 200] [--eval-rows 120] [--epochs 2]
                                 [--variants baseline,augment,fgm,lora,ensemble3,prune4,heads24]

The demo's feedback (1,200 reviews, then 1,200 from the shifted regime with a new item category)
is ingested into a scratch database and snapshotted twice; the ablation trains every variant on
the second snapshot (both regimes) with the same seeds and scores it on the same dev and test rows.
The baseline variant (the settings as they are: full fine-tuning, no defence) is the reference a
user would otherwise ship, measured in the same run: every row prints its test-metric difference
and training-time ratio against it, and its int8/float throughput ratio.

Sized for a shared 2-core CPU (about 20 minutes): a sample of 200 training rows (small, as the
defences are meant for), length 64, two epochs at lr 2e-4 (more steps would not fit), one torch
thread (several processes share the CPU). Needs Postgres at ``REFIT_BENCH_ADMIN_URL`` (default: the test suite's).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import scratch_database  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--train-rows", type=int, default=200)
    parser.add_argument("--eval-rows", type=int, default=120)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=2e-4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--variants", default="baseline,augment,fgm,lora,ensemble3,prune4,heads24")
    parser.add_argument("--out", type=Path, default=None, help="Where ablation.md and ablation.json go.")
    args = parser.parse_args()

    from refit.core.settings import load_settings
    from refit.sim.ablation import ablate, ingest_demo_snapshots

    started = time.perf_counter()
    with scratch_database() as engine, tempfile.TemporaryDirectory() as tmp:
        settings = load_settings(
            database_url=engine.url.render_as_string(hide_password=False),
            work_dir=Path(tmp) / "work",
            epochs=args.epochs,
            max_length=args.max_length,
            learning_rate=args.learning_rate,
            num_threads=args.threads,
            patience=1,
        )
        snapshots = ingest_demo_snapshots(engine, settings, Path(tmp), rows=1200)
        print(f"snapshots {[s.id for s in snapshots]}; training on snapshot {snapshots[-1].id}", flush=True)
        result = ablate(
            settings,
            snapshots[-1].id,
            args.variants.split(","),
            n_seeds=args.seeds,
            out_dir=args.out or Path(tmp) / "out",
            train_rows=args.train_rows,
            eval_rows=args.eval_rows,
            echo=lambda line: print("  " + line, flush=True),
        )
        if args.out:
            print(f"saved {result['markdown']} and {result['json']}")
    print()
    print(
        f"refit ablate, packaged all-MiniLM-L6-v2, {args.seeds} seed(s), {args.epochs} epochs, length "
        f"{args.max_length}, lr {args.learning_rate}, {args.threads} threads"
    )
    print(result["table"])
    base = result["variants"].get("baseline", {}).get("summary")
    if base:
        print(
            f"\nbaseline int8 vs float throughput: {base['int8_speedup']:.2f}x "
            f"({base['int8_texts_per_s']:.0f} vs {base['float_texts_per_s']:.0f} texts/s)"
        )
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
