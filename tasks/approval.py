"""Optional manual approval: after a passing gate, the flow pauses until an operator approves or
rejects in the Prefect UI (a form with the decision and a note), or until the timeout rejects; and,
with REFIT_ROLLOUT_APPROVAL, the same form between the stages of a live rollout."""

from __future__ import annotations

from dataclasses import replace

from prefect import get_run_logger
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from pydantic import Field

from refit.gate.rule import GateDecision
from refit.rollout.decision import RolloutDecision


class Approval(RunInput):
    """The form an operator fills in the Prefect UI to resume the paused retrain."""

    approve: bool = Field(description="Promote this challenger to champion?")
    note: str = Field(default="", description="Why; recorded in the promotion log.")
    by: str = Field(default="", description="Your name, for the record.")


def await_approval(decision: GateDecision, version: str, timeout_s: int, poll_s: int = 10) -> GateDecision:
    """Pause the flow run for an operator's verdict on a challenger that passed the gate.

    Call from a flow (not a task).

    Args:
        decision: the gate's decision (a pass).
        version: the challenger's version.
        timeout_s: how long to wait for an answer.
        poll_s: how often the paused run checks for one.

    Returns:
        The decision with the operator's verdict and note recorded; a rejection or a timeout turns
        it into a rejection.
    """
    logger = get_run_logger()
    description = (
        f"**Challenger `{version}` passed the gate.** {decision.reason}\n\n"
        f"Approve to promote it to champion; reject to keep the current champion. "
        f"Without an answer in {timeout_s} s it is rejected."
    )
    logger.info("waiting up to %d s for an operator to approve %s", timeout_s, version)
    try:
        answer = pause_flow_run(
            wait_for_input=Approval.with_initial_data(description=description, approve=True),
            timeout=timeout_s,
            poll_interval=poll_s,
            key=f"approve-{version}",
        )
    except FlowPauseTimeout:
        _resume_own_run()  # the run goes on to record the rejection instead of ending paused
        approval = {"verdict": "timed out", "by": None, "note": f"no answer within {timeout_s} s"}
        logger.warning("no approval for %s within %d s: rejected", version, timeout_s)
        return replace(
            decision, promote=False, reason=f"reject: no operator approval within {timeout_s} s", approval=approval
        )
    approval = {"verdict": "approved" if answer.approve else "rejected", "by": answer.by, "note": answer.note}
    logger.info("operator %s %s %s: %s", answer.by or "?", approval["verdict"], version, answer.note)
    if answer.approve:
        return replace(decision, approval=approval)
    who = answer.by or "an operator"
    return replace(
        decision, promote=False, reason=f"reject: {who} rejected it: {answer.note or 'no note'}", approval=approval
    )


def await_stage_approval(decision: RolloutDecision, version: str, timeout_s: int, poll_s: int = 10) -> RolloutDecision:
    """Pause the rollout step for an operator's verdict before the rollout moves to its next stage.

    Call from a flow (not a task).

    Args:
        decision: the rollout's decision to move on.
        version: the candidate's version.
        timeout_s: how long to wait for an answer.
        poll_s: how often the paused run checks for one.

    Returns:
        Approved: the decision as it stands, with the verdict recorded. Rejected: a stop
        (``stopped_by`` ``operator``). No answer within ``timeout_s``: a ``wait`` (the stage holds;
        the next step checks the guards again and asks again).
    """
    logger = get_run_logger()
    target = "champion" if decision.next_stage == "champion" else f"the {decision.next_stage} stage"
    description = (
        f"**Candidate `{version}` passed the {decision.stage} stage.** {decision.reason}\n\n"
        f"Approve to move it to {target}; reject to stop the rollout (the champion stays). "
        f"Without an answer in {timeout_s} s the stage holds and the next step asks again."
    )
    logger.info("waiting up to %d s for an operator to approve %s -> %s", timeout_s, version, decision.next_stage)
    try:
        answer = pause_flow_run(
            wait_for_input=Approval.with_initial_data(description=description, approve=True),
            timeout=timeout_s,
            poll_interval=poll_s,
            key=f"rollout-{version}-{decision.next_stage}",
        )
    except FlowPauseTimeout:
        _resume_own_run()  # the run goes on to record the wait instead of ending paused
        approval = {"verdict": "timed out", "by": None, "note": f"no answer within {timeout_s} s"}
        reason = f"waiting in {decision.stage}: no operator approval within {timeout_s} s to move to {target}"
        return replace(decision, action="wait", next_stage=None, reason=reason, approval=approval)
    approval = {"verdict": "approved" if answer.approve else "rejected", "by": answer.by, "note": answer.note}
    logger.info("operator %s %s %s: %s", answer.by or "?", approval["verdict"], version, answer.note)
    if answer.approve:
        return replace(decision, approval=approval)
    who = answer.by or "an operator"
    reason = f"stopped in {decision.stage}: {who} rejected the move to {target}: {answer.note or 'no note'}"
    return replace(decision, action="stop", next_stage=None, reason=reason, stopped_by=["operator"], approval=approval)


def _resume_own_run() -> None:
    from prefect.client.orchestration import get_client
    from prefect.context import FlowRunContext
    from prefect.states import Running

    context = FlowRunContext.get()
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(context.flow_run.id, Running(), force=True)
