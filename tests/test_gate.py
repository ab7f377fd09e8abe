"""The gate as a pure function of two metric sets."""

import math

from refit.gate import gate


def test_lower_is_better_metric_promotes_a_real_improvement():
    decision = gate("mse", {"mse": 0.020}, {"mse": 0.030}, min_improvement=0.005)
    assert decision.promote
    assert math.isclose(decision.improvement, 0.010)


def test_improvement_within_the_margin_is_rejected():
    decision = gate("mse", {"mse": 0.028}, {"mse": 0.030}, min_improvement=0.005)
    assert not decision.promote
    assert "does not beat" in decision.reason


def test_higher_is_better_metric():
    assert gate("macro_f1", {"macro_f1": 0.61}, {"macro_f1": 0.55}, 0.0).promote
    assert not gate("macro_f1", {"macro_f1": 0.55}, {"macro_f1": 0.61}, 0.0).promote


def test_a_tie_is_not_an_improvement():
    assert not gate("mse", {"mse": 0.03}, {"mse": 0.03}, 0.0).promote


def test_non_finite_metric_is_never_promoted():
    assert not gate("mse", {"mse": float("nan")}, {"mse": 0.03}, 0.0).promote
