"""Validating raw feedback rows, column-wise (vectorized): what makes a row valid
(:class:`IngestRules`), the typed checks, and the rows in refit's columns with their feature JSON,
content hash and ids. Each bad row gets the first reason that applies; PII in the text is
redacted (or the row dropped, or the text left, as configured).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

from refit.core.settings import RESERVED
from refit.data.pii import redact
from refit.data.read import RawBatch, Rejection

FUTURE_TOLERANCE = timedelta(minutes=5)
MAX_ID_CHARS = 256


@dataclass(frozen=True)
class IngestRules:
    """What makes a row valid, and how the file's columns map onto refit's; from the settings."""

    labels: tuple[str, ...]
    rating_min: float = 1.0
    rating_max: float = 5.0
    max_text_chars: int = 5000
    pii_mode: str = "redact"
    pii_handles: bool = True  # @handles become [HANDLE]
    feature_types: tuple[tuple[str, str], ...] = ()  # (name, "numeric" | "categorical")
    column_map: tuple[tuple[str, str], ...] = ()  # (refit column, file column)
    vector_feature: str | None = None  # the feature that holds an embedding: a list of finite numbers

    @classmethod
    def from_settings(cls, settings, column_map: dict[str, str] | None = None) -> IngestRules:
        """The rules of the settings, with ``column_map`` (``--map``) over the configured mapping.

        Args:
            settings: refit's settings.
            column_map: refit column to file column, for this ingest only.
        """
        mapping = {**settings.column_map, **(column_map or {})}
        return cls(
            labels=tuple(settings.labels),
            rating_min=settings.rating_min,
            rating_max=settings.rating_max,
            max_text_chars=settings.max_text_chars,
            pii_mode=settings.pii_mode,
            pii_handles=settings.pii_handles,
            feature_types=tuple(settings.feature_types.items()),
            column_map=tuple(mapping.items()),
            vector_feature=settings.vector_feature,
        )


def _blank(series: pd.Series) -> pd.Series:
    return series.isna() | (series.astype(str).str.strip() == "")


def _nested(series: pd.Series) -> pd.Series:
    """Where a value is a JSON object or array (only JSONL and Parquet can hold those)."""
    if pd.api.types.infer_dtype(series, skipna=True) in ("string", "empty", "floating", "integer", "boolean"):
        return pd.Series(False, index=series.index)
    return series.map(lambda v: isinstance(v, (dict, list, tuple, np.ndarray)))


def _as_text(series: pd.Series) -> pd.Series:
    # Always object dtype with None for missing: a column that is all null in a batch (JSON nulls
    # read as float NaN) must still take the .str accessor.
    present = series.notna()
    return series.astype(object).where(~present, series.astype(str)).where(present, None)


def _parse_times(series: pd.Series) -> pd.Series:
    """UTC timestamps from ISO-8601 text or epoch seconds; NaT where neither parses."""
    if series.empty:
        return pd.Series(pd.NaT, index=series.index, dtype="datetime64[ns, UTC]")
    numeric = pd.to_numeric(series, errors="coerce")
    is_epoch = numeric.notna() & series.astype(str).str.fullmatch(r"\s*-?\d+(\.\d+)?\s*")
    text_values = series.where(~is_epoch).astype("string").str.strip().str.replace("Z", "+00:00", regex=False)
    parsed = pd.to_datetime(text_values, errors="coerce", utc=True, format="ISO8601")
    if is_epoch.any():
        # Seconds beyond pandas' nanosecond range (years 1677..2262) overflow instead of coercing:
        # they are bad timestamps like any other unparseable value.
        in_range = numeric.abs() < 9.2e9
        epoch = pd.to_datetime(numeric.where(is_epoch & in_range), unit="s", utc=True, errors="coerce")
        parsed = parsed.where(~is_epoch, epoch)
    return parsed


def _numeric(series: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Numbers, and a mask of the values that are present but not finite numbers."""
    present = ~_blank(series)
    values = pd.to_numeric(series.where(present), errors="coerce")
    if values.dtype == object:
        values = values.astype(float)
    bad = present & ~np.isfinite(values.astype(float))
    return values.astype(float), bad


