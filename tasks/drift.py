"""The drift check as a task: reference vs current, stored report, UI artifact, Slack on retrain.

The library records the check; announcing a retrain is this module's (library code posts nothing).
"""

from __future__ import annotations

from datetime import datetime, timezone

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE
from prefect.events import emit_event

from refit.core.settings import Settings
from refit.data.db import engine_for
from refit.data.snapshots import Snapshot
from refit.drift.check import run_drift_check
from refit.drift.policy import INSUFFICIENT, RETRAIN, DriftPolicy, DriftResult
from refit.drift.quality_history import store_quality_plot
from refit.drift.report import signals_markdown
from refit.notify.delivery import send
from refit.notify.links import browser_url, current_run_url, report_link
from refit.notify.notices import drift_notice
from refit.registry.store import store_for
from refit.tasks import RESUMABLE

# The event the retrain deployment's trigger listens for (deployments/prefect.yaml).
DRIFT_EVENT = "refit.drift.detected"


@task(name="check-drift", cache_policy=RESUMABLE, timeout_seconds=1800)
def drift_check(
    settings: Settings, snapshot: Snapshot, champion: dict | None, force: bool = False, now: datetime | None = None
) -> dict:
    """Run the drift check for ``snapshot`` against ``champion`` and record it, dated ``now``
    (default: the clock; a backtest passes its simulated time, which confirmation and cooldown read).

    Returns:
        The result's summary, with the ``drift_reports`` id and the report's URIs.
    """
    logger = get_run_logger()
    if champion is None:
        result = first_model_decision(settings, snapshot, force)
        result.current_rows = snapshot.total_rows
        result.policy = DriftPolicy.from_settings(settings).as_dict()
        summary = run_and_announce(
            settings, None, upto=snapshot.watermark_to, snapshot_id=snapshot.id, now=now, result=result
        )
    else:
        summary = run_and_announce(
            settings, champion, upto=snapshot.watermark_to, snapshot_id=snapshot.id, force=force,
            now=now or datetime.now(timezone.utc),
        )  # fmt: skip
    logger.info("drift decision %s: %s", summary["decision"], "; ".join(summary["reasons"]))
    markdown = signals_markdown(DriftResult(**_result_fields(summary)), report_link(settings, summary["html_uri"]))
    if champion is not None:
        # the champion's quality over every check so far, estimated and realized, as a picture
        plot_uri = store_quality_plot(engine_for(settings), store_for(settings), champion["version"])
        summary["quality_plot_uri"] = plot_uri
        if plot_uri:
            markdown += f"\n\n[{champion['version']}'s quality over time (PNG)]({report_link(settings, plot_uri)})"
    # a browser cannot open s3:// or file:// URIs: links are presigned URLs when the store has them
    create_markdown_artifact(key="drift-report", markdown=markdown, description="refit drift check")
    return summary


def first_model_decision(settings: Settings, snapshot: Snapshot, force: bool) -> DriftResult:
    """The decision before any champion: train the first model, given enough labelled rows to
    train on (unlabelled rows are in no split)."""
    labelled, needed = snapshot.labelled_rows, DriftPolicy.from_settings(settings).min_rows
    if labelled < needed:
        why = (
            f"insufficient data: no champion yet, and the feedback holds {labelled} labelled rows"
            f" ({snapshot.unlabelled_rows} unlabelled); the first model needs {needed} (REFIT_DRIFT_MIN_ROWS)"
        )
        return DriftResult(INSUFFICIENT, [why], forced=force)
    return DriftResult(RETRAIN, ["no champion yet: the first model is trained unconditionally"], forced=force)


def run_and_announce(settings: Settings, champion: dict | None, **check) -> dict:
    """Run and record the drift check, then announce a retrain it decided: what this module's task
    and ``refit drift`` run.

    Args:
        settings: refit's settings.
        champion: the champion's registry row, or None before the first model.
        **check: :func:`refit.drift.check.run_drift_check`'s keyword arguments (``upto``,
            ``snapshot_id``, ``force``, ``now``, ``result``, ``render``).

    Returns:
        The result's summary, with the ``drift_reports`` id and the report's URIs.
    """
    summary = run_drift_check(settings, champion, **check)
    announce_retrain(settings, summary, champion)
    return summary


def announce_retrain(settings: Settings, summary: dict, champion: dict | None) -> bool:
    """Send the drift notice (to Slack and the JSON webhook) when the check decided to retrain on
    its signals: not a forced decision, and not the first model (no champion).

    Args:
        settings: refit's settings (the notification targets, the store for a browser link).
        summary: the recorded check's summary, with ``html_uri``.
        champion: the champion's registry row the check compared against, if any.

    Returns:
        Whether a notice was sent.
    """
    signal_driven = summary["decision"] == RETRAIN and summary["drift_detected"] and not summary["forced"]
    if not signal_driven or champion is None:
        return False
    version = champion["version"] if champion else None
    # the signals table and a browser link to the report, to Slack and the JSON webhook
    report_url = browser_url(settings, summary["html_uri"])
    send(settings, drift_notice(summary, version, report_url, current_run_url(settings)))
    return True


def _result_fields(summary: dict) -> dict:
    fields = DriftResult.__dataclass_fields__
    return {k: v for k, v in summary.items() if k in fields}


@task(name="announce-drift", cache_policy=NONE, timeout_seconds=60, retries=2, retry_delay_seconds=[2, 5])
def announce_drift(settings: Settings, snapshot: Snapshot, drift: dict) -> bool:
    """Emit ``refit.drift.detected`` about the model, with the snapshot and the report in its payload.

    The resource is the model (``refit.model.<name>``), so the trigger's window debounces every
    drift event about one model, whichever snapshot it names.
    """
    event = emit_event(
        event=DRIFT_EVENT,
        resource={
            "prefect.resource.id": f"refit.model.{settings.model_name}",
            "prefect.resource.name": settings.model_name,
        },
        payload={
            "snapshot_id": snapshot.id,
            "watermark": snapshot.watermark_to,
            "drift_report_id": drift.get("report_id"),
            "report_uri": drift.get("html_uri"),
            "reasons": drift.get("reasons", []),
        },
    )
    get_run_logger().info("announced %s for snapshot %s: %s", DRIFT_EVENT, snapshot.id, event and event.id)
    return event is not None


def triggered_by(drift_report_id: int | None, snapshot: Snapshot) -> dict:
    """The drift part of a retrain started by a drift event: the check already decided."""
    return {
        "decision": "retrain",
        "reasons": [f"drift report {drift_report_id} on snapshot {snapshot.id} decided to retrain"],
        "report_id": drift_report_id,
        "triggered": True,
    }
