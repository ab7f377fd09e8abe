"""The drift check as a task: reference vs current, stored report, UI artifact."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE

from refit.db import engine_for
from refit.drift import (
    RETRAIN,
    DriftPolicy,
    DriftResult,
    check_drift,
    reference_and_current,
    save_drift_report,
    signals_markdown,
)
from refit.settings import Settings
from refit.snapshots import Snapshot, SplitConfig
from refit.store import open_store


@task(name="check-drift", cache_policy=NONE, timeout_seconds=1800)
def drift_check(settings: Settings, snapshot: Snapshot, champion: dict | None) -> dict:
    """Run the drift check for ``snapshot`` and record it; returns the result's summary."""
    logger = get_run_logger()
    if champion is None:
        result = DriftResult(RETRAIN, ["no champion yet: the first model is trained unconditionally"])
        result.current_rows = snapshot.total_rows
    else:
        reference, current = reference_and_current(
            engine_for(settings), SplitConfig.from_settings(settings), champion, upto=snapshot.watermark_to
        )
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
