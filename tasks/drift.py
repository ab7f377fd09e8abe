"""The drift check as a task: reference vs current, stored report, UI artifact."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE

from refit.db import engine_for
from refit.drift import RETRAIN, DriftPolicy, DriftResult, check_drift, save_drift_report, signals_markdown
from refit.settings import Settings
from refit.snapshots import Snapshot, SplitConfig, get_snapshot, read_feedback, snapshot_rows
from refit.store import open_store


def reference_and_current(settings: Settings, snapshot: Snapshot, champion: dict):
    """The champion's training rows, and every row that arrived after the champion's snapshot."""
    engine = engine_for(settings)
    split = SplitConfig.from_settings(settings)
    trained_on = get_snapshot(engine, champion["snapshot_id"])
    reference = snapshot_rows(engine, trained_on, split)
    reference = reference[reference["split"] == "train"]
    current = read_feedback(engine, after=trained_on.watermark_to, upto=snapshot.watermark_to)
    return reference, current


@task(name="check-drift", cache_policy=NONE, timeout_seconds=1800)
def drift_check(settings: Settings, snapshot: Snapshot, champion: dict | None) -> dict:
    """Run the drift check for ``snapshot`` and record it; returns the result's summary."""
    logger = get_run_logger()
    if champion is None:
        result = DriftResult(RETRAIN, ["no champion yet: the first model is trained unconditionally"])
        result.current_rows = snapshot.total_rows
    else:
        reference, current = reference_and_current(settings, snapshot, champion)
        result = check_drift(reference, current, DriftPolicy.from_settings(settings), settings.task)
    saved = save_drift_report(
        engine_for(settings),
        open_store(settings.store_url),
        result,
        snapshot.id,
        champion["version"] if champion else None,
    )
    logger.info("drift decision %s: %s", result.decision, "; ".join(result.reasons))
    create_markdown_artifact(
        key="drift-report", markdown=signals_markdown(result, saved["html_uri"]), description="refit drift check"
    )
    return {**result.summary(), "report_id": saved["id"], "html_uri": saved["html_uri"], "json_uri": saved["json_uri"]}
