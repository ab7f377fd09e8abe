"""The drift tests know their sample size: a wide categorical feature does not drift between two
random halves of one population, twenty null features are one chance to alarm (not twenty), and a
huge window does not drift on a trivial difference. No services, no champion: the same functions
the drift check calls (``refit.drift.significance``), and the check itself without a champion."""

import copy
import json

import numpy as np
import pandas as pd
import pytest

from refit.drift.check import check_drift
from refit.drift.policy import NO_DRIFT, RETRAIN, DriftPolicy
from refit.drift.signals import stattest_signals, typed_columns
from refit.drift.significance import adjust, attach_p_values, auc_p_value, chi_square_p_value, holdout_sizes, judge
from refit.sim.scenarios import draw

POLICY = DriftPolicy()  # the defaults an operator gets
WIDE = 300  # values of the wide categorical feature


def zipf_values(rng: np.random.Generator, n: int, values: int = WIDE, exponent: float = 1.1) -> np.ndarray:
    """``n`` draws of a long-tailed categorical (Zipf-like counts, as product categories or
    medical conditions have): a few common values and hundreds of rare ones."""
    weights = 1.0 / np.arange(1, values + 1) ** exponent
    return rng.choice([f"value-{i:03d}" for i in range(values)], size=n, p=weights / weights.sum())


def with_feature(frame: pd.DataFrame, name: str, values) -> pd.DataFrame:
    """``frame`` with one more behaviour feature in its features JSON."""
    frame = frame.copy()
    features = [json.loads(f) for f in frame["features"]]
    frame["features"] = [json.dumps({**f, name: str(v)}) for f, v in zip(features, values, strict=True)]
    return frame


