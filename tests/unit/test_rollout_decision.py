"""The rollout's decision as a pure function of the stage's evidence: every guard stops it as soon
as it has its minimum rows (before any exit condition), a stage with its evidence moves on, and a
stage without it ends the rollout after the maximum time."""

from dataclasses import replace
from datetime import datetime, timezone

import pytest

from refit.rollout.decision import RolloutPolicy, decide
from refit.rollout.evidence import Evidence, ModelEvidence
from refit.rollout.report import evidence_markdown, step_summary

POLICY = RolloutPolicy(
    min_requests=500,
    min_labels=100,
    stage_max_hours=72,
    max_error_increase=0.01,
    max_p99_ratio=1.5,
    max_disagreement=0.35,
)
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def model(role, items=600, errors=0, p99=10.0, requests=None):
    return ModelEvidence(
        role=role,
        version="v1" if role == "champion" else "v2",
        items=items,
        requests=items if requests is None else requests,
        errors=errors,
        error_rate=errors / items if items else None,
        p50_ms=p99 / 3 if p99 is not None else None,
        p99_ms=p99,
        labels=150,
        live={"mse": 0.02},
    )


def evidence(
    champion=None,
    candidate=None,
    paired=600,
    disagreement=0.05,
    labels=150,
    interval=(-0.002, -0.01, 0.006),
    task="regression",
) -> Evidence:
    """Evidence that lets a stage end, unless a test changes a part of it."""
    point, low, high = interval
    comparison = None
    if labels:
        comparison = {
            "metric": "mse",
            "point": point,
            "low": low,
            "high": high,
            "confidence": 0.95,
            "resamples": 1000,
            "candidate": 0.022,
            "champion": 0.020,
            "rows": labels,
        }
    return Evidence(
        rollout_id=1,
        stage="shadow",
        window_start=T0,
        as_of=T0,
        hours_in_stage=1.0,
        task=task,
        metric="mse",
        champion=champion or model("champion"),
        candidate=candidate or model("candidate"),
        paired=paired,
        disagreement=disagreement if paired else None,
        labels=labels,
        comparison=comparison,
    )


def statuses(decision) -> dict[str, str]:
    return {c.name: c.status for c in decision.checks}


def test_a_stage_with_its_evidence_and_no_failed_guard_moves_on():
    shadow = decide(evidence(), "shadow", 1.0, POLICY)
    assert shadow.action == "advance" and shadow.next_stage == "canary"
    assert all(status == "passed" for status in statuses(shadow).values())
    canary = decide(evidence(), "canary", 1.0, POLICY)
    assert canary.action == "advance" and canary.next_stage == "champion"
    assert canary.reason.startswith("canary passed: ")


def test_a_stage_short_of_its_evidence_waits_and_says_for_what():
    few = evidence(champion=model("champion", items=120), candidate=model("candidate", items=110), labels=14)
    decision = decide(few, "shadow", 2.0, POLICY)
    assert decision.action == "wait" and decision.next_stage is None
    assert "110 of 500 requests" in decision.reason and "14 of 100 joined live labels" in decision.reason
    # the guards with their minimum rows were judged already
    assert statuses(decision)["error_rate"] == "passed" and statuses(decision)["live_metric"] == "waiting"


def test_a_stage_without_its_evidence_after_the_maximum_time_stops_the_rollout():
    few = evidence(champion=model("champion", items=120), candidate=model("candidate", items=110), labels=14)
    decision = decide(few, "canary", 72.0, POLICY)
    assert decision.action == "stop" and decision.stopped_by == ["timeout"]
    assert "REFIT_ROLLOUT_STAGE_MAX_HOURS=72" in decision.reason and "110 of 500 requests" in decision.reason
    assert decide(few, "canary", 71.9, POLICY).action == "wait"


