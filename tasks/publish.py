"""Publishing the challenger and recording the gate decision."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NONE

from refit.db import engine_for
from refit.gate import GateDecision
from refit.registry import Published, publish_checkpoint, record_decision
from refit.settings import Settings
from refit.snapshots import Snapshot
from refit.store import open_store
from tasks.data import IO_RETRIES
from tasks.training import Challenger


@task(name="upload-checkpoint", cache_policy=NONE, timeout_seconds=3600, **IO_RETRIES)
def upload(settings: Settings, challenger: Challenger) -> Published:
    published = publish_checkpoint(open_store(settings.store_url), challenger.folder, challenger.version)
    get_run_logger().info("published %s to %s", published.version, published.uri)
    return published


@task(name="record-decision", cache_policy=NONE, timeout_seconds=300, **IO_RETRIES)
def record(
    settings: Settings,
    published: Published,
    snapshot: Snapshot,
    challenger: Challenger,
    decision: GateDecision,
    champion: dict | None,
) -> None:
    record_decision(
        engine_for(settings),
        open_store(settings.store_url),
        published,
        snapshot_id=snapshot.id,
        task=settings.task,
        metrics={"dev": challenger.dev_metrics, "gate": decision.as_dict()},
        decision=decision,
        champion_version=champion["version"] if champion else None,
    )
