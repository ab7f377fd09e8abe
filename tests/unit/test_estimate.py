"""The performance estimate before labels: CBPE by hand, the shift correction where confidence
misleads, the regression loss model, the drift signal, and one line for each bad input."""

import numpy as np
import pytest

from refit.core.errors import InputError
from refit.drift.estimate import (
    GROUP,
    confusion_metrics,
    estimate_performance,
    estimated_performance_signal,
    expected_confusion,
)
from refit.drift.policy import DriftPolicy


def _classes(n: int, shift: float, rng: np.random.Generator):
    """Rows whose champion is confidently right, except where ``x0 > 1.5`` (rare at shift 0,
    common at shift 1): there the truth of classes 0 and 1 is swapped, at the same confidence."""
    x = rng.normal(size=(n, 6))
    x[:, 0] += shift
    logits = np.c_[x[:, 0], -x[:, 0], 0.3 * x[:, 1]] * 2
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    truth_probs = probs.copy()
    wrong = x[:, 0] > 1.5
    truth_probs[wrong] = truth_probs[wrong][:, [1, 0, 2]]
    truth = (rng.random(n)[:, None] > np.cumsum(truth_probs, axis=1)[:, :-1]).sum(axis=1)
    return x, probs, truth


def _scores(n: int, shift: float, rng: np.random.Generator):
    """A regression champion whose error is small except where ``x0 > 1.5``."""
    x = rng.normal(size=(n, 6))
    x[:, 0] += shift
    prediction = 1 / (1 + np.exp(-x[:, 1]))
    noise = 0.05 + 0.3 * (x[:, 0] > 1.5)
    return x, prediction, prediction + rng.normal(size=n) * noise


def test_expected_confusion_matches_a_hand_computed_matrix():
    probs = np.array([[0.9, 0.1], [0.3, 0.7], [0.4, 0.6]])
    predicted = np.array([0, 1, 1])
    # true-by-predicted shares: column 0 holds row 1's probabilities, column 1 rows 2 and 3's sums
    expected = np.array([[0.9, 0.7], [0.1, 1.3]]) / 3
    assert expected_confusion(probs, predicted, 2) == pytest.approx(expected)
    f1_0, f1_1 = 2 * 0.9 / (2 * 0.9 + 0.7 + 0.1), 2 * 1.3 / (2 * 1.3 + 0.1 + 0.7)
    assert confusion_metrics(expected) == pytest.approx({"macro_f1": (f1_0 + f1_1) / 2, "accuracy": 2.2 / 3})


def test_the_estimate_equals_a_hand_computed_cbpe():
    """Dev rows at two confidence levels; the isotonic calibration maps 0.8 to the 3 in 4 that
    are right and 0.2 to the 1 in 4, so the window's expected confusion matrix is known by hand."""
    dev_probs = np.array([[0.2, 0.8]] * 4 + [[0.8, 0.2]] * 4)
    dev_true = np.array([1, 1, 1, 0, 0, 0, 0, 1])
    window = np.array([[0.2, 0.8]] * 3 + [[0.8, 0.2]])
    # Calibrated: p(1) = 0.75 on the three rows predicted 1, p(0) = 0.75 on the one predicted 0.
    # Counts, true by predicted: [[0.75, 3 * 0.25], [0.25, 3 * 0.75]].
    f1_0 = 2 * 0.75 / (2 * 0.75 + 0.75 + 0.25)
    f1_1 = 2 * 2.25 / (2 * 2.25 + 0.75 + 0.25)
    estimate = estimate_performance("classification", dev_true, dev_probs, window, method="confidence",
                                    min_rows=4, resamples=20)  # fmt: skip
    assert estimate.metrics["macro_f1"].value == pytest.approx((f1_0 + f1_1) / 2)
    assert estimate.metrics["accuracy"].value == pytest.approx(0.75)
    assert estimate.metrics["macro_f1"].without_shift == pytest.approx((f1_0 + f1_1) / 2)


def test_where_confidence_misleads_the_shift_aware_estimate_is_closer_to_the_realized_value():
    rng = np.random.default_rng(0)
    dev_x, dev_probs, dev_true = _classes(2000, 0.0, rng)
    win_x, win_probs, win_true = _classes(2000, 1.0, rng)
    estimate = estimate_performance("classification", dev_true, dev_probs, win_probs, dev_x, win_x,
                                    window_true=win_true, resamples=50)  # fmt: skip
    f1 = estimate.metrics["macro_f1"]
    assert f1.realized < f1.dev - 0.1  # the window is much worse than dev
    assert abs(f1.value - f1.realized) < abs(f1.without_shift - f1.realized) / 2
    assert abs(f1.value - f1.realized) < 0.05
    assert estimate.shift.auc > 0.65 and estimate.shift.effective_rows < 2000
    assert f1.gap == pytest.approx(f1.value - f1.realized)


