"""Tasks that read and write feedback."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NONE

from refit.db import engine_for, require_schema
from refit.ingest import IngestRules, IngestSummary, ingest_file
from refit.settings import Settings
from refit.snapshots import Snapshot, SplitConfig, latest_snapshot, take_snapshot
from refit.store import store_for


def retry_transient(task, task_run, state) -> bool:
    """Retry I/O unless the error is one that retrying cannot fix: a missing bucket, a bad
    setting, or a statement the database refused (only lost connections are retried)."""
    from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

    error = state.result(raise_on_failure=False)
    if isinstance(error, DBAPIError):
        return isinstance(error, (OperationalError, InterfaceError))
    return not getattr(error, "permanent", False)


IO_RETRIES = {"retries": 3, "retry_delay_seconds": [2, 5, 15], "retry_condition_fn": retry_transient}


@task(name="preflight", cache_policy=NONE, timeout_seconds=120, **IO_RETRIES)
def preflight(settings: Settings) -> None:
    """Check the database schema and the object store before any work is done."""
    require_schema(engine_for(settings))
    store_for(settings).check()


@task(name="ingest", cache_policy=NONE, timeout_seconds=3600)
def ingest(settings: Settings, path: Path) -> IngestSummary:
    # No retries: a failed ingest rolled back whole, and the operator should see why.
    return ingest_file(engine_for(settings), Path(path), IngestRules.from_settings(settings))


@task(name="pull-new-feedback", cache_policy=NONE, timeout_seconds=1800, **IO_RETRIES)
def pull_snapshot(settings: Settings, force: bool = False) -> Snapshot | None:
    """Snapshot the feedback new since the last watermark; with ``force`` and nothing new,
    the latest snapshot is reused."""
    engine = engine_for(settings)
    snapshot = take_snapshot(engine, SplitConfig.from_settings(settings))
    if snapshot is None and force:
        snapshot = latest_snapshot(engine)
    return snapshot
