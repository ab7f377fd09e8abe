"""What people read about a rollout step: the evidence table (champion and candidate side by side),
the guards and exit conditions, and the step's outcome. The same text goes to the Prefect artifact,
``refit rollout status`` and the alert, from the step's summary (plain dicts, so a stored summary
renders the same way)."""

from __future__ import annotations

from refit.notify.message import fixed_table
from refit.rollout.decision import RolloutDecision
from refit.rollout.evidence import Evidence


def step_summary(rollout: dict, evidence: Evidence | None, decision: RolloutDecision | None, outcome: str) -> dict:
    """One rollout step as a plain dict: the rollout, what was decided, what happened, the evidence.

    Args:
        rollout: the rollout's row as the step read it.
        evidence: the stage's evidence.
        decision: what :func:`refit.rollout.decision.decide` (or the operator) said.
        outcome: what the step did: ``wait``, ``canary``, ``promoted``, ``rolled_back``,
            ``superseded`` or ``raced`` (another step acted first).
    """
    return {
        "outcome": outcome,
        "rollout_id": rollout["id"],
        "version": rollout["version"],
        "champion": rollout["champion_version"],
        "stage": rollout["stage"],
        "started_at": rollout["started_at"],
        "stage_started_at": rollout["stage_started_at"],
        "action": decision.action if decision else None,
        "next_stage": decision.next_stage if decision else None,
        "reason": decision.reason if decision else rollout.get("reason"),
        "stopped_by": decision.stopped_by if decision else [],
        "approval": decision.approval if decision else {},
        "decision": decision.as_dict() if decision else None,
        "evidence": evidence.as_dict() if evidence else None,
    }


def _num(value, digits: int = 4) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _pct(value) -> str:
    return "-" if value is None else f"{value:.1%}"


def _ms(value) -> str:
    return "-" if value is None else f"{value:.1f}"


def _timed(model: dict) -> str:
    sizes = model.get("call_sizes") or []
    return f"{model.get('timed') or 0} ({', '.join(str(n) for n in sizes) or '-'})"


def evidence_rows(evidence: dict) -> tuple[list[str], list[list[str]]]:
    """The evidence as a table: one row per measure, a column per model.

    Args:
        evidence: :meth:`Evidence.as_dict` (or the same read back from JSON).

    Returns:
        The header and the rows.
    """
    champion, candidate = evidence["champion"], evidence["candidate"]
    metric = evidence["metric"]
    both = (champion, candidate)
    rows = [
        ["request items scored", *(str(m["items"]) for m in both)],
        ["requests", *(str(m["requests"]) for m in both)],
        ["error rate", *(_pct(m["error_rate"]) for m in both)],
        ["p50 latency (ms)", *(_ms(m["p50_ms"]) for m in both)],
        ["p99 latency (ms)", *(_ms(m["p99_ms"]) for m in both)],
    ]
    # The latency rows are per item, on calls of the sizes both models made (older evidence: none).
    if any(m.get("timed") is not None for m in both):
        rows.append(["items timed (call sizes)", *(_timed(m) for m in both)])
    rows += [
        ["joined labels", *(str(m["labels"]) for m in both)],
        [f"live {metric}", *(_num((m["live"] or {}).get(metric)) for m in both)],
    ]
    comparison = evidence.get("comparison")
    if comparison:
        rows.append(
            [
                f"live {metric}, {comparison['rows']} paired labels",
                _num(comparison["champion"]),
                _num(comparison["candidate"]),
            ]
        )
    header = ["measure", f"champion {champion['version']}", f"candidate {candidate['version']}"]
    return header, rows


def comparison_line(evidence: dict) -> str:
    """The paired numbers in one line: agreement, and the bootstrap on the joined labels."""
    what = "mean |difference| of satisfaction" if evidence["task"] == "regression" else "share of differing labels"
    parts = [f"{evidence['paired']} request items scored by both"]
    if evidence.get("disagreement") is not None:
        parts.append(f"{what} {evidence['disagreement']:.3f}")
    comparison = evidence.get("comparison")
    if comparison:
        parts.append(
            f"candidate minus champion on {comparison['rows']} joined labels: {comparison['point']:+.4f} "
            f"({comparison['confidence']:.0%} interval {comparison['low']:+.4f} to {comparison['high']:+.4f}; "
            "positive is better)"
        )
    return "; ".join(parts)


def check_rows(decision: dict) -> list[list[str]]:
    """The guards and exit conditions as table rows: name, kind, status, detail."""
    return [
        [c["name"], c["kind"], c["status"].upper() if c["status"] == "failed" else c["status"], c["detail"]]
        for c in decision.get("checks") or []
    ]


def _heading(summary: dict) -> str:
    evidence = summary.get("evidence") or {}
    hours = evidence.get("hours_in_stage")
    since = f", {hours:.1f} h in stage" if hours is not None else ""
    return (
        f"rollout {summary['rollout_id']}: candidate {summary['version']} vs champion {summary['champion']}, "
        f"stage {summary['stage']}{since}"
    )


def evidence_markdown(summary: dict) -> str:
    """The step as markdown (the Prefect artifact): outcome and reason, evidence, checks."""
    lines = [f"### {_heading(summary)}", "", f"**{summary['outcome']}**: {summary['reason']}", ""]
    evidence = summary.get("evidence")
    if evidence:
        header, rows = evidence_rows(evidence)
        lines += [_md_row(header), "|---|---|---|", *(_md_row(row) for row in rows)]
        lines += ["", comparison_line(evidence), ""]
    checks = check_rows(summary.get("decision") or {})
    if checks:
        lines += [_md_row(["check", "kind", "status", "detail"]), "|---|---|---|---|", *(_md_row(r) for r in checks)]
    return "\n".join(lines).rstrip()


def _md_row(cells: list[str]) -> str:
    return "| " + " | ".join(str(cell).replace("|", "\\|") for cell in cells) + " |"


def evidence_text(summary: dict) -> str:
    """The step as plain text for a terminal (``refit rollout status``)."""
    lines = [_heading(summary), f"{summary['outcome']}: {summary['reason']}"]
    evidence = summary.get("evidence")
    if evidence:
        header, rows = evidence_rows(evidence)
        lines += ["", fixed_table(header, rows), comparison_line(evidence)]
    checks = check_rows(summary.get("decision") or {})
    if checks:
        lines += ["", fixed_table(["check", "kind", "status", "detail"], checks)]
    return "\n".join(lines)


def evidence_table(summary: dict) -> str | None:
    """The evidence table alone, fixed-width (for a chat message's code block)."""
    evidence = summary.get("evidence")
    if not evidence:
        return None
    header, rows = evidence_rows(evidence)
    return fixed_table(header, rows) + "\n" + comparison_line(evidence)
