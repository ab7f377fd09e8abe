"""The gate's frozen, versioned dev set.

A dev set version is the dev-split feedback with ``id <= watermark``. It changes only through
:func:`refresh_devset` (``refit devset refresh``), which records a new version with its reason;
the gate always names the version it scored on, so a decision can be reproduced later.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from datetime import datetime

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


def refresh_devset(engine: Engine, split: SplitConfig, reason: str, upto: int | None = None) -> DevSet:
    """Record a new dev set version covering every dev-split row up to ``upto`` (default: all)."""
    with engine.connect() as conn:
        watermark = (
            upto if upto is not None else conn.execute(text("SELECT coalesce(max(id), 0) FROM feedback")).scalar()
        )
    digest, rows = hashlib.sha256(), 0
    for dev in _dev_chunks(engine, split, watermark):
        rows += len(dev)
        for value in dev["content_hash"]:
            digest.update(value.encode())
    if rows == 0:
        raise ValueError("no dev-split feedback yet: ingest feedback before creating a dev set")
    with engine.begin() as conn:
        conn.execute(text("LOCK TABLE dev_sets IN EXCLUSIVE MODE"))
        version = conn.execute(text("SELECT coalesce(max(version), 0) + 1 FROM dev_sets")).scalar()
        conn.execute(
            text("INSERT INTO dev_sets (version, watermark, rows, content_hash, reason) VALUES (:v, :w, :r, :h, :why)"),
            {"v": version, "w": watermark, "r": rows, "h": digest.hexdigest(), "why": reason},
        )
    return current_devset(engine)