def test_errors_above_the_champions_by_more_than_the_setting_stop_it_before_the_stage_could_end():
    # 60 request items: far from the 500 the stage needs, enough for the guard (50)
    bad = evidence(champion=model("champion", items=60, errors=0), candidate=model("candidate", items=60, errors=3))
    decision = decide(bad, "shadow", 0.1, POLICY)
    assert decision.action == "stop" and decision.stopped_by == ["error_rate"]
    assert "candidate error rate 5.0% vs champion 0.0%" in decision.reason
    # within the allowance: +1 point is allowed, so 6 errors in 600 against none passes
    fine = evidence(candidate=model("candidate", errors=6))
    assert decide(fine, "shadow", 0.1, POLICY).action == "advance"


def test_a_guard_without_its_minimum_rows_does_not_judge():
    # 20 items with half of them failing: not yet evidence (the guard needs 50 per model)
    early = evidence(champion=model("champion", items=20), candidate=model("candidate", items=20, errors=10))
    decision = decide(early, "shadow", 0.1, POLICY)
    assert decision.action == "wait"
    assert statuses(decision)["error_rate"] == "waiting"
    assert "20 of 50 request items per model" in decision.reason


def test_a_p99_above_the_ratio_of_the_champions_stops_it():
    slow = evidence(champion=model("champion", p99=10.0), candidate=model("candidate", p99=15.1))
    decision = decide(slow, "canary", 0.1, POLICY)
    assert decision.action == "stop" and decision.stopped_by == ["latency"]
    assert "1.51x; above 1.5x" in decision.reason
    exactly = evidence(champion=model("champion", p99=10.0), candidate=model("candidate", p99=15.0))
    assert decide(exactly, "canary", 0.1, POLICY).action == "advance"


def test_worse_on_the_joined_labels_by_the_paired_bootstrap_stops_it():
    worse = evidence(interval=(-0.03, -0.05, -0.01))
    decision = decide(worse, "shadow", 0.1, POLICY)
    assert decision.action == "stop" and decision.stopped_by == ["live_metric"]
    assert "interval -0.0500 to -0.0100: worse" in decision.reason
    # an interval that reaches above zero is not evidence of worse: it passes
    assert decide(evidence(interval=(-0.03, -0.05, 0.001)), "shadow", 0.1, POLICY).action == "advance"


def test_answers_too_far_from_the_champions_stop_it():
    decision = decide(evidence(disagreement=0.4), "shadow", 0.1, POLICY)
    assert decision.action == "stop" and decision.stopped_by == ["disagreement"]
    assert "mean |difference| of satisfaction on 600 paired items: 0.400" in decision.reason
    labels = decide(evidence(disagreement=0.5, task="classification"), "shadow", 0.1, POLICY)
    assert "share of differing labels" in labels.reason


def test_every_failed_guard_is_named():
    bad = evidence(candidate=model("candidate", errors=60, p99=40.0), disagreement=0.9, interval=(-0.1, -0.2, -0.05))
    decision = decide(bad, "canary", 0.1, POLICY)
    assert decision.stopped_by == ["error_rate", "latency", "live_metric", "disagreement"]


def test_no_stage_ends_before_every_guard_was_judged():
    # requests and labels are there, but no latency was logged: the stage cannot end on it
    blind = evidence(champion=model("champion", p99=None), candidate=model("candidate", p99=None))
    decision = decide(blind, "shadow", 1.0, POLICY)
    assert decision.action == "wait" and "latency" in decision.reason
    assert decide(blind, "shadow", 80.0, POLICY).stopped_by == ["timeout"]
    # few paired items (the other model scored a small share unseen): the disagreement guard waits
    unpaired = decide(evidence(paired=10), "canary", 1.0, POLICY)
    assert unpaired.action == "wait" and "disagreement: 10 of 50 paired items" in unpaired.reason