def test_without_a_shift_the_estimate_is_confidence_alone_and_matches_the_realized_value():
    rng = np.random.default_rng(1)
    dev_x, dev_probs, dev_true = _classes(2000, 0.0, rng)
    win_x, win_probs, win_true = _classes(2000, 0.0, rng)
    estimate = estimate_performance("classification", dev_true, dev_probs, win_probs, dev_x, win_x,
                                    window_true=win_true, resamples=100)  # fmt: skip
    f1 = estimate.metrics["macro_f1"]
    assert abs(f1.value - f1.realized) < 0.05
    assert abs(f1.value - f1.without_shift) < 0.01  # no shift, (almost) no correction
    assert estimate.shift.auc < 0.6


def test_the_regression_estimate_tracks_the_realized_loss_in_time_and_under_shift():
    rng = np.random.default_rng(2)
    dev_x, dev_pred, dev_true = _scores(2000, 0.0, rng)
    same_x, same_pred, same_true = _scores(2000, 0.0, rng)
    same = estimate_performance("regression", dev_true, dev_pred, same_pred, dev_x, same_x,
                                window_true=same_true, resamples=50)  # fmt: skip
    mse = same.metrics["mse"]
    assert mse.value == pytest.approx(mse.dev, rel=0.25)  # a like window: about the dev loss
    assert mse.value == pytest.approx(mse.realized, rel=0.4)  # a heavy tail: 134 rows carry most of it
    assert same.metrics["spearman"].value == pytest.approx(same.metrics["spearman"].realized, abs=0.05)
    win_x, win_pred, win_true = _scores(2000, 1.0, rng)
    shifted = estimate_performance("regression", dev_true, dev_pred, win_pred, dev_x, win_x,
                                   window_true=win_true, resamples=50)  # fmt: skip
    mse = shifted.metrics["mse"]
    assert mse.realized > 2 * mse.dev
    assert mse.value > 2 * mse.dev and mse.value == pytest.approx(mse.realized, rel=0.3)
    assert mse.low <= mse.realized <= mse.high


def test_partial_labels_stand_beside_the_estimate():
    rng = np.random.default_rng(3)
    dev_x, dev_probs, dev_true = _classes(1000, 0.0, rng)
    win_x, win_probs, win_true = _classes(600, 0.0, rng)
    partial = win_true.astype(float)
    partial[200:] = np.nan  # a third of the labels are in
    estimate = estimate_performance("classification", dev_true, dev_probs, win_probs, dev_x, win_x,
                                    window_true=partial, resamples=20)  # fmt: skip
    assert estimate.labelled_rows == 200 and estimate.window_rows == 600
    f1 = estimate.metrics["macro_f1"]
    assert f1.realized is not None and f1.gap == pytest.approx(f1.value - f1.realized)
    assert "realized" in estimate.line("macro_f1") and "200 labelled rows" in estimate.line("macro_f1")


def test_the_signal_drifts_on_a_degraded_window_and_not_on_a_like_one():
    rng = np.random.default_rng(4)
    policy = DriftPolicy(bootstrap_rounds=100)
    dev_x, dev_probs, dev_true = _classes(2000, 0.0, rng)
    bad_x, bad_probs, _ = _classes(1000, 1.2, rng)
    like_x, like_probs, _ = _classes(1000, 0.0, rng)
    bad = estimated_performance_signal("classification", dev_true, dev_probs, bad_probs, policy, dev_x, bad_x)
    like = estimated_performance_signal("classification", dev_true, dev_probs, like_probs, policy, dev_x, like_x)
    assert bad["group"] == like["group"] == GROUP and bad["column"] == GROUP
    assert bad["drifted"] and bad["score"] >= policy.performance_min_degradation
    assert bad["detail"]["estimated"] is True and bad["detail"]["loss_interval"][0] > 0
    assert not like["drifted"]


