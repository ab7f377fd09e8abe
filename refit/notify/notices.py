"""What refit says: one pure function per event builds its :class:`~refit.notify.message.Notice`
from what the loop already returns (the drift summary, the gate decision, the run summary, a
rollback, a failed run).
"""

from __future__ import annotations

import math

from refit.core.quality import quality_lines, quality_signals
from refit.notify.message import Notice, escape_mrkdwn, fixed_table

MAX_TABLE_ROWS = 25
OUTCOME_TITLES = {
    "promoted": "refit: challenger promoted",
    "rejected": "refit: challenger rejected",
    "superseded": "refit: challenger superseded (another run promoted first)",
    "no_retrain": "refit: no retrain needed",
    "no_new_data": "refit: no new feedback",
    "rollout": "refit: challenger passed the gate, live rollout started",
}


def _num(value, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def drift_notice(
    summary: dict, champion_version: str | None, report_url: str | None = None, run_url: str | None = None
) -> Notice:
    """The drift check: decision, reasons, the signals table (drifted first) and the report link.

    Args:
        summary: the drift summary (``DriftResult.summary()`` plus ``html_uri``).
        champion_version: the champion the window was compared against.
        report_url: a link a browser can open (default: the report's store URI).
        run_url: the run's page in the Prefect UI.
    """
    decision = summary.get("decision")
    signals = sorted(summary.get("signals") or [], key=lambda s: (not s.get("drifted"), s.get("group") or ""))
    drifted = [s["column"] for s in signals if s.get("drifted")]
    lines = [
        f"*Champion*: `{champion_version}` · {summary.get('current_rows')} current vs "
        f"{summary.get('reference_rows')} reference rows · {len(drifted)} of {len(signals)} signals drifted",
        *[f"• {escape_mrkdwn(reason)}" for reason in summary.get("reasons") or []],
        *[f"• Quality: {escape_mrkdwn(line)}" for line in quality_lines(signals)],
    ]
    table = None
    if signals:
        rows = [
            [s["column"], s.get("group") or "", s.get("method") or "", _num(s.get("score")), _num(s.get("threshold"))]
            + ["YES" if s.get("drifted") else "no"]
            for s in signals[:MAX_TABLE_ROWS]
        ]
        table = fixed_table(["signal", "group", "method", "score", "threshold", "drifted"], rows)
        if len(signals) > MAX_TABLE_ROWS:
            table += f"\n… {len(signals) - MAX_TABLE_ROWS} more (not drifted)"
    report = report_url or summary.get("html_uri")
    title = "refit: drift detected, retraining" if decision == "retrain" else f"refit: drift check: {decision}"
    return Notice(
        kind="drift",
        title=title,
        lines=lines,
        fields={
            "decision": decision,
            "champion": champion_version,
            "drifted": drifted,
            "drift_share": summary.get("drift_share"),
            "current_rows": summary.get("current_rows"),
            "reference_rows": summary.get("reference_rows"),
            "report_id": summary.get("report_id"),
            "report_uri": summary.get("html_uri"),
            "signals": [
                {k: s.get(k) for k in ("column", "group", "method", "score", "threshold", "drifted")} for s in signals
            ],
            # the quality figures, each marked estimated (no labels) or realized (labelled rows)
            "quality": [
                {
                    "signal": s["column"],
                    "estimated": s["group"] == "estimated_performance",
                    **{k: (s.get("detail") or {}).get(k) for k in ("metric", "dev", "current", "interval", "realized")},
                }
                for s in quality_signals(signals)
                if s.get("score") is not None
            ],  # fmt: skip
        },
        table=table,
        links={"Drift report": report} if report else {},
        run_url=run_url,
    )


def retrain_started_notice(
    snapshot: dict,
    champion_version: str | None,
    drift: dict | None = None,
    forced: bool = False,
    run_url: str | None = None,
) -> Notice:
    """A challenger starts training: on which snapshot, against which champion, and why.

    Args:
        snapshot: the snapshot's row (id, watermarks, row counts).
        champion_version: the champion it is trained against (None: the first model).
        drift: the drift check that asked for the retrain (its drifted columns or reasons).
        forced: the operator forced the retrain.
        run_url: the flow run's page in the UI.

    Returns:
        The notice.
    """
    if champion_version is None:
        why = "no champion yet: the first model"
    elif forced:
        why = "forced by the operator"
    else:
        drift = drift or {}
        detail = ", ".join(drift.get("drifted_columns") or []) or "; ".join(drift.get("reasons") or [])
        why = "drift: " + (detail or "see the drift check")
    lines = [
        f"*Snapshot*: {snapshot.get('id')} (feedback ids {snapshot.get('watermark_from')}.."
        f"{snapshot.get('watermark_to')}, {snapshot.get('total_rows')} rows)",
        f"*Champion*: `{champion_version or 'none'}`",
        f"*Why*: {escape_mrkdwn(why)}",
    ]
    return Notice(
        kind="retrain_started",
        title="refit: retraining a challenger",
        lines=lines,
        fields={
            "snapshot_id": snapshot.get("id"),
            "watermark_from": snapshot.get("watermark_from"),
            "watermark_to": snapshot.get("watermark_to"),
            "rows": snapshot.get("total_rows"),
            "champion": champion_version,
            "forced": forced,
            "reason": why,
        },
        run_url=run_url,
    )


def gate_notice(decision: dict, challenger_version: str | None, run_url: str | None = None) -> Notice:
    """The gate decision: the metric per reference with its bootstrap interval, and failed slices.

    Args:
        decision: the gate's decision record.
        challenger_version: the challenger judged.
        run_url: the flow run's page in the UI.

    Returns:
        The notice: the verdict, its reasons and failed slices, and the comparisons as a table.
    """
    metric = decision["metric"]
    verdict = "PASSED" if decision["promote"] else "FAILED"
    level = f"{decision.get('confidence', 0.95):.0%}"
    rows = _comparison_rows(decision)
    header = ["vs", f"challenger {metric}", f"reference {metric}", "improvement", f"{level} interval", "passed"]
    return Notice(
        kind="gate",
        title=f"refit: gate {verdict} for {challenger_version}",
        lines=_gate_lines(decision, challenger_version),
        fields={
            "challenger": challenger_version,
            "promote": decision["promote"],
            "against": decision["against"],
            "metric": metric,
            "challenger_score": decision.get("challenger_score"),
            "reference_score": decision.get("champion_score"),
            "improvement": decision.get("improvement"),
            "interval": list(decision["interval"]) if decision.get("interval") else None,
            "confidence": decision.get("confidence"),
            "failed_slices": decision.get("failed_slices") or [],
            "dev_set": decision.get("dev_set"),
            "reason": decision["reason"],
        },
        table=fixed_table(header, rows) if rows else None,
        run_url=run_url,
    )


def _gate_lines(decision: dict, challenger_version: str | None) -> list[str]:
    """The gate notice's text: the verdict's reason, the dev set, the failed slices, the other reasons."""
    metric = decision["metric"]
    lines = [
        f"*Challenger* `{challenger_version}` vs {decision['against']}: {escape_mrkdwn(decision['reason'])}",
    ]
    if decision.get("dev_set") is not None:
        lines.append(f"*Dev set*: v{decision['dev_set']} ({decision.get('dev_rows')} rows)")
    checks = decision.get("slice_checks") or {}
    for name in decision.get("failed_slices") or []:
        c = checks.get(name)
        detail = f" ({c['rows']} rows: {metric} {_num(c.get('challenger'))} vs {_num(c.get('champion'))})" if c else ""
        lines.append(f"• worse on slice *{escape_mrkdwn(name)}*{detail}")
    for reason in decision.get("reasons") or []:
        lines.append(f"• {escape_mrkdwn(reason)}")
    return lines


def _comparison_rows(decision: dict) -> list[list[str]]:
    """The gate notice's table: one row per reference the challenger was compared with (or the
    one interval of a decision that records no comparisons)."""
    comparisons = decision.get("comparisons") or {}
    rows = [
        [
            name,
            _num(c.get("challenger")),
            _num(c.get("reference")),
            f"{c['point']:+.4f}",
            f"{c['low']:+.4f} to {c['high']:+.4f}",
            "yes" if c.get("passed") else "NO",
        ]
        for name, c in comparisons.items()
    ]
    if not rows and decision.get("interval"):
        low, high = decision["interval"]
        rows = [
            [
                decision["against"],
                _num(decision.get("challenger_score")),
                _num(decision.get("champion_score")),
                f"{decision['improvement']:+.4f}",
                f"{low:+.4f} to {high:+.4f}",
                "yes" if decision["promote"] else "NO",
            ]
        ]
    return rows


def outcome_notice(summary: dict, run_url: str | None = None) -> Notice:
    """What one retrain run ended with: promoted, rejected, superseded, no retrain, no new data."""
    drift = summary.get("drift") or {}
    gate = summary.get("gate") or {}
    lines = []
    if drift:
        drifted = ", ".join(drift.get("drifted_columns") or []) or "none"
        lines.append(f"*Drift*: {drift.get('decision')} (drifted: {drifted})")
        lines.extend(f"  • {escape_mrkdwn(reason)}" for reason in drift.get("reasons", []))
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
        lines.append(f"  • {escape_mrkdwn(gate['reason'])}")
    if summary.get("version"):
        lines.append(f"*Version*: `{summary['version']}`")
    if summary.get("champion"):
        lines.append(f"*Champion*: `{summary['champion']}`")
    rollout = summary.get("rollout") or {}
    if rollout.get("rollout_id"):
        lines.append(f"*Rollout*: {rollout['rollout_id']}, stage {rollout['stage']} (`refit rollout status`)")
    outcome = summary.get("outcome", "done")
    return Notice(
        kind=outcome,
        title=OUTCOME_TITLES.get(outcome, f"refit: {outcome}"),
        lines=lines,
        fields={
            "outcome": outcome,
            "version": summary.get("version"),
            "champion": summary.get("champion"),
            "uri": summary.get("uri"),
            "drift_decision": drift.get("decision"),
            "promote": gate.get("promote"),
            "metric": gate.get("metric"),
            "challenger_score": gate.get("challenger_score"),
            "reference_score": gate.get("champion_score"),
            "interval": list(gate["interval"]) if gate.get("interval") else None,
        },
        run_url=run_url,
    )


def rollback_notice(result: dict, reason: str, actor: str, run_url: str | None = None) -> Notice:
    """A rollback: which champion left, which came back, who and why.

    Args:
        result: what :func:`refit.registry.rollback` returned (``{"from": ..., "to": ...}``).
    """
    return Notice(
        kind="rolled_back",
        title=f"refit: rolled back to {result['to']}",
        lines=[
            f"*Champion*: `{result['from']}` → `{result['to']}`",
            f"*By*: {escape_mrkdwn(actor)}",
            f"*Reason*: {escape_mrkdwn(reason)}",
        ],
        fields={"from": result["from"], "to": result["to"], "actor": actor, "reason": reason},
        run_url=run_url,
    )


ROLLOUT_KINDS = {
    "canary": ("rollout_canary", "refit: rollout {id}: {version} moves to canary"),
    "promoted": ("rollout_promoted", "refit: rollout {id}: {version} promoted to champion"),
    "rolled_back": ("rollout_stopped", "refit: rollout {id} STOPPED: {version} rolled back"),
    "superseded": ("rollout_superseded", "refit: rollout {id}: {version} superseded"),
}


def rollout_notice(summary: dict, table: str | None = None, run_url: str | None = None) -> Notice:
    """A live rollout moved: to canary, to champion, stopped (the alert), or superseded.

    Args:
        summary: the rollout step's summary (``refit.rollout.report.step_summary``).
        table: the evidence as a fixed-width table, if any.
        run_url: the run's page in the Prefect UI.
    """
    outcome = summary["outcome"]
    kind, title = ROLLOUT_KINDS.get(outcome, (f"rollout_{outcome}", "refit: rollout {id}: " + outcome))
    lines = [
        f"*Candidate*: `{summary['version']}` · *champion*: `{summary['champion']}` · stage {summary['stage']}",
        f"*Reason*: {escape_mrkdwn(summary.get('reason') or '')}",
    ]
    if outcome == "rolled_back":
        lines.append("The champion pointer did not move; the candidate no longer scores live requests.")
    if summary.get("approval"):
        approval = summary["approval"]
        lines.append(f"*Operator*: {escape_mrkdwn(approval.get('by') or '?')} {approval.get('verdict')}")
    return Notice(
        kind=kind,
        title=title.format(id=summary["rollout_id"], version=summary["version"]),
        lines=lines,
        fields={
            "rollout_id": summary["rollout_id"],
            "outcome": outcome,
            "version": summary["version"],
            "champion": summary["champion"],
            "stage": summary["stage"],
            "reason": summary.get("reason"),
            "stopped_by": summary.get("stopped_by") or [],
        },
        table=table,
        run_url=run_url,
    )


def failure_notice(
    flow_name: str,
    run_name: str,
    error: str,
    task_name: str | None = None,
    run_url: str | None = None,
    state: str = "Failed",
) -> Notice:
    """A run that ended Failed or Crashed: the flow, the task that failed, the error.

    Args:
        flow_name: the flow's name.
        run_name: the flow run's name.
        error: the error, in words.
        task_name: the task that failed, when known.
        run_url: the flow run's page in the UI.
        state: the run's final state (``Failed`` or ``Crashed``).

    Returns:
        The notice.
    """
    lines = [f"*Flow*: {flow_name} / {run_name} ({state})"]
    if task_name:
        lines.append(f"*Task*: {task_name}")
    lines.append(f"*Error*: {escape_mrkdwn(error[:500])}")
    return Notice(
        kind="failure",
        title=f"refit: run {state.upper()}: {flow_name}",
        lines=lines,
        fields={"flow": flow_name, "flow_run": run_name, "task": task_name, "error": error[:2000], "state": state},
        run_url=run_url,
    )


# The Slack dicts directly, for callers that post to one URL themselves (refit/sim/backtest.py).
def run_summary_message(summary: dict) -> dict:
    """The Slack body of :func:`outcome_notice` for a run's summary."""
    return outcome_notice(summary).slack()


def failure_message(flow_name: str, run_name: str, error: str, run_url: str | None = None) -> dict:
    """The Slack body of :func:`failure_notice` for a failed run."""
    return failure_notice(flow_name, run_name, error, run_url=run_url).slack()
