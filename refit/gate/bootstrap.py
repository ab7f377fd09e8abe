"""Paired bootstrap of a metric difference between two models scored on the same rows.

Each resample draws the dev rows with replacement, once, and scores both models on that same
draw; the spread of the challenger-minus-champion differences gives the interval. It is
vectorized: a resample is a row of counts, and every metric that is a function of per-row sums
(MSE, MAE, accuracy, and macro-F1 through per-class TP/FP/FN counts) is one matrix product of
the counts with a per-row statistics matrix. Spearman's ranks under a resample come from
the counts too (see :class:`_Ranker`). ``resampled_metric`` is the same for one model alone
(the drift check's performance signal).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from refit.models.metrics import DIRECTION

CHUNK_CELLS = 4_000_000  # resamples x rows held in memory at once (~32 MB of float64 counts)
RANK_CHUNK_CELLS = 400_000  # Spearman makes several passes over each chunk: keep it in cache


@dataclass(frozen=True)
class Interval:
    """A challenger-minus-reference improvement (positive is better) with its bootstrap interval."""

    metric: str
    point: float
    low: float
    high: float
    confidence: float
    resamples: int
    spread: float = float("nan")  # standard deviation of the resampled improvements

    def as_dict(self) -> dict:
        return asdict(self)


def _labels(prediction: np.ndarray) -> np.ndarray:
    return np.asarray(prediction).argmax(axis=1) if np.asarray(prediction).ndim == 2 else np.asarray(prediction)


def row_statistics(metric: str, y_true: np.ndarray, prediction: np.ndarray, n_labels: int) -> np.ndarray:
    """Per-row columns whose sums over any resample determine the metric on that resample."""
    y_true = np.asarray(y_true)
    if metric in ("mse", "mae"):
        errors = np.asarray(prediction, dtype=float).reshape(len(y_true)) - y_true
        return (errors**2 if metric == "mse" else np.abs(errors))[:, None]
    predicted = _labels(prediction)
    if metric == "accuracy":
        return (predicted == y_true).astype(float)[:, None]
    if metric == "macro_f1":
        classes = np.arange(n_labels)
        truth, guess = y_true[:, None] == classes, predicted[:, None] == classes
        return np.hstack([truth & guess, ~truth & guess, truth & ~guess]).astype(float)  # TP | FP | FN
    raise ValueError(f"metric {metric!r} has no per-row statistics")


def metric_from_sums(metric: str, sums: np.ndarray, n_rows: int) -> np.ndarray:
    """The metric for each resample from its summed row statistics (one resample per row)."""
    if metric in ("mse", "mae", "accuracy"):
        return sums[:, 0] / n_rows
    tp, fp, fn = np.split(sums, 3, axis=1)
    denominator = 2 * tp + fp + fn
    f1 = np.divide(2 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0)
    return f1.mean(axis=1)  # zero_division=0, as sklearn's macro-F1 over all labels


class _Ranker:
    """Average ranks of one column under any resample, given as per-row counts.

    Tied values form groups; a group's rank in a resample is the count of everything below it
    plus the mean position of its own copies, so no resample is ever sorted."""

    def __init__(self, values: np.ndarray):
        order = np.argsort(values, kind="stable")
        _, self.starts, group_of = np.unique(values[order], return_index=True, return_inverse=True)
        self.order = order
        self.ties = len(self.starts) < len(values)
        self.row_group = np.empty(len(values), dtype=np.int64)
        self.row_group[order] = group_of if self.ties else np.arange(len(values))

    def ranks(self, counts: np.ndarray) -> np.ndarray:
        per_group = counts[:, self.order].astype(float)
        if self.ties:
            per_group = np.add.reduceat(per_group, self.starts, axis=1)
        ranks = np.cumsum(per_group, axis=1)
        ranks -= (per_group - 1) / 2  # the mean position of a group's copies
        return ranks[:, self.row_group]


def _weighted_spearman(truth: _Ranker, predicted: _Ranker, counts: np.ndarray, truth_ranks=None) -> np.ndarray:
    """Spearman's rho of each resample (a row of counts), with average ranks for ties."""
    weights = counts.astype(float)
    n = weights.sum(axis=1)
    ry = truth.ranks(counts) if truth_ranks is None else truth_ranks
    rp = predicted.ranks(counts)
    wy = weights * ry
    mean_y, mean_p = wy.sum(axis=1) / n, np.einsum("ij,ij->i", weights, rp) / n
    covariance = np.einsum("ij,ij->i", wy, rp) - n * mean_y * mean_p
    var_y = np.einsum("ij,ij->i", wy, ry) - n * mean_y**2
    var_p = np.einsum("ij,ij,ij->i", weights, rp, rp) - n * mean_p**2
    denominator = np.sqrt(np.clip(var_y, 0, None) * np.clip(var_p, 0, None))
    return np.divide(covariance, denominator, out=np.zeros(len(counts)), where=denominator > 1e-9 * n**3)


