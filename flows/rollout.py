"""The live rollout, one step per run: read the live rollout, gather the stage's evidence, decide,
act, and show the evidence in the UI. The `rollout` deployment runs it every few minutes."""

from __future__ import annotations

from prefect import flow

from refit.core.settings import load_settings
from refit.tasks.approval import await_stage_approval
from refit.tasks.data import preflight
from refit.tasks.notify import notify_failure, notify_rollout
from refit.tasks.rollout import (
    advance_rollout,
    decide_step,
    gather_live_evidence,
    promote_rollout,
    read_live_rollout,
    rollout_artifact,
    stop_rollout,
)


@flow(name="rollout", on_failure=[notify_failure], on_crashed=[notify_failure], log_prints=True)
def rollout_flow() -> dict:
    """One step of the live rollout (gate passed, then shadow, canary, champion).

    The guards come first: the candidate's error rate or p99 latency per item (on calls of the
    sizes both models made) above the champion's by REFIT_ROLLOUT_MAX_ERROR_INCREASE or
    REFIT_ROLLOUT_MAX_P99_RATIO, worse on the joined live labels by the gate's paired bootstrap,
    or its answers further from the champion's than REFIT_ROLLOUT_MAX_DISAGREEMENT, stop the
    rollout (the champion stays). A stage with its evidence moves on (with REFIT_ROLLOUT_APPROVAL,
    after an operator approves); one without it after REFIT_ROLLOUT_STAGE_MAX_HOURS stops the
    rollout.

    Returns:
        The step: outcome (no_rollout, wait, canary, promoted, rolled_back, superseded, raced),
        the rollout, the reason, the decision and the evidence.
    """
    settings = load_settings()
    preflight(settings)
    rollout = read_live_rollout(settings)
    if rollout is None:
        return {"outcome": "no_rollout"}
    evidence = gather_live_evidence(settings, rollout)
    decision = decide_step(settings, rollout, evidence)
    if decision.action == "advance" and settings.rollout_approval:
        decision = await_stage_approval(
            decision, rollout["version"], settings.rollout_approval_timeout_s, settings.gate_approval_poll_s
        )

    if decision.action == "stop":
        outcome = stop_rollout(settings, rollout, evidence, decision)
    elif decision.action == "advance" and decision.next_stage == "canary":
        outcome = advance_rollout(settings, rollout, evidence, decision)
    elif decision.action == "advance":
        outcome = promote_rollout(settings, rollout, evidence, decision)
    else:
        outcome = "wait"
    summary = rollout_artifact(rollout, evidence, decision, outcome)
    if outcome not in ("wait", "raced"):
        notify_rollout(settings, summary)
    return summary