def test_the_guards_minimums_never_exceed_what_a_stage_needs():
    small = RolloutPolicy(min_requests=10, min_labels=5)
    assert (small.items_needed, small.paired_needed, small.labels_needed) == (10, 10, 5)
    # so a stage of 12 requests and 6 labels ends only after every guard judged those rows
    few = evidence(champion=model("champion", items=12), candidate=model("candidate", items=12), paired=12, labels=6)
    assert decide(few, "shadow", 0.1, small).action == "advance"
    worse = evidence(
        champion=model("champion", items=12),
        candidate=model("candidate", items=12),
        paired=12,
        labels=6,
        interval=(-0.05, -0.08, -0.02),
    )
    assert decide(worse, "shadow", 0.1, small).stopped_by == ["live_metric"]
    # without a labels requirement the live-metric guard still judges once it has its 30 labels
    no_labels = RolloutPolicy(min_requests=10, min_labels=0)
    assert no_labels.labels_needed == 30
    unlabelled = evidence(
        champion=model("champion", items=12), candidate=model("candidate", items=12), paired=12, labels=0
    )
    assert decide(unlabelled, "shadow", 0.1, no_labels).action == "advance"


def test_only_a_live_stage_is_decided():
    with pytest.raises(ValueError, match="shadow or canary"):
        decide(evidence(), "promoted", 0.0, POLICY)


def test_the_evidence_renders_as_one_table_per_step():
    rollout = {
        "id": 7,
        "version": "v2",
        "champion_version": "v1",
        "stage": "shadow",
        "started_at": T0,
        "stage_started_at": T0,
    }
    summary = step_summary(
        rollout, evidence(disagreement=0.4), decide(evidence(disagreement=0.4), "shadow", 1, POLICY), "rolled_back"
    )
    markdown = evidence_markdown(summary)
    assert "| measure | champion v1 | candidate v2 |" in markdown
    assert "| p99 latency (ms) | 10.0 | 10.0 |" in markdown
    # a pipe inside a cell is escaped, so the table keeps its columns
    assert "mean \\|difference\\| of satisfaction" in markdown
    assert "| disagreement | guard | FAILED |" in markdown


def test_the_alert_of_a_stopped_rollout_and_the_retrain_run_that_started_one():
    from refit.flows.retrain import describe_run
    from refit.notify.notices import outcome_notice, rollout_notice
    from refit.rollout.report import evidence_table

    rollout = {
        "id": 7,
        "version": "v2",
        "champion_version": "v1",
        "stage": "canary",
        "started_at": T0,
        "stage_started_at": T0,
    }
    slow = evidence(candidate=model("candidate", p99=40.0))
    summary = step_summary(rollout, slow, decide(slow, "canary", 1.0, POLICY), "rolled_back")
    notice = rollout_notice(summary, evidence_table(summary))
    assert notice.kind == "rollout_stopped" and notice.title == "refit: rollout 7 STOPPED: v2 rolled back"
    assert notice.fields["stopped_by"] == ["latency"] and "4.00x; above 1.5x" in notice.fields["reason"]
    assert "p99 latency (ms)" in notice.table and "The champion pointer did not move" in notice.slack()["text"]

    run = {"outcome": "rollout", "version": "v2", "uri": "s3://b/v2", "champion": "v1"}
    run["rollout"] = {"rollout_id": 7, "stage": "shadow"}
    assert outcome_notice(run).title == "refit: challenger passed the gate, live rollout started"
    assert "live rollout 7: shadow" in describe_run(run)


def test_a_champion_that_changed_meanwhile_supersedes_the_rollout_before_any_guard():
    changed = replace(evidence(disagreement=0.9), champion_now="v9")
    decision = decide(changed, "canary", 1.0, POLICY)
    assert decision.action == "stop" and decision.stopped_by == ["champion_changed"]
    assert "the champion changed during the rollout (v9, not v1" in decision.reason
    assert decide(replace(evidence(), champion_now="v1"), "canary", 1.0, POLICY).action == "advance"