def label_for(satisfaction: float, labels: tuple[str, ...]) -> str:
    """The class of a satisfaction score: equal-width bins over [0, 1], in label order."""
    return labels[min(int(satisfaction * len(labels)), len(labels) - 1)]


def validate_batch(
    batch: RawBatch,
    rules: IngestRules,
    now: datetime,
    feature_kinds: dict[str, str],
    vector_dims: dict[str, int] | None = None,
) -> tuple[pd.DataFrame, list[Rejection]]:
    """Valid rows in refit's columns, and one rejection per invalid row (the first reason wins).

    ``feature_kinds`` maps feature columns to ``numeric`` or ``categorical``; columns not in it
    yet are added, inferred from this batch (configured types always win). ``vector_dims`` holds
    the length every value of the vector feature must have (the stored rows' length, or the
    length most common in the first batch that has the vector; added here when missing).
    """
    frame = batch.frame.rename(columns={src: dst for dst, src in rules.column_map})
    frame.columns = [_storable(str(c)) for c in frame.columns]  # names become JSON keys in Postgres
    n = len(frame)
    reason = pd.Series([None] * n, dtype=object)
    detail = pd.Series([None] * n, dtype=object)

    def flag(mask: pd.Series, why: str, message: str) -> None:
        mask = mask.to_numpy(dtype=bool, na_value=False) & reason.isna().to_numpy()
        if mask.any():
            reason[mask] = why
            detail[mask] = message

    def column(name: str) -> pd.Series:
        return frame[name] if name in frame else pd.Series([None] * n, dtype=object)

    raw_body = _as_text(column("text"))
    body = raw_body.str.strip()
    flag(body.isna() | (body == ""), "missing_text", "text is missing or empty")
    flag(body.str.contains("\x00", regex=False), "invalid_text", "text contains NUL bytes")
    flag(_unencodable(body), "invalid_text", "text is not valid Unicode (a lone surrogate)")
    flag(
        body.str.len() > rules.max_text_chars, "text_too_long", f"text is longer than {rules.max_text_chars} characters"
    )

    for name in ("feedback_id", "user_id", "item_id"):
        values = column(name)
        as_text = _as_text(values)
        nested = _nested(values)
        too_long = as_text.str.len() > MAX_ID_CHARS
        bad_chars = as_text.str.contains("\x00", regex=False) | _unencodable(as_text)
        flag(nested | too_long | bad_chars, f"bad_{name}", f"{name} is not a valid id")

    created = _parse_times(column("created_at"))
    flag(_blank(column("created_at")), "bad_timestamp", "created_at is missing")
    flag(created.isna(), "bad_timestamp", "created_at is not an ISO-8601 time or epoch seconds")
    flag(created > pd.Timestamp(now + FUTURE_TOLERANCE), "future_timestamp", "created_at is in the future")

    satisfaction, bad = _numeric(column("satisfaction"))
    flag(bad, "bad_satisfaction", "satisfaction is not a number")
    flag((satisfaction < 0) | (satisfaction > 1), "satisfaction_out_of_range", "satisfaction is outside [0, 1]")
    rating, bad = _numeric(column("rating"))
    flag(bad, "bad_rating", "rating is not a number")
    flag(
        (rating < rules.rating_min) | (rating > rules.rating_max),
        "rating_out_of_range",
        f"rating is outside [{rules.rating_min:g}, {rules.rating_max:g}]",
    )
    satisfaction = satisfaction.fillna((rating - rules.rating_min) / (rules.rating_max - rules.rating_min))
    label = _as_text(column("label")).str.strip()
    label = label.where(label != "")
    flag(label.notna() & ~label.isin(rules.labels), "unknown_label", f"label is not one of {', '.join(rules.labels)}")
    flag(satisfaction.isna() & label.isna(), "missing_target", "no satisfaction, rating or label")

    configured = dict(rules.feature_types)
    vector = rules.vector_feature
    vector_dims = {} if vector_dims is None else vector_dims
    features = [c for c in frame.columns if c not in RESERVED and not str(c).startswith("_")]
    if configured:
        features = [c for c in features if c in configured or c == vector]
    feature_values = {}
    for name in features:
        values = frame[name]
        if name == vector:
            vectors, problems, dim = _vectors(values, name, vector_dims.get(name))
            for problem in problems.dropna().unique():
                flag(problems == problem, "bad_feature", problem)
            if dim is not None:
                vector_dims.setdefault(name, dim)
            feature_values[name] = vectors
            continue
        nested = _nested(values)
        flag(nested, "bad_feature", f"feature {name} has a nested value (only REFIT_VECTOR_FEATURE holds a list)")
        kind = configured.get(name) or feature_kinds.get(name)
        if kind is None:
            numbers, bad = _numeric(values.where(~nested))
            kind = "numeric" if not bad.any() and numbers.notna().any() else "categorical"
        feature_kinds.setdefault(name, kind)
        if kind == "numeric":
            numbers, bad = _numeric(values.where(~nested))
            flag(bad, "bad_feature", f"feature {name} should be a number")
            feature_values[name] = numbers
        else:
            categories = _as_text(values.where(~nested)).str.strip().replace("", None)
            bad_chars = categories.str.contains("\x00", regex=False) | _unencodable(categories)
            flag(bad_chars, "bad_feature", f"feature {name} contains NUL bytes or lone surrogates")
            feature_values[name] = categories

    if rules.pii_mode != "off":
        redacted = body.map(lambda t: redact(t, rules.pii_handles) if isinstance(t, str) else t)
        if rules.pii_mode == "drop":
            flag(redacted != body, "contains_pii", "the text contains personal data (REFIT_PII_MODE=drop)")
        body = redacted

    ok = reason.isna().to_numpy()
    rejections = [
        Rejection(
            int(batch.line_no[i]) if len(batch.line_no) else None,
            reason[i],
            detail[i],
            safe_raw(frame.iloc[i].to_dict(), rules),
            _id_or_none(column("feedback_id").iloc[i]),
        )
        for i in np.flatnonzero(~ok)
    ]
    # Both targets are stored: a label from the score's bin, or a score from the label's position.
    n_labels = len(rules.labels)
    # Rows already rejected may hold negative or infinite scores: clip them so they index nothing wrong.
    in_range = np.clip(np.nan_to_num(satisfaction.to_numpy(dtype=float), nan=0.0, posinf=0.0, neginf=0.0), 0, 1)
    bins = np.minimum((in_range * n_labels).astype(int), n_labels - 1)
    derived_label = label.fillna(pd.Series(np.asarray(rules.labels, dtype=object)[bins], index=label.index))
    positions = {name: i / (n_labels - 1) for i, name in enumerate(rules.labels)}
    satisfaction = satisfaction.fillna(derived_label.map(positions))
    valid = pd.DataFrame(
        {
            "line_no": batch.line_no[ok] if len(batch.line_no) else np.zeros(ok.sum(), dtype=int),
            "feedback_id": _as_text(column("feedback_id")).str.strip()[ok],
            "user_id": _as_text(column("user_id")).str.strip()[ok],
            "item_id": _as_text(column("item_id")).str.strip()[ok],
            "text": body[ok],
            "satisfaction": satisfaction[ok].round(9),
            "label": derived_label[ok],
            "created_at": created[ok].dt.floor("us"),
        }
    ).reset_index(drop=True)
    valid["features"] = _features_json(features, [feature_values[name][ok] for name in features], len(valid))
    _add_identity(valid)
    return valid, rejections


