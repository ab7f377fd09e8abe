"""How a drift check's quality signals read: whether each figure was estimated (no labels
needed) or realized (on labelled rows), the metric against dev, and the interval.

Here, below every layer that reports a check (the drift report, the Prefect artifact, Slack), so
they all say it in the same words.
"""

from __future__ import annotations

QUALITY_GROUPS = ("performance", "estimated_performance")
SOURCES = {
    "performance": "realized on the window's labelled rows",
    "estimated_performance": "estimated without labels, on the window's feedback",
    "estimated_performance_served": "estimated without labels, on the answers refit serve logged",
}


def quality_signals(signals: list[dict]) -> list[dict]:
    """The quality signals among a check's signals (realized and estimated), in report order."""
    return [s for s in signals or [] if s.get("group") in QUALITY_GROUPS]


def quality_line(signal: dict) -> str:
    """One quality signal in one line: estimated or realized, the metric against dev, the interval.

    An unmeasured signal says why (too few rows, a champion that cannot be calibrated).
    """
    column = signal["column"]
    source = SOURCES.get(column, column)
    detail = signal.get("detail") or {}
    if signal.get("score") is None:
        return f"{column} ({source}): not measured ({detail.get('note', 'no reason recorded')})"
    metric, dev, current = detail.get("metric"), detail.get("dev"), detail.get("current")
    verdict = "drifted" if signal.get("drifted") else "within bounds"
    if column == "performance":
        low, high = detail.get("interval") or (None, None)
        rows = detail.get("current_rows")
        return (
            f"{column} ({source}): {metric} {current:.3f} on {rows} labelled rows against {dev:.3f} on dev,"
            f" loss {signal['score']:+.1%} (interval of the loss {low:+.3f} to {high:+.3f}); {verdict}"
        )
    low, high = detail.get("interval") or (None, None)
    loss_low = (detail.get("loss_interval") or [None])[0]
    text_ = (
        f"{column} ({source}): {metric} {current:.3f} [{low:.3f}, {high:.3f}] on {detail.get('current_rows')} rows"
        f" against {dev:.3f} on dev, loss {signal['score']:+.1%} (lower bound of the loss {loss_low:+.3f});"
        f" shift correction {current - detail.get('without_shift', current):+.3f}"
        f" (domain AUC {detail.get('domain_auc', float('nan')):.2f}); {verdict}"
    )
    if detail.get("realized") is not None:
        text_ += (
            f"; realized {detail['realized']:.3f} on {detail.get('labelled_rows')} labelled rows,"
            f" gap {detail.get('gap', 0.0):+.3f}"
        )
    return text_


def quality_lines(signals: list[dict]) -> list[str]:
    """Every quality signal of a check as one line (see :func:`quality_line`)."""
    return [quality_line(s) for s in quality_signals(signals)]