def wide_pair(seed: int, rows: int = 400, takeover: float = 0.0):
    """Two windows of ``rows`` from one population, with a wide ``condition`` feature; with
    ``takeover``, that share of the current window's conditions come from a tenth of the values."""
    rng = np.random.default_rng(seed)
    reference, current = draw("null", rows, seed)
    conditions = zipf_values(rng, 2 * rows)
    ref_values, cur_values = conditions[:rows], conditions[rows:].copy()
    if takeover:
        tenth = rng.choice([f"value-{i:03d}" for i in range(WIDE)], size=WIDE // 10, replace=False)
        chosen = rng.random(rows) < takeover
        cur_values[chosen] = rng.choice(tenth, size=int(chosen.sum()))
    return with_feature(reference, "condition", ref_values), with_feature(current, "condition", cur_values)


def test_the_tests_are_what_they_claim():
    # Holm multiplies the smallest p by m, the next by m - 1, and keeps the order
    assert adjust([0.01, 0.04, 0.03, 0.5], "holm") == pytest.approx([0.04, 0.09, 0.09, 0.5])
    assert adjust([0.01, 0.04, 0.03, 0.5], "bh") == pytest.approx([0.04, 0.16 / 3, 0.16 / 3, 0.5])
    # the held-out half is Evidently's split: half the rows, the reference's share of it near half
    held = holdout_sizes(400, 400)
    assert sum(held) == 400 and 180 < held[0] < 220
    # AUC 0.5 is no evidence; the 0.567 on 200 + 200 held-out rows is p of about 0.01
    assert auc_p_value(0.5, 200, 200) > 0.45
    assert auc_p_value(0.567, 200, 200) == pytest.approx(0.0102, abs=0.001)
    # a value seen twice in 800 rows is pooled; two sides with disjoint values are a certain shift
    p_value, cells = chi_square_p_value(pd.Series(["a"] * 400), pd.Series(["b"] * 400))
    assert cells == 2 and p_value < 1e-12


def test_a_wide_categorical_does_not_drift_between_random_halves_of_one_population():
    """The issue's null: a 0.1 Jensen-Shannon threshold fires on every check of a feature with
    hundreds of values at 400 rows; the decision must not."""
    for seed in range(5):
        reference, current = wide_pair(seed)
        result = check_drift(reference, current, POLICY, "regression", render=False)
        wide = next(s for s in result.signals if s["column"] == "f_condition")
        assert wide["detail"]["above_floor"], wide  # the fixed threshold alone would have fired
        assert wide["score"] > 0.3
        assert not wide["drifted"] and wide["detail"]["p_adjusted"] >= POLICY.alpha, wide
        assert result.decision == NO_DRIFT, (seed, result.reasons)


def test_a_wide_categorical_drifts_when_a_tenth_of_its_values_take_over():
    for seed in range(3):
        reference, current = wide_pair(seed, takeover=0.5)
        result = check_drift(reference, current, POLICY, "regression", render=False)
        wide = next(s for s in result.signals if s["column"] == "f_condition")
        assert wide["drifted"] and wide["detail"]["p_adjusted"] < POLICY.alpha / 10, wide
        assert result.decision == RETRAIN and any(r.startswith("f_condition drifted") for r in result.reasons)
        reason = next(r for r in result.reasons if r.startswith("f_condition"))
        assert "holm-adjusted" in reason and not set("<>&") & set(reason)  # Slack shows reasons verbatim


def _null_features(seed: int, rows: int = 400, features: int = 20):
    """Two windows of ``features`` null features (half numeric, half categorical with 40 values)."""
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(2):
        columns = {}
        for j in range(features):
            if j % 2:
                columns[f"f_num{j}"] = rng.normal(size=rows)
            else:
                columns[f"f_cat{j}"] = zipf_values(rng, rows, values=40)
        frames.append(pd.DataFrame(columns))
    kinds = {c: ("numeric" if c.startswith("f_num") else "categorical") for c in frames[0].columns}
    return frames[0], frames[1], kinds


def test_twenty_null_features_are_one_chance_to_alarm_not_twenty():
    """With floors out of the way, uncorrected tests of twenty null features alarm in about
    1 - 0.99^20 = 18% of checks; the family corrected at 0.01 (Holm or Benjamini-Hochberg) in
    about 1%."""
    policy = DriftPolicy(numeric_threshold=1e-9, categorical_threshold=1e-9, alpha=0.01)
    checks = 100
    alarms = {"uncorrected": 0, "holm": 0, "bh": 0}
    for seed in range(checks):
        reference, current, kinds = _null_features(seed)
        signals = stattest_signals(reference, current, kinds, policy)
        attach_p_values(signals, typed_columns(reference, kinds), typed_columns(current, kinds), kinds)
        alarms["uncorrected"] += any(s["detail"]["p_value"] < policy.alpha for s in signals)
        for correction in ("holm", "bh"):
            judged = copy.deepcopy(signals)
            judge(judged, policy.alpha, correction)
            alarms[correction] += any(s["drifted"] for s in judged)
    assert alarms["uncorrected"] >= 8, alarms  # the family matters: twenty chances
    assert alarms["holm"] <= 3 and alarms["bh"] <= 3, alarms  # level 0.01 over 100 checks: about 1


def test_a_huge_window_does_not_drift_on_a_trivial_difference():
    """At 200,000 rows a side, a twentieth of a standard deviation and one point of a share are
    certain (p far below alpha) and trivial (below the floors): no drift."""
    rng = np.random.default_rng(0)
    rows = 200_000
    reference = pd.DataFrame({"f_amount": rng.normal(size=rows), "f_plan": rng.choice(["a", "b"], rows, p=[0.5, 0.5])})
    current = pd.DataFrame(
        {"f_amount": rng.normal(0.05, 1.0, size=rows), "f_plan": rng.choice(["a", "b"], rows, p=[0.51, 0.49])}
    )
    kinds = {"f_amount": "numeric", "f_plan": "categorical"}
    signals = stattest_signals(reference, current, kinds, POLICY)
    attach_p_values(signals, typed_columns(reference, kinds), typed_columns(current, kinds), kinds)
    judge(signals, POLICY.alpha, POLICY.correction)
    for signal in signals:
        assert signal["detail"]["p_adjusted"] < 1e-6, signal  # the difference is real
        assert signal["score"] < signal["threshold"], signal  # and below the floor
        assert not signal["drifted"], signal
    # the same window with a difference above the floor drifts
    current["f_amount"] += 0.5
    signals = stattest_signals(reference, current, kinds, POLICY)
    attach_p_values(signals, typed_columns(reference, kinds), typed_columns(current, kinds), kinds)
    judge(signals, POLICY.alpha, POLICY.correction)
    assert [s["column"] for s in signals if s["drifted"]] == ["f_amount"]
