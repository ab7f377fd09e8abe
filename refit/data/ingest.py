"""Feedback ingestion: read a file, validate it in bulk, load the valid rows through COPY.

The pipeline, per batch of rows:

1. **read** CSV, JSONL or Parquet (a path or standard input) into a frame of raw values;
   a row that cannot even be parsed becomes a ``malformed_row`` rejection (:mod:`refit.data.read`);
2. **map** the team's column names onto refit's (``--map text=review_body``);
3. **validate** column-wise (vectorized): each bad row gets the first reason that applies;
4. **redact** PII in the text (or drop the row, or leave it, as configured) (:mod:`refit.data.validate`);
5. **COPY** the valid rows straight into ``feedback`` when none of their ids is stored yet;
   else into a temporary staging table, from which one set-based statement quarantines
   conflicting duplicates and inserts the rest with ``ON CONFLICT (feedback_id) DO NOTHING``
   (:mod:`refit.data.load`). A batch is written while the next one is validated.

Each batch commits on its own, so an interrupted ingest keeps what it finished and a re-run skips
it (by feedback id, and by the raw row's hash in ``quarantine``): the table ends up the same as
after one clean run.

A row with text and no target is stored unlabelled (it trains nothing until its label arrives); a
later file with the same ``feedback_id``, the same text and a target turns it labelled, as an edit.
"""

from __future__ import annotations

import functools
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import Engine, text

from refit.core.errors import InputError
from refit.data.load import BatchWriter, Loaded, load_rows, stored_vector_dims
from refit.data.read import iter_batches, read_source
from refit.data.schema import SchemaInUse
from refit.data.validate import IngestRules, safe_raw, validate_batch


@dataclass
class IngestSummary:
    """What one ingest did: rows read, accepted, duplicate and quarantined, the reasons, the time."""

    source: str
    rows_read: int = 0
    accepted: int = 0
    duplicates: int = 0
    quarantined: int = 0
    unlabelled: int = 0  # of the rows accepted, those stored without a target
    labelled_later: int = 0  # stored unlabelled rows whose label this file brought (an edit)
    reasons: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    schema_version: int | None = None  # the feature schema the rows were validated against
    new_features: list[str] = field(default_factory=list)  # feature columns stored but not in the schema
    new_values: dict[str, int] = field(default_factory=dict)  # categorical values the schema has not seen

    @property
    def rows_per_second(self) -> float:
        return self.rows_read / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict:
        """The summary as plain values, with ``rows_per_second``."""
        return {**asdict(self), "rows_per_second": round(self.rows_per_second, 1)}


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
    vector_dims = stored_vector_dims(engine, rules.vector_feature)
    schema = SchemaInUse.start(engine, rules, vector_dims, name, f"inferred from the first ingest of {name}")
    checked_columns = False

    def loaded(batch, valid, result: Loaded) -> None:
        schema.record_first(valid, vector_dims)
        summary.rows_read += len(batch.frame) + len(batch.rejections)
        summary.accepted += result.accepted
        summary.duplicates += result.duplicates
        summary.quarantined += len(result.rejections)
        summary.unlabelled += result.unlabelled
        summary.labelled_later += result.edited
        reasons.update(r.reason for r in result.rejections)
        summary.reasons = dict(reasons)
        summary.seconds = time.perf_counter() - started
        summary.schema_version, summary.new_features = schema.version, schema.new_features()
        summary.new_values = dict(schema.unseen_values)
        if on_progress:
            on_progress(summary)

    # Batch N is written while batch N + 1 is read and validated (BatchWriter), once the feature
    # schema is recorded: until then a batch's types follow what the previous one recorded.
    with BatchWriter() as writer:
        for batch in iter_batches(name, content, fmt, batch_rows):
            if not checked_columns and batch.frame.empty and batch.rejections:
                first = batch.rejections[0]
                raise InputError(
                    f"{name}: not a readable {fmt} file: no row parses (row {first.line_no}: {first.detail})"
                )
            if not checked_columns and len(batch.frame.columns):
                require_columns(name, set(batch.frame.columns), rules)
                checked_columns = True
            valid, rejections = validate_batch(batch, rules, now, schema.kinds_for(batch.frame), vector_dims)
            unparsed = [replace(r, raw=safe_raw(r.raw, rules)) for r in batch.rejections]
            writer.submit(
                _load, engine, name, valid, unparsed + rejections, then=functools.partial(loaded, batch, valid)
            )
            if schema.version is None:
                writer.wait()
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


def _load(engine: Engine, source: str, valid, rejections) -> Loaded:
    """One batch, in one transaction of its own (see :func:`refit.data.load.load_rows`)."""
    with engine.begin() as conn:
        return load_rows(conn, source, valid, rejections)


def require_columns(name: str, columns: set[str], rules: IngestRules) -> None:
    """Refuse, in one line, columns that cannot make feedback: a ``--map`` (or
    ``REFIT_COLUMN_MAP``) entry naming a missing column, no text or created_at, no target."""
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
        # A missing column is far likelier a missing --map than a table of unlabelled rows; an
        # empty column of them is fine (rows without a value are stored unlabelled).
        raise InputError(
            f"{name}: needs one of the columns satisfaction, rating or label (it may be empty: rows without"
            " a value are stored unlabelled)"
        )


def ingest_file(engine: Engine, path: Path, rules: IngestRules, now: datetime | None = None) -> IngestSummary:
    """Ingest one file (see :func:`ingest`)."""
    return ingest(engine, path, rules, now=now)
