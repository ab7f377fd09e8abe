"""Incremental pulls by watermark, stable splits, and dataset snapshots.

The watermark is ``feedback.id``, the ingest sequence: a pull after watermark ``w`` reads the rows
with ``id > w`` through the primary-key index, so its cost follows the new data, not the table.
A snapshot records the range it covers and a chained content hash, so any model can be traced to
the exact rows it saw.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import datetime

import pandas as pd
import pyarrow as pa
from pyarrow import csv as pacsv
from sqlalchemy import Engine, text

SPLITS = ("train", "dev", "test")


@dataclass(frozen=True)
class SplitConfig:
    dev_fraction: float = 0.15
    test_fraction: float = 0.15

    @classmethod
    def from_settings(cls, settings) -> SplitConfig:
        return cls(settings.dev_fraction, settings.test_fraction)


@dataclass(frozen=True)
class Snapshot:
    id: int
    watermark_from: int
    watermark_to: int
    new_rows: int
    total_rows: int
    split_counts: dict
    content_hash: str
    label_counts: dict | None = None
    window_start: datetime | None = None
    window_end: datetime | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def split_of(feedback_id: str, config: SplitConfig) -> str:
    """The split of a feedback row, from a stable hash of its id: the same id, the same split."""
    bucket = int.from_bytes(hashlib.sha256(feedback_id.encode()).digest()[:8], "big") / 2**64
    if bucket < config.dev_fraction:
        return "dev"
    if bucket < config.dev_fraction + config.test_fraction:
        return "test"
    return "train"


def assign_splits(frame: pd.DataFrame, config: SplitConfig) -> pd.DataFrame:
    frame = frame.copy()
    frame["split"] = [split_of(fid, config) for fid in frame["feedback_id"]]
    return frame


_FRAME_COLUMNS = (
    "id", "feedback_id", "user_id", "item_id", "text", "satisfaction", "label", "features", "content_hash",
    "created_at",
)  # fmt: skip
_COPY_COLUMNS = (
    "id, feedback_id, user_id, item_id, text, satisfaction, label, features::text AS features, content_hash,"
    " (extract(epoch FROM created_at) * 1000000)::bigint AS created_us"
)


def iter_feedback(
    engine: Engine, after: int = 0, upto: int | None = None, chunk_rows: int = 50_000
) -> Iterator[pd.DataFrame]:
    """Feedback rows with ``after < id <= upto`` in id order, as frames of about ``chunk_rows``.

    The rows leave Postgres through ``COPY ... TO STDOUT`` (an index range scan on ``id``) into a
    spool file, and are parsed back in chunks by Arrow's CSV reader, so the pull runs near COPY
    speed and its memory stays flat whatever the window's size.
    """
    where = "id > %(after)s" + (" AND id <= %(upto)s" if upto is not None else "")
    with tempfile.TemporaryFile() as spool:
        with engine.connect() as conn:
            cursor = conn.connection.dbapi_connection.cursor()
            query = cursor.mogrify(
                f"COPY (SELECT {_COPY_COLUMNS} FROM feedback WHERE {where} ORDER BY id) TO STDOUT WITH (FORMAT csv)",
                {"after": after, "upto": upto},
            ).decode()
            cursor.copy_expert(query, spool)
        if spool.tell() == 0:
            return
        spool.seek(0)
        numeric = {"id": pa.int64(), "satisfaction": pa.float64(), "created_us": pa.int64()}
        names = [*_FRAME_COLUMNS[:-1], "created_us"]  # the order of _COPY_COLUMNS
        types = {name: numeric.get(name, pa.string()) for name in names}
        reader = pacsv.open_csv(
            spool,
            read_options=pacsv.ReadOptions(
                column_names=list(types),
                block_size=max(1 << 16, min(2 << 20, chunk_rows * 512)),
            ),
            parse_options=pacsv.ParseOptions(newlines_in_values=True),
            convert_options=pacsv.ConvertOptions(column_types=types, quoted_strings_can_be_null=False),
        )
        pending: list[pd.DataFrame] = []
        size = 0
        for batch in reader:
            frame = batch.to_pandas()
            pending.append(frame)
            size += len(frame)
            if size >= chunk_rows:
                yield _finish(pd.concat(pending, ignore_index=True))
                pending, size = [], 0
        if pending:
            yield _finish(pd.concat(pending, ignore_index=True))


def _finish(frame: pd.DataFrame) -> pd.DataFrame:
    frame["created_at"] = pd.to_datetime(frame.pop("created_us"), unit="us", utc=True)
    return frame


def read_feedback(engine: Engine, after: int = 0, upto: int | None = None) -> pd.DataFrame:
    """Feedback rows with ``after < id <= upto``, in id order, in one frame.

    ``features`` is the JSON text of each row's features; :func:`features_frame` expands it.
    """
    chunks = list(iter_feedback(engine, after, upto))
    if not chunks:
        return pd.DataFrame(columns=[*_FRAME_COLUMNS])
    return pd.concat(chunks, ignore_index=True) if len(chunks) > 1 else chunks[0]


def latest_snapshot(engine: Engine) -> Snapshot | None:
    with engine.connect() as conn:
        row = conn.execute(text("SELECT * FROM dataset_snapshots ORDER BY id DESC LIMIT 1")).mappings().first()
    return _snapshot(row) if row else None


def get_snapshot(engine: Engine, snapshot_id: int) -> Snapshot:
    with engine.connect() as conn:
        row = conn.execute(text("SELECT * FROM dataset_snapshots WHERE id = :i"), {"i": snapshot_id}).mappings().first()
    if row is None:
        raise LookupError(f"snapshot {snapshot_id} does not exist")
    return _snapshot(row)


def _snapshot(row) -> Snapshot:
    return Snapshot(
        id=row["id"],
        watermark_from=row["watermark_from"],
        watermark_to=row["watermark_to"],
        new_rows=row["new_rows"],
        total_rows=row["total_rows"],
        split_counts=row["split_counts"],
        content_hash=row["content_hash"],
        label_counts=row["label_counts"],
        window_start=row["window_start"],
        window_end=row["window_end"],
    )


def take_snapshot(engine: Engine, config: SplitConfig) -> Snapshot | None:
    """Record a snapshot of the feedback new since the last one (None when nothing is new).

    The window is read in chunks: counts per split and label, the feedback-time window and the
    chained content hash are accumulated, never the rows themselves.
    """
    previous = latest_snapshot(engine)
    after = previous.watermark_to if previous else 0
    split_counts = Counter({s: 0 for s in SPLITS})
    label_counts: Counter = Counter()
    digest = hashlib.sha256((previous.content_hash if previous else "").encode())
    new_rows, upto, start, end = 0, after, None, None
    for chunk in iter_feedback(engine, after=after):
        split_counts.update(split_of(fid, config) for fid in chunk["feedback_id"])
        label_counts.update(chunk["label"].astype(str))
        for value in chunk["content_hash"]:
            digest.update(value.encode())
        new_rows += len(chunk)
        upto = int(chunk["id"].iloc[-1])
        low, high = chunk["created_at"].min(), chunk["created_at"].max()
        start = low if start is None else min(start, low)
        end = high if end is None else max(end, high)
    if new_rows == 0:
        return None
    totals = dict(previous.split_counts) if previous else {}
    for split in SPLITS:
        totals[split] = totals.get(split, 0) + split_counts[split]
    totals["new"] = dict(split_counts)
    total = (previous.total_rows if previous else 0) + new_rows
    with engine.begin() as conn:
        snapshot_id = conn.execute(
            text(
                "INSERT INTO dataset_snapshots (watermark_from, watermark_to, new_rows, total_rows, split_counts,"
                " label_counts, content_hash, split_config, window_start, window_end)"
                " VALUES (:f, :t, :n, :total, CAST(:counts AS JSONB), CAST(:labels AS JSONB), :h,"
                " CAST(:cfg AS JSONB), :ws, :we) RETURNING id"
            ),
            {
                "f": after,
                "t": upto,
                "n": new_rows,
                "total": total,
                "counts": json.dumps(totals),
                "labels": json.dumps(dict(label_counts)),
                "h": digest.hexdigest(),
                "cfg": json.dumps(asdict(config)),
                "ws": start.to_pydatetime(),
                "we": end.to_pydatetime(),
            },
        ).scalar_one()
    return get_snapshot(engine, snapshot_id)


def snapshot_rows(engine: Engine, snapshot: Snapshot, config: SplitConfig, after: int = 0) -> pd.DataFrame:
    """Every feedback row a snapshot covers (``after < id <= watermark_to``), with its split."""
    return assign_splits(read_feedback(engine, after=after, upto=snapshot.watermark_to), config)


def superseded_rows(engine: Engine, snapshot: Snapshot) -> list[dict]:
    """The earlier versions of rows this snapshot covered that were edited since.

    An edited source row replaces its stored version, which moves to ``feedback_history`` with
    the ``id`` it had; a snapshot (the ids up to ``watermark_to``) covered it, so the models
    trained on that snapshot stay traceable to the exact text and content hash they saw.

    Args:
        engine: the refit database.
        snapshot: a recorded snapshot.

    Returns:
        One dict per superseded version (``feedback_pk``, ``feedback_id``, ``text``,
        ``content_hash``, ``superseded_at``, ...), oldest first.
    """
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT * FROM feedback_history WHERE feedback_pk <= :w ORDER BY feedback_pk, id"),
            {"w": snapshot.watermark_to},
        ).mappings()
        return [dict(row) for row in rows]


def features_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """The behaviour features of feedback rows as columns (one per feature key)."""
    if frame.empty or "features" not in frame:
        return pd.DataFrame(index=frame.index)
    values = [json.loads(v) if isinstance(v, str) else v for v in frame["features"]]
    return pd.DataFrame(values, index=frame.index)
