"""The drift check as a task: reference vs current, stored report, UI artifact, Slack on retrain."""

from __future__ import annotations

from datetime import datetime, timezone

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE

from refit.drift import RETRAIN, DriftPolicy, DriftResult, run_drift_check, signals_markdown
from refit.settings import Settings
from refit.snapshots import Snapshot


@task(name="check-drift", cache_policy=NONE, timeout_seconds=1800)
def drift_check(settings: Settings, snapshot: Snapshot, champion: dict | None, force: bool = False) -> dict:
    """Run the drift check for ``snapshot`` against ``champion`` and record it.

    Returns:
        The result's summary, with the ``drift_reports`` id and the report's URIs.
    """
    logger = get_run_logger()
    if champion is None:
        result = DriftResult(RETRAIN, ["no champion yet: the first model is trained unconditionally"], forced=force)
        result.current_rows = snapshot.total_rows
        result.policy = DriftPolicy.from_settings(settings).as_dict()
        summary = run_drift_check(settings, None, upto=snapshot.watermark_to, snapshot_id=snapshot.id, result=result)
    else:
        summary = run_drift_check(
            settings, champion, upto=snapshot.watermark_to, snapshot_id=snapshot.id, force=force,
            now=datetime.now(timezone.utc),
        )  # fmt: skip
    logger.info("drift decision %s: %s", summary["decision"], "; ".join(summary["reasons"]))
    create_markdown_artifact(
        key="drift-report",
        markdown=signals_markdown(DriftResult(**_result_fields(summary)), summary["html_uri"]),
        description="refit drift check",
    )
    return summary


def _result_fields(summary: dict) -> dict:
    fields = DriftResult.__dataclass_fields__
    return {k: v for k, v in summary.items() if k in fields}
