"""The retrain loop: pull, drift, train, gate, publish, notify."""

from __future__ import annotations

from prefect import flow
from prefect.transactions import transaction

from refit.db import engine_for
from refit.registry import champion as current_champion
from refit.settings import load_settings
from tasks.approval import await_approval
from tasks.data import preflight, pull_snapshot
from tasks.drift import drift_check
from tasks.gate import gate_challenger, write_model_card
from tasks.notify import notify_failure, notify_summary
from tasks.publish import record, upload
from tasks.training import train_challenger


@flow(name="retrain", on_failure=[notify_failure], on_crashed=[notify_failure], log_prints=True)
def retrain(force: bool = False) -> dict:
    """One cycle of the loop.

    Args:
        force: retrain even when drift does not call for it (and reuse the last snapshot when no
            new feedback has arrived).

    Returns:
        A summary: outcome, snapshot, drift, gate decision, version and champion.
    """
    settings = load_settings()
    preflight(settings)
    snapshot = pull_snapshot(settings, force=force)
    if snapshot is None:
        summary = {"outcome": "no_new_data"}
        notify_summary(settings, summary)
        return summary

    champion = current_champion(engine_for(settings))
    drift = drift_check(settings, snapshot, champion, force=force)
    summary = {"snapshot": snapshot.as_dict(), "drift": drift, "champion": champion and champion["version"]}
    if drift["decision"] != "retrain":
        summary["outcome"] = "no_retrain"
        notify_summary(settings, summary)
        return summary

    challenger = train_challenger(settings, snapshot, champion)
    decision = gate_challenger(settings, snapshot, challenger, champion)
    if decision.promote and settings.gate_approval:
        decision = await_approval(
            decision, challenger.version, settings.gate_approval_timeout_s, settings.gate_approval_poll_s
        )
    write_model_card(challenger, decision, snapshot)
    with transaction():  # a failure to record withdraws the upload; the pointer moves last, in record
        published = upload(settings, challenger)
        outcome = record(settings, published, snapshot, challenger, decision, champion)

    summary.update(
        outcome=outcome,
        version=published.version,
        uri=published.uri,
        gate=decision.as_dict(),
        dev_metrics=challenger.dev_metrics,
        champion=published.version if outcome == "promoted" else champion and champion["version"],
    )
    notify_summary(settings, summary)
    return summary
