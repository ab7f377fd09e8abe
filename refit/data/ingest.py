"""Feedback ingestion: read a file, validate it in bulk, load the valid rows through COPY.

The pipeline, per batch of rows:

1. **read** CSV, JSONL or Parquet (a path or standard input) into a frame of raw values;
   a row that cannot even be parsed becomes a ``malformed_row`` rejection;
2. **map** the team's column names onto refit's (``--map text=review_body``);
3. **validate** column-wise (vectorized): each bad row gets the first reason that applies;
4. **redact** PII in the text (or drop the row, or leave it, as configured);
5. **COPY** the valid rows into a temporary staging table, then one set-based statement derives
   the feature JSON, the content hash and the ids, quarantines conflicting duplicates, and
   inserts the rest with ``ON CONFLICT (feedback_id) DO NOTHING``.

Each batch commits on its own, so an interrupted ingest keeps what it finished and a re-run skips
it (by feedback id, and by the raw row's hash in ``quarantine``): the table ends up the same as
after one clean run.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Engine, text

from refit.core.errors import InputError
from refit.core.settings import RESERVED
from refit.data.db import INGEST_LOCK
from refit.data.pii import redact

FUTURE_TOLERANCE = timedelta(minutes=5)
MAX_ID_CHARS = 256
FORMATS = ("csv", "jsonl", "parquet")


@dataclass(frozen=True)
class IngestRules:
    """What makes a row valid, and how the file's columns map onto refit's; from the settings."""

    labels: tuple[str, ...]
    rating_min: float = 1.0
    rating_max: float = 5.0
    max_text_chars: int = 5000
    pii_mode: str = "redact"
    feature_types: tuple[tuple[str, str], ...] = ()  # (name, "numeric" | "categorical")
    column_map: tuple[tuple[str, str], ...] = ()  # (refit column, file column)

    @classmethod
    def from_settings(cls, settings, column_map: dict[str, str] | None = None) -> IngestRules:
        mapping = {**settings.column_map, **(column_map or {})}
        return cls(
            labels=tuple(settings.labels),
            rating_min=settings.rating_min,
            rating_max=settings.rating_max,
            max_text_chars=settings.max_text_chars,
            pii_mode=settings.pii_mode,
            feature_types=tuple(settings.feature_types.items()),
            column_map=tuple(mapping.items()),
        )


@dataclass
class Rejection:
    line_no: int | None
    reason: str
    detail: str
    raw: dict[str, Any]
    feedback_id: str | None = None


@dataclass
class IngestSummary:
    source: str
    rows_read: int = 0
    accepted: int = 0
    duplicates: int = 0
    quarantined: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def rows_per_second(self) -> float:
        return self.rows_read / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict:
        return {**asdict(self), "rows_per_second": round(self.rows_per_second, 1)}


@dataclass
class RawBatch:
    """Raw rows as read: a frame of the file's own columns, their line numbers, parse failures."""

    frame: pd.DataFrame
    line_no: np.ndarray
    rejections: list[Rejection] = field(default_factory=list)


# --- reading ---------------------------------------------------------------------------------


def detect_format(name: str, head: bytes) -> str:
    suffix = Path(name).suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if suffix in (".parquet", ".pq"):
        return "parquet"
    if suffix in (".csv", ".tsv", ".txt"):
        return "csv"
    if head.startswith(b"PAR1"):
        return "parquet"
    if head.lstrip()[:1] == b"{":
        return "jsonl"
    return "csv"


