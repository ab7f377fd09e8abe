"""Validating raw feedback rows, column-wise (vectorized): what makes a row valid
(:class:`IngestRules`), the typed checks, and the rows in refit's columns with their feature JSON,
content hash and ids. Each bad row gets the first reason that applies; PII in the text is
redacted (or the row dropped, or the text left, as configured). A row with text and no target is
valid: it is stored unlabelled.
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


class _Flags:
    """The first reason each row of a batch fails for, and its detail; rows not flagged pass."""

    def __init__(self, n: int) -> None:
        self.reason = pd.Series([None] * n, dtype=object)
        self.detail = pd.Series([None] * n, dtype=object)
        self.unflagged = np.ones(n, dtype=bool)

    def flag(self, mask: pd.Series | np.ndarray, why: str, message: str) -> None:
        """Give ``why`` to the rows of ``mask`` that no earlier check flagged (the first reason wins)."""
        mask = mask if isinstance(mask, np.ndarray) else mask.to_numpy(dtype=bool, na_value=False)
        mask = mask & self.unflagged
        if mask.any():
            self.reason[mask] = why
            self.detail[mask] = message
            self.unflagged[mask] = False

    @property
    def ok(self) -> np.ndarray:
        """Where a row passed every check."""
        return self.reason.isna().to_numpy()


def validate_batch(
    batch: RawBatch,
    rules: IngestRules,
    now: datetime,
    feature_kinds: dict[str, str],
    vector_dims: dict[str, int] | None = None,
) -> tuple[pd.DataFrame, list[Rejection]]:
    """Valid rows in refit's columns, and one rejection per invalid row (the first reason wins).

    A row with text and no target (no satisfaction, rating or label) is valid: it is stored
    unlabelled (``satisfaction`` and ``label`` None) and never enters a split. A row with neither
    text nor target is quarantined as ``missing_text``, its detail saying both are missing.

    ``feature_kinds`` maps feature columns to ``numeric`` or ``categorical`` (the feature schema's
    types, :mod:`refit.data.schema`); columns not in it yet are added, typed from this batch (numeric
    only when every value is a number, so a column the schema lacks loses nothing); configured types
    always win. Text feature values are redacted like the text. ``vector_dims`` holds
    the length every value of the vector feature must have (the stored rows' length, or the
    length most common in the first batch that has the vector; added here when missing).
    """
    frame = batch.frame.rename(columns={src: dst for dst, src in rules.column_map})
    frame.columns = [_storable(str(c)) for c in frame.columns]  # names become JSON keys in Postgres
    flags = _Flags(len(frame))
    # The checks run in this order: a row's reason is the first that applies.
    body, body_array = _check_text(frame, flags, rules)
    ids = _check_ids(frame, flags)
    created = _check_times(frame, flags, now)
    satisfaction, label = _check_targets(frame, flags, rules)
    features, feature_values = _check_features(frame, flags, rules, feature_kinds, vector_dims)
    body = _redact_text(body, body_array, flags, rules)

    ok = flags.ok
    feedback_ids = _column(frame, "feedback_id")
    rejections = [
        Rejection(
            int(batch.line_no[i]) if len(batch.line_no) else None,
            flags.reason[i],
            flags.detail[i],
            safe_raw(frame.iloc[i].to_dict(), rules),
            _id_or_none(feedback_ids.iloc[i]),
        )
        for i in np.flatnonzero(~ok)
    ]
    satisfaction, label = _both_targets(satisfaction, label, rules)
    valid = pd.DataFrame(
        {
            "line_no": batch.line_no[ok] if len(batch.line_no) else np.zeros(ok.sum(), dtype=int),
            "feedback_id": ids["feedback_id"][ok],
            "user_id": ids["user_id"][ok],
            "item_id": ids["item_id"][ok],
            "text": body[ok],
            "satisfaction": satisfaction[ok].round(9),
            "label": label[ok],
            "created_at": created[ok].dt.floor("us"),
        }
    ).reset_index(drop=True)
    valid["features"] = _features_json(features, [feature_values[name][ok] for name in features], len(valid))
    _add_identity(valid)
    return valid, rejections


def _column(frame: pd.DataFrame, name: str) -> pd.Series:
    """The column ``name`` of the batch, or all missing when the file has none."""
    return frame[name] if name in frame else pd.Series([None] * len(frame), dtype=object)


def _no_target(frame: pd.DataFrame) -> pd.Series:
    """Where a row gives no satisfaction, rating or label at all (blank or missing)."""
    return _blank(_column(frame, "satisfaction")) & _blank(_column(frame, "rating")) & _blank(_column(frame, "label"))


def _check_text(frame: pd.DataFrame, flags: _Flags, rules: IngestRules) -> tuple[pd.Series, pa.Array]:
    """Flag missing, invalid and too long text; the stripped text, as pandas values and as Arrow.

    The text is checked in Arrow kernels (the strings are shared with pandas' values in one
    conversion); lone surrogates, which UTF-8 cannot hold, are found on the way.
    """
    raw_body, raw_array, surrogates = _text(_column(frame, "text"))
    body, body_array = strip(raw_body, raw_array)
    lengths = pc.utf8_length(body_array)
    missing = as_bool(pc.or_kleene(pc.is_null(body_array), pc.equal(lengths, 0)))
    if missing.any():  # text without a target is stored unlabelled; with neither, nothing is left
        neither = missing & _no_target(frame).to_numpy(dtype=bool)
        flags.flag(neither, "missing_text", "no text and no satisfaction, rating or label")
    flags.flag(missing, "missing_text", "text is missing or empty")
    flags.flag(has_nul(body_array), "invalid_text", "text contains NUL bytes")
    flags.flag(surrogates, "invalid_text", "text is not valid Unicode (a lone surrogate)")
    flags.flag(
        as_bool(pc.greater(lengths, rules.max_text_chars)),
        "text_too_long",
        f"text is longer than {rules.max_text_chars} characters",
    )
    return body, body_array


def _check_ids(frame: pd.DataFrame, flags: _Flags) -> dict[str, pd.Series]:
    """Flag ids that are nested, too long or hold NUL bytes or lone surrogates; the stripped ids."""
    ids = {}
    for name in ("feedback_id", "user_id", "item_id"):
        values = _column(frame, name)
        as_text, array, surrogates = _text(values)
        too_long = as_bool(pc.greater(pc.utf8_length(array), MAX_ID_CHARS))
        bad_chars = has_nul(array) | surrogates
        flags.flag(
            _nested(values).to_numpy(dtype=bool) | too_long | bad_chars, f"bad_{name}", f"{name} is not a valid id"
        )
        ids[name] = strip(as_text, array)[0]
    return ids


def _check_times(frame: pd.DataFrame, flags: _Flags, now: datetime) -> pd.Series:
    """Flag a missing, unparseable or future ``created_at``; the times, in UTC."""
    raw = _column(frame, "created_at")
    created = _parse_times(raw)
    flags.flag(_blank(raw), "bad_timestamp", "created_at is missing")
    flags.flag(created.isna(), "bad_timestamp", "created_at is not an ISO-8601 time or epoch seconds")
    flags.flag(created > pd.Timestamp(now + FUTURE_TOLERANCE), "future_timestamp", "created_at is in the future")
    return created


def _check_targets(frame: pd.DataFrame, flags: _Flags, rules: IngestRules) -> tuple[pd.Series, pd.Series]:
    """Flag a target that is not a number, out of range or an unknown label.

    Returns:
        The satisfaction (from the rating when it has none) and the label, each missing (NaN,
        None) where the row does not give it; both missing for an unlabelled row.
    """
    satisfaction, bad = _numeric(_column(frame, "satisfaction"))
    flags.flag(bad, "bad_satisfaction", "satisfaction is not a number")
    flags.flag((satisfaction < 0) | (satisfaction > 1), "satisfaction_out_of_range", "satisfaction is outside [0, 1]")
    rating, bad = _numeric(_column(frame, "rating"))
    flags.flag(bad, "bad_rating", "rating is not a number")
    flags.flag(
        (rating < rules.rating_min) | (rating > rules.rating_max),
        "rating_out_of_range",
        f"rating is outside [{rules.rating_min:g}, {rules.rating_max:g}]",
    )
    satisfaction = satisfaction.fillna((rating - rules.rating_min) / (rules.rating_max - rules.rating_min))
    label_values, label_array, _ = _text(_column(frame, "label"))
    label = strip(label_values, label_array)[0]
    label = label.where(label != "")
    flags.flag(
        label.notna() & ~label.isin(rules.labels), "unknown_label", f"label is not one of {', '.join(rules.labels)}"
    )
    return satisfaction, label


def _both_targets(satisfaction: pd.Series, label: pd.Series, rules: IngestRules) -> tuple[pd.Series, pd.Series]:
    """Both targets of each row: a label from the score's bin, or a score from the label's
    position; an unlabelled row keeps neither."""
    n_labels = len(rules.labels)
    # Rows already rejected may hold negative or infinite scores: clip them so they index nothing wrong.
    in_range = np.clip(np.nan_to_num(satisfaction.to_numpy(dtype=float), nan=0.0, posinf=0.0, neginf=0.0), 0, 1)
    bins = np.minimum((in_range * n_labels).astype(int), n_labels - 1)
    binned = np.where(satisfaction.notna().to_numpy(), np.asarray(rules.labels, dtype=object)[bins], None)
    derived_label = pd.Series(
        np.where(label.notna().to_numpy(), label.to_numpy(dtype=object), binned), index=label.index
    )
    positions = {name: i / (n_labels - 1) for i, name in enumerate(rules.labels)}
    return satisfaction.fillna(derived_label.map(positions)), derived_label


def _check_features(
    frame: pd.DataFrame,
    flags: _Flags,
    rules: IngestRules,
    feature_kinds: dict[str, str],
    vector_dims: dict[str, int] | None,
) -> tuple[list[str], dict[str, pd.Series]]:
    """Flag feature values of the wrong type (or with personal data, under ``REFIT_PII_MODE=drop``).

    Returns:
        The feature columns, and each one's values: numbers, redacted text, or vectors.
    """
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
            feature_values[name] = _check_vector(name, values, flags, vector_dims)
            continue
        nested = _nested(values)
        flags.flag(nested, "bad_feature", f"feature {name} has a nested value (only REFIT_VECTOR_FEATURE holds a list)")
        kind = configured.get(name) or feature_kinds.get(name)
        if kind is None:
            numbers, bad = _numeric(values.where(~nested))
            kind = "numeric" if not bad.any() and numbers.notna().any() else "categorical"
        feature_kinds.setdefault(name, kind)
        if kind == "numeric":
            feature_values[name] = _check_numeric(name, values.where(~nested), flags, rules)
        else:
            feature_values[name] = _check_categorical(name, values.where(~nested), flags, rules)
    return features, feature_values


def _check_vector(name: str, values: pd.Series, flags: _Flags, vector_dims: dict[str, int]) -> pd.Series:
    """Flag vector values that are not lists of finite numbers of the one length; the vectors."""
    vectors, problems, dim = _vectors(values, name, vector_dims.get(name))
    for problem in problems.dropna().unique():
        flags.flag(problems == problem, "bad_feature", problem)
    if dim is not None:
        vector_dims.setdefault(name, dim)
    return vectors


def _check_numeric(name: str, values: pd.Series, flags: _Flags, rules: IngestRules) -> pd.Series:
    """Flag values of a numeric feature that are not finite numbers, naming a few; the numbers."""
    numbers, bad = _numeric(values)
    at = np.flatnonzero(bad.to_numpy(dtype=bool))
    shown = _redact_values(_as_text(values.iloc[at]).str.slice(0, MAX_SHOWN_CHARS), rules).to_numpy()
    for value in pd.unique(shown)[:MAX_SHOWN_VALUES]:  # name the value; the rest get the general detail
        mask = np.zeros(len(values), dtype=bool)
        mask[at[shown == value]] = True
        flags.flag(mask, "bad_feature", f"feature {name} should be a number, got {value!r}")
    flags.flag(bad, "bad_feature", f"feature {name} should be a number")
    return numbers


def _check_categorical(name: str, values: pd.Series, flags: _Flags, rules: IngestRules) -> pd.Series:
    """Flag categorical values that hold NUL bytes or lone surrogates (or personal data, under
    ``REFIT_PII_MODE=drop``); the values, stripped and redacted."""
    categories = _as_text(values).str.strip().replace("", None)
    bad_chars = categories.str.contains("\x00", regex=False) | _unencodable(categories)
    flags.flag(bad_chars, "bad_feature", f"feature {name} contains NUL bytes or lone surrogates")
    clean = _redact_values(categories, rules)
    if rules.pii_mode == "drop":
        found = categories.notna() & (clean != categories)
        flags.flag(found, "contains_pii", f"feature {name} contains personal data (REFIT_PII_MODE=drop)")
    return clean


def _redact_values(values: pd.Series, rules: IngestRules) -> pd.Series:
    """Feature text redacted like the text (a comment field, a referrer is free text too), once
    per distinct value (categorical features have few)."""
    if rules.pii_mode == "off":
        return values
    clean = {v: redact(v, rules.pii_handles) for v in values.dropna().unique() if isinstance(v, str)}
    return values.map(lambda v: clean.get(v, v) if isinstance(v, str) else v)


def _redact_text(body: pd.Series, body_array: pa.Array, flags: _Flags, rules: IngestRules) -> pd.Series:
    """The text with its PII redacted (unless off); under ``drop``, rows with PII are flagged."""
    if rules.pii_mode == "off":
        return body
    body, changed = redact_column(body, body_array, rules.pii_handles)
    if rules.pii_mode == "drop":
        flags.flag(changed, "contains_pii", "the text contains personal data (REFIT_PII_MODE=drop)")
    return body


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

    The hash is SHA-256 of ``text, repr(satisfaction), label or "", features, user_id or "",
    item_id or "", created_at in ns`` joined by U+001F, as stored rows have it; the keys are joined
    in Arrow. An unlabelled row's hash differs from its labelled version's, so a label that
    arrives later is an edit.
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
        pc.fill_null(strings("label"), ""),  # an unlabelled row: "nan" and "" for its targets
        strings("features"),
        pc.fill_null(strings("user_id"), ""),
        pc.fill_null(strings("item_id"), ""),
        pa.array(valid["created_at"].astype("int64").to_numpy()).cast(pa.string()),
        "\x1f",
    )
    assert keys.null_count == 0, "a valid row without text, features or time"
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
