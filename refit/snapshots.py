"""Incremental pulls by watermark, stable splits, and dataset snapshots.

The watermark is ``feedback.id``, the ingest sequence: a pull after watermark ``w`` reads the rows
with ``id > w`` through the primary-key index, so its cost follows the new data, not the table.
A snapshot records the range it covers and a chained content hash, so any model can be traced to
the exact rows it saw.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

import pandas as pd
from sqlalchemy import Engine, text

SPLITS = ("train", "dev", "test")
_COLUMNS = "id, feedback_id, user_id, item_id, text, satisfaction, label, features, content_hash, created_at"


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


def read_feedback(engine: Engine, after: int = 0, upto: int | None = None, chunk_rows: int = 20_000) -> pd.DataFrame:
    """Feedback rows with ``after < id <= upto``, in id order, read with a server-side cursor."""
    sql = f"SELECT {_COLUMNS} FROM feedback WHERE id > :after"
    params: dict = {"after": after}
    if upto is not None:
        sql += " AND id <= :upto"
        params["upto"] = upto
    sql += " ORDER BY id"
    chunks = []
    with engine.connect().execution_options(stream_results=True, max_row_buffer=chunk_rows) as conn:
        for chunk in pd.read_sql_query(text(sql), conn, params=params, chunksize=chunk_rows):
            chunks.append(chunk)
    if not chunks:
        return pd.DataFrame(columns=[c.strip() for c in _COLUMNS.split(",")])
    frame = pd.concat(chunks, ignore_index=True)
    frame["created_at"] = pd.to_datetime(frame["created_at"], utc=True)
    return frame


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
    )


def window_hash(previous_hash: str, content_hashes: list[str]) -> str:
    """The snapshot hash chains the previous one with the rows of the new window, in id order."""
    digest = hashlib.sha256(previous_hash.encode())
    for value in content_hashes:
        digest.update(value.encode())
    return digest.hexdigest()


def take_snapshot(engine: Engine, config: SplitConfig) -> tuple[Snapshot | None, pd.DataFrame]:
    """Pull the feedback new since the last snapshot and record a snapshot of it.

    Returns:
        ``(snapshot, window)``: the new snapshot and the new rows with their split, or
        ``(None, empty)`` when nothing new has arrived.
    """
    previous = latest_snapshot(engine)
    after = previous.watermark_to if previous else 0
    window = read_feedback(engine, after=after)
    if window.empty:
        return None, assign_splits(window, config)
    window = assign_splits(window, config)
    counts = {s: int(n) for s, n in window["split"].value_counts().items()}
    total_counts = dict(previous.split_counts) if previous else {}
    for split in SPLITS:
        total_counts[split] = total_counts.get(split, 0) + counts.get(split, 0)
    labels = {str(k): int(v) for k, v in window["label"].value_counts().items()}
    upto = int(window["id"].max())
    new_hash = window_hash(previous.content_hash if previous else "", window["content_hash"].tolist())
    total = (previous.total_rows if previous else 0) + len(window)
    with engine.begin() as conn:
        snapshot_id = conn.execute(
            text(
                "INSERT INTO dataset_snapshots (watermark_from, watermark_to, new_rows, total_rows,"
                " split_counts, content_hash, split_config)"
                " VALUES (:f, :t, :n, :total, CAST(:counts AS JSONB), :h, CAST(:cfg AS JSONB)) RETURNING id"
            ),
            {
                "f": after,
                "t": upto,
                "n": len(window),
                "total": total,
                "counts": json.dumps({**total_counts, "new_labels": labels}),
                "h": new_hash,
                "cfg": json.dumps(asdict(config)),
            },
        ).scalar_one()
    snapshot = Snapshot(snapshot_id, after, upto, len(window), total, {**total_counts, "new_labels": labels}, new_hash)
    return snapshot, window


def snapshot_rows(engine: Engine, snapshot: Snapshot, config: SplitConfig, after: int = 0) -> pd.DataFrame:
    """Every feedback row a snapshot covers (``after < id <= watermark_to``), with its split."""
    return assign_splits(read_feedback(engine, after=after, upto=snapshot.watermark_to), config)


def features_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """The behaviour features of feedback rows as columns (one per feature key)."""
    if frame.empty or "features" not in frame:
        return pd.DataFrame(index=frame.index)
    return pd.DataFrame(list(frame["features"]), index=frame.index)
