"""What an operator sees of a run in the Prefect UI, beyond the drift table, the gate decision and
the model card (made where those are decided): the training curve and a one-line summary.

The markdown and rows are built by plain functions; the tasks only create the artifacts.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_image_artifact, create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NONE

from refit.core.settings import Settings
from refit.models.checkpoint import read_metadata
from refit.models.curves import CURVE_FILE
from refit.notify.links import browser_url, current_run_url
from refit.registry.versions import Published
from refit.training.challenger import Challenger

SUMMARY_KEY = "retrain-summary"
CURVE_KEY = "training-curve"
HISTORY_KEY = "training-history"


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def history_markdown(
    version: str, history: list[dict], best_epoch: int | None, image_url: str | None, png_uri: str | None
) -> str:
    """The per-epoch training history as a markdown table, with the curve image or its address.

    Args:
        version: the challenger's version.
        history: ``refit.json``'s per-epoch records.
        best_epoch: the epoch whose weights were kept (marked in the table).
        image_url: a URL a browser can fetch for the curve PNG, if there is one.
        png_uri: where the PNG is stored (shown when no browser URL exists).
    """
    lines = [f"### Training curve of `{version}`", ""]
    if image_url:
        lines += [f"![training curve]({image_url})", ""]
    elif png_uri:
        lines += [f"The curve PNG is stored at `{png_uri}` (no browser link for this store).", ""]
    if history:
        columns = list(dict.fromkeys(key for record in history for key in record))
        lines += ["| " + " | ".join(columns) + " | best |", "|" + "---|" * (len(columns) + 1)]
        for record in history:
            best = "**yes**" if record.get("epoch") == best_epoch else ""
            lines.append("| " + " | ".join(_cell(record.get(c)) for c in columns) + f" | {best} |")
    return "\n".join(lines)


def summary_row(summary: dict, run_url: str | None = None, at: datetime | None = None) -> dict:
    """One retrain run as one table row: when, outcome, drift, gate numbers, versions, the run.

    Args:
        summary: the retrain flow's summary.
        run_url: the flow run's page in the UI.
        at: when (default: now).

    Returns:
        The row, by column.
    """
    drift = summary.get("drift") or {}
    gate = summary.get("gate") or {}
    interval = gate.get("interval")
    return {
        "at": (at or datetime.now(timezone.utc)).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "outcome": summary.get("outcome"),
        "drift": drift.get("decision"),
        "drifted": ", ".join(drift.get("drifted_columns") or []),
        "challenger": summary.get("version"),
        "metric": gate.get("metric"),
        "challenger_score": gate.get("challenger_score"),
        "reference": gate.get("against"),
        "reference_score": gate.get("champion_score"),
        "improvement": gate.get("improvement"),
        "interval": f"{interval[0]:+.4f} to {interval[1]:+.4f}" if interval else None,
        "failed_slices": ", ".join(gate.get("failed_slices") or []),
        "champion": summary.get("champion"),
        "run": run_url,
    }


def summary_line(row: dict) -> str:
    """The row as one sentence (the artifact's description)."""
    text = f"{row['outcome']}"
    if row["challenger"]:
        text += f": {row['challenger']}"
    if row["metric"] and row["challenger_score"] is not None:
        text += f" {row['metric']} {row['challenger_score']:.4f} vs {row['reference']} {_cell(row['reference_score'])}"
    if row["drift"]:
        text += f"; drift {row['drift']}"
    return text + f"; champion {row['champion'] or 'none'}"


@task(name="training-curve-artifact", cache_policy=NONE, timeout_seconds=120)
def training_curve_artifact(
    settings: Settings, challenger: Challenger, published: Published | None = None
) -> str | None:
    """The training curve in the UI: an image artifact when the published PNG has a browser URL (an
    ``s3://`` store presigns one), and the per-epoch table either way (call it after ``upload``).

    Returns:
        The image's URL, or None when only the table could be shown.
    """
    folder = Path(challenger.folder)
    meta = read_metadata(folder)
    png_uri = f"{published.uri}/{CURVE_FILE}" if published and (folder / CURVE_FILE).exists() else None
    image_url = browser_url(settings, png_uri)
    if image_url:
        create_image_artifact(image_url=image_url, key=CURVE_KEY, description=f"training curve of {challenger.version}")
    create_markdown_artifact(
        key=HISTORY_KEY,
        markdown=history_markdown(
            challenger.version, meta.get("history") or [], meta.get("best_epoch"), image_url, png_uri
        ),
        description=f"per-epoch training history of {challenger.version}",
    )
    get_run_logger().info("training curve artifact: %s", "image and table" if image_url else "table only")
    return image_url


@task(name="retrain-summary-artifact", cache_policy=NONE, timeout_seconds=60)
def retrain_summary_artifact(settings: Settings, summary: dict) -> dict:
    """One row per retrain run under the key ``retrain-summary`` (the key's history in the UI is
    the list of runs).

    Args:
        settings: refit's settings (the UI's address, for the run's link).
        summary: the flow's final summary; call it on every return path.

    Returns:
        The row written.
    """
    row = summary_row(summary, current_run_url(settings))
    create_table_artifact(table=[row], key=SUMMARY_KEY, description=summary_line(row))
    return row
