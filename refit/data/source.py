"""Pulling feedback from a team's own Postgres table, view or query, exactly in step with it.

One sync (``refit sync``, the ``sync`` deployment):

1. opens one ``REPEATABLE READ READ ONLY`` transaction on the source, so everything it reads
   comes from one snapshot, and notes that snapshot's xmin horizon
   (``pg_snapshot_xmin(pg_current_snapshot())``: every transaction with a lower id has ended);
2. checks the source's columns against those of the first sync (a renamed, dropped or retyped
   column is a one-line error, and nothing is synced) and against the column map;
3. streams the rows past the cursor, in cursor order, out with ``COPY (SELECT ...) TO STDOUT``
   into a spool file, and reads them back in batches;
4. sends each batch through the same validation, PII redaction and quarantine as a file
   (:func:`refit.data.validate.validate_batch`, :func:`refit.data.load.load_rows`), with edits
   replacing the stored version (kept in ``feedback_history``), and moves the cursor in the
   same transaction as the batch's rows. A row without a target is stored unlabelled; when the
   source row is edited to give it one (and its cursor moves), the labelled version replaces it;
5. every ``REFIT_SOURCE_RECONCILE_HOURS``, compares all source keys (in the same snapshot) with
   the rows that came from this source, and forgets the rows deleted at the source as
   ``refit forget`` does (not needed on a first sync, while refit holds nothing from the source:
   all it holds then comes from this snapshot).

**Late commits.** Ids from a sequence (and ``updated_at`` from the clock) commit out of order: a
row with a lower cursor can become visible after a higher one was read. The snapshot tells when
that can no longer happen. Each sync records a *mark*: the first transaction id not yet assigned
``SETTLE_S`` after its snapshot (the *settled xmax*), and the highest cursor it saw. A statement
draws its row's cursor value a moment before it writes the row, and only the write gives its
transaction an id; ``SETTLE_S`` covers that moment. So a transaction whose id is at or above the
settled xmax drew its cursor values after the snapshot, above that sync's highest. At the next sync
the snapshot's xmin horizon (``pg_snapshot_xmin(pg_current_snapshot())``) is the oldest transaction
still open: the cursor moves to the mark of the latest sync whose settled xmax is at or below it,
and no row can later commit below it. When no transaction is open at the snapshot and none has
begun writing by the settled xmax, the cursor moves to the end of the rows. The rows past it are
loaded now and read again by the next sync (identical rows are skipped by their content hash): with
short writer transactions, the rows of the previous sync once more; after a transaction held open
for an hour, the hour's rows until it ends. This holds when the cursor value is drawn by the
statement that writes the row (``DEFAULT nextval``, ``clock_timestamp()``, a trigger); ``DEFAULT
now()`` is the transaction's start, drawn before the first write.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import json
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

import numpy as np
import psycopg2
import pyarrow as pa
from pyarrow import csv as pacsv
from sqlalchemy import Engine, create_engine, make_url, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool

from refit.core.errors import InputError, RefitError
from refit.data.db import INGEST_LOCK
from refit.data.ingest import require_columns
from refit.data.load import BatchWriter, Loaded, load_rows, stored_vector_dims
from refit.data.privacy import forget_rows
from refit.data.read import RawBatch
from refit.data.schema import SchemaInUse
from refit.data.validate import IngestRules, validate_batch

SYNC_LOCK = 0x7265666976  # one sync at a time per refit database
SETTLE_S = 0.1  # how long a statement may take from drawing a row's cursor value to writing it
MAX_MARKS = 10_000  # one per sync while a transaction stays open: 100 days at 15 minutes


@dataclass(frozen=True)
class SourceSpec:
    """What to pull and how to follow it; from the settings."""

    url: str
    table: str | None = None
    query: str | None = None
    key: str = "feedback_id"  # the source column mapped to feedback_id: unique, stable
    cursor: str | None = None  # a monotonic id (None: the key) or updated_at
    reconcile_hours: float = 24.0
    timeout_s: int = 600

    def __post_init__(self) -> None:
        if self.cursor is None:
            object.__setattr__(self, "cursor", self.key)

    @classmethod
    def from_settings(cls, settings, rules: IngestRules) -> SourceSpec:
        """The source of ``settings``; its key is the column ``rules`` map to ``feedback_id``."""
        url = settings.require_source()
        key = dict(rules.column_map).get("feedback_id", "feedback_id")
        return cls(
            url=url,
            table=settings.source_table,
            query=settings.source_query,
            key=key,
            cursor=settings.source_cursor or key,
            reconcile_hours=settings.source_reconcile_hours,
            timeout_s=settings.source_timeout_s,
        )

    @property
    def name(self) -> str:
        """How refit names this source: ``pg:<table>``, or ``pg:query-<hash>`` for a query."""
        if self.table:
            return f"pg:{self.table}"
        return "pg:query-" + hashlib.sha256((self.query or "").encode()).hexdigest()[:12]

    def relation(self) -> str:
        """The SELECT the sync reads from: the query, or all of the table."""
        if self.query:
            return self.query
        return "SELECT * FROM " + ".".join(_ident(part) for part in (self.table or "").split("."))


@dataclass
class SyncSummary:
    """What one sync did."""

    source: str
    rows_read: int = 0
    accepted: int = 0  # rows inserted, edits included
    edited: int = 0  # stored rows replaced by their edited version
    duplicates: int = 0  # rows already stored as they are (re-read after the cursor's hold)
    unlabelled: int = 0  # of the rows inserted, those without a target
    quarantined: int = 0
    deleted: int = 0  # rows forgotten because the source no longer has them
    reconciled: bool = False
    held_back: int = 0  # rows past the cursor (a transaction was open): read again next time
    cursor: str | None = None
    horizon: int | None = None
    reasons: dict[str, int] = field(default_factory=dict)
    new_columns: list[str] = field(default_factory=list)
    schema_version: int | None = None  # the feature schema the rows were validated against
    new_features: list[str] = field(default_factory=list)  # feature columns stored but not in the schema
    new_values: dict[str, int] = field(default_factory=dict)  # categorical values the schema has not seen
    seconds: float = 0.0

    def as_dict(self) -> dict:
        """The summary as plain values, with ``rows_per_second``."""
        rate = self.rows_read / self.seconds if self.seconds > 0 else 0.0
        return {**asdict(self), "rows_per_second": round(rate, 1)}


def source_engine(url: str) -> Engine:
    """An engine on the source: no pool (a sync is one connection, then gone), a short connect
    timeout (a source that is down fails fast and the task retries), named in ``pg_stat_activity``."""
    return create_engine(
        url, poolclass=NullPool, connect_args={"connect_timeout": 10, "application_name": "refit-sync"}
    )


def sync_source(
    engine: Engine,
    spec: SourceSpec,
    rules: IngestRules,
    *,
    batch_rows: int = 50_000,
    reconcile: bool | None = None,
    now: datetime | None = None,
) -> SyncSummary:
    """Pull what is new at the source into refit's feedback, once.

    Args:
        engine: the refit database.
        spec: the source.
        rules: validation, redaction and the column map, as for files.
        batch_rows: rows per committed batch (the cursor moves with each).
        reconcile: compare every source key now (True), never (False), or when
            ``spec.reconcile_hours`` have passed since the last time (None).
        now: the clock for the future-timestamp check.

    Returns:
        The counts, the cursor and the snapshot's horizon.

    Raises:
        InputError: the source's columns changed, or do not fit the column map; nothing synced.
        RefitError: the source is unreachable or failed (``permanent`` when retrying cannot help).
    """
    started = time.perf_counter()
    started_at = datetime.now(timezone.utc)
    now = now or started_at
    summary = SyncSummary(source=spec.name)
    with engine.connect() as lock:
        # A second sync (the schedule's, drift-check's, a hand-started one) waits for the running
        # one to finish, then finds little left to do.
        lock.execute(text("SELECT pg_advisory_lock(:k)"), {"k": SYNC_LOCK})
        lock.commit()
        try:
            _sync(engine, spec, rules, summary, batch_rows, reconcile, now)
        except psycopg2.Error as exc:
            # Raised by the source's own cursor: a lost connection or a cancelled (slow) statement
            # is worth retrying; a refused statement (no such table, no permission) is not.
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise RefitError(
                f"{spec.name}: the source failed: {first}", permanent=not isinstance(exc, psycopg2.OperationalError)
            ) from exc
        finally:
            lock.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": SYNC_LOCK})
            lock.commit()
    summary.seconds = time.perf_counter() - started
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO ingest_runs (source, rows_read, accepted, duplicates, quarantined, started_at)"
                " VALUES (:s, :r, :a, :d, :q, :t)"
            ),
            {
                "s": spec.name,
                "r": summary.rows_read,
                "a": summary.accepted,
                "d": summary.duplicates,
                "q": summary.quarantined,
                "t": started_at,
            },
        )
    return summary


def _sync(engine, spec, rules, summary, batch_rows, reconcile, now) -> None:
    state = read_cursor(engine, spec.name)
    try:
        raw = source_engine(spec.url).raw_connection()
    except (psycopg2.OperationalError, OperationalError) as exc:
        reason = getattr(exc, "orig", None) or exc
        first = (str(reason).strip().splitlines() or [type(exc).__name__])[0]
        url = make_url(spec.url).render_as_string(hide_password=True)
        raise RefitError(f"{spec.name}: cannot reach the source at {url}: {first}") from exc
    try:
        dbapi = raw.dbapi_connection
        dbapi.set_session(isolation_level="REPEATABLE READ", readonly=True)
        cur = dbapi.cursor()
        # SET LOCAL takes no snapshot; the first SELECT below fixes it for the whole sync.
        cur.execute("SET LOCAL TimeZone = 'UTC'")
        cur.execute("SET LOCAL DateStyle = 'ISO, YMD'")
        cur.execute("SET LOCAL statement_timeout = %s", (spec.timeout_s * 1000,))
        cur.execute(
            "SELECT pg_snapshot_xmin(s)::text::bigint, pg_snapshot_xmax(s)::text::bigint FROM pg_current_snapshot() s"
        )
        horizon, xmax = cur.fetchone()
        snapped = time.monotonic()
        summary.horizon = horizon
        columns = _describe(cur, spec)
        settled = _settled_xmax(spec.url, snapped)
        stored = (state or {}).get("columns") or {}
        check_columns(spec, rules, columns, stored)
        summary.new_columns = sorted(set(columns) - set(stored)) if stored else []
        mapped = set(dict(rules.column_map).values())
        start = (state or {}).get("cursor_value"), (state or {}).get("cursor_key")
        # Everything this source ever gave refit comes from this snapshot: nothing can be deleted.
        whole = start == (None, None) and not _holds_rows(engine, spec.name)
        marks = list((state or {}).get("marks") or [])
        # Where the cursor may go: to the end of the rows when no transaction is open; else to the
        # latest mark that every open transaction began after; else nowhere.
        below = [i for i, m in enumerate(marks) if m["xmax"] <= horizon]
        target = start
        if horizon >= xmax and settled == xmax:
            target = None
        elif below:
            target = marks[below[-1]]["cursor"], marks[below[-1]]["key"]
        if below:
            marks = marks[below[-1] :]  # older marks are behind this one for good: the horizon only rises
        with tempfile.TemporaryFile() as spool:
            cur.copy_expert(_copy_rows_sql(cur, spec, columns, mapped, start, target), spool)
            position, highest = _load_spool(engine, spec, rules, summary, spool, batch_rows, start, target, now)
        if highest is None:
            highest = (marks[-1]["cursor"], marks[-1]["key"]) if marks else start
        marks.append({"xmax": settled, "cursor": highest[0], "key": highest[1]})
        summary.cursor = position[0]
        with engine.begin() as conn:
            save_cursor(conn, spec.name, position, horizon, columns, marks[-MAX_MARKS:])
        due = reconcile
        if due is None:
            last = (state or {}).get("reconciled_at")
            due = last is None or (now - last).total_seconds() >= spec.reconcile_hours * 3600
        if due and whole:  # a reconciliation now would compare the snapshot with itself
            with engine.begin() as conn:
                conn.execute(
                    text("UPDATE source_cursors SET reconciled_at = now() WHERE source = :o"), {"o": spec.name}
                )
            summary.reconciled = True
        elif due:
            deleted = reconcile_deletes(engine, cur, spec)
            summary.reconciled = deleted is not None
            summary.deleted = deleted or 0
    finally:
        raw.close()  # the read-only transaction ends with the connection


def _settled_xmax(url: str, snapped: float) -> int:
    """The first transaction id not yet assigned, at least ``SETTLE_S`` after the sync's snapshot
    was taken at ``snapped`` (``time.monotonic()``), read on a connection of its own.

    A statement draws its row's cursor value (``nextval``, ``clock_timestamp()``) a moment
    *before* it writes the row, and only the write gives its transaction an id. A transaction
    caught in that moment at the snapshot holds no id yet, so the snapshot neither shows it open
    nor covers it by its ``xmax``; by ``SETTLE_S`` later it holds an id below this one.
    """
    time.sleep(max(0.0, snapped + SETTLE_S - time.monotonic()))
    raw = source_engine(url).raw_connection()
    try:
        cur = raw.cursor()
        cur.execute("SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint")
        return cur.fetchone()[0]
    finally:
        raw.close()


def _holds_rows(engine: Engine, source: str) -> bool:
    """Whether refit holds any row (stored or quarantined) that came from ``source``."""
    with engine.connect() as conn:
        return conn.execute(
            text(
                "SELECT EXISTS (SELECT 1 FROM feedback WHERE origin = :o)"
                " OR EXISTS (SELECT 1 FROM quarantine WHERE source = :o)"
            ),
            {"o": source},
        ).scalar()


def _load_spool(engine, spec, rules, summary, spool, batch_rows, position, target, now) -> tuple[tuple, tuple | None]:
    """Validate and store the spooled rows batch by batch, each batch with the cursor it reached.

    With a ``target`` (a transaction was open), the cursor goes no further than it; rows past it
    are stored too, and read again next time.

    Returns:
        The cursor, and the highest (cursor, key) read (None when no row was read).
    """
    vector_dims = stored_vector_dims(engine, rules.vector_feature)
    schema = SchemaInUse.start(engine, rules, vector_dims, spec.name, f"inferred from the first sync of {spec.name}")
    reasons: Counter = Counter()
    highest = None
    line = 1

    def stored(valid, rows: int, loaded: Loaded) -> None:
        schema.record_first(valid, vector_dims)
        summary.rows_read += rows
        summary.accepted += loaded.accepted
        summary.edited += loaded.edited
        summary.unlabelled += loaded.unlabelled
        summary.duplicates += loaded.duplicates
        summary.quarantined += len(loaded.rejections)
        reasons.update(r.reason for r in loaded.rejections)

    # Batch N is written while batch N + 1 is validated (BatchWriter), once the feature schema is
    # recorded: until then a batch's types follow what the previous one recorded.
    with BatchWriter() as writer:
        for frame in _read_spool(spool, batch_rows):
            cursor_values = frame.pop("_refit_cursor").to_numpy()
            keys = frame.pop("_refit_key").to_numpy()
            below = (frame.pop("_refit_upto") == "t").to_numpy()
            lines = np.arange(line, line + len(frame))
            line += len(frame)
            highest = str(cursor_values[-1]), str(keys[-1])
            if target is None or below.all():
                position = highest
            else:  # every row up to the target is in this batch or an earlier one
                position = target if target[0] is not None else position
                summary.held_back += int((~below).sum())
            valid, rejections = validate_batch(RawBatch(frame, lines), rules, now, schema.kinds_for(frame), vector_dims)
            rows, frame = len(frame), None  # the raw values go before the next batch is read
            then = functools.partial(stored, valid, rows)
            writer.submit(_store, engine, spec, valid, rejections, position, then=then)
            if schema.version is None:
                writer.wait()
    summary.reasons = dict(reasons)
    summary.schema_version, summary.new_features = schema.version, schema.new_features()
    summary.new_values = dict(schema.unseen_values)
    return position, highest


def _store(engine: Engine, spec: SourceSpec, valid, rejections, position: tuple) -> Loaded:
    """One batch and the cursor it reached, in one transaction."""
    with engine.begin() as conn:
        loaded = load_rows(conn, spec.name, valid, rejections, replace=True, origin=spec.name)
        save_cursor(conn, spec.name, position)
    return loaded


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _describe(cur, spec: SourceSpec) -> dict[str, str]:
    """The source's columns and their types (``format_type``), in its order."""
    cur.execute(f"SELECT * FROM ({spec.relation()}) s LIMIT 0")
    described = [(d.name, d.type_code) for d in cur.description]
    names = [n for n, _ in described]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise InputError(f"{spec.name}: the source has repeated column names: {', '.join(repeated)}")
    oids = list({o for _, o in described})
    cur.execute("SELECT oid, format_type(oid, NULL) FROM pg_type WHERE oid = ANY(%s)", (oids,))
    types = dict(cur.fetchall())
    return {n: types.get(o, str(o)) for n, o in described}


