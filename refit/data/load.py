"""Loading validated feedback with COPY. When no row of the batch has an id already stored (a
first ingest, a first sync, new rows), the batch is copied straight into ``feedback``: nothing
can conflict. Otherwise it is copied into a temporary staging table, and one set-based statement
inserts the rows whose ids are new (``ON CONFLICT (feedback_id) DO NOTHING``); conflicting
duplicates, in the batch or against stored rows, and the batch's rejections are written to
``quarantine``. Each batch commits in one transaction of its own, under the ingest lock, so no
other load can store one of its ids between the check and the COPY.

A row stored unlabelled (no target) whose label arrives later, in a row with the same id and the
same text, is an edit, not a conflict: the unlabelled version moves to ``feedback_history`` and
the labelled one is inserted, as a sync stores an edited source row.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import psycopg2.errors
import pyarrow as pa
import pyarrow.compute as pc
from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import IntegrityError

from refit.data.db import INGEST_LOCK
from refit.data.read import Rejection

# The staging table's columns, in COPY order.
_COLUMNS = (
    "line_no", "feedback_id", "user_id", "item_id", "text", "satisfaction", "label",
    "created_at", "features", "content_hash",
)  # fmt: skip


# The columns copied straight into feedback (the direct path), in COPY order.
_DIRECT = (
    "feedback_id", "user_id", "item_id", "text", "satisfaction", "label", "features", "content_hash",
    "created_at", "origin",
)  # fmt: skip
_COPY_CHUNK = 1 << 20  # bytes handed to the driver per read
_COPY_ROWS = 4096  # rows encoded at a time, while the server stores the previous ones
# The columns that are not text, and how COPY's binary format spells them.
_BINARY = {"line_no": (">i4", 4), "satisfaction": (">f8", 8), "created_at": (">i8", 8)}
_PG_EPOCH_US = 946_684_800_000_000  # 2000-01-01, where Postgres counts timestamps from, in Unix µs
_NULL = pa.scalar(b"\xff\xff\xff\xff", pa.binary())  # a binary-format field of length -1: NULL
_HEADER = b"PGCOPY\n\xff\r\n\x00" + bytes(8)  # the signature, no flags, no header extension


def _fixed(values: np.ndarray, dtype: str, size: int) -> pa.Array:
    """Binary-format fields of a column that is never null: the length, then the big-endian value."""
    fields = np.empty(len(values), dtype=[("length", ">i4"), ("value", dtype)])
    fields["length"], fields["value"] = size, values
    array = pa.FixedSizeBinaryArray.from_buffers(pa.binary(4 + size), len(values), [None, pa.py_buffer(fields)])
    return array.cast(pa.binary())


def _text(values, prefix: bytes = b"") -> pa.Array:
    """Binary-format fields of a text (or, with ``prefix`` b"\\x01", JSONB) column: the length
    (-1 for null), then the UTF-8 bytes."""
    array = values if isinstance(values, pa.Array) else pa.array(values, type=pa.string(), from_pandas=True)
    lengths = pc.fill_null(pc.add(pc.binary_length(array), len(prefix)), -1).to_numpy(zero_copy_only=False)
    heads = pa.py_buffer(lengths.astype(">i4").tobytes())
    head = pa.FixedSizeBinaryArray.from_buffers(pa.binary(4), len(array), [None, heads]).cast(pa.binary())
    body = pc.fill_null(array.cast(pa.binary()), b"")
    return pc.binary_join_element_wise(head, pa.scalar(prefix, pa.binary()), body, pa.scalar(b"", pa.binary()))


def _rows(frame: pd.DataFrame, columns: tuple[str, ...], origin: str | None) -> bytes:
    """The rows in COPY's binary format (no header): the field count, then each field."""
    fields = []
    for name in columns:
        if name == "origin":
            fields.append(_text(pa.array([origin] * len(frame), type=pa.string())))
        elif name == "created_at":  # UTC, floored to µs by validation
            micros = frame[name].astype("int64").to_numpy() // 1000 - _PG_EPOCH_US
            fields.append(_fixed(micros, *_BINARY[name]))
        elif name == "satisfaction":  # NULL for an unlabelled row
            values = frame[name].to_numpy(dtype=float)
            missing = np.isnan(values)
            field_values = _fixed(np.nan_to_num(values), *_BINARY[name])
            fields.append(pc.if_else(pa.array(missing), _NULL, field_values) if missing.any() else field_values)
        elif name in _BINARY:
            fields.append(_fixed(frame[name].to_numpy(), *_BINARY[name]))
        else:
            fields.append(_text(frame[name], b"\x01" if name == "features" else b""))
    count = pa.scalar(len(columns).to_bytes(2, "big"), pa.binary())
    rows = pc.binary_join_element_wise(count, *fields, pa.scalar(b"", pa.binary()))
    _, offsets, data = rows.buffers()
    ends = np.frombuffer(offsets, dtype=np.int32)[rows.offset : rows.offset + len(rows) + 1]
    return data.to_pybytes()[ends[0] : ends[-1]] if len(rows) else b""


class _CopyStream(io.RawIOBase):
    """The rows in COPY's binary format for ``COPY ... FROM STDIN``, encoded a slice at a time (in
    Arrow kernels) as the driver reads, so the encoding here and the storing there overlap. Binary,
    not CSV: the server then parses no text, which is a third of its time on these rows."""

    def __init__(self, frame: pd.DataFrame, columns: tuple[str, ...], origin: str | None) -> None:
        self._frame, self._columns, self._origin = frame, columns, origin
        self._at, self._pending, self._done = 0, _HEADER, False

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if not self._pending and self._at < len(self._frame):
            part = self._frame.iloc[self._at : self._at + _COPY_ROWS]
            self._at += _COPY_ROWS
            self._pending = _rows(part, self._columns, self._origin)
        if not self._pending and not self._done:
            self._pending, self._done = b"\xff\xff", True  # the trailer
        out, self._pending = self._pending, b""
        return out


