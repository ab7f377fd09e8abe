"""Validating raw feedback rows, column-wise (vectorized): what makes a row valid
(:class:`IngestRules`), the typed checks, and the rows in refit's columns with their feature JSON,
content hash and ids. Each bad row gets the first reason that applies; PII in the text is
redacted (or the row dropped, or the text left, as configured).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from refit.core.settings import RESERVED
from refit.data.kernels import PY_WHITESPACE, as_bool, blank, has_nul, json_objects, sha256_hex, strip, to_arrow
from refit.data.pii import redact, redact_column
from refit.data.read import RawBatch, Rejection

FUTURE_TOLERANCE = timedelta(minutes=5)
MAX_ID_CHARS = 256
RAW_KEPT = ("feedback_id", "user_id", "item_id", "created_at", "rating", "satisfaction", "label")
MAX_SHOWN_VALUES = 20  # distinct bad feature values named in a quarantine detail, per batch and feature
MAX_SHOWN_CHARS = 40


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
    if pd.api.types.is_numeric_dtype(series.dtype) or pd.api.types.is_datetime64_any_dtype(series.dtype):
        return series.isna()  # a number's or a time's text is never blank
    if _is_text(series):
        return pd.Series(blank(to_arrow(series.where(series.notna(), None))[0]), index=series.index)
    return series.isna() | (series.astype(str).str.strip() == "")


def _is_text(series: pd.Series) -> bool:
    """Whether every present value is a str (what the CSV reader and the source give)."""
    return series.dtype == object and pd.api.types.infer_dtype(series, skipna=True) in ("string", "empty")


def _text(series: pd.Series) -> tuple[pd.Series, pa.Array, np.ndarray]:
    """:func:`_as_text` of ``series``, the same as Arrow, and where a value holds a lone surrogate."""
    values = _as_text(series)
    array, surrogates = to_arrow(values)
    return values, array, surrogates


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
    if _is_text(series):
        values, array, _ = _text(series)
        spaces = "".join(f"\\x{{{ord(c):x}}}" for c in PY_WHITESPACE)
        digits = pd.Series(
            as_bool(pc.match_substring_regex(array, f"^[{spaces}]*-?\\p{{Nd}}+(\\.\\p{{Nd}}+)?[{spaces}]*$")),
            index=series.index,
        )
        numeric = _to_numbers(series.where(digits))  # only epoch-like text can be epoch seconds
        is_epoch = numeric.notna() & digits
        _, array = strip(values, pc.if_else(pa.array(is_epoch.to_numpy()), pa.scalar(None, pa.string()), array))
        text_values = pc.replace_substring(array, "Z", "+00:00").to_pandas()
    else:
        numeric = pd.to_numeric(series, errors="coerce")
        is_epoch = numeric.notna() & series.astype(str).str.fullmatch(r"\s*-?\d+(\.\d+)?\s*")
        text_values = series.where(~is_epoch).astype("string").str.strip().str.replace("Z", "+00:00", regex=False)
    parsed = pd.to_datetime(text_values, errors="coerce", utc=True, format="ISO8601")
    if is_epoch.any():
        # Seconds beyond pandas' nanosecond range (years 1677..2262) overflow instead of coercing:
        # they are bad timestamps like any other unparseable value.
        in_range = numeric.abs() < 9.2e9
        # Only the epoch values go to pandas: with NaN among floats its unit conversion now and
        # then raised FloatingPointError (an overflow in its arithmetic on the NaN slots).
        take = (is_epoch & in_range).to_numpy()
        epoch = pd.Series(pd.NaT, index=series.index, dtype="datetime64[ns, UTC]")
        epoch[take] = pd.to_datetime(numeric[take].to_numpy(), unit="s", utc=True, errors="coerce")
        parsed = parsed.where(~is_epoch, epoch)
    return parsed


def _numeric(series: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Numbers, and a mask of the values that are present but not finite numbers."""
    present = ~_blank(series)
    values = _to_numbers(series.where(present))
    if values.dtype == object:
        values = values.astype(float)
    bad = present & ~np.isfinite(values.astype(float))
    return values.astype(float), bad


