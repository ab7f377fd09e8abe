"""Incremental pulls by watermark, stable splits, and dataset snapshots.

The watermark is ``feedback.id``, the ingest sequence: a pull after watermark ``w`` reads the rows
with ``id > w`` through the primary-key index, so its cost follows the new data, not the table.
A snapshot records the range it covers and a chained content hash, so any model can be traced to
the exact rows it saw.

Unlabelled rows (text without a target) are in no split: :func:`assign_splits` gives them none, so
no training split, validation fold, dev set or test split built from a snapshot's rows can hold
one. Snapshots count them apart.
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

from refit.core.hashing import stable_fraction

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
    unlabelled_rows: int = 0  # of total_rows: the rows without a target, in no split
    new_unlabelled_rows: int = 0  # of new_rows

    @property
    def labelled_rows(self) -> int:
        """The rows the snapshot covers that have a target (those in a split)."""
        return self.total_rows - self.unlabelled_rows

    def as_dict(self) -> dict:
        return asdict(self)


def split_of(feedback_id: str, config: SplitConfig) -> str:
    """The split of a feedback row, from a stable hash of its id: the same id, the same split."""
    bucket = stable_fraction(feedback_id)
    if bucket < config.dev_fraction:
        return "dev"
    if bucket < config.dev_fraction + config.test_fraction:
        return "test"
    return "train"


def labelled(frame: pd.DataFrame) -> pd.Series:
    """Where a feedback row has a target (a satisfaction score or a label); the others are unlabelled."""
    has_target = pd.Series(False, index=frame.index)
    for column in ("satisfaction", "label"):
        if column in frame:
            has_target |= frame[column].notna()
    return has_target


def assign_splits(frame: pd.DataFrame, config: SplitConfig) -> pd.DataFrame:
    """``frame`` with each row's split (:func:`split_of` its id); None for an unlabelled row, which
    never trains, selects or tests a model (its split once labelled is its id's, as for any row)."""
    frame = frame.copy()
    ids, has_target = frame["feedback_id"], labelled(frame).to_numpy()
    frame["split"] = [split_of(fid, config) if ok else None for fid, ok in zip(ids, has_target, strict=True)]
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
    # COPY's CSV spells NULL as an empty field, read back as "": an unlabelled row's label is None
    # (validation never stores an empty label).
    frame["label"] = frame["label"].where(frame["label"] != "", None)
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
        unlabelled_rows=row["unlabelled_rows"],
        new_unlabelled_rows=row["new_unlabelled_rows"],
    )


def take_snapshot(engine: Engine, config: SplitConfig) -> Snapshot | None:
    """Record a snapshot of the feedback new since the last one (None when nothing is new).

    The window is read in chunks: counts per split and label, the feedback-time window and the
    chained content hash are accumulated, never the rows themselves. Unlabelled rows are counted
    apart (``unlabelled_rows``, ``new_unlabelled_rows``), in no split and no label count; the
    content hash covers them as any row.
    """
    previous = latest_snapshot(engine)
    after = previous.watermark_to if previous else 0
    split_counts = Counter({s: 0 for s in SPLITS})
    label_counts: Counter = Counter()
    digest = hashlib.sha256((previous.content_hash if previous else "").encode())
    new_rows, new_unlabelled, upto, start, end = 0, 0, after, None, None
    for chunk in iter_feedback(engine, after=after):
        has_target = labelled(chunk)
        split_counts.update(split_of(fid, config) for fid in chunk.loc[has_target, "feedback_id"])
        label_counts.update(chunk.loc[has_target, "label"].astype(str))
        new_unlabelled += int((~has_target).sum())
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
    unlabelled = (previous.unlabelled_rows if previous else 0) + new_unlabelled
    with engine.begin() as conn:
        snapshot_id = conn.execute(
            text(
                "INSERT INTO dataset_snapshots (watermark_from, watermark_to, new_rows, total_rows, split_counts,"
                " label_counts, content_hash, split_config, window_start, window_end, unlabelled_rows,"
                " new_unlabelled_rows)"
                " VALUES (:f, :t, :n, :total, CAST(:counts AS JSONB), CAST(:labels AS JSONB), :h,"
                " CAST(:cfg AS JSONB), :ws, :we, :unlabelled, :new_unlabelled) RETURNING id"
            ),
            {
                "f": after,
                "t": upto,
                "n": new_rows,
                "total": total,
                "unlabelled": unlabelled,
                "new_unlabelled": new_unlabelled,
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
    """Every feedback row a snapshot covers (``after < id <= watermark_to``), with its split (None
    for an unlabelled row)."""
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
