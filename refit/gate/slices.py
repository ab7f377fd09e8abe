"""Slices of feedback for the gate and reports: new items, text length, and configured features."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sqlalchemy import Engine, text

from refit.data.snapshots import features_frame

LENGTH_BUCKETS = ((0, 100, "short"), (100, 400, "medium"), (400, None, "long"))


def known_items(engine: Engine, upto: int) -> set[str]:
    """Item ids seen in feedback with ``id <= upto`` (for example, the champion's training data)."""
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT DISTINCT item_id FROM feedback WHERE id <= :w AND item_id IS NOT NULL"), {"w": upto}
        )
        return set(rows.scalars())


def length_bucket(lengths: pd.Series) -> pd.Series:
    out = pd.Series("long", index=lengths.index, dtype=object)
    for low, high, name in LENGTH_BUCKETS:
        mask = lengths >= low if high is None else (lengths >= low) & (lengths < high)
        out[mask] = name
    return out


def feature_slice(values: pd.Series, buckets: int = 4, kind: str | None = None) -> pd.Series:
    """A feature as slice values: categories as they are; numbers in quartile ranges.

    ``kind`` is the feature's type in the feature schema; without one, a feature is taken for
    numbers when nearly all its values are.
    """
    numbers = pd.to_numeric(values, errors="coerce")
    guessed = kind is None and numbers.notna().mean() > 0.9
    if numbers.notna().sum() >= buckets and (kind == "numeric" or guessed):
        ranges = pd.qcut(numbers, buckets, duplicates="drop")
        return ranges.astype(str).where(numbers.notna(), "(none)")
    return values.fillna("(none)").astype(str)


def slice_frame(
    feedback: pd.DataFrame,
    items_seen: set[str],
    features: tuple[str, ...] | list[str] = ("category",),
    feature_types: dict[str, str] | None = None,
) -> pd.DataFrame:
    """One column per slice family: ``new_item`` (yes/no), ``length``, and one per configured
    behaviour feature (``category`` by default; numeric features in quartile ranges). A feature's
    type is its type in ``feature_types`` (the feature schema's) when it has one there."""
    given = features_frame(feedback)
    columns = {
        "new_item": np.where(feedback["item_id"].isin(items_seen) | feedback["item_id"].isna(), "no", "yes"),
        "length": length_bucket(feedback["text"].str.len()).to_numpy(),
    }
    for name in features:
        values = given[name] if name in given else pd.Series(None, index=feedback.index, dtype=object)
        columns[name] = feature_slice(values, kind=(feature_types or {}).get(name)).to_numpy()
    return pd.DataFrame(columns, index=feedback.index)


def slice_metrics(slices: pd.DataFrame, score_fn, min_rows: int = 20) -> dict[str, dict]:
    """``score_fn(mask) -> metrics`` for every slice value with at least ``min_rows`` rows."""
    result = {}
    for family in slices.columns:
        for value, rows in slices.groupby(family).groups.items():
            if len(rows) >= min_rows:
                mask = slices.index.isin(rows)
                result[f"{family}={value}"] = {"rows": int(len(rows)), **score_fn(mask)}
    return result