def read_source(source: str | Path, fmt: str | None = None, stdin=None) -> tuple[str, bytes, str]:
    """``(name, content, format)`` of a path, or of standard input when ``source`` is ``-``."""
    if str(source) == "-":
        content = (stdin or sys.stdin.buffer).read()
        name = "<stdin>"
    else:
        path = Path(source)
        try:
            content = path.read_bytes()
        except OSError as exc:
            raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
        name = str(path)
    if fmt is not None and fmt not in FORMATS:
        raise InputError(f"unknown format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if not content.strip():
        raise InputError(f"{name} is empty")
    return name, content, fmt or detect_format(name, content[:64])


def iter_batches(name: str, content: bytes, fmt: str, batch_rows: int = 50_000) -> Iterator[RawBatch]:
    """Batches of raw rows; see :class:`RawBatch`. Unreadable files raise :class:`InputError`."""
    if fmt == "parquet":
        yield from _parquet_batches(name, content, batch_rows)
    elif fmt == "jsonl":
        yield from _jsonl_batches(name, content, batch_rows)
    else:
        yield from _csv_batches(name, content, batch_rows)


def _split_invalid_utf8(content: bytes) -> tuple[bytes, list[Rejection]]:
    """Drop the lines that are not valid UTF-8 (each a rejection); the rest is left as it was."""
    try:
        content.decode("utf-8")
        return content, []
    except UnicodeDecodeError:
        pass
    kept, rejections = [], []
    for number, line in enumerate(content.split(b"\n"), start=1):
        try:
            line.decode("utf-8")
            kept.append(line)
        except UnicodeDecodeError:
            shown = line.decode("utf-8", "backslashreplace")[:2000]
            rejections.append(Rejection(number, "invalid_utf8", "the row is not valid UTF-8", {"_line": shown}))
    return b"\n".join(kept), rejections


def _csv_batches(name: str, content: bytes, batch_rows: int) -> Iterator[RawBatch]:
    import pyarrow as pa
    from pyarrow import csv as pacsv

    if content.count(b"\x00") > len(content) // 10:
        raise InputError(f"{name} looks binary, not CSV")
    content, utf8_rejections = _split_invalid_utf8(content)
    content = content.removeprefix(b"\xef\xbb\xbf")
    header_line = content.split(b"\n", 1)[0].decode("utf-8").rstrip("\r")
    try:
        header = next(csv.reader([header_line], delimiter="\t" if name.endswith(".tsv") else ","))
    except StopIteration:
        raise InputError(f"{name} has no header row") from None
    if len(set(header)) != len(header) or any(not h.strip() for h in header):
        raise InputError(f"{name}: the header has empty or repeated column names")
    malformed: list[Rejection] = []

    def on_invalid(row) -> str:
        malformed.append(
            Rejection(
                row.number,
                "malformed_row",
                f"{row.actual_columns} fields where the header has {row.expected_columns}",
                {"_line": (row.text or "")[:2000]},
            )
        )
        return "skip"

    try:
        reader = pacsv.open_csv(
            io.BytesIO(content),
            read_options=pacsv.ReadOptions(block_size=8 << 20, use_threads=True),
            parse_options=pacsv.ParseOptions(
                delimiter="\t" if name.endswith(".tsv") else ",",
                newlines_in_values=True,
                invalid_row_handler=on_invalid,
            ),
            convert_options=pacsv.ConvertOptions(
                column_types={h: pa.string() for h in header},
                strings_can_be_null=True,
                quoted_strings_can_be_null=False,
            ),
        )
        first_line = 2
        pending_rejections = utf8_rejections
        for record_batch in reader:
            frame = record_batch.to_pandas()
            lines = np.arange(first_line, first_line + len(frame))
            first_line += len(frame)
            for start in range(0, len(frame), batch_rows):
                part = frame.iloc[start : start + batch_rows].reset_index(drop=True)
                yield RawBatch(part, lines[start : start + batch_rows], pending_rejections + malformed)
                pending_rejections, malformed[:] = [], []
        if pending_rejections or malformed:
            yield RawBatch(pd.DataFrame(columns=header), np.array([], dtype=int), pending_rejections + malformed)
    except pa.ArrowInvalid as exc:
        raise InputError(f"{name}: not a readable CSV file ({str(exc).splitlines()[0]})") from None


def _jsonl_batches(name: str, content: bytes, batch_rows: int) -> Iterator[RawBatch]:
    content, utf8_rejections = _split_invalid_utf8(content)
    rows: list[dict] = []
    lines: list[int] = []
    rejections: list[Rejection] = list(utf8_rejections)
    parsed_any = False
    for number, line in enumerate(content.decode("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            rejections.append(Rejection(number, "malformed_row", f"not valid JSON: {exc.msg}", {"_line": line[:2000]}))
            continue
        if not isinstance(value, dict):
            rejections.append(
                Rejection(number, "malformed_row", "a JSONL row must be an object", {"_line": line[:2000]})
            )
            continue
        parsed_any = True
        rows.append(value)
        lines.append(number)
        if len(rows) >= batch_rows:
            yield RawBatch(pd.DataFrame.from_records(rows), np.array(lines), rejections)
            rows, lines, rejections = [], [], []
    if not parsed_any:
        raise InputError(f"{name}: no line is a JSON object; is it really JSONL?")
    if rows or rejections:
        yield RawBatch(pd.DataFrame.from_records(rows), np.array(lines, dtype=int), rejections)


def _parquet_batches(name: str, content: bytes, batch_rows: int) -> Iterator[RawBatch]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(io.BytesIO(content))
        # Decode every row group once before the first batch commits: a file damaged further on
        # is refused whole rather than half loaded (decoding costs little next to loading).
        for group in range(parquet.num_row_groups):
            parquet.read_row_group(group)
        line = 1
        for record_batch in parquet.iter_batches(batch_size=batch_rows):
            frame = record_batch.to_pandas()
            yield RawBatch(frame, np.arange(line, line + len(frame)))
            line += len(frame)
    except (pa.ArrowException, OSError) as exc:
        raise InputError(f"{name}: not a readable Parquet file ({str(exc).splitlines()[0]})") from None


# --- validation ------------------------------------------------------------------------------


def _blank(series: pd.Series) -> pd.Series:
    return series.isna() | (series.astype(str).str.strip() == "")


def _nested(series: pd.Series) -> pd.Series:
    """Where a value is a JSON object or array (only JSONL and Parquet can hold those)."""
    if pd.api.types.infer_dtype(series, skipna=True) in ("string", "empty", "floating", "integer", "boolean"):
        return pd.Series(False, index=series.index)
    return series.map(lambda v: isinstance(v, (dict, list)))


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
    batch: RawBatch, rules: IngestRules, now: datetime, feature_kinds: dict[str, str]
) -> tuple[pd.DataFrame, list[Rejection]]:
    """Valid rows in refit's columns, and one rejection per invalid row (the first reason wins).

    ``feature_kinds`` maps feature columns to ``numeric`` or ``categorical``; columns not in it
    yet are added, inferred from this batch (configured types always win).
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
    features = [c for c in frame.columns if c not in RESERVED and not str(c).startswith("_")]
    if configured:
        features = [c for c in features if c in configured]
    feature_values = {}
    for name in features:
        values = frame[name]
        nested = _nested(values)
        flag(nested, "bad_feature", f"feature {name} has a nested value")
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
        redacted = body.map(lambda t: redact(t) if isinstance(t, str) else t)
        if rules.pii_mode == "drop":
            flag(redacted != body, "contains_pii", "the text contains personal data (REFIT_PII_MODE=drop)")
        body = redacted

    ok = reason.isna().to_numpy()
    rejections = [
        Rejection(
            int(batch.line_no[i]) if len(batch.line_no) else None,
            reason[i],
            detail[i],
            _safe_raw(frame.iloc[i].to_dict(), rules),
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


def _id_or_none(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)) or isinstance(value, (dict, list)):
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


def _safe_raw(raw: dict, rules: IngestRules) -> dict:
    """The raw row as JSON-storable values; PII is redacted from its free text (unless off)."""

    def clean(key: str, value: Any) -> Any:
        if isinstance(value, str):
            value = _storable(value)
            return redact(value) if rules.pii_mode != "off" and key in ("text", "_line") else value
        if isinstance(value, float) and not math.isfinite(value):
            return None if math.isnan(value) else str(value)
        if isinstance(value, dict):
            return {_storable(str(k)): clean("", v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean("", v) for v in value]
        if isinstance(value, (np.integer, np.floating, np.bool_)):
            return value.item()
        if isinstance(value, (pd.Timestamp, datetime)):
            return value.isoformat()
        return value

    return {_storable(str(k)): clean(str(k), v) for k, v in raw.items()}


# --- loading ---------------------------------------------------------------------------------


_COLUMNS = (
    "line_no", "feedback_id", "user_id", "item_id", "text", "satisfaction", "label",
    "created_at", "features", "content_hash",
)  # fmt: skip


def _copy_frame(conn, valid: pd.DataFrame) -> None:
    import pyarrow as pa
    from pyarrow import csv as pacsv

    table = pa.Table.from_pandas(valid[list(_COLUMNS)], preserve_index=False)
    buffer = io.BytesIO()
    pacsv.write_csv(table, buffer, write_options=pacsv.WriteOptions(include_header=False, quoting_style="needed"))
    buffer.seek(0)
    cursor = conn.connection.dbapi_connection.cursor()
    cursor.copy_expert(f"COPY feedback_staging ({', '.join(_COLUMNS)}) FROM STDIN WITH (FORMAT csv)", buffer)


def _conflict_rejection(row: dict, why: str) -> Rejection:
    raw = {k: row[k] for k in ("feedback_id", "user_id", "item_id", "text", "satisfaction", "label")}
    raw["created_at"] = row["created_at"].isoformat()
    raw["features"] = json.loads(row["features"])
    return Rejection(int(row["line_no"]), "duplicate_conflict", why, raw, row["feedback_id"])


def load_batch(engine: Engine, source: str, valid: pd.DataFrame, rejections: list[Rejection]):
    """Write one batch in one transaction; returns ``(accepted, duplicates, rejections)``."""
    valid, repeats, duplicates = split_repeats(valid)
    rejections = rejections + [
        _conflict_rejection(row, "feedback_id repeated in the file with other content; the first is kept")
        for row in repeats.to_dict("records")
    ]
    accepted = 0
    with engine.begin() as conn:
        # Serialize ingests so that feedback ids (the watermark) become visible in order.
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": INGEST_LOCK})
        if len(valid):
            conn.execute(
                text(
                    "CREATE TEMP TABLE feedback_staging (ord SERIAL, line_no INTEGER, feedback_id TEXT,"
                    " user_id TEXT, item_id TEXT, text TEXT, satisfaction DOUBLE PRECISION, label TEXT,"
                    " created_at TIMESTAMPTZ, features JSONB, content_hash TEXT) ON COMMIT DROP"
                )
            )
            _copy_frame(conn, valid)
            # An id already stored with other content keeps the stored row.
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
            accepted = conn.execute(
                text(
                    "INSERT INTO feedback (feedback_id, user_id, item_id, text, satisfaction, label, features,"
                    " content_hash, created_at)"
                    " SELECT feedback_id, user_id, item_id, text, satisfaction, label, features, content_hash,"
                    " created_at FROM feedback_staging WHERE NOT (ord = ANY(:conflicts))"
                    " ON CONFLICT (feedback_id) DO NOTHING"
                ),
                {"conflicts": stored_conflicts},
            ).rowcount
            records = valid.to_dict("records") if stored_conflicts else []
            rejections += [
                _conflict_rejection(records[i - 1], "feedback_id already stored with other content; it is kept")
                for i in stored_conflicts
            ]
            duplicates += len(valid) - accepted - len(stored_conflicts)
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
    return accepted, duplicates, rejections


def ingest(
    engine: Engine,
    source: str | Path,
    rules: IngestRules,
    *,
    fmt: str | None = None,
    now: datetime | None = None,
    batch_rows: int = 50_000,
    stdin=None,
    on_progress: Callable[[IngestSummary], None] | None = None,
) -> IngestSummary:
    """Read, validate and load one feedback file (or standard input, as ``-``).

    Args:
        engine: the refit database.
        source: a CSV, JSONL or Parquet path, or ``-`` for standard input.
        rules: what a valid row is, and the column mapping.
        fmt: the format, when the name does not tell (``csv``, ``jsonl``, ``parquet``).
        now: the clock for the future-timestamp check.
        batch_rows: rows per committed batch.
        on_progress: called after each batch with the running summary.

    Returns:
        Counts of accepted, duplicate and quarantined rows, with the reasons and rows/s.
    """
    started = time.perf_counter()
    started_at = datetime.now(timezone.utc)
    now = now or started_at
    name, content, fmt = read_source(source, fmt, stdin)
    summary = IngestSummary(source=name)
    reasons: Counter = Counter()
    kinds: dict[str, str] = {}
    checked_columns = False
    for batch in iter_batches(name, content, fmt, batch_rows):
        if not checked_columns and batch.frame.empty and batch.rejections:
            first = batch.rejections[0]
            raise InputError(f"{name}: not a readable {fmt} file: no row parses (row {first.line_no}: {first.detail})")
        if not checked_columns and len(batch.frame.columns):
            _require_columns(name, set(batch.frame.columns), rules)
            checked_columns = True
        valid, rejections = validate_batch(batch, rules, now, kinds)
        unparsed = [replace(r, raw=_safe_raw(r.raw, rules)) for r in batch.rejections]
        accepted, duplicates, rejected = load_batch(engine, name, valid, unparsed + rejections)
        summary.rows_read += len(batch.frame) + len(batch.rejections)
        summary.accepted += accepted
        summary.duplicates += duplicates
        summary.quarantined += len(rejected)
        reasons.update(r.reason for r in rejected)
        summary.reasons = dict(reasons)
        summary.seconds = time.perf_counter() - started
        if on_progress:
            on_progress(summary)
    if not checked_columns:
        raise InputError(f"{name}: no row could be read")
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO ingest_runs (source, rows_read, accepted, duplicates, quarantined, started_at)"
                " VALUES (:s, :r, :a, :d, :q, :t)"
            ),
            {
                "s": name,
                "r": summary.rows_read,
                "a": summary.accepted,
                "d": summary.duplicates,
                "q": summary.quarantined,
                "t": started_at,
            },
        )
    summary.seconds = time.perf_counter() - started
    return summary


def _require_columns(name: str, columns: set[str], rules: IngestRules) -> None:
    mapping = dict(rules.column_map)
    for target, src in mapping.items():
        if src not in columns:
            raise InputError(f"{name}: --map {target}={src} names a column the file does not have")
    present = {dict((v, k) for k, v in mapping.items()).get(c, c) for c in columns}
    missing = [c for c in ("text", "created_at") if c not in present]
    if missing:
        shown = ", ".join(sorted(columns)[:12]) or "none"
        raise InputError(f"{name}: required column(s) {', '.join(missing)} missing (found: {shown})")
    if not present & {"satisfaction", "rating", "label"}:
        raise InputError(f"{name}: needs one of the columns satisfaction, rating or label")


def ingest_file(engine: Engine, path: Path, rules: IngestRules, now: datetime | None = None) -> IngestSummary:
    """Ingest one file (see :func:`ingest`)."""
    return ingest(engine, path, rules, now=now)