def check_columns(spec: SourceSpec, rules: IngestRules, columns: dict[str, str], stored: dict[str, str]) -> None:
    """Refuse, in one line that names the column, a source that changed or does not fit.

    Args:
        spec: the source.
        rules: the column map.
        columns: the source's columns now, name to type.
        stored: the columns at the first sync (empty before it).
    """
    for name, kind in stored.items():
        if name not in columns:
            raise InputError(f"{spec.name}: source column {name!r} is gone (renamed or dropped?); nothing was synced")
        if columns[name] != kind:
            raise InputError(
                f"{spec.name}: source column {name!r} changed type from {kind} to {columns[name]}; nothing was synced"
            )
    for role, name in (("key (the column mapped to feedback_id)", spec.key), ("cursor", spec.cursor)):
        if name not in columns:
            raise InputError(f"{spec.name}: the source has no column {name!r}, the sync's {role}")
    require_columns(spec.name, set(columns), rules)


def _copy_rows_sql(
    cur, spec: SourceSpec, columns: dict[str, str], mapped: set[str], start: tuple, target: tuple | None
) -> str:
    """``COPY (SELECT ...) TO STDOUT``: the rows past ``start`` in cursor order, each value as
    refit's file reader takes it (JSON for arrays and JSON), and per row its cursor, its key and
    whether it is at or below ``target`` (how far the cursor may move)."""
    select = []
    for name, kind in columns.items():
        if name not in mapped and name != spec.key and (name == spec.cursor or kind.startswith(("timestamp", "date"))):
            # The cursor and other times (updated_at, deleted_at) are bookkeeping, not behaviour:
            # as features they would turn every touch of a row into an edit.
            continue
        column = f"s.{_ident(name)}"
        if kind.endswith("[]") or kind in ("json", "jsonb"):
            column = f"to_jsonb({column})::text"
        select.append(f"{column} AS {_ident(name)}")
    upto = "false" if target is None or target[0] is None else _after(cur, spec, columns, target, "<=")
    select += [
        f"s.{_ident(spec.cursor)}::text AS _refit_cursor",
        f"s.{_ident(spec.key)}::text AS _refit_key",
        f"{upto} AS _refit_upto",
    ]
    where = [f"s.{_ident(spec.cursor)} IS NOT NULL"]
    if start[0] is not None:
        where.append(_after(cur, spec, columns, start, ">"))
    order = f"s.{_ident(spec.key)}" if spec.cursor == spec.key else f"s.{_ident(spec.cursor)}, s.{_ident(spec.key)}"
    query = f"SELECT {', '.join(select)} FROM ({spec.relation()}) s WHERE {' AND '.join(where)} ORDER BY {order}"
    return f"COPY ({query}) TO STDOUT WITH (FORMAT csv, HEADER)"


