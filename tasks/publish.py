"""Publishing the challenger and recording the gate decision."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NONE
from prefect.runtime import flow_run
from prefect.transactions import get_transaction

from refit.core.settings import Settings
from refit.data.db import engine_for
from refit.data.snapshots import Snapshot
from refit.gate.rule import GateDecision
from refit.models.checkpoint import read_metadata
from refit.registry.promotion import record_decision
from refit.registry.store import store_for
from refit.registry.versions import Published, publish_checkpoint, withdraw_unregistered
from refit.tasks.data import IO_RETRIES
from refit.training.challenger import Challenger


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


# No Prefect retries here: inside the publish transaction a failed attempt rolls the transaction
# back (the upload is withdrawn) even when a retry then succeeds, which left a promoted champion
# with no files (found by `refit simulate --chaos`). A lost connection is retried in the task.
RECORD_RETRY_DELAYS = (2, 5, 15)


@task(name="record-decision", cache_policy=NONE, timeout_seconds=300)
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
    outcome = retried_in_task(
        lambda: record_decision(
            engine_for(settings),
            store_for(settings),
            published,
            snapshot_id=snapshot.id,
            task=settings.task,
            metrics=recorded_metrics(challenger, decision),
            decision=decision,
            champion_version=champion["version"] if champion else None,
            config_hash=config_hash(challenger.folder),
            flow_run_id=flow_run.get_id(),
            actor=run_actor(),
            model_name=settings.model_name,
        ),
        f"recording {published.version}",
    )
    get_run_logger().info("%s: %s", published.version, outcome)
    return outcome


def retried_in_task(call, what: str):
    """``call()``, tried again after each of ``RECORD_RETRY_DELAYS`` when a lost connection or
    an unreachable store rolled the attempt back whole (a permanent error is raised at once)."""
    import time

    from sqlalchemy.exc import InterfaceError, OperationalError

    from refit.core.errors import StoreError

    for attempt, delay in enumerate((*RECORD_RETRY_DELAYS, None)):
        try:
            return call()
        except (OperationalError, InterfaceError, StoreError) as exc:  # the attempt rolled back whole
            if delay is None or getattr(exc, "permanent", False):
                raise
            get_run_logger().warning("%s failed (%s); retry %d in %d s", what, type(exc).__name__, attempt + 1, delay)
            time.sleep(delay)


def recorded_metrics(challenger: Challenger, decision: GateDecision) -> dict:
    """What the registry keeps of a challenger's metrics: its dev metrics, the gate's, its kind."""
    return {"dev": challenger.dev_metrics, "gate": decision.metrics, "kind": decision.kind}


def run_actor() -> str:
    """Who acts, for the promotion log: this flow run, or ``refit`` outside one."""
    run_id = flow_run.get_id()
    return f"flow-run {run_id}" if run_id else "refit"


def config_hash(folder: Path) -> str:
    """A short hash of the training config in a checkpoint (equal configs, equal hashes)."""
    config = read_metadata(folder).get("train_config", {})
    config = {k: v for k, v in config.items() if k != "base_model"}  # a path differs per machine
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]
