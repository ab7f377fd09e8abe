"""The scheduled drift check: pull new feedback, compare it with the champion's data, and announce
a retrain decision as the ``refit.drift.detected`` event, which the retrain deployment's trigger
turns into a run on the GPU pool."""

from __future__ import annotations

from prefect import flow, get_run_logger

from refit.core.settings import load_settings
from refit.data.db import engine_for
from refit.registry.table import champion as current_champion
from refit.tasks.data import preflight, pull_snapshot
from refit.tasks.drift import announce_drift, drift_check
from refit.tasks.notify import notify_failure
from refit.tasks.sync import sync


@flow(
    name="drift-check", on_failure=[notify_failure], on_crashed=[notify_failure], log_prints=True, persist_result=True
)
def drift_check_flow(force: bool = False) -> dict:
    """Check the feedback new since the last snapshot for drift against the champion (with a
    Postgres source configured, after syncing it).

    Args:
        force: Record a retrain decision even without drift (an operator's override); the event
            is emitted as for real drift.

    Returns:
        The drift summary (decision, reasons, signals, report id), and whether the event was sent.
    """
    settings = load_settings()
    preflight(settings)
    if settings.source_url:
        # Check what the source holds now: sync first (it waits for a scheduled sync that is
        # running). A source that is down is alerted by the sync deployment; the check goes on
        # with what the last sync brought in.
        state = sync(settings, return_state=True)
        if not state.is_completed():
            get_run_logger().warning("sync failed, checking what earlier syncs brought in: %s", state.message)
    snapshot = pull_snapshot(settings)
    if snapshot is None:
        return {"decision": "no_new_data", "announced": False}
    drift = drift_check(settings, snapshot, current_champion(engine_for(settings)), force=force)
    announced = drift["decision"] == "retrain" and announce_drift(settings, snapshot, drift)
    return {**drift, "snapshot_id": snapshot.id, "announced": bool(announced)}