def _counts(rng: np.random.Generator, resamples: int, n_rows: int) -> np.ndarray:
    draws = rng.integers(0, n_rows, size=(resamples, n_rows))
    offsets = (np.arange(resamples) * n_rows)[:, None]
    return np.bincount((draws + offsets).ravel(), minlength=resamples * n_rows).reshape(resamples, n_rows)


class _Scorer:
    """One model's metric on any resample of the rows, given as a matrix of per-row counts."""

    def __init__(self, metric: str, y_true: np.ndarray, prediction: np.ndarray, n_labels: int, truth=None):
        self.metric, self.n_rows = metric, len(y_true)
        if metric == "spearman":
            self.truth = truth or _Ranker(np.asarray(y_true, dtype=float))
            self.predicted = _Ranker(np.asarray(prediction, dtype=float).reshape(self.n_rows))
        else:
            self.stats = row_statistics(metric, y_true, prediction, n_labels)

    @property
    def chunk(self) -> int:
        """Resamples per block of counts."""
        cells = RANK_CHUNK_CELLS if self.metric == "spearman" else CHUNK_CELLS
        return max(1, cells // self.n_rows)

    def __call__(self, counts: np.ndarray, truth_ranks: np.ndarray | None = None) -> np.ndarray:
        if self.metric == "spearman":
            return _weighted_spearman(self.truth, self.predicted, counts, truth_ranks)
        return metric_from_sums(self.metric, counts @ self.stats, self.n_rows)


def resampled_metric(
    metric: str,
    y_true: np.ndarray,
    prediction: np.ndarray,
    n_labels: int = 1,
    resamples: int = 1000,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """One model's metric on each of ``resamples`` bootstrap resamples of its rows (unpaired).

    Args:
        rng: the generator to draw from; draw two samples from one generator for a fixed seed.
    """
    if metric not in DIRECTION:
        raise ValueError(f"unknown metric {metric!r}; expected one of {', '.join(DIRECTION)}")
    rng = rng or np.random.default_rng(0)
    scorer = _Scorer(metric, np.asarray(y_true), prediction, n_labels)
    blocks = range(0, resamples, scorer.chunk)
    return np.concatenate([scorer(_counts(rng, min(scorer.chunk, resamples - s), scorer.n_rows)) for s in blocks])


def paired_bootstrap(
    metric: str,
    y_true: np.ndarray,
    challenger: np.ndarray,
    reference: np.ndarray,
    n_labels: int = 1,
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Interval:
    """The challenger's improvement over ``reference`` on ``metric``, with a percentile interval.

    Args:
        metric: ``mse``, ``mae``, ``spearman``, ``accuracy`` or ``macro_f1``.
        y_true: targets (scores, or label indices).
        challenger: the challenger's predictions (scores, or class probabilities or indices).
        reference: the champion's (or a baseline's) predictions on the same rows.
        n_labels: number of classes (classification).
        resamples: bootstrap resamples.
        confidence: two-sided interval level.
        seed: the same seed gives the same interval.

    Returns:
        The improvement (signed so that positive means the challenger is better) on the rows as
        they are, and its interval over the resamples.
    """
    if metric not in DIRECTION:
        raise ValueError(f"unknown metric {metric!r}; expected one of {', '.join(DIRECTION)}")
    y_true = np.asarray(y_true)
    n_rows = len(y_true)
    if n_rows == 0:
        raise ValueError("the paired bootstrap needs at least one row")
    sign = 1.0 if DIRECTION[metric] else -1.0
    rng = np.random.default_rng(seed)
    new = _Scorer(metric, y_true, challenger, n_labels)
    old = _Scorer(metric, y_true, reference, n_labels, truth=getattr(new, "truth", None))

    def improvement_of(counts: np.ndarray) -> np.ndarray:
        ranks = new.truth.ranks(counts) if metric == "spearman" else None  # shared by both models
        return sign * (new(counts, ranks) - old(counts, ranks))

    point = improvement_of(np.ones((1, n_rows), dtype=np.int64))[0]
    differences = [
        improvement_of(_counts(rng, min(new.chunk, resamples - start), n_rows))
        for start in range(0, resamples, new.chunk)
    ]
    differences = np.concatenate(differences)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(differences, [alpha, 1 - alpha])
    return Interval(metric, float(point), float(low), float(high), confidence, resamples, float(differences.std()))
