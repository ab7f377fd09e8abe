"""Forgetting a user: their feedback is deleted, the act is recorded, affected models are named."""

from __future__ import annotations

import hashlib
import json

from sqlalchemy import Engine, text


def forget_user(engine: Engine, user_id: str) -> dict:
    """Delete every feedback row of ``user_id`` and record it in ``forget_log``.

    The log keeps a hash of the user id, not the id. Model versions whose snapshot covered any
    of the deleted rows are returned and recorded as affected (they were trained or gated on them).
    """
    with engine.begin() as conn:
        deleted = (
            conn.execute(text("DELETE FROM feedback WHERE user_id = :u RETURNING id"), {"u": user_id}).scalars().all()
        )
        affected: list[str] = []
        if deleted:
            affected = (
                conn.execute(
                    text(
                        "SELECT v.version FROM model_versions v JOIN dataset_snapshots s ON s.id = v.snapshot_id"
                        " WHERE s.watermark_to >= :first ORDER BY v.created_at"
                    ),
                    {"first": min(deleted)},
                )
                .scalars()
                .all()
            )
        conn.execute(
            text(
                "INSERT INTO forget_log (user_hash, rows_deleted, affected_versions) VALUES (:h, :n, CAST(:a AS JSONB))"
            ),
            {"h": hashlib.sha256(user_id.encode()).hexdigest(), "n": len(deleted), "a": json.dumps(affected)},
        )
    return {"rows_deleted": len(deleted), "affected_versions": affected}