def _to_numbers(series: pd.Series) -> pd.Series:
    """``pd.to_numeric(series, errors="coerce")``; for text, parsed once per distinct value (a
    feature or a rating has few, and parsing a value costs a microsecond)."""
    if not _is_text(series) or len(series) < 1000:
        return pd.to_numeric(series, errors="coerce")
    codes, uniques = pd.factorize(series)
    numbers = pd.to_numeric(pd.Series(uniques, dtype=object), errors="coerce").to_numpy(dtype=float)
    return pd.Series(np.append(numbers, np.nan)[codes], index=series.index)  # code -1: missing


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

    ``feature_kinds`` maps feature columns to ``numeric`` or ``categorical`` (the feature schema's
    types, :mod:`refit.data.schema`); columns not in it yet are added, typed from this batch (numeric
    only when every value is a number, so a column the schema lacks loses nothing); configured types
    always win. Text feature values are redacted like the text. ``vector_dims`` holds
    the length every value of the vector feature must have (the stored rows' length, or the
    length most common in the first batch that has the vector; added here when missing).
    """
    frame = batch.frame.rename(columns={src: dst for dst, src in rules.column_map})
    frame.columns = [_storable(str(c)) for c in frame.columns]  # names become JSON keys in Postgres
    n = len(frame)
    reason = pd.Series([None] * n, dtype=object)
    detail = pd.Series([None] * n, dtype=object)
    unflagged = np.ones(n, dtype=bool)

    def flag(mask: pd.Series | np.ndarray, why: str, message: str) -> None:
        mask = mask if isinstance(mask, np.ndarray) else mask.to_numpy(dtype=bool, na_value=False)
        mask = mask & unflagged
        if mask.any():
            reason[mask] = why
            detail[mask] = message
            unflagged[mask] = False

    def column(name: str) -> pd.Series:
        return frame[name] if name in frame else pd.Series([None] * n, dtype=object)

    # The text and the ids are checked in Arrow kernels (the strings are shared with pandas'
    # values in one conversion); lone surrogates, which UTF-8 cannot hold, are found on the way.
    raw_body, raw_array, surrogates = _text(column("text"))
    body, body_array = strip(raw_body, raw_array)
    lengths = pc.utf8_length(body_array)
    missing = pc.or_kleene(pc.is_null(body_array), pc.equal(lengths, 0))
    flag(as_bool(missing), "missing_text", "text is missing or empty")
    flag(has_nul(body_array), "invalid_text", "text contains NUL bytes")
    flag(surrogates, "invalid_text", "text is not valid Unicode (a lone surrogate)")
    flag(
        as_bool(pc.greater(lengths, rules.max_text_chars)),
        "text_too_long",
        f"text is longer than {rules.max_text_chars} characters",
    )

    ids = {}
    for name in ("feedback_id", "user_id", "item_id"):
        values = column(name)
        as_text, array, surrogates = _text(values)
        too_long = as_bool(pc.greater(pc.utf8_length(array), MAX_ID_CHARS))
        bad_chars = has_nul(array) | surrogates
        flag(_nested(values).to_numpy(dtype=bool) | too_long | bad_chars, f"bad_{name}", f"{name} is not a valid id")
        ids[name] = strip(as_text, array)[0]

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
    label_values, label_array, _ = _text(column("label"))
    label = strip(label_values, label_array)[0]
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

    def redact_values(values: pd.Series) -> pd.Series:
        # Feature text is free text too (a comment field, a referrer): redacted like the text, once
        # per distinct value (categorical features have few).
        if rules.pii_mode == "off":
            return values
        clean = {v: redact(v, rules.pii_handles) for v in values.dropna().unique() if isinstance(v, str)}
        return values.map(lambda v: clean.get(v, v) if isinstance(v, str) else v)

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
            at = np.flatnonzero(bad.to_numpy(dtype=bool))
            shown = redact_values(_as_text(values.iloc[at]).str.slice(0, MAX_SHOWN_CHARS)).to_numpy()
            for value in pd.unique(shown)[:MAX_SHOWN_VALUES]:  # name the value; the rest get the general detail
                mask = np.zeros(n, dtype=bool)
                mask[at[shown == value]] = True
                flag(mask, "bad_feature", f"feature {name} should be a number, got {value!r}")
            flag(bad, "bad_feature", f"feature {name} should be a number")
            feature_values[name] = numbers
        else:
            categories = _as_text(values.where(~nested)).str.strip().replace("", None)
            bad_chars = categories.str.contains("\x00", regex=False) | _unencodable(categories)
            flag(bad_chars, "bad_feature", f"feature {name} contains NUL bytes or lone surrogates")
            clean = redact_values(categories)
            if rules.pii_mode == "drop":
                found = categories.notna() & (clean != categories)
                flag(found, "contains_pii", f"feature {name} contains personal data (REFIT_PII_MODE=drop)")
            feature_values[name] = clean

    if rules.pii_mode != "off":
        body, changed = redact_column(body, body_array, rules.pii_handles)
        if rules.pii_mode == "drop":
            flag(changed, "contains_pii", "the text contains personal data (REFIT_PII_MODE=drop)")

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
            "feedback_id": ids["feedback_id"][ok],
            "user_id": ids["user_id"][ok],
            "item_id": ids["item_id"][ok],
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
    """One canonical JSON object per row (sorted keys, no missing values), as ``json.dumps`` of
    the row's dict writes it (the content hash covers this text, so it must not change)."""
    if not n:
        return []
    order = sorted(range(len(names)), key=lambda i: names[i])
    return json_objects([names[i] for i in order], [columns[i] for i in order], n).to_numpy(zero_copy_only=False)


