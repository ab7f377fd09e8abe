"""Loading validated feedback: COPY into a temporary staging table, then one set-based statement
inserts the rows whose ids are new (``ON CONFLICT (feedback_id) DO NOTHING``); conflicting
duplicates, in the batch or against stored rows, and the batch's rejections are written to
``quarantine``. Each batch commits in one transaction of its own.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field

import pandas as pd
import pyarrow as pa
from pyarrow import csv as pacsv
from sqlalchemy import Connection, Engine, text

from refit.data.db import INGEST_LOCK
from refit.data.read import Rejection

# The staging table's columns, in COPY order.
_COLUMNS = (
    "line_no", "feedback_id", "user_id", "item_id", "text", "satisfaction", "label",
    "created_at", "features", "content_hash",
)  # fmt: skip


def _copy_frame(conn, valid: pd.DataFrame) -> None:
    table = pa.Table.from_pandas(valid[list(_COLUMNS)], preserve_index=False)
    buffer = io.BytesIO()
    pacsv.write_csv(table, buffer, write_options=pacsv.WriteOptions(include_header=False, quoting_style="needed"))
    buffer.seek(0)
    cursor = conn.connection.dbapi_connection.cursor()
    cursor.copy_expert(f"COPY feedback_staging ({', '.join(_COLUMNS)}) FROM STDIN WITH (FORMAT csv)", buffer)


def _conflict_rejection(row: dict, why: str) -> Rejection:
    raw = {k: row[k] for k in ("feedback_id", "user_id", "item_id", "text", "satisfaction", "label")}
    raw["created_at"] = row["created_at"].isoformat()
    raw["features"] = json.loads(row["features"])
    return Rejection(int(row["line_no"]), "duplicate_conflict", why, raw, row["feedback_id"])


def split_repeats(valid: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """Within one batch, keep each id's first row; repeats with other content are conflicts.

    Returns:
        ``(first rows, conflicting repeats, identical repeats)``.
    """
    repeated = valid["feedback_id"].duplicated(keep="first")
    if not repeated.any():
        return valid, valid.iloc[0:0], 0
    first_hash = valid.loc[~repeated].set_index("feedback_id")["content_hash"]
    conflict = repeated & (valid["feedback_id"].map(first_hash) != valid["content_hash"])
    return valid.loc[~repeated], valid.loc[conflict], int((repeated & ~conflict).sum())


def load_batch(engine: Engine, source: str, valid: pd.DataFrame, rejections: list[Rejection]):
    """Write one batch in one transaction.

    Args:
        engine: the refit database.
        source: the file's name, stored with each quarantined row.
        valid: the batch's valid rows, as :func:`refit.data.validate.validate_batch` returns them.
        rejections: the batch's invalid rows.

    Returns:
        ``(accepted, duplicates, rejections)``: the rows inserted, the rows already stored (or
        repeated) with the same content, and every row quarantined (conflicts included).
    """
    with engine.begin() as conn:
        result = load_rows(conn, source, valid, rejections)
    return result.accepted, result.duplicates, result.rejections


@dataclass
class Loaded:
    """What :func:`load_rows` did with one batch."""

    accepted: int = 0  # rows inserted (edited rows included)
    duplicates: int = 0  # rows already stored with the same content
    edited: int = 0  # stored rows replaced by a new version (``replace=True`` only)
    rejections: list[Rejection] = field(default_factory=list)  # every row quarantined


def load_rows(
    conn: Connection,
    source: str,
    valid: pd.DataFrame,
    rejections: list[Rejection],
    *,
    replace: bool = False,
    origin: str | None = None,
) -> Loaded:
    """Write one batch inside the caller's transaction (see :func:`load_batch`).

    Args:
        conn: a connection inside a transaction on the refit database; the caller commits.
        source: the name stored with each quarantined row.
        valid: the batch's valid rows.
        rejections: the batch's invalid rows.
        replace: a stored id with other content is an edit, not a conflict: the stored version
            moves to ``feedback_history`` (it keeps its ``id``, so the snapshots that covered it
            still name it) and the new one is inserted with a new ``id``. A quarantined row with
            a stored id retires the stored version the same way (the source no longer holds it).
            Used by the Postgres source, whose rows are edited in place.
        origin: stored in ``feedback.origin`` (which source a row came from; None for files).

    Returns:
        The counts, and every row quarantined.
    """
    valid, repeats, duplicates = split_repeats(valid)
    rejections = rejections + [
        _conflict_rejection(row, "feedback_id repeated in the file with other content; the first is kept")
        for row in repeats.to_dict("records")
    ]
    out = Loaded(duplicates=duplicates)
    # Serialize ingests so that feedback ids (the watermark) become visible in order.
    conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": INGEST_LOCK})
    if replace:
        retired = [r.feedback_id for r in rejections if r.feedback_id]
        if retired:
            out.edited += _retire(conn, "feedback_id = ANY(:ids)", {"ids": retired})
    if len(valid):
        conn.execute(
            text(
                "CREATE TEMP TABLE feedback_staging (ord SERIAL, line_no INTEGER, feedback_id TEXT,"
                " user_id TEXT, item_id TEXT, text TEXT, satisfaction DOUBLE PRECISION, label TEXT,"
                " created_at TIMESTAMPTZ, features JSONB, content_hash TEXT) ON COMMIT DROP"
            )
        )
        _copy_frame(conn, valid)
        stored_conflicts: list[int] = []
        if replace:
            out.edited += _retire(
                conn,
                "feedback_id IN (SELECT s.feedback_id FROM feedback_staging s JOIN feedback f"
                " ON f.feedback_id = s.feedback_id WHERE f.content_hash <> s.content_hash)",
                {},
            )
        else:
            # An id already stored with other content keeps the stored row.
            stored_conflicts = (
                conn.execute(
                    text(
                        "SELECT s.ord FROM feedback_staging s JOIN feedback f ON f.feedback_id = s.feedback_id"
                        " WHERE f.content_hash <> s.content_hash"
                    )
                )
                .scalars()
                .all()
            )
        out.accepted = conn.execute(
            text(
                "INSERT INTO feedback (feedback_id, user_id, item_id, text, satisfaction, label, features,"
                " content_hash, created_at, origin)"
                " SELECT feedback_id, user_id, item_id, text, satisfaction, label, features, content_hash,"
                " created_at, :origin FROM feedback_staging WHERE NOT (ord = ANY(:conflicts)) ORDER BY ord"
                " ON CONFLICT (feedback_id) DO NOTHING"
            ),
            {"conflicts": stored_conflicts, "origin": origin},
        ).rowcount
        records = valid.to_dict("records") if stored_conflicts else []
        rejections += [
            _conflict_rejection(records[i - 1], "feedback_id already stored with other content; it is kept")
            for i in stored_conflicts
        ]
        out.duplicates += len(valid) - out.accepted - len(stored_conflicts)
    if rejections:
        conn.execute(
            text(
                "INSERT INTO quarantine (source, line_no, feedback_id, reason, detail, raw, raw_hash)"
                " VALUES (:source, :line_no, :feedback_id, :reason, :detail, CAST(:raw AS JSONB),"
                "  encode(sha256(convert_to(:reason || CAST(:raw AS JSONB)::text, 'UTF8')), 'hex'))"
                " ON CONFLICT (source, raw_hash) DO NOTHING"
            ),
            [
                {
                    "source": source,
                    "line_no": r.line_no,
                    "feedback_id": r.feedback_id,
                    "reason": r.reason,
                    "detail": r.detail,
                    "raw": json.dumps(r.raw, default=str),
                }
                for r in rejections
            ],
        )
    out.rejections = rejections
    return out


def _retire(conn: Connection, where: str, params: dict) -> int:
    """Move the stored feedback rows matching ``where`` to ``feedback_history``; their count."""
    return conn.execute(
        text(
            f"WITH gone AS (DELETE FROM feedback WHERE {where} RETURNING *)"
            " INSERT INTO feedback_history (feedback_pk, feedback_id, user_id, item_id, text, satisfaction, label,"
            " features, content_hash, created_at, ingested_at, origin)"
            " SELECT id, feedback_id, user_id, item_id, text, satisfaction, label, features, content_hash,"
            " created_at, ingested_at, origin FROM gone"
        ),
        params,
    ).rowcount


def stored_vector_dims(engine: Engine, name: str | None) -> dict[str, int]:
    """The length of the vector feature ``name`` in the newest stored row that has it, so a later
    file cannot mix lengths into what one model trains on (``{}`` when no stored row has it).

    Args:
        engine: the refit database.
        name: the vector feature (``REFIT_VECTOR_FEATURE``), or None.
    """
    if not name:
        return {}
    with engine.connect() as conn:
        dim = conn.execute(
            text(
                "SELECT jsonb_array_length(features -> :name) FROM feedback"
                " WHERE jsonb_typeof(features -> :name) = 'array' ORDER BY id DESC LIMIT 1"
            ),
            {"name": name},
        ).scalar()
    return {name: int(dim)} if dim else {}