def _after(cur, spec: SourceSpec, columns: dict[str, str], position: tuple, op: str) -> str:
    """``(cursor, key) <op> position`` in SQL, the position's values cast to the columns' types.

    Literals, not placeholders: the user's query may hold a ``%`` of its own.
    """
    value = f"CAST({_literal(cur, position[0])} AS {columns[spec.cursor]})"
    if spec.cursor == spec.key:
        return f"s.{_ident(spec.key)} {op} {value}"
    key = f"CAST({_literal(cur, position[1])} AS {columns[spec.key]})"
    return f"(s.{_ident(spec.cursor)}, s.{_ident(spec.key)}) {op} ({value}, {key})"


def _literal(cur, value: str | None) -> str:
    """``value`` as a quoted SQL string literal, escaped by the driver for this connection."""
    adapted = psycopg2.extensions.adapt(value)
    if hasattr(adapted, "prepare"):
        adapted.prepare(cur.connection)
    return adapted.getquoted().decode()


_SPOOL_BLOCK = 8 << 20  # bytes of the spool parsed at a time


def _read_spool(spool, batch_rows: int):
    """The spooled rows as frames of raw text values (all strings, as a CSV file's), in order.

    The spool is cut into blocks at record ends and each block parsed on its own, so memory holds
    one batch whatever the spool's size (Arrow's streaming reader reads ahead of a slow consumer:
    hundreds of MB of a large spool).
    """
    if spool.tell() == 0:
        return
    spool.seek(0)
    header = spool.readline()
    names = next(csv.reader([header.decode("utf-8")]))
    parse = pacsv.ParseOptions(newlines_in_values=True)
    convert = pacsv.ConvertOptions(
        column_types={n: pa.string() for n in names}, strings_can_be_null=True, quoted_strings_can_be_null=False
    )
    pending, size, carry = [], 0, b""
    while True:
        chunk = spool.read(_SPOOL_BLOCK)
        data = carry + chunk
        cut = len(data) if not chunk else _records_end(data)
        if cut:
            table = pacsv.read_csv(io.BytesIO(header + data[:cut]), parse_options=parse, convert_options=convert)
            pending.append(table)
            size += table.num_rows
        carry = data[cut:]
        if pending and (size >= batch_rows or not chunk):
            table, pending, size = pa.concat_tables(pending), [], 0
            yield _frame(table)
        if not chunk:
            return