def _add_identity(valid: pd.DataFrame) -> None:
    """The content hash of each row, and its feedback id (a hash of the content when missing).

    The hash is SHA-256 of ``text, repr(satisfaction), label, features, user_id or "", item_id or
    "", created_at in ns`` joined by U+001F, as stored rows have it; the keys are joined in Arrow.
    """
    if not len(valid):
        valid["content_hash"] = []
        valid["feedback_id"] = valid["feedback_id"].fillna(pd.Series([], dtype=object))
        return

    def strings(name: str) -> pa.Array:
        return pa.array(valid[name], type=pa.string(), from_pandas=True)

    keys = pc.binary_join_element_wise(
        strings("text"),
        pa.array(list(map(repr, valid["satisfaction"].tolist())), type=pa.string()),
        strings("label"),
        strings("features"),
        pc.fill_null(strings("user_id"), ""),
        pc.fill_null(strings("item_id"), ""),
        pa.array(valid["created_at"].astype("int64").to_numpy()).cast(pa.string()),
        "\x1f",
    )
    assert keys.null_count == 0, "a valid row without text, label, features or time"
    digests = sha256_hex(keys)
    valid["content_hash"] = digests
    missing = np.flatnonzero(valid["feedback_id"].isna().to_numpy())
    if len(missing):
        valid.loc[missing, "feedback_id"] = [f"h-{digests[i][:32]}" for i in missing]


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
    if _is_text(series):
        try:  # one encode of all the values at once: almost always there is none
            "".join(series[series.notna()]).encode("utf-8")
            return pd.Series(False, index=series.index)
        except UnicodeEncodeError:
            pass

    def bad(value: Any) -> bool:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False

    return series.map(lambda v: isinstance(v, str) and bad(v))


def safe_raw(raw: dict, rules: IngestRules) -> dict:
    """The raw row as JSON-storable values; PII is redacted from its free text (unless off):
    every string but the ids, the time and the targets (``RAW_KEPT``, by refit's or the file's name).

    Args:
        raw: a row as read, the file's column names to their values.
        rules: the ingest rules (their ``pii_mode``).
    """

    # Ids, times and targets are kept as read (a requeue needs them, and `refit forget` finds a
    # user by id); every other string (the text, a free-text feature, an unparsed line) is redacted.
    kept = {*RAW_KEPT, *(src for dst, src in rules.column_map if dst in RAW_KEPT)}

    def clean(key: str, value: Any) -> Any:
        if isinstance(value, str):
            value = _storable(value)
            return redact(value, rules.pii_handles) if rules.pii_mode != "off" and key not in kept else value
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
