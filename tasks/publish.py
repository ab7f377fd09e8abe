"""Publishing the challenger and recording the gate decision.

Every version is published by :func:`upload`, whether it then becomes champion at once
(:func:`record`) or goes to a live rollout first (:func:`refit.tasks.rollout.start_rollout`), and
:func:`complete_artifacts` runs first: a candidate carries the same artifacts, and is served the
same way, as it would as champion.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NONE
from prefect.runtime import flow_run
from prefect.transactions import get_transaction

from refit.core.errors import CheckpointError
from refit.core.settings import Settings
from refit.data.db import engine_for
from refit.data.snapshots import Snapshot
from refit.gate.rule import GateDecision
from refit.models.checkpoint import read_metadata, write_metadata
from refit.models.predict import Predictor
from refit.models.quantize import INT8_FILE, RUNTIME, quantized
from refit.registry.promotion import record_decision
from refit.registry.store import store_for
from refit.registry.versions import Published, publish_checkpoint, withdraw_unregistered
from refit.tasks.data import IO_RETRIES
from refit.training.challenger import Challenger

log = logging.getLogger("refit.publish")


@task(name="upload-checkpoint", cache_policy=NONE, timeout_seconds=3600, **IO_RETRIES)
def upload(settings: Settings, challenger: Challenger) -> Published:
    """Publish the checkpoint (a retry after a crash completes it), its artifacts completed first
    (:func:`complete_artifacts`). Inside a transaction, a later failure withdraws it again (see
    :func:`withdraw`)."""
    made = complete_artifacts(settings, challenger.folder)
    if made is not None:
        get_run_logger().info(
            "int8 artifact made at publishing: largest difference %.4f on %d %s (tolerance %.4f)%s",
            made["max_abs_diff"],
            made["dev_rows"],
            made["source"],
            made["tolerance"],
            "" if made["file"] else ": over it, no file",
        )
    published = publish_checkpoint(store_for(settings), challenger.folder, challenger.version, settings.model_name)
    get_run_logger().info("published %s to %s", published.version, published.uri)
    txn = get_transaction()
    if txn is not None:
        txn.set("settings", settings)
        txn.set("published_version", published.version)
    return published


def complete_artifacts(settings: Settings, folder: Path) -> dict | None:
    """Make the artifacts every published version carries when the checkpoint came without them.

    That is the int8 artifact (``model.int8.onnx`` and its record in ``refit.json``, with
    ``REFIT_PUBLISH_INT8``). A checkpoint the training run measured keeps its record, with the
    file or without it (over the tolerance); one with no record (trained with the step off, or
    saved by other code) is quantized here and measured against its float self on its dev sample
    (``dev_sample.jsonl``; fixed texts for a checkpoint without one), as serving's own check does,
    and the file is saved when the largest difference is within ``REFIT_SERVE_QUANTIZE_TOLERANCE``.
    So a version has the same files whichever way it goes after publishing. A folder refit cannot
    load as a model (one holding other files than a model's) is published as it is, with a warning.

    Returns:
        The int8 record made here, or None when nothing was made.
    """
    folder = Path(folder)
    meta = read_metadata(folder)
    if not settings.publish_int8 or meta.get("int8") is not None:
        return None
    try:
        predictor = Predictor(folder, verify=False)
    except CheckpointError as exc:
        log.warning("no int8 artifact for %s: %s", folder, exc)
        return None
    tolerance = settings.serve_quantize_tolerance
    check = quantized(predictor, math.inf)
    close = check.int8_check
    record = {
        "file": None,
        "runtime": RUNTIME,
        "dev_rows": close["rows"],
        "source": close["source"],
        "max_abs_diff": close["max_abs_diff"],
        "mean_abs_diff": close["mean_abs_diff"],
        "label_agreement": close["label_agreement"],
        "tolerance": tolerance,
        "made": "at publishing",
    }
    if close["max_abs_diff"] <= tolerance:
        check.model.save(folder / INT8_FILE)
        record.update(file=INT8_FILE, bytes=(folder / INT8_FILE).stat().st_size)
    meta["int8"] = record
    write_metadata(folder, meta)
    return record


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
