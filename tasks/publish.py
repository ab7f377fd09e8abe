"""Publishing the challenger and recording the gate decision."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NONE
from prefect.runtime import flow_run
from prefect.transactions import get_transaction

from models.checkpoint import read_metadata
from refit.db import engine_for
from refit.gate import GateDecision
from refit.registry import Published, publish_checkpoint, record_decision, withdraw_unregistered
from refit.settings import Settings
from refit.snapshots import Snapshot
from refit.store import store_for
from tasks.data import IO_RETRIES
from tasks.training import Challenger


@task(name="upload-checkpoint", cache_policy=NONE, timeout_seconds=3600, **IO_RETRIES)
def upload(settings: Settings, challenger: Challenger) -> Published:
    """Publish the checkpoint (a retry after a crash completes it). Inside a transaction, a later
    failure withdraws it again (see :func:`withdraw`)."""
    published = publish_checkpoint(store_for(settings), challenger.folder, challenger.version, settings.model_name)
    get_run_logger().info("published %s to %s", published.version, published.uri)
    txn = get_transaction()
    if txn is not None:
        txn.set("settings", settings)
        txn.set("published_version", published.version)
    return published


@upload.on_rollback
def withdraw(txn) -> None:
    """The transaction failed after the upload: remove the version from the store unless the
    registry recorded it (then it stays, as every recorded version does)."""
    settings, version = txn.get("settings"), txn.get("published_version")
    removed = withdraw_unregistered(engine_for(settings), store_for(settings), version, settings.model_name)
    get_run_logger().warning("publish of %s rolled back: %d object(s) removed from the store", version, removed)


@task(name="record-decision", cache_policy=NONE, timeout_seconds=300, **IO_RETRIES)
def record(
    settings: Settings,
    published: Published,
    snapshot: Snapshot,
    challenger: Challenger,
    decision: GateDecision,
    champion: dict | None,
) -> str:
    """Record the version and the decision; promote by compare-and-swap. Returns the outcome:
    ``promoted``, ``rejected``, or ``superseded`` (another run promoted first)."""
    run_id = flow_run.get_id()
    outcome = record_decision(
        engine_for(settings),
        store_for(settings),
        published,
        snapshot_id=snapshot.id,
        task=settings.task,
        metrics={"dev": challenger.dev_metrics, "gate": decision.metrics},
        decision=decision,
        champion_version=champion["version"] if champion else None,
        config_hash=config_hash(challenger.folder),
        flow_run_id=run_id,
        actor=f"flow-run {run_id}" if run_id else "refit",
        model_name=settings.model_name,
    )
    get_run_logger().info("%s: %s", published.version, outcome)
    return outcome


def config_hash(folder: Path) -> str:
    """A short hash of the training config in a checkpoint (equal configs, equal hashes)."""
    config = read_metadata(folder).get("train_config", {})
    config = {k: v for k, v in config.items() if k != "base_model"}  # a path differs per machine
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]
