"""The scheduled sync: pull what is new, edited or deleted in the team's Postgres table."""

from __future__ import annotations

from prefect import flow

from refit.core.settings import load_settings
from refit.tasks.notify import notify_failure
from refit.tasks.sync import sync


@flow(name="sync", on_failure=[notify_failure], on_crashed=[notify_failure], log_prints=True)
def sync_flow(reconcile: bool | None = None) -> dict:
    """Pull the feedback rows new or edited at the Postgres source (REFIT_SOURCE_URL) into refit.

    Args:
        reconcile: Also compare every source key with refit's copy, to forget rows deleted at the
            source: true, false, or empty for every REFIT_SOURCE_RECONCILE_HOURS.

    Returns:
        Rows read, new or edited, unchanged, quarantined and deleted; the cursor.
    """
    settings = load_settings()
    settings.require_source()
    return sync(settings, reconcile)
