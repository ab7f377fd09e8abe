"""The gate's paired bootstrap: 1,000 resamples over 20k dev rows, refit's vectorized counts
against what a user would write instead, measured side by side in one run:

- ``scipy.stats.bootstrap(..., paired=True)`` with a vectorized statistic (MSE), and
- the usual loop: draw indices, call scikit-learn's / SciPy's metric for each model, subtract
  (macro-F1, Spearman).

Goal: refit's bootstrap under 2 s for each metric on 2 cores.

Run: python bench/gate_bench.py [--rows 20000] [--resamples 1000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy.stats import bootstrap, spearmanr
from sklearn.metrics import f1_score

from refit.gate.bootstrap import paired_bootstrap


def timed(fn):
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def loop_bootstrap(metric_fn, y, a, b, resamples: int, seed: int = 0) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    diffs = np.empty(resamples)
    for k in range(resamples):
        idx = rng.integers(0, len(y), len(y))
        diffs[k] = metric_fn(y[idx], a[idx]) - metric_fn(y[idx], b[idx])
    return tuple(np.quantile(diffs, [0.025, 0.975]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--resamples", type=int, default=1000)
    args = parser.parse_args()
    n, b = args.rows, args.resamples
    rng = np.random.default_rng(0)

    y = rng.random(n)
    good, bad = np.clip(y + rng.normal(0, 0.1, n), 0, 1), np.clip(y + rng.normal(0, 0.12, n), 0, 1)
    labels = rng.integers(0, 3, n)
    p_good = np.where(rng.random(n) < 0.8, labels, rng.integers(0, 3, n))
    p_bad = np.where(rng.random(n) < 0.7, labels, rng.integers(0, 3, n))
    probs_good, probs_bad = np.eye(3)[p_good], np.eye(3)[p_bad]

    def mse_diff(yy, aa, bb, axis=-1):
        return np.mean((bb - yy) ** 2, axis=axis) - np.mean((aa - yy) ** 2, axis=axis)

    cases = [
        (
            "mse",
            lambda: paired_bootstrap("mse", y, good, bad, resamples=b),
            "scipy.stats.bootstrap paired, vectorized",
            lambda: (
                bootstrap(
                    (y, good, bad),
                    mse_diff,
                    paired=True,
                    n_resamples=b,
                    method="percentile",
                    vectorized=True,
                    random_state=0,
                ).confidence_interval
            ),
        ),
        (
            "macro_f1",
            lambda: paired_bootstrap("macro_f1", labels, probs_good, probs_bad, n_labels=3, resamples=b),
            "loop of sklearn f1_score",
            lambda: loop_bootstrap(lambda t, p: f1_score(t, p, average="macro"), labels, p_good, p_bad, b),
        ),
        (
            "spearman",
            lambda: paired_bootstrap("spearman", y, good, bad, resamples=b),
            "loop of scipy spearmanr",
            lambda: loop_bootstrap(lambda t, p: spearmanr(t, p).statistic, y, good, bad, b),
        ),
    ]
    print(f"paired bootstrap, {b} resamples over {n} dev rows")
    print(f"{'metric':<10} {'refit s':>8} {'baseline s':>11} {'speed-up':>9}  baseline / intervals")
    worst = 0.0
    for metric, ours, name, theirs in cases:
        t_ours, interval = timed(ours)
        t_theirs, other = timed(theirs)
        worst = max(worst, t_ours)
        other = tuple(float(x) for x in (other.low, other.high)) if hasattr(other, "low") else other
        print(
            f"{metric:<10} {t_ours:8.2f} {t_theirs:11.2f} {t_theirs / t_ours:8.1f}x  {name}; "
            f"refit [{interval.low:+.4f}, {interval.high:+.4f}] vs [{other[0]:+.4f}, {other[1]:+.4f}]"
        )
    print(f"slowest refit bootstrap: {worst:.2f} s (goal < 2 s): {'met' if worst < 2 else 'MISSED'}")


if __name__ == "__main__":
    main()