def timed(role, p99, timed=600, sizes=(1,), any_p99=None, any_sizes=None):
    """A model's evidence with its latency per item: ``p99`` on the call sizes both models made
    (``timed`` rows of ``sizes``), ``any_p99`` over its calls of every size."""
    return replace(
        model(role, p99=p99),
        timed=timed,
        call_sizes=list(sizes),
        any_size_p99_ms=p99 if any_p99 is None else any_p99,
        any_size_timed=600,
        any_call_sizes=list(any_sizes or sizes),
    )


def test_latency_is_judged_per_item_on_calls_of_the_sizes_both_models_made():
    # The candidate's 4-item shadow calls took 24 ms (6 ms an item) and its 1-item calls 11 ms; the
    # champion answered one item at a time in 10 ms. On the calls of one item both made: 1.10x.
    same = evidence(
        champion=timed("champion", 10.0, sizes=(1,)),
        candidate=timed("candidate", 11.0, sizes=(1,), any_p99=11.0, any_sizes=(1, 4)),
    )
    decision = decide(same, "shadow", 0.1, POLICY)
    assert decision.action == "advance", decision.reason
    check = next(c for c in decision.checks if c.name == "latency")
    assert check.status == "passed" and check.value == pytest.approx(1.1)
    assert check.detail == "candidate p99 11.0 ms vs champion 10.0 ms (1.10x; within 1.5x), per item on calls of 1 item"

    # A candidate truly slower per item is stopped on the same calls.
    slow = evidence(champion=timed("champion", 10.0), candidate=timed("candidate", 16.0))
    decision = decide(slow, "shadow", 0.1, POLICY)
    assert decision.action == "stop" and decision.stopped_by == ["latency"]
    assert "p99 16.0 ms vs champion 10.0 ms (1.60x; above 1.5x), per item on calls of 1 item" in decision.reason


def test_with_too_few_calls_of_a_common_size_latency_is_judged_per_item_over_every_size():
    # Under load the champion answers in calls of 8 to 32 items and shadow calls hold at most 4:
    # only 20 items share a size. The guard then compares per item over every call.
    few = evidence(
        champion=timed("champion", 9.0, timed=20, sizes=(4,), any_p99=2.0, any_sizes=range(8, 33)),
        candidate=timed("candidate", 9.5, timed=20, sizes=(4,), any_p99=2.5, any_sizes=(4,)),
    )
    check = next(c for c in decide(few, "shadow", 0.1, POLICY).checks if c.name == "latency")
    assert check.status == "passed" and check.value == pytest.approx(1.25)
    assert check.detail == (
        "candidate p99 2.5 ms vs champion 2.0 ms (1.25x; within 1.5x), per item over calls of every size: only 20"
        " of 50 items on calls of a size both made (champion 8-32 items, candidate 4 items)"
    )
    slower = evidence(
        champion=timed("champion", 9.0, timed=20, sizes=(4,), any_p99=2.0, any_sizes=range(8, 33)),
        candidate=timed("candidate", 9.5, timed=20, sizes=(4,), any_p99=4.0, any_sizes=(4,)),
    )
    assert decide(slower, "shadow", 0.1, POLICY).stopped_by == ["latency"]


def test_the_latency_guard_waits_for_its_items_and_the_table_says_what_was_timed():
    early = evidence(champion=timed("champion", 10.0), candidate=replace(timed("candidate", 10.0), items=20))
    check = next(c for c in decide(early, "shadow", 0.1, POLICY).checks if c.name == "latency")
    assert check.status == "waiting" and check.detail == "latency: 20 of 50 request items per model"

    rollout = {"id": 7, "version": "v2", "champion_version": "v1", "stage": "shadow"}
    rollout.update(started_at=T0, stage_started_at=T0)
    same = evidence(champion=timed("champion", 10.0), candidate=timed("candidate", 11.0, sizes=(1, 4)))
    markdown = evidence_markdown(step_summary(rollout, same, decide(same, "shadow", 1, POLICY), "wait"))
    assert "| items timed (call sizes) | 600 (1) | 600 (1, 4) |" in markdown
