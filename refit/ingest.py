"""Feedback ingestion: read a file, validate each row, load the valid rows through COPY.

Rows that fail validation go to ``quarantine`` with a reason and the raw row; the valid rows in
the same file still land. The whole load is one transaction, so an interrupted ingest leaves
nothing behind, and a re-run skips rows already stored (by external feedback id), so loading the
same file twice adds nothing.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, text

from refit.db import INGEST_LOCK
from refit.errors import InputError

RESERVED = ("feedback_id", "user_id", "item_id", "text", "created_at", "satisfaction", "rating", "label")
FUTURE_TOLERANCE = timedelta(minutes=5)
FEATURE_TYPES = (int, float, str, bool)


@dataclass(frozen=True)
class IngestRules:
    """What makes a row valid; built from the settings."""

    labels: tuple[str, ...]
    rating_min: float = 1.0
    rating_max: float = 5.0
    max_text_chars: int = 5000

    @classmethod
    def from_settings(cls, settings) -> IngestRules:
        return cls(
            labels=tuple(settings.labels),
            rating_min=settings.rating_min,
            rating_max=settings.rating_max,
            max_text_chars=settings.max_text_chars,
        )


@dataclass
class FeedbackRecord:
    feedback_id: str
    user_id: str | None
    item_id: str | None
    text: str
    satisfaction: float
    label: str
    features: dict[str, Any]
    created_at: datetime
    content_hash: str


@dataclass
class Rejection:
    line_no: int
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

    def as_dict(self) -> dict:
        return asdict(self)


class RowError(ValueError):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


# --- reading ---------------------------------------------------------------------------------


def read_rows(path: Path) -> list[tuple[int, dict[str, Any] | None, str | None]]:
    """Rows of a CSV or JSONL file as ``(line_no, row, error)``; a row that cannot be parsed has
    ``row=None`` and the parse error. A file that cannot be read at all raises :class:`InputError`.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
    # surrogateescape keeps invalid UTF-8 bytes visible per row instead of failing the file.
    content = raw.decode("utf-8", errors="surrogateescape").lstrip("\ufeff")
    if not content.strip():
        raise InputError(f"{path} is empty")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        return _read_jsonl(path, content)
    if suffix in (".csv", ".tsv", ".txt", ""):
        return _read_csv(path, content, delimiter="\t" if suffix == ".tsv" else ",")
    raise InputError(f"{path}: unsupported file type {suffix!r} (expected .csv or .jsonl)")


def _read_jsonl(path: Path, content: str) -> list[tuple[int, dict | None, str | None]]:
    rows: list[tuple[int, dict | None, str | None]] = []
    parsed_any = False
    for line_no, line in enumerate(content.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            rows.append((line_no, {"_line": line[:2000]}, f"not valid JSON: {exc.msg}"))
            continue
        if not isinstance(value, dict):
            rows.append((line_no, {"_line": line[:2000]}, "a JSONL row must be an object"))
            continue
        parsed_any = True
        rows.append((line_no, value, None))
    if not parsed_any:
        raise InputError(f"{path}: no line is a JSON object; is it really JSONL?")
    _require_columns(path, {k for _, r, e in rows if e is None for k in r})
    return rows


def _read_csv(path: Path, content: str, delimiter: str) -> list[tuple[int, dict | None, str | None]]:
    if "\x00" in content[:4096] and content.count("\x00") > len(content) // 10:
        raise InputError(f"{path} looks binary, not CSV")
    reader = csv.DictReader(io.StringIO(content, newline=""), delimiter=delimiter, strict=True)
    try:
        header = reader.fieldnames or []
    except csv.Error as exc:
        raise InputError(f"{path}: not a readable CSV file ({exc})") from None
    _require_columns(path, set(header))
    rows: list[tuple[int, dict | None, str | None]] = []
    try:
        for row in reader:
            line_no = reader.line_num
            if None in row:  # more fields than the header
                extra = row.pop(None)
                rows.append((line_no, {**row, "_extra": extra}, "more fields than the header"))
                continue
            if any(v is None for v in row.values()):
                rows.append((line_no, {k: v for k, v in row.items() if v is not None}, "fewer fields than the header"))
                continue
            rows.append((line_no, row, None))
    except csv.Error as exc:
        raise InputError(f"{path}: malformed CSV at line {reader.line_num}: {exc}") from None
    return rows


def _require_columns(path: Path, columns: set[str]) -> None:
    missing = [c for c in ("text", "created_at") if c not in columns]
    if missing:
        shown = ", ".join(sorted(columns)[:12]) or "none"
        raise InputError(f"{path}: required column(s) {', '.join(missing)} missing (found: {shown})")
    if not columns & {"satisfaction", "rating", "label"}:
        raise InputError(f"{path}: needs one of the columns satisfaction, rating or label")


# --- validation ------------------------------------------------------------------------------


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip() == "")


