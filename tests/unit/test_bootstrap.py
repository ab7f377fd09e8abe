"""The paired bootstrap: exact where a closed form exists, equal to the library metrics on any
resample, and reproducible from its seed."""

import numpy as np
import pytest
from scipy.stats import norm, spearmanr
from sklearn.metrics import f1_score

from refit.gate.bootstrap import (
    _counts,
    _Ranker,
    _weighted_spearman,
    metric_from_sums,
    paired_bootstrap,
    row_statistics,
)


def test_a_constant_per_row_difference_has_a_degenerate_interval():
    y = np.linspace(0, 1, 500)
    champion = np.clip(y + 0.1, 0, 1.2)
    challenger = y.copy()  # every row's squared error drops by exactly 0.01
    result = paired_bootstrap("mse", y, challenger, champion, resamples=300)
    assert result.point == pytest.approx(0.01)
    assert result.low == pytest.approx(0.01) and result.high == pytest.approx(0.01)


def test_the_mse_interval_matches_the_normal_closed_form():
    """For a mean of paired differences the bootstrap interval is mean +- z * sd / sqrt(n)."""
    rng = np.random.default_rng(0)
    n = 4000
    y = rng.random(n)
    champion, challenger = y + rng.normal(0, 0.2, n), y + rng.normal(0, 0.15, n)
    d = (champion - y) ** 2 - (challenger - y) ** 2
    half = norm.ppf(0.975) * d.std() / np.sqrt(n)
    result = paired_bootstrap("mse", y, challenger, champion, resamples=4000, seed=1)
    assert result.point == pytest.approx(d.mean())
    assert result.low == pytest.approx(d.mean() - half, abs=0.1 * half)
    assert result.high == pytest.approx(d.mean() + half, abs=0.1 * half)


def test_the_accuracy_interval_matches_the_closed_form_for_paired_proportions():
    rng = np.random.default_rng(2)
    n = 5000
    y = rng.integers(0, 2, n)
    a = np.where(rng.random(n) < 0.8, y, 1 - y)
    b = np.where(rng.random(n) < 0.75, y, 1 - y)
    d = (a == y).astype(float) - (b == y).astype(float)
    half = norm.ppf(0.975) * d.std() / np.sqrt(n)
    result = paired_bootstrap("accuracy", y, a, b, n_labels=2, resamples=4000, seed=3)
    assert result.low == pytest.approx(d.mean() - half, abs=0.1 * half)
    assert result.high == pytest.approx(d.mean() + half, abs=0.1 * half)


def test_macro_f1_from_counts_equals_sklearn_on_the_resampled_rows():
    rng = np.random.default_rng(4)
    y, p = rng.integers(0, 4, 300), rng.integers(0, 4, 300)
    p[p == 3] = 2  # a class that is never predicted: sklearn counts its F1 as 0
    counts = _counts(rng, 5, 300)
    sums = counts @ row_statistics("macro_f1", y, p, 4)
    ours = metric_from_sums("macro_f1", sums, 300)
    for k in range(5):
        rows = np.repeat(np.arange(300), counts[k])
        expected = f1_score(y[rows], p[rows], labels=range(4), average="macro", zero_division=0)
        assert ours[k] == pytest.approx(expected)


def test_spearman_from_counts_equals_scipy_on_the_resampled_rows_with_ties():
    rng = np.random.default_rng(5)
    y = rng.integers(1, 6, 400) / 5  # star ratings: many ties
    p = np.round(y + rng.normal(0, 0.2, 400), 1)
    counts = _counts(rng, 5, 400)
    ours = _weighted_spearman(_Ranker(y), _Ranker(p), counts)
    for k in range(5):
        rows = np.repeat(np.arange(400), counts[k])
        assert ours[k] == pytest.approx(spearmanr(y[rows], p[rows]).statistic)


def test_the_same_seed_gives_the_same_interval():
    rng = np.random.default_rng(6)
    y = rng.random(800)
    a, b = y + rng.normal(0, 0.1, 800), y + rng.normal(0, 0.12, 800)
    for metric in ("mse", "mae", "spearman"):
        first = paired_bootstrap(metric, y, a, b, resamples=500, seed=7)
        assert first == paired_bootstrap(metric, y, a, b, resamples=500, seed=7)
        assert first != paired_bootstrap(metric, y, a, b, resamples=500, seed=8)


def test_higher_is_better_metrics_are_signed_like_lower_is_better_ones():
    rng = np.random.default_rng(9)
    y = rng.random(1000)
    good, bad = y + rng.normal(0, 0.05, 1000), y + rng.normal(0, 0.3, 1000)
    assert paired_bootstrap("mse", y, good, bad, resamples=200).low > 0
    assert paired_bootstrap("spearman", y, good, bad, resamples=200).low > 0
    assert paired_bootstrap("mse", y, bad, good, resamples=200).high < 0


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="unknown metric"):
        paired_bootstrap("auc", np.ones(3), np.ones(3), np.ones(3))
    with pytest.raises(ValueError, match="at least one row"):
        paired_bootstrap("mse", np.ones(0), np.ones(0), np.ones(0))
