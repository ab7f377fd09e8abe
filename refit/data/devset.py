"""The gate's frozen, versioned dev set.

A dev set version is the dev-split feedback with ``id <= watermark``. Each snapshot the gate
scores on adds its dev-split rows as a new version (:func:`grow_devset`, unless
``REFIT_DEVSET_GROW=false``), so the gate judges on every period, the newest included; an operator
records one by hand with :func:`refresh_devset` (``refit devset refresh``). Every version keeps its
reason, and the gate names the version it scored on, so a decision can be reproduced later.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from datetime import datetime

import numpy as np
import pandas as pd
from sqlalchemy import Engine, text

from refit.data.snapshots import SplitConfig, assign_splits, iter_feedback


@dataclass(frozen=True)
class DevSet:
    version: int
    watermark: int
    rows: int
    content_hash: str
    reason: str
    created_at: datetime | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def current_devset(engine: Engine) -> DevSet | None:
    with engine.connect() as conn:
        row = conn.execute(text("SELECT * FROM dev_sets ORDER BY version DESC LIMIT 1")).mappings().first()
    return DevSet(**row) if row else None


def _dev_chunks(engine: Engine, split: SplitConfig, upto: int):
    """The dev-split rows with ``id <= upto``, chunk by chunk, in id order."""
    for chunk in iter_feedback(engine, after=0, upto=upto):
        chunk = assign_splits(chunk, split)
        yield chunk[chunk["split"] == "dev"]


def dev_rows(engine: Engine, devset: DevSet, split: SplitConfig) -> pd.DataFrame:
    """The rows of a dev set version, in id order, indexed from 0."""
    frames = list(_dev_chunks(engine, split, devset.watermark))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def ensure_devset(engine: Engine, split: SplitConfig, upto: int, reason: str) -> DevSet:
    """The current dev set; the first one is created (and recorded) up to ``upto`` when none exists."""
    return current_devset(engine) or refresh_devset(engine, split, reason, upto=upto)


def devset_for(engine: Engine, split: SplitConfig, snapshot, reason: str, grow: bool = True) -> DevSet:
    """The dev set a run on ``snapshot`` trains beside and is gated on: the first one is created up
    to the snapshot (recorded with ``reason``); with ``grow`` (``REFIT_DEVSET_GROW``), the
    snapshot's dev-split rows join it (:func:`grow_devset`)."""
    devset = ensure_devset(engine, split, snapshot.watermark_to, reason)
    return grow_devset(engine, split, devset, snapshot.watermark_to, snapshot.id) if grow else devset


def _digest(engine: Engine, split: SplitConfig, watermark: int) -> tuple[int, str]:
    """The number of dev-split rows up to ``watermark`` and the hash of their contents."""
    digest, rows = hashlib.sha256(), 0
    for dev in _dev_chunks(engine, split, watermark):
        rows += len(dev)
        for value in dev["content_hash"]:
            digest.update(value.encode())
    return rows, digest.hexdigest()


def _record(engine: Engine, watermark: int, rows: int, content_hash: str, reason: str) -> DevSet:
    with engine.begin() as conn:
        conn.execute(text("LOCK TABLE dev_sets IN EXCLUSIVE MODE"))
        version = conn.execute(text("SELECT coalesce(max(version), 0) + 1 FROM dev_sets")).scalar()
        conn.execute(
            text("INSERT INTO dev_sets (version, watermark, rows, content_hash, reason) VALUES (:v, :w, :r, :h, :why)"),
            {"v": version, "w": watermark, "r": rows, "h": content_hash, "why": reason},
        )
    return current_devset(engine)


def refresh_devset(engine: Engine, split: SplitConfig, reason: str, upto: int | None = None) -> DevSet:
    """Record a new dev set version covering every dev-split row up to ``upto`` (default: all)."""
    with engine.connect() as conn:
        watermark = (
            upto if upto is not None else conn.execute(text("SELECT coalesce(max(id), 0) FROM feedback")).scalar()
        )
    rows, content_hash = _digest(engine, split, watermark)
    if rows == 0:
        raise ValueError("no dev-split feedback yet: ingest feedback before creating a dev set")
    return _record(engine, watermark, rows, content_hash, reason)


def grow_devset(engine: Engine, split: SplitConfig, devset: DevSet, upto: int, snapshot_id: int) -> DevSet:
    """The dev set with the dev-split rows up to ``upto`` (a snapshot's watermark) added, recorded as a
    new version whose reason names the snapshot and the rows added; ``devset`` itself when the
    snapshot adds nothing.

    Args:
        engine: the feedback database.
        split: how rows are split (the dev share).
        devset: the current version.
        upto: the snapshot's watermark.
        snapshot_id: the snapshot whose rows join.

    Returns:
        The version the gate scores on.
    """
    if upto <= devset.watermark:
        return devset
    rows, content_hash = _digest(engine, split, upto)
    if content_hash == devset.content_hash:
        return devset
    reason = (
        f"grown with snapshot {snapshot_id}: {rows - devset.rows:+d} dev rows (ids {devset.watermark + 1} to {upto})"
    )
    return _record(engine, upto, rows, content_hash, reason)


def dev_periods(engine: Engine, ids: pd.Series) -> np.ndarray:
    """The period of each dev row: the first snapshot that covered it (``snapshot 3``), or ``before
    the first snapshot`` for a row loaded by hand."""
    with engine.connect() as conn:
        snapshots = conn.execute(text("SELECT id, watermark_to FROM dataset_snapshots ORDER BY watermark_to, id")).all()
    if not snapshots:
        return np.full(len(ids), "before the first snapshot", dtype=object)
    first = {}
    for snapshot_id, watermark in snapshots:
        first.setdefault(watermark, snapshot_id)
    watermarks = np.array(sorted(first))
    names = np.array([f"snapshot {first[w]}" for w in watermarks] + ["after the last snapshot"], dtype=object)
    return names[np.searchsorted(watermarks, np.asarray(ids, dtype=np.int64), side="left")]
