"""The promotion rule on real replays: the old rule (a fixed dev set, two-sided 95%) against the
new one (a dev set that grows with each snapshot, judged one-sided on the rows newer than the
champion), side by side on the same models, the same dev rows and the same later test rows.

A replay takes a real set by time: the newest rows are the later test, the rest arrives in
chunks. The first chunk trains the champion; each later chunk trains a challenger on every chunk
so far, which the gate judges against the champion of the moment (each rule keeps its own). The
models are refit's TF-IDF model (``refit.models.text_baseline``: the model a ``tfidf`` champion
predicts with, and what the first gate measures every BERT against), so a replay runs in seconds
and many seeds fit in one run; the gate, the dev set's growth (``split_of``) and the periods are
refit's own.

Each seed salts the row ids before ``split_of``, so every trial has its own dev, test and
training rows. Printed per set and task:

- **keeping up**: the final champion's metric on the later test rows against the best challenger
  trained in the replay (goal: within 0.01), and against the first champion (goal: strictly above
  it where the challengers improve on it);
- **never worse**: at the last step, challengers made worse on purpose (trained on shuffled
  labels, on 30% label noise, on the oldest chunk alone) against the champion of the moment;
  one counts as a trial when it is truly worse on the later test rows. Goal: promoted in at most
  1 of 20 such trials;
- **cost**: retrains per replay (each chunk retrains here: drift is not what this measures).

Run: python bench/promotion_bench.py [--seeds 20] [--sets amazon,yelp] [--tasks classification,regression]
It reads ../shared/data (see its README).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from refit.data.snapshots import SplitConfig, split_of
from refit.gate.rule import GatePolicy, gate
from refit.models.metrics import DIRECTION, task_metrics
from refit.models.text_baseline import TextBaseline

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
# name: (file, chunks, test rows, slice feature)
SETS = {"amazon": ("amazon_instruments.csv", 4, 2000, "category"), "yelp": ("yelp_reviews.csv", 4, 299, None)}
SPLIT = SplitConfig()
RULES = {
    "old: fixed dev set, whole, two-sided": ("fixed", "whole"),
    "grown dev set, whole, two-sided": ("grown", "whole"),
    "grown dev set, pooled, one-sided": ("grown", "pooled"),
    "new: grown dev set, recent, one-sided": ("grown", "recent"),
}
NEW = "new: grown dev set, recent, one-sided"


@dataclass
class Replay:
    frame: pd.DataFrame  # the replay's rows, with ``chunk`` and ``split``
    test: pd.DataFrame  # the later rows
    task: str
    slice_feature: str | None

    def target(self, rows: pd.DataFrame) -> np.ndarray:
        stars = rows["rating"].to_numpy()
        if self.task == "regression":
            return (stars - 1) / 4.0
        return np.where(stars <= 2, 0, np.where(stars == 3, 1, 2))


def load(name: str, task: str, seed: int) -> Replay:
    file, chunks, test_rows, feature = SETS[name]
    frame = pd.read_csv(DATA / file).sort_values("created_at", kind="stable").reset_index(drop=True)
    frame["text"] = frame["text"].fillna("").astype(str)
    test, frame = frame.iloc[-test_rows:].reset_index(drop=True), frame.iloc[:-test_rows].reset_index(drop=True)
    frame["chunk"] = np.minimum(np.arange(len(frame)) * chunks // len(frame), chunks - 1) + 1
    frame["split"] = [split_of(f"{fid}:{seed}", SPLIT) for fid in frame["feedback_id"].astype(str)]
    return Replay(frame, test, task, feature)


def fit(replay: Replay, rows: pd.DataFrame, seed: int, noise: float = 0.0, shuffle: bool = False) -> TextBaseline:
    y = replay.target(rows).copy()
    rng = np.random.default_rng(seed)
    if shuffle:
        y = rng.permutation(y)
    if noise:
        flip = rng.random(len(y)) < noise
        y[flip] = rng.permutation(y)[flip] if replay.task == "regression" else rng.integers(0, 3, flip.sum())
    n_labels = 1 if replay.task == "regression" else 3
    return TextBaseline.fit(replay.task, rows["text"].tolist(), y, n_labels)


def judge(replay: Replay, policy: GatePolicy, dev_from: str, challenger, champion, step: int, seen: int):
    """The gate's decision on this step's dev set: the first chunk's dev rows (fixed) or every
    chunk's so far (grown); rows from chunks after ``seen`` (the champion's last chunk) are recent."""
    frame = replay.frame
    upto = 1 if dev_from == "fixed" else step
    dev = frame[(frame["split"] == "dev") & (frame["chunk"] <= upto)]
    texts = dev["text"].tolist()
    slices = (
        pd.DataFrame({replay.slice_feature: dev[replay.slice_feature].fillna("(none)").to_numpy()})
        if (replay.slice_feature)
        else None
    )
    n_labels = 1 if replay.task == "regression" else 3
    return gate(
        policy,
        replay.task,
        replay.target(dev),
        challenger.predict(texts),
        {"champion": champion.predict(texts)},
        n_labels,
        slices,
        periods=("chunk " + dev["chunk"].astype(str)).to_numpy(),
        recent=(dev["chunk"] > seen).to_numpy(),
    )


def later(replay: Replay, model, metric: str) -> float:
    n_labels = 1 if replay.task == "regression" else 3
    return task_metrics(replay.task, replay.target(replay.test), model.predict(replay.test["text"].tolist()), n_labels)[
        metric
    ]


def trial(name: str, task: str, seed: int) -> dict:
    replay = load(name, task, seed)
    metric = "mse" if task == "regression" else "macro_f1"
    base = GatePolicy(metric=metric, resamples=1000, seed=seed)
    train = replay.frame[replay.frame["split"] == "train"]
    chunks = int(replay.frame["chunk"].max())
    models = {1: fit(replay, train[train["chunk"] <= 1], seed)}
    scores = {1: later(replay, models[1], metric)}
    held = {rule: 1 for rule in RULES}  # each rule's champion: the last chunk it trained on
    verdicts = {rule: [] for rule in RULES}
    for step in range(2, chunks + 1):
        models[step] = fit(replay, train[train["chunk"] <= step], seed)
        scores[step] = later(replay, models[step], metric)
        for rule, (dev_from, how) in RULES.items():
            decision = judge(
                replay, replace(base, rule=how), dev_from, models[step], models[held[rule]], step, held[rule]
            )
            verdicts[rule].append(decision)
            if decision.promote:
                held[rule] = step
    worse = {
        "shuffled labels": fit(replay, train, seed, shuffle=True),
        "30% label noise": fit(replay, train, seed, noise=0.3),
        "oldest chunk alone": models[1],
    }
    attempts = {rule: {} for rule in RULES}
    for rule, (dev_from, how) in RULES.items():
        champion = held[rule]
        for kind, model in worse.items():
            truly = better(metric, scores[champion], later(replay, model, metric))
            if model is models[champion] or not truly:
                continue
            decision = judge(replay, replace(base, rule=how), dev_from, model, models[champion], chunks, champion)
            attempts[rule][kind] = decision.promote
    best = max(scores.values()) if DIRECTION[metric] else min(scores.values())
    return {
        "scores": scores,
        "final": {rule: scores[held[rule]] for rule in RULES},
        "best": best,
        "verdicts": verdicts,
        "worse": attempts,
        "retrains": chunks - 1,
    }


def better(metric: str, old: float, new: float) -> bool:
    """Whether ``old`` is truly better than ``new`` on the later rows (so ``new`` is worse)."""
    return old > new if DIRECTION[metric] else old < new


def report(name: str, task: str, trials: list[dict]) -> None:
    metric = "mse" if task == "regression" else "macro_f1"
    sign = 1 if DIRECTION[metric] else -1
    first = np.mean([t["scores"][1] for t in trials])
    best = np.mean([t["best"] for t in trials])
    print(f"\n== {name}, {task} ({metric} on the later test rows; {len(trials)} seeds) ==")
    by_step = pd.DataFrame([t["scores"] for t in trials]).mean()
    print(
        "model trained on chunks 1..k, mean later "
        + metric
        + ": "
        + ", ".join(f"k={k} {v:.4f}" for k, v in by_step.items())
    )
    print(f"first champion {first:.4f}; best challenger {best:.4f}")
    print(
        f"{'rule':<40} {'final':>8} {'gap to best':>12} {'above first':>12} {'promotions':>11} {'worse promoted':>15}"
    )
    for rule in RULES:
        final = np.mean([t["final"][rule] for t in trials])
        gaps = [sign * (t["best"] - t["final"][rule]) for t in trials]
        above = np.mean([sign * (t["final"][rule] - t["scores"][1]) > 0 for t in trials])
        promotions = np.mean([sum(d.promote for d in t["verdicts"][rule]) for t in trials])
        tried = [v for t in trials for v in t["worse"][rule].values()]
        print(
            f"{rule:<40} {final:8.4f} {np.mean(gaps):+12.4f} {above:12.0%} {promotions:11.2f} "
            f"{sum(tried):>6} of {len(tried):<6}"
        )
        kinds = {}
        for t in trials:
            for kind, promoted in t["worse"][rule].items():
                kinds.setdefault(kind, []).append(promoted)
        print("    " + "; ".join(f"{k}: {sum(v)} of {len(v)}" for k, v in kinds.items()))
    gaps = [sign * (t["best"] - t["final"][NEW]) for t in trials]
    tried = [v for t in trials for v in t["worse"][NEW].values()]
    print(
        f"goal keeping up (new rule, mean gap to best <= 0.01): {np.mean(gaps):+.4f} "
        f"{'met' if np.mean(gaps) <= 0.01 else 'MISSED'}; "
        f"never worse (<= 1 in 20): {sum(tried)} of {len(tried)} "
        f"{'met' if sum(tried) <= len(tried) / 20 else 'MISSED'}"
    )
    last = [t["verdicts"][NEW][-1] for t in trials]
    mde = np.mean([d.power.get("mde", np.nan) for d in last])
    rows = np.mean([d.power.get("rows", 0) for d in last])
    print(f"new rule, last step: minimum detectable effect {mde:.4f} on {rows:.0f} deciding rows")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--sets", default="amazon,yelp")
    parser.add_argument("--tasks", default="classification,regression")
    args = parser.parse_args()
    for name in args.sets.split(","):
        for task in args.tasks.split(","):
            started = time.perf_counter()
            trials = [trial(name, task, seed) for seed in range(args.seeds)]
            report(name, task, trials)
            print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