def _records_end(data: bytes) -> int:
    """Where the last complete CSV record of ``data`` ends (0: none does). ``data`` starts at a
    record; a newline ends one when an even number of quotes precede it (Postgres doubles a quote
    inside a quoted value, so the parity says whether a newline lies inside one)."""
    raw = np.frombuffer(data, dtype=np.uint8)
    newlines = np.flatnonzero(raw == 10)
    if not len(newlines):
        return 0
    quotes = np.flatnonzero(raw == 34)
    outside = newlines[np.searchsorted(quotes, newlines) % 2 == 0]
    return int(outside[-1]) + 1 if len(outside) else 0


def _frame(table: pa.Table):
    """The table as pandas, its Arrow buffers freed as each column converts (memory stays one batch)."""
    return table.to_pandas(split_blocks=True, self_destruct=True)


def read_cursor(engine: Engine, source: str) -> dict | None:
    """The stored cursor state of ``source`` (None before its first sync)."""
    with engine.connect() as conn:
        row = conn.execute(text("SELECT * FROM source_cursors WHERE source = :s"), {"s": source}).mappings().first()
    return dict(row) if row else None


def save_cursor(
    conn,
    source: str,
    position: tuple,
    horizon: int | None = None,
    columns: dict[str, str] | None = None,
    marks: list[dict] | None = None,
) -> None:
    """Store the cursor inside the caller's transaction (the one that stores the batch's rows);
    the horizon, the columns (first time only) and the marks when given."""
    conn.execute(
        text(
            "INSERT INTO source_cursors (source, cursor_value, cursor_key, horizon, columns, marks, synced_at)"
            " VALUES (:s, :c, :k, :h, CAST(:cols AS JSONB), CAST(:marks AS JSONB), now())"
            " ON CONFLICT (source) DO UPDATE SET cursor_value = EXCLUDED.cursor_value,"
            " cursor_key = EXCLUDED.cursor_key, synced_at = now(),"
            " horizon = COALESCE(:h, source_cursors.horizon),"
            " marks = CASE WHEN :has_marks THEN EXCLUDED.marks ELSE source_cursors.marks END,"
            " columns = CASE WHEN source_cursors.columns = '{}'::jsonb THEN EXCLUDED.columns"
            " ELSE source_cursors.columns END"
        ),
        {
            "s": source,
            "c": position[0],
            "k": position[1],
            "h": horizon,
            "cols": json.dumps(columns or {}),
            "marks": json.dumps(marks or []),
            "has_marks": marks is not None,
        },
    )


