"""The record of drift checks: a ``drift_reports`` row per check (with its report put in the
store), and the earlier checks that N-of-M confirmation and the cooldown read back."""

from __future__ import annotations

import json
from datetime import datetime

from sqlalchemy import text

from refit.drift.policy import DriftResult
from refit.drift.report import store_report


def drift_history(engine, champion_version: str | None, limit: int) -> tuple[list[dict], datetime | None]:
    """The earlier checks against this champion since the last retrain (newest first, at most
    ``limit``, insufficient-data checks left out), and when the last retrain was decided."""
    with engine.connect() as conn:
        last_retrain = conn.execute(
            text("SELECT max(created_at) FROM drift_reports WHERE decision = 'retrain'")
        ).scalar()
        rows = conn.execute(
            text(
                "SELECT id, created_at, decision, drift_detected FROM drift_reports"
                " WHERE champion_version IS NOT DISTINCT FROM :c AND decision <> 'insufficient_data'"
                " AND (CAST(:since AS TIMESTAMPTZ) IS NULL OR created_at > :since)"
                " ORDER BY id DESC LIMIT :n"
            ),
            {"c": champion_version, "since": last_retrain, "n": limit},
        ).mappings()
        history = [dict(r) for r in rows]
    return history, last_retrain


def save_drift_report(
    engine,
    store,
    result: DriftResult,
    snapshot_id: int | None,
    champion_version: str | None,
    created_at: datetime | None = None,
) -> dict:
    """Store the report (HTML and JSON) and a ``drift_reports`` row; return the row's id and URIs.

    ``created_at`` is the check's time (default: the database's now); confirmation and cooldown
    read it, so a replay on a simulated clock (``refit simulate``) passes its own.
    """
    with engine.begin() as conn:
        report_id = conn.execute(
            text(
                "INSERT INTO drift_reports (snapshot_id, champion_version, reference_rows, current_rows,"
                " drift_share, signals, decision, reasons, drift_detected, forced, policy, sampled_rows, created_at)"
                " VALUES (:s, :c, :r, :n, :share, CAST(:signals AS JSONB), :d, CAST(:reasons AS JSONB),"
                " :detected, :forced, CAST(:policy AS JSONB), CAST(:sampled AS JSONB),"
                " coalesce(CAST(:at AS TIMESTAMPTZ), now()))"
                " RETURNING id"
            ),
            {
                "s": snapshot_id,
                "c": champion_version,
                "r": result.reference_rows,
                "n": result.current_rows,
                "share": result.drift_share,
                "signals": json.dumps(result.signals, default=str),
                "d": result.decision,
                "reasons": json.dumps(result.reasons),
                "detected": result.drift_detected,
                "forced": result.forced,
                "policy": json.dumps(result.policy, default=str),
                "sampled": json.dumps(result.sampled_rows),
                "at": created_at,
            },
        ).scalar_one()
        # inside the transaction, as before: a report the store refuses rolls its row back
        html_uri, json_uri = store_report(store, result, report_id)
        if result.html is not None:
            conn.execute(
                text("UPDATE drift_reports SET html_uri = :h, json_uri = :j WHERE id = :i"),
                {"h": html_uri, "j": json_uri, "i": report_id},
            )
    return {"id": report_id, "html_uri": html_uri, "json_uri": json_uri}