def _text_field(raw: dict, name: str) -> str | None:
    value = raw.get(name)
    if _blank(value):
        return None
    return str(value).strip()


def parse_timestamp(value: Any, now: datetime) -> datetime:
    """An aware UTC datetime from ISO-8601 text or epoch seconds."""
    if _blank(value):
        raise RowError("bad_timestamp", "created_at is missing")
    try:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            stamp = datetime.fromtimestamp(float(value), tz=timezone.utc)
        else:
            raw = str(value).strip()
            stamp = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except (ValueError, OverflowError, OSError):
        raise RowError("bad_timestamp", f"cannot parse created_at {str(value)[:40]!r}") from None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=timezone.utc)
    stamp = stamp.astimezone(timezone.utc)
    if stamp > now + FUTURE_TOLERANCE:
        raise RowError("future_timestamp", f"created_at {stamp.isoformat()} is in the future")
    return stamp


def _number(value: Any, name: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise RowError(f"bad_{name}", f"{name} {str(value)[:40]!r} is not a number") from None
    if not math.isfinite(number):
        raise RowError(f"bad_{name}", f"{name} is not finite")
    return number


def label_for(satisfaction: float, labels: tuple[str, ...]) -> str:
    """The class of a satisfaction score: equal-width bins over [0, 1], in label order."""
    index = min(int(satisfaction * len(labels)), len(labels) - 1)
    return labels[index]


def satisfaction_for(label: str, labels: tuple[str, ...]) -> float:
    """The satisfaction of a class: its position in the label order, scaled to [0, 1]."""
    return labels.index(label) / (len(labels) - 1)


def _features(raw: dict) -> dict[str, Any]:
    features: dict[str, Any] = {}
    for key, value in raw.items():
        if key in RESERVED or key.startswith("_"):
            continue
        if _blank(value):
            continue
        if isinstance(value, (bool, int, float)):
            if isinstance(value, float) and not math.isfinite(value):
                raise RowError("bad_feature", f"feature {key!r} is not finite")
            features[key] = value
        elif isinstance(value, str):
            try:
                number = float(value)
                features[key] = number if math.isfinite(number) else value
            except ValueError:
                features[key] = value.strip()
        else:
            raise RowError("bad_feature", f"feature {key!r} has type {type(value).__name__}")
    return features


def content_hash(payload: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def validate_row(raw: dict[str, Any], rules: IngestRules, now: datetime) -> FeedbackRecord:
    """A validated record, or :class:`RowError` with the quarantine reason."""
    body = raw.get("text")
    if _blank(body):
        raise RowError("missing_text", "text is missing or empty")
    body = str(body)
    if "\x00" in body:
        raise RowError("invalid_text", "text contains NUL bytes")
    try:
        body.encode("utf-8")
    except UnicodeEncodeError:
        raise RowError("invalid_utf8", "text is not valid UTF-8") from None
    body = body.strip()
    if len(body) > rules.max_text_chars:
        raise RowError("text_too_long", f"text has {len(body)} characters (max {rules.max_text_chars})")
    for name in ("feedback_id", "user_id", "item_id"):
        value = raw.get(name)
        if value is not None and not isinstance(value, (str, int)):
            raise RowError(f"bad_{name}", f"{name} must be text")
        if isinstance(value, str) and ("\x00" in value or len(value) > 256):
            raise RowError(f"bad_{name}", f"{name} is not a valid id")
    created_at = parse_timestamp(raw.get("created_at"), now)

    satisfaction: float | None = None
    if not _blank(raw.get("satisfaction")):
        satisfaction = _number(raw["satisfaction"], "satisfaction")
        if not 0.0 <= satisfaction <= 1.0:
            raise RowError("satisfaction_out_of_range", f"satisfaction {satisfaction} is outside [0, 1]")
    elif not _blank(raw.get("rating")):
        rating = _number(raw["rating"], "rating")
        if not rules.rating_min <= rating <= rules.rating_max:
            raise RowError(
                "rating_out_of_range", f"rating {rating} is outside [{rules.rating_min}, {rules.rating_max}]"
            )
        satisfaction = (rating - rules.rating_min) / (rules.rating_max - rules.rating_min)
    label = _text_field(raw, "label")
    if label is not None and label not in rules.labels:
        raise RowError("unknown_label", f"label {label[:40]!r} is not one of {', '.join(rules.labels)}")
    if satisfaction is None and label is None:
        raise RowError("missing_target", "no satisfaction, rating or label")
    if label is None:
        label = label_for(satisfaction, rules.labels)
    if satisfaction is None:
        satisfaction = satisfaction_for(label, rules.labels)

    features = _features(raw)
    user_id, item_id = _text_field(raw, "user_id"), _text_field(raw, "item_id")
    payload = {
        "text": body,
        "satisfaction": round(satisfaction, 9),
        "label": label,
        "features": features,
        "user_id": user_id,
        "item_id": item_id,
        "created_at": created_at.isoformat(),
    }
    digest = content_hash(payload)
    feedback_id = _text_field(raw, "feedback_id") or f"h-{digest[:32]}"
    return FeedbackRecord(
        feedback_id=feedback_id,
        user_id=user_id,
        item_id=item_id,
        text=body,
        satisfaction=satisfaction,
        label=label,
        features=features,
        created_at=created_at,
        content_hash=digest,
    )


def validate_rows(
    rows: list[tuple[int, dict | None, str | None]], rules: IngestRules, now: datetime | None = None
) -> tuple[list[FeedbackRecord], list[Rejection], int]:
    """Split parsed rows into records and rejections; within-file repeats are resolved here.

    Returns:
        ``(records, rejections, in_file_duplicates)``.
    """
    now = now or datetime.now(timezone.utc)
    records: dict[str, FeedbackRecord] = {}
    rejections: list[Rejection] = []
    duplicates = 0
    for line_no, raw, parse_error in rows:
        if parse_error is not None:
            rejections.append(Rejection(line_no, "malformed_row", parse_error, _safe_raw(raw or {})))
            continue
        try:
            record = validate_row(raw, rules, now)
        except RowError as exc:
            fid = raw.get("feedback_id")
            rejections.append(
                Rejection(line_no, exc.reason, exc.detail, _safe_raw(raw), str(fid) if fid is not None else None)
            )
            continue
        first = records.get(record.feedback_id)
        if first is None:
            records[record.feedback_id] = record
        elif first.content_hash == record.content_hash:
            duplicates += 1
        else:
            rejections.append(
                Rejection(
                    line_no,
                    "duplicate_conflict",
                    "feedback_id seen earlier in the file with different content; the first is kept",
                    _safe_raw(raw),
                    record.feedback_id,
                )
            )
    return list(records.values()), rejections, duplicates


def _safe_raw(raw: dict) -> dict:
    """The raw row as JSON-storable text: invalid bytes escaped, NULs made visible."""

    def clean(value: Any) -> Any:
        if isinstance(value, str):
            return value.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")
        if isinstance(value, float) and not math.isfinite(value):
            return str(value)
        if isinstance(value, (dict, list)):
            return json.loads(json.dumps(value, default=str))
        return value

    return {str(k): clean(v) for k, v in raw.items()}


# --- loading ---------------------------------------------------------------------------------

_STAGING_COLUMNS = (
    "ord", "feedback_id", "user_id", "item_id", "text", "satisfaction", "label",
    "features", "content_hash", "created_at",
)  # fmt: skip


def _copy_buffer(records: list[FeedbackRecord]) -> io.StringIO:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    for ord_, r in enumerate(records):
        writer.writerow(
            [
                ord_,
                r.feedback_id,
                r.user_id if r.user_id is not None else "\\N",
                r.item_id if r.item_id is not None else "\\N",
                r.text,
                repr(r.satisfaction),
                r.label,
                json.dumps(r.features, sort_keys=True),
                r.content_hash,
                r.created_at.isoformat(),
            ]
        )
    buffer.seek(0)
    return buffer


def load_records(
    engine: Engine,
    source: str,
    records: list[FeedbackRecord],
    rejections: list[Rejection],
    in_file_duplicates: int,
    rows_read: int,
) -> IngestSummary:
    """Write records and rejections in one transaction; see the module docstring."""
    started = datetime.now(timezone.utc)
    summary = IngestSummary(source=source, rows_read=rows_read, duplicates=in_file_duplicates)
    with engine.begin() as conn:
        # Serialize ingests so that feedback ids (the watermark) become visible in order.
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": INGEST_LOCK})
        conn.execute(
            text(
                "CREATE TEMP TABLE feedback_staging ("
                " ord INTEGER, feedback_id TEXT, user_id TEXT, item_id TEXT, text TEXT,"
                " satisfaction DOUBLE PRECISION, label TEXT, features JSONB, content_hash TEXT,"
                " created_at TIMESTAMPTZ) ON COMMIT DROP"
            )
        )
        cursor = conn.connection.dbapi_connection.cursor()
        cursor.copy_expert(
            f"COPY feedback_staging ({', '.join(_STAGING_COLUMNS)}) FROM STDIN WITH (FORMAT csv, NULL '\\N')",
            _copy_buffer(records),
        )
        conflicts = conn.execute(
            text(
                "SELECT s.ord, s.feedback_id FROM feedback_staging s"
                " JOIN feedback f ON f.feedback_id = s.feedback_id"
                " WHERE f.content_hash <> s.content_hash ORDER BY s.ord"
            )
        ).all()
        for row in conflicts:
            record = records[row.ord]
            rejections.append(
                Rejection(
                    0,
                    "duplicate_conflict",
                    "feedback_id already stored with different content; the stored row is kept",
                    _safe_raw({**asdict(record), "created_at": record.created_at.isoformat()}),
                    record.feedback_id,
                )
            )
        inserted = conn.execute(
            text(
                "INSERT INTO feedback (feedback_id, user_id, item_id, text, satisfaction, label, features,"
                " content_hash, created_at)"
                " SELECT feedback_id, user_id, item_id, text, satisfaction, label, features, content_hash,"
                " created_at FROM feedback_staging ORDER BY ord"
                " ON CONFLICT (feedback_id) DO NOTHING"
            )
        ).rowcount
        summary.accepted = inserted
        summary.duplicates += len(records) - inserted - len(conflicts)
        if rejections:
            conn.execute(
                text(
                    "INSERT INTO quarantine (source, line_no, feedback_id, reason, detail, raw)"
                    " VALUES (:source, :line_no, :feedback_id, :reason, :detail, CAST(:raw AS JSONB))"
                ),
                [
                    {
                        "source": source,
                        "line_no": r.line_no or None,
                        "feedback_id": r.feedback_id,
                        "reason": r.reason,
                        "detail": r.detail,
                        "raw": json.dumps(r.raw, default=str),
                    }
                    for r in rejections
                ],
            )
        summary.quarantined = len(rejections)
        summary.reasons = dict(Counter(r.reason for r in rejections))
        conn.execute(
            text(
                "INSERT INTO ingest_runs (source, rows_read, accepted, duplicates, quarantined, started_at)"
                " VALUES (:s, :r, :a, :d, :q, :t)"
            ),
            {
                "s": source,
                "r": rows_read,
                "a": summary.accepted,
                "d": summary.duplicates,
                "q": summary.quarantined,
                "t": started,
            },
        )
    return summary


def ingest_file(engine: Engine, path: Path, rules: IngestRules, now: datetime | None = None) -> IngestSummary:
    """Read, validate and load one feedback file.

    Args:
        engine: the refit database.
        path: a CSV or JSONL file.
        rules: what a valid row is.
        now: the clock for the future-timestamp check (defaults to the current time).

    Returns:
        Counts of accepted, duplicate and quarantined rows, with the quarantine reasons.
    """
    rows = read_rows(path)
    records, rejections, duplicates = validate_rows(rows, rules, now)
    return load_records(engine, str(path), records, rejections, duplicates, rows_read=len(rows))
