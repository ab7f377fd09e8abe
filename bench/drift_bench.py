"""Drift detection benchmark: calibration rates on the scenarios, and the cost of one check.

    python bench/drift_bench.py                   # everything (about 20-30 minutes on 2 cores)
    python bench/drift_bench.py --part rates --draws 20
    python bench/drift_bench.py --part timing

Rates: for each scenario and size, ``--draws`` fresh (reference, current) pairs with fixed seeds
through the plain check (no report rendering), with the default policy and a tiny BERT champion
fine-tuned on the base regime; it prints how often the decision is ``retrain`` and how often the
report names the signal the scenario changed. Goals: null at most 1 of 20 at 500, 5k and 50k
rows; each shift detected and named in at least 19 of 20 at 5k.

Timing: one full check (every signal, embeddings included, the report rendered) at 10k and 100k
current rows against a bare Evidently ``DataDriftPreset`` report of the same frames in the same
run, and the champion's embedding pass in seconds per 1k texts. Goals: the capped check at 100k
costs at most 1.5x the check at 10k; the embedding pass at most 0.5 s per 1k texts.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def rates(champion, dev, draws: int) -> list[dict]:
    from refit.drift.policy import DriftPolicy
    from refit.sim.scenarios import SHIFTS, label_noise_fraction, measure_rates

    policy = DriftPolicy()
    noise = label_noise_fraction(champion, rise=0.3)
    print(f"label noise: {noise:.1%} of ratings shuffled raises the champion's squared error by 30%")
    plan = [("null", 500), ("null", 5000), ("null", 50_000), *[(kind, 5000) for kind in SHIFTS],
            ("identical", 5000), ("tiny", 5000)]  # fmt: skip
    rows = []
    print(f"\n{'scenario':<18}{'rows':>7}{'draws':>7}{'retrain':>9}{'named':>7}{'s/draw':>8}  goal")
    for kind, size in plan:
        result = measure_rates(kind, size, draws, policy, champion, dev, noise_fraction=noise)
        goal = {"null": f"retrain <= {max(1, draws // 20)}", "identical": "retrain = 0", "tiny": "all insufficient"}
        goal_text = goal.get(kind, f"retrain and named >= {draws - max(1, draws // 20)}")
        print(f"{kind:<18}{size:>7}{draws:>7}{result.retrain:>9}{result.named_right:>7}"
              f"{result.seconds / draws:>8.1f}  {goal_text}", flush=True)  # fmt: skip
        rows.append(result.as_dict())
    return rows


def timing(champion, dev) -> dict:
    from refit.drift.check import check_drift
    from refit.drift.policy import DriftPolicy
    from refit.drift.signals import drift_frame
    from refit.sim.scenarios import base_rows, feedback_frame

    policy = DriftPolicy()
    reference = feedback_frame(base_rows(10_000, 1, id_prefix="ref"))
    currents = {n: feedback_frame(base_rows(n, 2, id_prefix="cur"), first_id=20_001) for n in (10_000, 100_000)}
    check_drift(reference, currents[10_000], policy, "regression", champion, dev, render=False)  # warm-up
    texts = currents[10_000]["text"].tolist()[:2000]
    champion.embed(texts[:200])
    started = time.perf_counter()
    champion.embed(texts)
    embed_per_1k = (time.perf_counter() - started) / len(texts) * 1000

    out = {"embed_s_per_1k": round(embed_per_1k, 3)}
    for n, current in currents.items():
        started = time.perf_counter()
        check_drift(reference, current, policy, "regression", champion, dev, render=True)
        check_s = time.perf_counter() - started
        started = time.perf_counter()
        _bare_preset(drift_frame(reference, "regression"), drift_frame(current, "regression"))
        bare_s = time.perf_counter() - started
        out[n] = {"check_s": round(check_s, 2), "bare_preset_s": round(bare_s, 2)}
        print(f"{n:>7} current rows: full capped check {check_s:6.1f} s, bare DataDriftPreset {bare_s:6.1f} s")
    out["scaling_100k_over_10k"] = round(out[100_000]["check_s"] / out[10_000]["check_s"], 2)
    out["bare_scaling_100k_over_10k"] = round(out[100_000]["bare_preset_s"] / out[10_000]["bare_preset_s"], 2)
    print(f"scaling 100k/10k: capped check {out['scaling_100k_over_10k']}x (goal <= 1.5x); "
          f"bare preset {out['bare_scaling_100k_over_10k']}x")  # fmt: skip
    print(f"embedding pass: {embed_per_1k:.3f} s per 1k texts (goal <= 0.5 s)")
    return out


def _bare_preset(reference, current):
    """What a user reaches for: Evidently's DataDriftPreset over text, target and features as they
    are, every row, default methods and thresholds."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    numeric = [c for c in reference.columns if c != "text" and reference[c].dtype.kind in "if"]
    categorical = [c for c in reference.columns if c not in numeric and c != "text"]
    for frame in (reference, current):
        for column in categorical:
            frame[column] = frame[column].astype(str)
    definition = DataDefinition(text_columns=["text"], numerical_columns=numeric, categorical_columns=categorical)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        Report([DataDriftPreset()], include_tests=True).run(
            current_data=Dataset.from_pandas(current, data_definition=definition),
            reference_data=Dataset.from_pandas(reference, data_definition=definition),
        ).dict()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["all", "rates", "timing"], default="all")
    parser.add_argument("--draws", type=int, default=20)
    parser.add_argument("--json", type=Path, help="Also write the figures here.")
    args = parser.parse_args()

    import torch

    from refit.models.predict import Predictor
    from refit.sim.scenarios import dev_frame, tiny_bert, train_champion

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        dev = dev_frame()
        champion = Predictor(train_champion(tiny_bert(Path(tmp) / "base"), Path(tmp) / "champion", dev=dev))
        figures = {}
        if args.part in ("all", "timing"):
            figures["timing"] = timing(champion, dev)
        if args.part in ("all", "rates"):
            figures["rates"] = rates(champion, dev, args.draws)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, default=str))


if __name__ == "__main__":
    main()
