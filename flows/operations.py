"""The operator's flows beside the loop: ingest a feedback file, roll the champion back, refresh
the dev set. Each is a deployment in deployments/prefect.yaml, started from the UI with a form."""

from __future__ import annotations

import getpass
import tempfile

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from refit.core.errors import InputError
from refit.core.settings import load_settings
from refit.data.db import engine_for
from refit.data.devset import refresh_devset
from refit.data.snapshots import SplitConfig
from refit.registry.promotion import rollback as roll_back
from refit.registry.store import store_for
from refit.tasks.data import fetch_source, ingest, preflight
from refit.tasks.notify import notify_failure, notify_rollback


@flow(name="ingest", on_failure=[notify_failure], on_crashed=[notify_failure], log_prints=True)
def ingest_flow(source: str) -> dict:
    """Load one feedback file into Postgres; bad rows go to quarantine with a reason.

    Args:
        source: A CSV, JSONL or Parquet file: a path on the worker, or an s3://bucket/key object.

    Returns:
        Counts of accepted, duplicate and quarantined rows, with the reasons.
    """
    settings = load_settings()
    preflight(settings)
    with tempfile.TemporaryDirectory(prefix="refit-ingest-") as scratch:
        summary = ingest(settings, fetch_source(source, scratch)).as_dict()
    get_run_logger().info("%s: %s accepted, %s quarantined", source, summary["accepted"], summary["quarantined"])
    return summary


@flow(name="rollback", on_failure=[notify_failure], on_crashed=[notify_failure], log_prints=True)
def rollback_flow(reason: str, version: str | None = None, actor: str | None = None) -> dict:
    """Make an earlier champion the champion again, after checking its files against their checksums.

    Args:
        reason: Why; recorded in the promotion log.
        version: The version to restore. Empty: the previous champion.
        actor: Who is rolling back (recorded). Empty: this flow run.

    Returns:
        The versions before and after: {"from": ..., "to": ...}.
    """
    if not reason.strip():
        raise InputError("say why: the reason goes in the promotion log")
    settings = load_settings()
    preflight(settings)
    actor = actor or f"prefect:{flow_run.get_name() or getpass.getuser()}"
    moved = roll_back(
        engine_for(settings), store_for(settings), version, reason, actor, settings.work_dir, settings.model_name
    )
    get_run_logger().info("rolled back %s -> %s: %s", moved["from"], moved["to"], reason)
    notify_rollback(settings, moved, reason, actor)
    return moved


@flow(name="devset-refresh", on_failure=[notify_failure], on_crashed=[notify_failure], log_prints=True)
def devset_refresh_flow(reason: str = "manual refresh") -> dict:
    """Grow the frozen dev set to every dev-split row ingested so far, as a new recorded version.
    The gate never does this on its own.

    Args:
        reason: Why the dev set grows (recorded).

    Returns:
        The new dev set: version, rows, watermark, hash.
    """
    settings = load_settings()
    preflight(settings)
    devset = refresh_devset(engine_for(settings), SplitConfig.from_settings(settings), reason)
    get_run_logger().info("dev set v%s: %s rows", devset.version, devset.rows)
    return devset.as_dict()
