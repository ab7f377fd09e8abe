"""``refit simulate``: policies, scenario streams, a short replay through the real loop on the real
services (Postgres schemas per policy, moto S3 over HTTP), and invariant checks that catch a
violation made on purpose."""

from __future__ import annotations

import pandas as pd
import pytest

from refit.core.errors import InputError
from refit.sim.policies import Policy
from refit.sim.stream import load_stream, scenario_stream, shifted_share, steps_of


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("never", Policy("never", "never")),
        ("schedule:4", Policy("schedule-4", "schedule", every=4)),
        ("drift", Policy("drift", "drift")),
        ("drift:2/3", Policy("drift-2of3", "drift", confirm_n=2, confirm_m=3)),
        ("drift:2/3:14d", Policy("drift-2of3-cd336h", "drift", confirm_n=2, confirm_m=3, cooldown_hours=336)),
        ("drift:1/2:36", Policy("drift-1of2-cd36h", "drift", confirm_n=1, confirm_m=2, cooldown_hours=36)),
        ("drift@14d", Policy("drift-w14d", "drift", window_days=14)),
        ("drift:2/3:1w@2w", Policy("drift-2of3-cd168h-w14d", "drift", 0, 2, 3, 168, 14)),
        ("schedule:1+old", Policy("schedule-1-gate-old", "schedule", every=1, gate_rule="old")),
        ("drift@14d+recent", Policy("drift-w14d-gate-recent", "drift", window_days=14, gate_rule="recent")),
    ],
)
def test_policy_specs(spec, expected):
    assert Policy.parse(spec) == expected


@pytest.mark.parametrize(
    "spec",
    [
        "sometimes",
        "schedule",
        "schedule:0",
        "drift:3/2",
        "drift:2/3:soon",
        "never:1",
        "never@3d",
        "drift@x",
        "drift+lax",
    ],
)
def test_bad_policy_specs_are_one_line_errors(spec):
    with pytest.raises(InputError, match="policy|unknown"):
        Policy.parse(spec)


def test_scenario_streams_shift_as_named():
    sudden = scenario_stream("sudden", rows=400, steps=10, seed=3)
    steps = steps_of(sudden, 7)
    assert [len(s.feedback) for s in steps] == [40] * 10
    assert all(s.feedback["created_at"].between(s.start, s.end, inclusive="left").all() for s in steps)
    shifted = [s.feedback["feedback_id"].str.contains("-s").mean() for s in steps]
    assert shifted == [0.0] * 4 + [1.0] * 6  # all at once, 40% of the way in
    warm = steps_of(sudden, 7, warmup=3)  # three weeks of history train the first champion
    assert [s.index for s in warm] == [0, 3, 4, 5, 6, 7, 8, 9] and len(warm[0].feedback) == 120
    assert warm[0].end == steps[2].end
    gradual = [shifted_share("gradual", i, 20) for i in range(20)]
    assert gradual[0] == 0 and gradual[-1] == 1 and all(b >= a for a, b in zip(gradual, gradual[1:], strict=False))
    seasonal = [shifted_share("seasonal", i, 52) for i in range(52)]
    assert max(seasonal) > 0.7 and seasonal[0] == 0 and seasonal[13] < 0.01  # a season returns to base
    assert set(scenario_stream("steady", rows=200, steps=4)["feedback_id"].str.split("-").str[1]) == {
        "b0",
        "b1",
        "b2",
        "b3",
    }


def test_load_stream_orders_by_feedback_time(tmp_path):
    path = tmp_path / "feedback.csv"
    pd.DataFrame(
        {"text": ["b", "a"], "rating": [5, 1], "created_at": ["2025-02-01T00:00:00Z", "2025-01-01T00:00:00Z"]}
    ).to_csv(path, index=False)
    assert load_stream(path)["text"].tolist() == ["a", "b"]
    pd.DataFrame({"text": ["x"], "rating": [3]}).to_csv(tmp_path / "untimed.csv", index=False)
    with pytest.raises(InputError, match="no created_at"):
        load_stream(tmp_path / "untimed.csv")


def test_cli_refuses_an_unknown_policy_in_one_line():
    import subprocess
    import sys

    run = subprocess.run(
        [sys.executable, "-m", "refit.cli", "simulate", "--policy", "drift", "--policy", "sometimes"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 1
    assert run.stderr.strip().splitlines() == [
        "refit: error: unknown policy 'sometimes': expected never, schedule:K, drift or drift:N/M[:COOLDOWN]"
    ]


def test_a_policys_promotion_rule_sets_the_gate_and_the_dev_set():
    assert Policy.parse("schedule:1+old").settings_overrides()["gate_rule"] == "whole"
    assert Policy.parse("schedule:1+old").settings_overrides()["devset_grow"] is False
    assert Policy.parse("schedule:1+recent").settings_overrides()["devset_grow"] is True
    assert "gate_rule" not in Policy.parse("schedule:1").settings_overrides()


def test_the_summary_counts_the_gap_to_the_best_model_and_the_promotions_of_worse_models():
    from refit.sim.backtest import summarize

    def step(champion: str, scores: dict, promoted: str | None = None) -> dict:
        online = {"metric": "macro_f1", "value": scores[champion], "rows": 100, "champion": champion}
        online.update(scores=scores, best=max(scores.values()))
        cycle = {"trigger": 0, "outcome": "promoted", "retrain": True, "version": promoted} if promoted else None
        return {"online": online, "cycles": [cycle or {"trigger": 0, "outcome": "no_retrain"}], "violations": []}

    records = [
        step("v1", {"v1": 0.70}, promoted="v2"),
        step("v2", {"v1": 0.71, "v2": 0.69}, promoted="v3"),  # v2 was worse than v1 on this step
        step("v3", {"v1": 0.70, "v2": 0.70, "v3": 0.74}),  # v3 was better than v2
    ]
    row = summarize(records)
    assert row["worse_promotions"] == 1
    assert row["gap_to_best"] == pytest.approx((0 + 0.02 + 0) / 3)
    assert row["final_gap_to_best"] == 0