def _copy_frame(conn, valid: pd.DataFrame) -> None:
    cursor = conn.connection.dbapi_connection.cursor()
    cursor.copy_expert(
        f"COPY feedback_staging ({', '.join(_COLUMNS)}) FROM STDIN WITH (FORMAT binary)",
        _CopyStream(valid, _COLUMNS, None),
        _COPY_CHUNK,
    )


def _any_stored(conn: Connection, ids: pd.Series) -> bool:
    """Whether ``feedback`` holds any of ``ids``: one index probe per id (the ids travel as one
    JSON array, and the planner, guessing a short list, walks the unique index for each), so the
    cost follows the batch, not the table."""
    return conn.execute(
        text(
            "SELECT EXISTS (SELECT 1 FROM jsonb_array_elements_text(CAST(:ids AS jsonb)) AS b(id)"
            " JOIN feedback f ON f.feedback_id = b.id)"
        ),
        {"ids": json.dumps(ids.tolist())},
    ).scalar()


def _copy_direct(conn: Connection, valid: pd.DataFrame, origin: str | None) -> bool:
    """COPY the batch straight into ``feedback``, in a savepoint; False (and nothing written) if an
    id turned out to be stored after all (a writer that does not take the ingest lock)."""
    try:
        with conn.begin_nested():
            cursor = conn.connection.dbapi_connection.cursor()
            cursor.copy_expert(
                f"COPY feedback ({', '.join(_DIRECT)}) FROM STDIN WITH (FORMAT binary)",
                _CopyStream(valid, _DIRECT, origin),
                _COPY_CHUNK,
            )
    except (psycopg2.errors.UniqueViolation, IntegrityError):
        return False
    return True


def _conflict_rejection(row: dict, why: str) -> Rejection:
    raw = {k: row[k] for k in ("feedback_id", "user_id", "item_id", "text", "satisfaction", "label")}
    if pd.isna(raw["satisfaction"]):  # an unlabelled row: JSON has no NaN
        raw["satisfaction"] = raw["label"] = None
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


class BatchWriter:
    """Writes batches one at a time, in order, on a thread of its own, while the caller validates
    the next one: the server's COPY and index upkeep and Python's validation then run side by side
    (the driver releases the GIL while the server works). At most one batch is in flight; each
    still commits in one transaction of its own, and a batch starts only after the previous one
    committed.

    Use it as a context manager; what a write returns goes to its ``then``, called on the caller's
    thread (at the next :meth:`submit`, :meth:`wait` or the end of the block).
    """

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="refit-load")
        self._pending: tuple[Future, Callable] | None = None

    def submit(self, write: Callable, *args, then: Callable[[object], None]) -> None:
        """Start ``write(*args)`` once the batch in flight (if any) is written and handed on."""
        self.wait()
        self._pending = self._pool.submit(write, *args), then

    def wait(self) -> None:
        """Wait for the batch in flight and hand its result to its ``then`` (its error is raised)."""
        if self._pending is not None:
            future, then = self._pending
            self._pending = None
            then(future.result())

    def __enter__(self) -> BatchWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self.wait()
            elif self._pending is not None:  # let the write in flight end (commit or roll back) first
                self._pending[0].exception()
        finally:
            self._pool.shutdown(wait=True)


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
    edited: int = 0  # stored rows replaced by a new version (an edit, or a label that arrived)
    unlabelled: int = 0  # of the rows inserted, those without a target
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
            Used by the Postgres source, whose rows are edited in place. Without it, only a
            label arriving for a stored unlabelled row (same id, same text) is such an edit.
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
    if len(valid) and not _any_stored(conn, valid["feedback_id"]) and _copy_direct(conn, valid, origin):
        out.accepted = len(valid)
        out.unlabelled = int((valid["satisfaction"].isna() & valid["label"].isna()).sum())
    elif len(valid):
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
            # A label for a stored unlabelled row replaces it; any other id already stored with
            # other content keeps the stored row.
            out.edited += _retire(conn, f"feedback_id IN ({_LABEL_ARRIVED})", {})
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
        out.accepted, out.unlabelled = conn.execute(
            text(
                "WITH added AS (INSERT INTO feedback (feedback_id, user_id, item_id, text, satisfaction, label,"
                " features, content_hash, created_at, origin)"
                " SELECT feedback_id, user_id, item_id, text, satisfaction, label, features, content_hash,"
                " created_at, :origin FROM feedback_staging WHERE NOT (ord = ANY(:conflicts)) ORDER BY ord"
                " ON CONFLICT (feedback_id) DO NOTHING RETURNING satisfaction IS NULL AND label IS NULL AS unlabelled)"
                " SELECT count(*), count(*) FILTER (WHERE unlabelled) FROM added"
            ),
            {"conflicts": stored_conflicts, "origin": origin},
        ).one()
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


# The staged ids whose stored row is unlabelled and whose staged row brings a target for the same text.
_LABEL_ARRIVED = (
    "SELECT s.feedback_id FROM feedback_staging s JOIN feedback f ON f.feedback_id = s.feedback_id"
    " WHERE f.content_hash <> s.content_hash AND f.satisfaction IS NULL AND f.label IS NULL"
    " AND (s.satisfaction IS NOT NULL OR s.label IS NOT NULL) AND f.text = s.text"
)


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
