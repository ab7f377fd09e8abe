"""Tasks that read and write feedback."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NONE
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from refit.core.settings import Settings
from refit.data.db import engine_for, require_schema
from refit.data.ingest import IngestSummary, ingest_file
from refit.data.schema import new_features_notice
from refit.data.snapshots import Snapshot, SplitConfig, get_snapshot, latest_snapshot, take_snapshot
from refit.data.validate import IngestRules
from refit.registry.store import open_store, store_for
from refit.tasks import RESUMABLE


def retry_transient(task, task_run, state) -> bool:
    """Retry I/O unless the error is one that retrying cannot fix: a missing bucket, a bad
    setting, or a statement the database refused (only lost connections are retried)."""
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
    # No retries: each batch commits whole, re-ingesting adds nothing, and the operator should see why.
    summary = ingest_file(engine_for(settings), Path(path), IngestRules.from_settings(settings))
    if summary.new_features:
        get_run_logger().warning(new_features_notice(summary.new_features))
    return summary


@task(name="fetch-feedback-file", cache_policy=NONE, timeout_seconds=1800, **IO_RETRIES)
def fetch_source(source: str, dest: Path) -> Path:
    """A local copy of ``source``: a path on this worker as it is, an ``s3://bucket/key`` object
    (boto3's own endpoint and credentials) downloaded into ``dest``."""
    if not source.startswith("s3://"):
        return Path(source)
    folder, _, name = source.rpartition("/")
    store = open_store(folder)
    local = Path(dest) / name
    store.get_file(name, local)
    return local


@task(name="pull-new-feedback", cache_policy=RESUMABLE, timeout_seconds=1800, **IO_RETRIES)
def pull_snapshot(settings: Settings, force: bool = False) -> Snapshot | None:
    """Snapshot the feedback new since the last watermark; with ``force`` and nothing new,
    the latest snapshot is reused."""
    engine = engine_for(settings)
    snapshot = take_snapshot(engine, SplitConfig.from_settings(settings))
    if snapshot is None and force:
        snapshot = latest_snapshot(engine)
    return snapshot


@task(name="load-snapshot", cache_policy=NONE, timeout_seconds=120, **IO_RETRIES)
def load_snapshot(settings: Settings, snapshot_id: int) -> Snapshot:
    """The recorded snapshot ``snapshot_id`` (the one a drift check decided on)."""
    return get_snapshot(engine_for(settings), snapshot_id)
