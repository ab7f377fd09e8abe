"""Tasks that read and write feedback."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NONE

from refit.db import engine_for
from refit.ingest import IngestRules, IngestSummary, ingest_file
from refit.settings import Settings
from refit.snapshots import Snapshot, SplitConfig, latest_snapshot, take_snapshot

IO_RETRIES = {"retries": 3, "retry_delay_seconds": [2, 5, 15]}


@task(name="ingest", cache_policy=NONE, timeout_seconds=3600)
def ingest(settings: Settings, path: Path) -> IngestSummary:
    # No retries: a failed ingest rolled back whole, and the operator should see why.
    return ingest_file(engine_for(settings), Path(path), IngestRules.from_settings(settings))


@task(name="pull-new-feedback", cache_policy=NONE, timeout_seconds=1800, **IO_RETRIES)
def pull_snapshot(settings: Settings, force: bool = False) -> Snapshot | None:
    """Snapshot the feedback new since the last watermark; with ``force`` and nothing new,
    the latest snapshot is reused."""
    engine = engine_for(settings)
    snapshot, _window = take_snapshot(engine, SplitConfig.from_settings(settings))
    if snapshot is None and force:
        snapshot = latest_snapshot(engine)
    return snapshot
