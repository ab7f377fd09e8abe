"""Slack notifications through an incoming webhook (any URL that accepts Slack's JSON).

Messages are built as plain dicts (Slack blocks plus a ``text`` fallback) by pure functions, so
they are testable without Slack, and posted with one small function. A notification that fails
is logged and never fails the flow that sent it.
"""

from __future__ import annotations

import logging

import httpx

log = logging.getLogger("refit.notify")


def post(webhook_url: str | None, message: dict, timeout: float = 10.0) -> bool:
    """POST ``message`` as JSON; True when the receiver answered 2xx. Never raises."""
    if not webhook_url:
        return False
    try:
        response = httpx.post(webhook_url, json=message, timeout=timeout)
    except httpx.HTTPError as exc:
        log.warning("Slack notification failed: %s", type(exc).__name__)
        return False
    if response.status_code >= 300:
        log.warning("Slack notification refused: HTTP %s", response.status_code)
        return False
    return True


def _message(title: str, lines: list[str], kind: str) -> dict:
    body = "\n".join(lines)
    return {
        "text": f"{title}\n{body}",
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": title[:150]}},
            {"type": "section", "text": {"type": "mrkdwn", "text": body[:2900] or "-"}},
        ],
        "refit": {"kind": kind},
    }


def run_summary_message(summary: dict) -> dict:
    """What one retrain run did: drift, gate decision with both metrics, version."""
    drift = summary.get("drift") or {}
    gate = summary.get("gate") or {}
    lines = []
    if drift:
        drifted = ", ".join(drift.get("drifted_columns") or []) or "none"
        lines.append(f"*Drift*: {drift.get('decision')} (drifted: {drifted})")
        lines.extend(f"  • {reason}" for reason in drift.get("reasons", []))
    if gate:
        lines.append(
            f"*Gate*: {'PASSED' if gate['promote'] else 'FAILED'} vs {gate['against']}: "
            f"challenger {gate['metric']}={gate['challenger_score']:.4f}, "
            f"{gate['against']} {gate['metric']}={gate['champion_score']:.4f}"
        )
        if gate.get("interval"):
            low, high = gate["interval"]
            level = f"{gate.get('confidence', 0.95):.0%}"
            lines.append(f"  • improvement {gate['improvement']:+.4f}, {level} interval {low:+.4f} to {high:+.4f}")
        if gate.get("failed_slices"):
            lines.append(f"  • worse on slices: {', '.join(gate['failed_slices'])}")
        lines.append(f"  • {gate['reason']}")
    if summary.get("version"):
        lines.append(f"*Version*: `{summary['version']}`")
    if summary.get("champion"):
        lines.append(f"*Champion*: `{summary['champion']}`")
    outcome = summary.get("outcome", "done")
    titles = {
        "promoted": "refit: challenger promoted",
        "rejected": "refit: challenger rejected",
        "superseded": "refit: challenger superseded (another run promoted first)",
        "no_retrain": "refit: no retrain needed",
        "no_new_data": "refit: no new feedback",
    }
    return _message(titles.get(outcome, f"refit: {outcome}"), lines, outcome)


def failure_message(flow_name: str, run_name: str, error: str, run_url: str | None = None) -> dict:
    lines = [f"*Flow*: {flow_name} / {run_name}", f"*Error*: {error[:500]}"]
    if run_url:
        lines.append(f"<{run_url}|Open the run>")
    return _message("refit: run FAILED", lines, "failure")
