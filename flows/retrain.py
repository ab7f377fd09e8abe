"""The retrain loop: pull (or take the drift check's snapshot), drift, train, gate, publish, notify."""

from __future__ import annotations

from datetime import datetime

from prefect import flow
from prefect.transactions import transaction

from refit.core.settings import Strategy, load_settings
from refit.data.db import engine_for
from refit.registry.table import champion as current_champion
from refit.tasks.approval import await_approval
from refit.tasks.artifacts import retrain_summary_artifact, training_curve_artifact
from refit.tasks.data import load_snapshot, preflight, pull_snapshot
from refit.tasks.drift import drift_check, triggered_by
from refit.tasks.gate import gate_challenger, write_model_card
from refit.tasks.notify import notify_failure, notify_gate, notify_retrain_started, notify_summary
from refit.tasks.publish import record, upload
from refit.tasks.rollout import start_rollout
from refit.tasks.training import train_challenger


def _finish(settings, summary: dict) -> dict:
    """Every way out of a run: the outcome to Slack and a summary row to the UI."""
    notify_summary(settings, summary)
    retrain_summary_artifact(settings, summary)
    return summary


@flow(name="retrain", on_failure=[notify_failure], on_crashed=[notify_failure], log_prints=True, persist_result=True)
def retrain(
    force: bool = False,
    snapshot_id: int | None = None,
    drift_report_id: int | None = None,
    strategy: Strategy | None = None,
    warm_start: bool | None = None,
    train_processes: int | None = None,
    as_of: datetime | None = None,
) -> dict:
    """One cycle of the loop.

    Args:
        force: Retrain even when drift does not call for it (and reuse the last snapshot when no
            new feedback has arrived).
        snapshot_id: Train on this recorded snapshot instead of pulling new feedback; the drift
            trigger passes the snapshot its drift check decided on.
        drift_report_id: The drift report that triggered this run (recorded in the summary).
        strategy: Fine-tuning strategy for this run: full, freeze (train the head only) or lora.
            Empty: REFIT_STRATEGY.
        warm_start: Start from the champion (true) or from the base model (false). Empty:
            REFIT_WARM_START.
        train_processes: Processes that train the challenger data-parallel (DDP through torchrun:
            one per GPU, or gloo processes on a CPU worker), each on its share of every batch.
            Empty: REFIT_TRAIN_PROCESSES (default 1).
        as_of: The time the drift check is dated at, and judges confirmation and cooldown by.
            Empty: now. A backtest passes its simulated clock.

    Returns:
        A summary: outcome, snapshot, drift, gate decision, version and champion. With
        REFIT_ROLLOUT on, a challenger that passes the gate against a champion starts a live
        rollout instead of being promoted (outcome ``rollout``; see the ``rollout`` flow).
    """
    settings = load_settings().with_overrides(  # validated, like REFIT_*
        strategy=strategy, warm_start=warm_start, train_processes=train_processes
    )
    preflight(settings)
    champion = current_champion(engine_for(settings))
    if snapshot_id is not None:
        snapshot = load_snapshot(settings, snapshot_id)
        drift = triggered_by(drift_report_id, snapshot)
    else:
        snapshot = pull_snapshot(settings, force=force)
        if snapshot is None:
            return _finish(settings, {"outcome": "no_new_data"})
        drift = drift_check(settings, snapshot, champion, force=force, now=as_of)
    summary = {"snapshot": snapshot.as_dict(), "drift": drift, "champion": champion and champion["version"]}
    if drift["decision"] != "retrain":
        return _finish(settings, {**summary, "outcome": "no_retrain"})

    notify_retrain_started(settings, snapshot, champion, drift, force)
    challenger = train_challenger(settings, snapshot, champion)
    decision = gate_challenger(settings, snapshot, challenger, champion)
    if decision.promote and settings.gate_approval:
        decision = await_approval(
            decision, challenger.version, settings.gate_approval_timeout_s, settings.gate_approval_poll_s
        )
    notify_gate(settings, decision, challenger.version)
    write_model_card(challenger, decision, snapshot)
    rollout = None
    with transaction():  # a failure to record withdraws the upload; a pointer moves last, in the record step
        published = upload(settings, challenger)
        if decision.promote and champion is not None and settings.rollout != "off":
            rollout = start_rollout(settings, published, snapshot, challenger, decision, champion)
            outcome = rollout["outcome"]
        else:
            outcome = record(settings, published, snapshot, challenger, decision, champion)
    training_curve_artifact(settings, challenger, published)

    summary.update(
        outcome=outcome,
        version=published.version,
        uri=published.uri,
        gate=decision.as_dict(),
        dev_metrics=challenger.dev_metrics,
        train_seconds=challenger.train_seconds,
        stopped_by=challenger.stopped_by,
        train_samples=challenger.train_rows * challenger.epochs_run,
        unlabelled=challenger.unlabelled,
        champion=published.version if outcome == "promoted" else champion and champion["version"],
    )
    if rollout is not None:
        summary["rollout"] = rollout
    return _finish(settings, summary)


def describe_run(summary: dict) -> str:
    """The lines an operator reads after a run: outcome, drift, gate, challenger and champion.

    Args:
        summary: What :func:`retrain` returned.

    Returns:
        One line per part of the summary that the run reached.
    """
    lines = [f"outcome: {summary['outcome']}"]
    drift = summary.get("drift")
    if drift:
        lines.append(f"drift: {drift['decision']} - {'; '.join(drift['reasons'])}")
        if drift.get("html_uri"):
            lines.append(f"drift report: {drift['html_uri']}")
    gate = summary.get("gate")
    if gate:
        lines.append(f"gate: {gate['reason']}")
        if gate.get("kind") and gate.get("promote"):
            lines.append(f"model kind: {gate['kind']}")
    if summary.get("version"):
        lines.append(f"challenger: {summary['version']} at {summary['uri']}")
    unlabelled = summary.get("unlabelled") or {}
    if unlabelled.get("arms"):
        chosen = ", ".join(unlabelled.get("chosen") or ["plain"])
        lines.append(f"unlabelled rows: chose {chosen} on the validation fold")
    elif unlabelled.get("why"):
        lines.append(f"unlabelled rows: not used ({unlabelled['why']})")
    if summary.get("stopped_by") == "budget":
        lines.append("training stopped at REFIT_TRAIN_BUDGET_MINUTES, with the best weights so far")
    if summary.get("champion"):
        lines.append(f"champion: {summary['champion']}")
    rollout = summary.get("rollout") or {}
    if rollout.get("rollout_id"):
        lines.append(f"live rollout {rollout['rollout_id']}: {rollout['stage']} (see `refit rollout status`)")
    return "\n".join(lines)
