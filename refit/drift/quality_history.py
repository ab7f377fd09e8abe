"""The champion's quality over time: every recorded check's quality figure read back from
``drift_reports``, and drawn as a PNG per champion (the estimated metric with its interval, the
realized one where labels came in, and the dev value they are measured against).
"""

from __future__ import annotations

import io
from datetime import datetime

from sqlalchemy import text

from refit.core.quality import quality_signals


def quality_history(engine, champion_version: str) -> list[dict]:
    """Each recorded check against ``champion_version``, oldest first: its time and its quality
    signals' metric, value, interval and dev value (checks without one are left out)."""
    query = text(
        "SELECT id, created_at, signals FROM drift_reports WHERE champion_version = :v ORDER BY created_at, id"
    )
    with engine.connect() as conn:
        rows = conn.execute(query, {"v": champion_version}).mappings().all()
    points = []
    for row in rows:
        for signal in quality_signals(row["signals"]):
            detail = signal.get("detail") or {}
            if signal.get("score") is None or detail.get("current") is None:
                continue
            points.append(
                {
                    "report_id": row["id"],
                    "at": row["created_at"],
                    "column": signal["column"],
                    "metric": detail.get("metric"),
                    "value": detail["current"],
                    "interval": detail.get("interval") if signal["column"] != "performance" else None,
                    "realized": detail["current"] if signal["column"] == "performance" else detail.get("realized"),
                    "dev": detail.get("dev"),
                    "drifted": bool(signal.get("drifted")),
                }
            )
    return points


def plot_quality(points: list[dict], champion_version: str) -> bytes:
    """The champion's quality over time as a PNG: each estimate with its interval as a band, the
    realized value where labels came in, and the dev value as a line.

    Raises:
        ValueError: there is no point to plot.
    """
    if not points:
        raise ValueError(f"no quality figure recorded for {champion_version} yet")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4), dpi=100)
    styles = {"estimated_performance": ("tab:blue", "estimated (feedback)"),
              "estimated_performance_served": ("tab:purple", "estimated (served answers)")}  # fmt: skip
    for column, (colour, label) in styles.items():
        mine = [p for p in points if p["column"] == column]
        if not mine:
            continue
        times = [_time(p["at"]) for p in mine]
        ax.plot(times, [p["value"] for p in mine], "o-", color=colour, label=label)
        lows = [p["interval"][0] if p["interval"] else p["value"] for p in mine]
        highs = [p["interval"][1] if p["interval"] else p["value"] for p in mine]
        ax.fill_between(times, lows, highs, color=colour, alpha=0.2, label=f"{label}, interval")
    realized = [p for p in points if p["column"] == "performance"]
    if realized:
        ax.plot([_time(p["at"]) for p in realized], [p["value"] for p in realized], "s", color="tab:green",
                label="realized (labelled rows)")  # fmt: skip
    dev = next((p["dev"] for p in reversed(points) if p["dev"] is not None), None)
    if dev is not None:
        ax.axhline(dev, color="grey", linestyle="--", label="dev set")
    metric = next((p["metric"] for p in points if p["metric"]), "metric")
    ax.set_title(f"{champion_version}: {metric} per drift check")
    ax.set_ylabel(metric)
    ax.legend(loc="best", fontsize="small")
    fig.autofmt_xdate()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def _time(moment) -> datetime:
    return moment if isinstance(moment, datetime) else datetime.fromisoformat(str(moment))


def store_quality_plot(engine, store, champion_version: str) -> str | None:
    """Draw the champion's quality history and put it at ``reports/quality/<version>.png``.

    Returns:
        The plot's URI, or None when no check has measured the champion's quality yet.
    """
    points = quality_history(engine, champion_version)
    if not points:
        return None
    key = f"reports/quality/{champion_version}.png"
    store.put(key, plot_quality(points, champion_version))
    return store.uri(key)
