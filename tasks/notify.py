"""Notifications as tasks (one per event of a run) and a flow hook for failures.

None of them ever fails the flow: delivery problems are logged by :mod:`refit.notify`, and a
task here returns which targets got the message.
"""

from __future__ import annotations

import contextlib
import traceback

from prefect import Task, get_run_logger, task
from prefect.cache_policies import NONE

from refit.core.settings import Settings, load_settings
from refit.data.snapshots import Snapshot
from refit.gate.rule import GateDecision
from refit.notify.delivery import send
from refit.notify.links import current_run_url, flow_run_url, ui_base
from refit.notify.message import Notice
from refit.notify.notices import (
    failure_notice,
    gate_notice,
    outcome_notice,
    retrain_started_notice,
    rollback_notice,
    rollout_notice,
)
from refit.rollout.report import evidence_table


def _send(settings: Settings, notice: Notice) -> dict[str, bool]:
    results = send(settings, notice)
    get_run_logger().info("notified %s: %s", notice.kind, results or "no target configured")
    return results


@task(name="notify-summary", cache_policy=NONE, timeout_seconds=60)
def notify_summary(settings: Settings, summary: dict) -> dict[str, bool]:
    """The run's outcome: promoted, rejected, superseded, no retrain or no new data."""
    return _send(settings, outcome_notice(summary, current_run_url(settings)))


@task(name="notify-retrain-started", cache_policy=NONE, timeout_seconds=60)
def notify_retrain_started(
    settings: Settings, snapshot: Snapshot, champion: dict | None, drift: dict | None = None, force: bool = False
) -> dict[str, bool]:
    """A challenger starts training (call it right before ``train_challenger``)."""
    notice = retrain_started_notice(
        snapshot.as_dict(), champion and champion["version"], drift, force, current_run_url(settings)
    )
    return _send(settings, notice)


@task(name="notify-gate", cache_policy=NONE, timeout_seconds=60)
def notify_gate(settings: Settings, decision: GateDecision | dict, challenger_version: str) -> dict[str, bool]:
    """The gate decision with its metrics table, intervals and failed slices."""
    decision = decision.as_dict() if isinstance(decision, GateDecision) else decision
    return _send(settings, gate_notice(decision, challenger_version, current_run_url(settings)))


@task(name="notify-rollback", cache_policy=NONE, timeout_seconds=60)
def notify_rollback(settings: Settings, result: dict, reason: str, actor: str) -> dict[str, bool]:
    """A rollback.

    Args:
        settings: refit's settings (the targets).
        result: what :func:`refit.registry.promotion.rollback` returned.
        reason: why, as the operator gave it.
        actor: who rolled back.

    Returns:
        Whether each target got it, by target name.
    """
    return _send(settings, rollback_notice(result, reason, actor, current_run_url(settings)))


@task(name="notify-rollout", cache_policy=NONE, timeout_seconds=60)
def notify_rollout(settings: Settings, summary: dict) -> dict[str, bool]:
    """A live rollout moved (to canary, to champion) or was stopped, with its evidence table.

    Args:
        settings: refit's settings (the targets).
        summary: the rollout step's summary (:func:`refit.rollout.report.step_summary`).

    Returns:
        Whether each target got it, by target name.
    """
    return _send(settings, rollout_notice(summary, evidence_table(summary), current_run_url(settings)))


def failed_task_name(exc: BaseException | None) -> str | None:
    """The Prefect task whose function raised an error, read from its traceback.

    Args:
        exc: the error (None: no error).

    Returns:
        The innermost module-level task in the traceback, or None when the error came from the
        flow's own code.
    """
    if exc is None:
        return None
    name = None
    for frame, _ in traceback.walk_tb(exc.__traceback__):
        candidate = frame.f_globals.get(frame.f_code.co_name)
        if isinstance(candidate, Task) and getattr(candidate.fn, "__code__", None) is frame.f_code:
            name = candidate.name
    return name


def notify_failure(flow, flow_run, state) -> None:
    """Flow hook for Failed and Crashed runs: the flow, the failed task, the error, the run's link."""
    try:
        settings = load_settings()
    except Exception:  # a broken configuration is the run's own error, reported by Prefect
        return
    try:
        error = state.message or "unknown error"
        exc = state.result(raise_on_failure=False)
        task_name = failed_task_name(exc if isinstance(exc, BaseException) else None)
        notice = failure_notice(
            flow.name,
            flow_run.name,
            error,
            task_name=task_name,
            run_url=flow_run_url(ui_base(settings), flow_run.id),
            state=state.name or "Failed",
        )
    except Exception:  # the hook must not raise, whatever the state holds
        notice = failure_notice(flow.name, flow_run.name, str(getattr(state, "message", "unknown error")))
    delivered = send(settings, notice)
    if any(delivered.values()):
        _confirm_alerted(flow, flow_run)


# The server-side automation (deployments/automations.yaml) alerts on a failed run only when this
# confirmation does not follow: one alert per failed run, from the hook when it could run.
ALERTED_EVENT = "refit.run.alerted"


def _confirm_alerted(flow, flow_run) -> None:
    from prefect.events import emit_event

    # without the confirmation the automation alerts too: a duplicate, not a loss
    with contextlib.suppress(Exception):
        emit_event(
            event=ALERTED_EVENT,
            resource={"prefect.resource.id": f"prefect.flow-run.{flow_run.id}", "prefect.resource.name": flow_run.name},
            related=[
                {
                    "prefect.resource.id": f"prefect.flow.{flow_run.flow_id}",
                    "prefect.resource.role": "flow",
                    "prefect.resource.name": flow.name,
                }
            ],
        )