def _vectors(series: pd.Series, name: str, dim: int | None) -> tuple[pd.Series, pd.Series, int | None]:
    """The vector feature's values as lists of floats (None where missing or bad), the problem
    with each bad value (None where it is fine), and the length every value must have: ``dim``,
    else the most common length among these values (None when none has one)."""
    parsed = [_vector(value, name) for value in series]
    vectors = [vector for vector, _ in parsed]
    problems = [problem for _, problem in parsed]
    if dim is None:
        lengths = Counter(len(v) for v in vectors if v is not None)
        dim = lengths.most_common(1)[0][0] if lengths else None
    for i, v in enumerate(vectors):
        if v is not None and len(v) != dim:
            vectors[i], problems[i] = None, f"feature {name} has {len(v)} values, expected {dim}"
    return (
        pd.Series(vectors, index=series.index, dtype=object),
        pd.Series(problems, index=series.index, dtype=object),
        dim,
    )


def _vector(value: Any, name: str) -> tuple[list[float] | None, str | None]:
    """One vector value as a list of floats, or the reason it is not one; (None, None) when missing.

    A JSON array (JSONL), a list column (Parquet) and a JSON array as text (CSV) are accepted.
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None, None
    if isinstance(value, str):
        if not value.strip():
            return None, None
        try:
            value = json.loads(value)
        except ValueError:
            value = None
    if not isinstance(value, (list, tuple, np.ndarray)):
        return None, f"feature {name} should be a list of numbers"
    try:
        array = np.asarray(value)
    except ValueError:  # nested lists of different lengths
        return None, f"feature {name} has an entry that is not a number"
    if array.size == 0:
        return None, f"feature {name} is an empty list"
    if array.ndim != 1 or array.dtype.kind not in "iuf":
        return None, f"feature {name} has an entry that is not a number"
    array = array.astype(float)
    if not np.isfinite(array).all():
        return None, f"feature {name} has a NaN or infinite entry"
    return array.tolist(), None


def _features_json(names: list[str], columns: list[pd.Series], n: int) -> list[str]:
    """One canonical JSON object per row (sorted keys, no missing values)."""
    if not names:
        return ["{}"] * n
    order = sorted(range(len(names)), key=lambda i: names[i])
    names = [names[i] for i in order]
    values = [columns[i].astype(object).where(columns[i].notna(), None).tolist() for i in order]
    out = []
    for row in zip(*values, strict=True):
        out.append(json.dumps({k: v for k, v in zip(names, row, strict=True) if v is not None}))
    return out


def _add_identity(valid: pd.DataFrame) -> None:
    """The content hash of each row, and its feedback id (a hash of the content when missing)."""
    digests = []
    for t, sat, label, feats, user, item, created in zip(
        valid["text"], valid["satisfaction"], valid["label"], valid["features"],
        valid["user_id"], valid["item_id"], valid["created_at"].astype("int64").astype(str), strict=True,
    ):  # fmt: skip
        key = "\x1f".join((t, repr(sat), label, feats, user or "", item or "", created))
        digests.append(hashlib.sha256(key.encode("utf-8")).hexdigest())
    valid["content_hash"] = digests
    valid["feedback_id"] = valid["feedback_id"].fillna(pd.Series([f"h-{d[:32]}" for d in digests]))


def _id_or_none(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, (dict, list, tuple, np.ndarray)):
        return None
    return _storable(str(value)[:MAX_ID_CHARS])


def _storable(value: str) -> str:
    """``value`` as Postgres text and JSONB accept it: NUL spelled ``\\x00``, lone UTF-16
    surrogates (JSON's ``"\\ud800"``) as U+FFFD."""
    value = value.replace("\x00", "\\x00")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return value


def _unencodable(series: pd.Series) -> pd.Series:
    """Where a text value holds a lone surrogate (it cannot be written as UTF-8)."""

    def bad(value: Any) -> bool:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False

    return series.map(lambda v: isinstance(v, str) and bad(v))


def safe_raw(raw: dict, rules: IngestRules) -> dict:
    """The raw row as JSON-storable values; PII is redacted from its free text (unless off).

    Args:
        raw: a row as read, the file's column names to their values.
        rules: the ingest rules (their ``pii_mode``).
    """

    def clean(key: str, value: Any) -> Any:
        if isinstance(value, str):
            value = _storable(value)
            return redact(value, rules.pii_handles) if rules.pii_mode != "off" and key in ("text", "_line") else value
        if isinstance(value, float) and not math.isfinite(value):
            return None if math.isnan(value) else str(value)
        if isinstance(value, dict):
            return {_storable(str(k)): clean("", v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean("", v) for v in value]
        if isinstance(value, np.ndarray):  # a Parquet list value
            return [clean("", v) for v in value.tolist()]
        if isinstance(value, (np.integer, np.floating, np.bool_)):
            return value.item()
        if isinstance(value, (pd.Timestamp, datetime)):
            return value.isoformat()
        return value

    return {_storable(str(k)): clean(str(k), v) for k, v in raw.items()}
