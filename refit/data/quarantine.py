"""Reading and requeueing quarantined feedback."""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import pandas as pd
from sqlalchemy import Engine, text

from refit.data.load import load_batch, stored_vector_dims
from refit.data.read import RawBatch
from refit.data.schema import load_schema
from refit.data.validate import IngestRules, validate_batch


def quarantine_report(engine: Engine, limit: int = 10) -> dict:
    """Counts by reason (rows not yet requeued) and the latest rows."""
    with engine.connect() as conn:
        counts = conn.execute(
            text(
                "SELECT reason, count(*) AS n FROM quarantine WHERE requeued_at IS NULL"
                " GROUP BY reason ORDER BY n DESC, reason"
            )
        ).all()
        latest = conn.execute(
            text(
                "SELECT id, source, line_no, feedback_id, reason, detail, quarantined_at FROM quarantine"
                " WHERE requeued_at IS NULL ORDER BY id DESC LIMIT :n"
            ),
            {"n": limit},
        ).mappings()
        return {"counts": {r.reason: r.n for r in counts}, "latest": [dict(r) for r in latest]}


def requeue_quarantine(engine: Engine, settings) -> dict:
    """Re-validate every quarantined row with the current settings; rows that pass are loaded
    (duplicates skipped as in any ingest) and marked requeued; the others stay where they are.

    Rows that earlier releases quarantined as ``missing_target`` (text without a target) pass now,
    and are stored unlabelled.

    Returns:
        ``requeued`` (rows that passed), ``accepted`` (rows stored) and ``still_quarantined``.
    """
    rules = IngestRules.from_settings(settings)
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT id, line_no, raw FROM quarantine WHERE requeued_at IS NULL"
                " AND reason NOT IN ('malformed_row', 'invalid_utf8', 'duplicate_conflict') ORDER BY id"
            )
        ).all()
    if not rows:
        return {"requeued": 0, "accepted": 0, "still_quarantined": _open_count(engine)}
    frame = pd.DataFrame.from_records([r.raw for r in rows])
    batch = RawBatch(frame, np.array([r.id for r in rows]))
    vector_dims = stored_vector_dims(engine, rules.vector_feature)
    schema = load_schema(engine)  # a row quarantined for its type passes once the schema is updated
    kinds = dict(schema.scalar_types) if schema else {}
    if schema:
        vector_dims.update({n: d for n, d in schema.vector_dims.items() if n == rules.vector_feature})
    valid, rejections = validate_batch(batch, rules, datetime.now(timezone.utc), kinds, vector_dims)
    passed = [int(i) for i in valid["line_no"]]  # line_no carries the quarantine id here
    accepted, _duplicates, _rejected = load_batch(engine, "requeue", valid, [])
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE quarantine SET requeued_at = now() WHERE id = ANY(:ids)"),
            {"ids": passed},
        )
    return {"requeued": len(passed), "accepted": accepted, "still_quarantined": _open_count(engine)}


def _open_count(engine: Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(text("SELECT count(*) FROM quarantine WHERE requeued_at IS NULL")).scalar()