def reconcile_deletes(engine: Engine, cur, spec: SourceSpec) -> int | None:
    """Forget the rows of this source whose key the source no longer has, as ``refit forget`` does.

    Reads every key in the sync's snapshot (so a row loaded by this sync is never taken for a
    delete), copies them into a temporary table on refit's side and deletes by an anti-join;
    quarantined rows of deleted keys go too. A source that returns no key at all while refit
    holds rows from it is not reconciled (an emptied table is far likelier a mistake).

    Returns:
        The rows forgotten, or None when the reconciliation was skipped.
    """
    with tempfile.TemporaryFile() as spool:
        cur.copy_expert(f"COPY (SELECT s.{_ident(spec.key)}::text FROM ({spec.relation()}) s) TO STDOUT", spool)
        return _forget_missing(engine, spec, spool)


def _forget_missing(engine: Engine, spec: SourceSpec, spool) -> int | None:
    empty = spool.tell() == 0
    spool.seek(0)
    with engine.begin() as conn:
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": INGEST_LOCK})
        if empty:
            held = conn.execute(text("SELECT count(*) FROM feedback WHERE origin = :o"), {"o": spec.name}).scalar()
            if held:
                return None
        conn.execute(text("CREATE TEMP TABLE source_keys (source_key TEXT) ON COMMIT DROP"))
        conn.connection.dbapi_connection.cursor().copy_expert("COPY source_keys FROM STDIN", spool)
        conn.execute(text("CREATE INDEX ON source_keys (source_key)"))
        conn.execute(text("ANALYZE source_keys"))
        gone = "NOT EXISTS (SELECT 1 FROM source_keys WHERE source_key = feedback_id)"
        result = forget_rows(conn, f"origin = :o AND {gone}", {"o": spec.name}, reason="source_delete")
        conn.execute(
            text(f"DELETE FROM quarantine WHERE source = :o AND feedback_id IS NOT NULL AND {gone}"),
            {"o": spec.name},
        )
        conn.execute(text("UPDATE source_cursors SET reconciled_at = now() WHERE source = :o"), {"o": spec.name})
    return result["rows_deleted"]