def _one_line(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def test_a_window_below_the_minimum_says_insufficient_data_with_the_count():
    rng = np.random.default_rng(5)
    _, dev_probs, dev_true = _classes(500, 0.0, rng)
    _, win_probs, _ = _classes(40, 0.0, rng)
    with pytest.raises(InputError) as excinfo:
        estimate_performance("classification", dev_true, dev_probs, win_probs, min_rows=100)
    assert _one_line(excinfo) == "insufficient data: 40 window rows, fewer than the 100 an estimate needs"
    signal = estimated_performance_signal("classification", dev_true, dev_probs, win_probs, DriftPolicy())
    assert signal["score"] is None and not signal["drifted"]
    assert signal["detail"]["note"].startswith("insufficient data: 40 window rows")


def test_a_class_the_champion_never_predicts_cannot_be_calibrated():
    rng = np.random.default_rng(6)
    _, dev_probs, dev_true = _classes(500, 0.0, rng)
    dev_probs[:, 2] = 0.0  # the champion never predicts the third class
    with pytest.raises(InputError) as excinfo:
        estimate_performance("classification", dev_true, dev_probs, dev_probs, labels=["neg", "neu", "pos"])
    assert _one_line(excinfo) == (
        "cannot calibrate the champion's confidence: it never predicts class 'pos' on its 500 dev rows"
    )


def test_a_class_missing_from_dev_cannot_be_calibrated():
    rng = np.random.default_rng(7)
    _, dev_probs, dev_true = _classes(500, 0.0, rng)
    dev_true[dev_true == 1] = 0
    with pytest.raises(InputError) as excinfo:
        estimate_performance("classification", dev_true, dev_probs, dev_probs)
    assert _one_line(excinfo) == "cannot calibrate the champion's confidence: no dev row is of class '1'"


def test_a_constant_regression_champion_cannot_be_modelled():
    rng = np.random.default_rng(8)
    with pytest.raises(InputError) as excinfo:
        estimate_performance("regression", rng.random(300), np.full(300, 0.5), rng.random(300))
    assert _one_line(excinfo) == (
        "cannot model the champion's loss: its dev predictions are constant (0.5 on all 300 rows)"
    )


def test_missing_predictions_are_refused_not_estimated():
    rng = np.random.default_rng(9)
    window = rng.random(300)
    window[7] = np.nan
    with pytest.raises(InputError) as excinfo:
        estimate_performance("regression", rng.random(300), rng.random(300), window)
    assert _one_line(excinfo) == "the champion's window predictions hold missing or infinite values"


def test_the_estimate_is_reproducible_from_its_seed_and_serializable():
    rng = np.random.default_rng(10)
    dev_x, dev_pred, dev_true = _scores(600, 0.0, rng)
    win_x, win_pred, _ = _scores(300, 0.5, rng)
    first = estimate_performance("regression", dev_true, dev_pred, win_pred, dev_x, win_x, resamples=30, seed=3)
    second = estimate_performance("regression", dev_true, dev_pred, win_pred, dev_x, win_x, resamples=30, seed=3)
    assert first.as_dict() == second.as_dict()
    assert set(first.as_dict()["metrics"]) == {"mse", "mae", "spearman"}


class _Champion:
    """A two-class champion whose text is a number: it predicts class 1 with that probability
    and embeds the number with a second, irrelevant coordinate."""

    labels = ["unhappy", "happy"]

    def predict(self, texts):
        p = np.array([float(t) for t in texts])
        return np.c_[1 - p, p]

    def embed(self, texts):
        return np.array([[float(t), float(t) ** 2] for t in texts])


def _feedback(scores: np.ndarray, labelled: np.ndarray, rng: np.random.Generator):
    import pandas as pd

    happy = rng.random(len(scores)) < scores
    label = np.where(happy, "happy", "unhappy").astype(object)
    label[~labelled] = None
    return pd.DataFrame({"text": [f"{s:.6f}" for s in scores], "label": label, "satisfaction": np.nan})


def test_a_check_estimates_from_feedback_frames_with_or_without_embeddings():
    from refit.drift.estimate import champion_estimate

    rng = np.random.default_rng(11)
    champion, policy = _Champion(), DriftPolicy(bootstrap_rounds=50)
    dev = _feedback(rng.beta(2, 2, 800), np.ones(800, dtype=bool), rng)
    window = _feedback(rng.beta(2, 2, 400), np.arange(400) < 100, rng)  # a quarter labelled
    prediction = champion.predict(window["text"].tolist())
    sample = np.arange(0, 400, 2)  # the drift check embeds a sample of the window
    embeddings = champion.embed(window["text"].iloc[sample].tolist())
    with_embeddings = champion_estimate(champion, dev, window, prediction, "classification", champion.labels,
                                        policy, embeddings, sample)  # fmt: skip
    served = champion_estimate(champion, dev, window, prediction, "classification", champion.labels, policy)
    for signal in (with_embeddings, served):
        assert signal["group"] == GROUP and signal["score"] is not None and not signal["drifted"]
        assert signal["detail"]["labelled_rows"] == 100 and signal["detail"]["current_rows"] == 400
        assert abs(signal["detail"]["current"] - signal["detail"]["dev"]) < 0.1
    assert with_embeddings["detail"]["shift_features"] == "prediction + 2 embedding components"
    assert served["detail"]["shift_features"] == "prediction"


def test_window_probabilities_over_other_classes_are_refused():
    rng = np.random.default_rng(12)
    _, dev_probs, dev_true = _classes(300, 0.0, rng)
    with pytest.raises(InputError) as excinfo:
        estimate_performance("classification", dev_true, dev_probs, dev_probs[:, :2])
    assert _one_line(excinfo) == "classification estimates need class probabilities (3 columns) on both sides"
