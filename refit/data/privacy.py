"""Forgetting feedback: a user's rows, or rows deleted at a source, are deleted with their earlier
versions, the act is recorded in ``forget_log``, and the models trained on them are named."""

from __future__ import annotations

import hashlib
import json

from sqlalchemy import Connection, Engine, text


def forget_user(engine: Engine, user_id: str) -> dict:
    """Delete every feedback row of ``user_id`` and record it in ``forget_log``.

    The log keeps a hash of the user id, not the id. Model versions whose snapshot covered any
    of the deleted rows are returned and recorded as affected (they were trained or gated on them).
    """
    with engine.begin() as conn:
        result = forget_rows(
            conn, "user_id = :u", {"u": user_id}, reason="user", user_hash=hashlib.sha256(user_id.encode()).hexdigest()
        )
    result.pop("keys")
    return result


def forget_rows(
    conn: Connection,
    where: str,
    params: dict,
    *,
    reason: str,
    user_hash: str | None = None,
    keys_hash: str | None = None,
) -> dict:
    """Delete the feedback rows matching ``where`` (and the earlier versions of those ids in
    ``feedback_history``) inside the caller's transaction, and record it in ``forget_log``.

    Args:
        conn: a connection inside a transaction on the refit database.
        where: an SQL condition on ``feedback``'s columns (``user_id``, ``feedback_id``, ...).
        params: its parameters.
        reason: ``user`` (``refit forget``) or ``source_delete`` (gone from the source).
        user_hash: the hash of the forgotten user's id.
        keys_hash: the hash of the deleted keys (default for a source delete: of the sorted ids).

    Returns:
        ``rows_deleted`` and the ``affected_versions``.
    """
    deleted = conn.execute(text(f"DELETE FROM feedback WHERE {where} RETURNING id, feedback_id"), params).all()
    if keys_hash is None and reason != "user" and deleted:
        keys_hash = hashlib.sha256("\x1f".join(sorted(row.feedback_id for row in deleted)).encode()).hexdigest()
    old = conn.execute(text(f"DELETE FROM feedback_history WHERE {where} RETURNING feedback_pk"), params)
    old = old.scalars().all()
    affected: list[str] = []
    ids = [row.id for row in deleted] + list(old)
    if ids:
        affected = (
            conn.execute(
                text(
                    "SELECT v.version FROM model_versions v JOIN dataset_snapshots s ON s.id = v.snapshot_id"
                    " WHERE s.watermark_to >= :first ORDER BY v.created_at"
                ),
                {"first": min(ids)},
            )
            .scalars()
            .all()
        )
    if not deleted and reason != "user":
        return {"rows_deleted": 0, "affected_versions": [], "keys": []}  # a reconciliation that found nothing
    conn.execute(
        text(
            "INSERT INTO forget_log (user_hash, keys_hash, reason, rows_deleted, affected_versions)"
            " VALUES (:h, :k, :r, :n, CAST(:a AS JSONB))"
        ),
        {"h": user_hash, "k": keys_hash, "r": reason, "n": len(deleted), "a": json.dumps(affected)},
    )
    return {"rows_deleted": len(deleted), "affected_versions": affected, "keys": [row.feedback_id for row in deleted]}
