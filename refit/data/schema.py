"""The feature schema, as TFDV keeps one: each behaviour feature's type and observed domain, in
recorded versions (the ``feature_schema`` table, append-only).

A feature is ``numeric`` (its observed range), ``categorical`` (its observed values, the
``MAX_VALUES`` most common) or ``vector`` (``REFIT_VECTOR_FEATURE``: its length). Version 1 is
inferred from the first ingest or sync that has features; every later version is an explicit,
recorded act (:func:`update_schema`, ``refit schema update --reason ...``), as the dev set is.

What is enforced at ingest: the type (a numeric feature's value must be a finite number, else the
row is quarantined as ``bad_feature``) and the vector's length. What is only recorded: the numeric
range and the categorical values (counts grow and catalogues change; new values are reported, not
quarantined). A column that is not in the schema is reported and its values are still stored, but
it joins the schema only through an update. ``REFIT_FEATURE_TYPES``, when set, wins over the schema.

The model (:func:`refit.data.feature_types.feature_types_for`), drift and slices read the types
from here instead of guessing them from the rows.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from datetime import datetime

import numpy as np
import pandas as pd
from sqlalchemy import Connection, Engine, text

from refit.core.errors import InputError
from refit.core.settings import RESERVED

TYPES = ("numeric", "categorical", "vector")
SCALAR_TYPES = ("numeric", "categorical")
# A feature is numeric when at least this share of its present values are finite numbers. Below
# 1 so that one stray value ("lots" among counts) is quarantined instead of making every count a
# string; high enough that text with a few digits-only values stays categorical.
NUMERIC_SHARE = 0.8
MAX_VALUES = 256  # categorical values recorded per feature, most common first (as the fusion head's vocabulary)
UPDATE_SAMPLE_ROWS = 200_000  # `refit schema update` re-infers from the newest stored rows, up to this many
SCHEMA_LOCK = 0x7265666977  # one writer of the schema history at a time


@dataclass(frozen=True)
class SchemaVersion:
    """One recorded version of the feature schema."""

    version: int
    features: dict[str, dict]  # feature name to {"type": ..., domain}
    reason: str
    source: str | None = None
    actor: str = "refit"
    created_at: datetime | None = None

    @property
    def types(self) -> dict[str, str]:
        """Feature name to ``numeric``, ``categorical`` or ``vector``."""
        return {name: spec["type"] for name, spec in self.features.items()}

    @property
    def scalar_types(self) -> dict[str, str]:
        """The numeric and categorical features and their types (the vector has its own checks)."""
        return {name: kind for name, kind in self.types.items() if kind in SCALAR_TYPES}

    @property
    def vector_dims(self) -> dict[str, int]:
        """The length each vector feature must have."""
        return {n: int(s["length"]) for n, s in self.features.items() if s["type"] == "vector" and s.get("length")}

    def as_dict(self) -> dict:
        return asdict(self)


# --- inference -----------------------------------------------------------------------------------


def feature_columns(frame: pd.DataFrame, column_map: dict[str, str] | None = None) -> dict[str, str]:
    """The behaviour feature columns of a raw batch: feature name to the batch's column name.

    Every column that is not one of refit's own (after the column map) and does not start with
    ``_`` is a feature, as :func:`refit.data.validate.validate_batch` takes them.
    """
    renamed = {src: dst for dst, src in (column_map or {}).items()}
    out = {}
    for column in frame.columns:
        name = str(renamed.get(column, column))
        if name not in RESERVED and not name.startswith("_"):
            out[name] = column
    return out


def infer_type(values: pd.Series) -> str | None:
    """The scalar type of a feature from its values: ``numeric`` when at least ``NUMERIC_SHARE`` of
    the present values are finite numbers (booleans are categories), else ``categorical``; None when
    no value is present or the values are lists or objects (only the vector feature holds those)."""
    present = values[values.map(_present)]
    if present.empty or present.map(lambda v: isinstance(v, (list, tuple, dict, np.ndarray))).any():
        return None
    if present.map(lambda v: isinstance(v, (bool, np.bool_))).any():
        return "categorical"
    numbers = pd.to_numeric(present.map(lambda v: v.strip() if isinstance(v, str) else v), errors="coerce")
    finite = np.isfinite(numbers.astype(float))
    return "numeric" if finite.mean() >= NUMERIC_SHARE else "categorical"


def infer_types(frame: pd.DataFrame, vector: str | None = None) -> dict[str, str]:
    """Each feature column's scalar type (:func:`infer_type`), leaving out the vector feature and
    the columns with no present value."""
    types = {}
    for name in frame.columns:
        if name == vector:
            continue
        kind = infer_type(frame[name])
        if kind is not None:
            types[str(name)] = kind
    return types


def infer_schema(
    frame: pd.DataFrame | None, vector: str | None = None, types: dict[str, str] | None = None
) -> dict[str, dict]:
    """The schema's features, inferred from feature values (one column per feature).

    Args:
        frame: feature values, as stored (:func:`refit.data.snapshots.features_frame`) or as read.
        vector: the vector feature (``REFIT_VECTOR_FEATURE``): recorded with its most common length.
        types: types to take as given instead of inferring them (``--type``, the first batch's);
            a given feature absent from ``frame`` is still recorded, with an empty domain.

    Returns:
        Feature name to its spec, sorted by name: ``{"type": "numeric", "min": ..., "max": ...}``,
        ``{"type": "categorical", "values": [...], "distinct": n}`` or ``{"type": "vector", "length": n}``.
    """
    frame = frame if frame is not None else pd.DataFrame()
    types = dict(types or {})
    features: dict[str, dict] = {}
    for name in sorted({*map(str, frame.columns), *types}):
        values = frame[name] if name in frame else pd.Series([], dtype=object)
        # Stored rows hold lists only in the vector feature (a nested value is quarantined).
        is_vector = name == vector or values.map(lambda v: isinstance(v, (list, tuple, np.ndarray))).any()
        kind = types.get(name) or ("vector" if is_vector else infer_type(values))
        if kind is None:
            continue
        if kind not in TYPES:
            raise InputError(f"feature {name}: type {kind!r} is not one of {', '.join(TYPES)}")
        features[name] = {"type": kind, **_domain(kind, values[values.map(_present)])}
    return features


def _domain(kind: str, present: pd.Series) -> dict:
    if kind == "vector":
        lengths = present.map(lambda v: len(v) if isinstance(v, (list, tuple, np.ndarray)) else None).dropna()
        return {"length": int(lengths.mode().min()) if len(lengths) else None}
    if kind == "numeric":
        numbers = pd.to_numeric(present.map(lambda v: v.strip() if isinstance(v, str) else v), errors="coerce")
        numbers = numbers.astype(float)[np.isfinite(numbers.astype(float))]
        if numbers.empty:
            return {"min": None, "max": None}
        return {"min": _number(numbers.min()), "max": _number(numbers.max())}
    counts = present.map(_category).str.strip().value_counts()
    counts = counts.sort_index(kind="stable").sort_values(ascending=False, kind="stable")
    return {"values": counts.index[:MAX_VALUES].tolist(), "distinct": int(len(counts))}


def _category(value) -> str:
    # A number stored as 3.0 is the category "3", as a file's "3" is (a retyped numeric feature).
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _number(value: float) -> int | float:
    return int(value) if float(value).is_integer() and abs(value) < 2**53 else float(value)


def _present(value) -> bool:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    return not (isinstance(value, str) and not value.strip())


def diff(old: dict[str, dict] | None, new: dict[str, dict]) -> dict:
    """What changes from schema features ``old`` to ``new``.

    Returns:
        ``added`` and ``removed`` feature names, ``retyped`` (name to ``"old -> new"``) and
        ``domains`` (names whose recorded domain changed, type kept).
    """
    old = old or {}
    kept = sorted(set(old) & set(new))
    return {
        "added": sorted(set(new) - set(old)),
        "removed": sorted(set(old) - set(new)),
        "retyped": {n: f"{old[n]['type']} -> {new[n]['type']}" for n in kept if old[n]["type"] != new[n]["type"]},
        "domains": [n for n in kept if old[n]["type"] == new[n]["type"] and old[n] != new[n]],
    }


def new_values(schema: SchemaVersion, frame: pd.DataFrame, columns: dict[str, str]) -> dict[str, int]:
    """Per categorical feature whose recorded values are complete (at most ``MAX_VALUES``), how
    many distinct values of a raw batch the schema has not seen (reported, never quarantined).

    Args:
        schema: the schema in force.
        frame: the raw batch.
        columns: feature name to the batch's column (:func:`feature_columns`).
    """
    out = {}
    for name, spec in schema.features.items():
        if spec["type"] != "categorical" or name not in columns or spec.get("distinct", 0) > MAX_VALUES:
            continue
        values = frame[columns[name]].dropna().astype(str).str.strip()
        unseen = set(values[values != ""].unique()) - set(spec.get("values") or [])
        if unseen:
            out[name] = len(unseen)
    return out


def new_features_notice(names: list[str]) -> str:
    """What to tell an operator about feature columns stored but not in the schema."""
    return (
        f"new feature columns not in the schema: {', '.join(names)} (stored, not checked);"
        " run refit schema update --reason ... to add them"
    )


# --- the recorded versions ---------------------------------------------------------------------


def _row(row) -> SchemaVersion:
    features = row["features"] if isinstance(row["features"], dict) else json.loads(row["features"])
    return SchemaVersion(
        version=row["version"], features=features, reason=row["reason"], source=row["source"],
        actor=row["actor"], created_at=row["created_at"],
    )  # fmt: skip


def load_schema(db: Engine | Connection) -> SchemaVersion | None:
    """The current (latest) schema version, or None before the first one is recorded."""
    query = text("SELECT * FROM feature_schema ORDER BY version DESC LIMIT 1")
    if isinstance(db, Connection):
        row = db.execute(query).mappings().first()
    else:
        with db.connect() as conn:
            row = conn.execute(query).mappings().first()
    return _row(row) if row else None


def schema_types(db: Engine | Connection) -> dict[str, str] | None:
    """The current schema's feature types (what the model, drift and slices read), or None
    before the first version."""
    schema = load_schema(db)
    return schema.types if schema else None


def schema_history(engine: Engine) -> list[SchemaVersion]:
    """Every recorded version, oldest first."""
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT * FROM feature_schema ORDER BY version")).mappings().all()
    return [_row(r) for r in rows]


def record_schema(
    engine: Engine,
    features: dict[str, dict],
    reason: str,
    *,
    source: str | None = None,
    actor: str = "refit",
    first: bool = False,
) -> SchemaVersion:
    """Record ``features`` as the next schema version.

    Args:
        engine: the refit database.
        features: the schema's features (:func:`infer_schema`).
        reason: why this version exists (required; shown in ``refit schema history``).
        source: what it was inferred from (a file, ``pg:<table>``, ``feedback``).
        actor: who recorded it.
        first: record only when no version exists yet (the first ingest's inference); when one
            does (another ingest recorded it first), that one is returned and nothing is written.

    Returns:
        The version now current.
    """
    if not reason or not reason.strip():
        raise InputError("a schema version needs a reason (--reason)")
    with engine.begin() as conn:
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": SCHEMA_LOCK})
        current = load_schema(conn)
        if first and current is not None:
            return current
        conn.execute(
            text(
                "INSERT INTO feature_schema (version, features, reason, source, actor)"
                " VALUES (:v, CAST(:f AS JSONB), :r, :s, :a)"
            ),
            {
                "v": (current.version if current else 0) + 1,
                "f": json.dumps(features, sort_keys=True),
                "r": reason.strip(),
                "s": source,
                "a": actor,
            },
        )
        return load_schema(conn)


def stored_features(engine: Engine, limit: int = UPDATE_SAMPLE_ROWS) -> pd.DataFrame:
    """The features of the newest ``limit`` stored feedback rows, one column per feature."""
    with engine.connect() as conn:
        values = conn.execute(text("SELECT features FROM feedback ORDER BY id DESC LIMIT :n"), {"n": limit}).scalars()
        return pd.DataFrame([v if isinstance(v, dict) else json.loads(v) for v in values])


def update_schema(
    engine: Engine,
    reason: str,
    *,
    types: dict[str, str] | None = None,
    vector: str | None = None,
    actor: str = "refit",
) -> tuple[SchemaVersion, dict]:
    """Re-infer the schema from the stored feedback and record it as the next version: the
    explicit act that adds a reported column, retypes a feature or widens a recorded domain.

    Args:
        engine: the refit database.
        reason: why (required, recorded).
        types: feature types to set instead of inferring them (``--type name=categorical``).
        vector: the vector feature (``REFIT_VECTOR_FEATURE``).
        actor: who asked.

    Returns:
        The new version and its :func:`diff` from the previous one.
    """
    if not reason or not reason.strip():
        raise InputError("refit schema update needs --reason: the schema changes only as a recorded act")
    frame = stored_features(engine)
    unknown = sorted(set(types or {}) - set(map(str, frame.columns)))
    if unknown:
        raise InputError(f"--type names feature(s) no stored row has: {', '.join(unknown)}")
    previous = load_schema(engine)
    features = infer_schema(frame, vector=vector, types=types)
    recorded = record_schema(engine, features, reason, source=f"feedback ({len(frame)} newest rows)", actor=actor)
    return recorded, diff(previous.features if previous else None, features)


# --- the schema as one ingest or sync applies it ---------------------------------------------------


@dataclass
class SchemaInUse:
    """The schema one ingest or sync validates against, batch by batch.

    Before the first version exists, the first batch with features infers the types
    (:func:`infer_types`); once it is validated, the schema (those types, with the domains of the
    accepted rows) is recorded as version 1. Columns the schema does not have are typed per run as
    before (numbers when every value is one, else text), stored, and reported.
    """

    engine: Engine
    vector: str | None
    column_map: dict[str, str]
    source: str
    first_reason: str
    schema: SchemaVersion | None = None
    configured: dict[str, str] = field(default_factory=dict)  # REFIT_FEATURE_TYPES: only these, as given
    kinds: dict[str, str] = field(default_factory=dict)  # what validate_batch checks (it adds unknown columns)
    inferred: dict[str, str] = field(default_factory=dict)  # the first batch's inference, before v1
    unseen_values: dict[str, int] = field(default_factory=dict)

    @classmethod
    def start(cls, engine: Engine, rules, vector_dims: dict[str, int], source: str, first_reason: str) -> SchemaInUse:
        """The schema in force for a run over ``rules`` (:class:`refit.data.validate.IngestRules`);
        its vector length is put into ``vector_dims`` (it wins over the stored rows')."""
        schema = load_schema(engine)
        used = cls(engine, rules.vector_feature, dict(rules.column_map), source, first_reason, schema)
        used.configured = dict(rules.feature_types)
        if schema is not None:
            used.kinds = dict(schema.scalar_types)
            vector_dims.update({n: d for n, d in schema.vector_dims.items() if n == rules.vector_feature})
        return used

    @property
    def version(self) -> int | None:
        return self.schema.version if self.schema else None

    def kinds_for(self, frame: pd.DataFrame) -> dict[str, str]:
        """The feature types to validate the raw batch ``frame`` with (inferred from it when no
        schema is recorded yet); notes its categorical values that the schema has not seen."""
        columns = feature_columns(frame, self.column_map)
        if self.schema is None and not self.inferred:
            if self.configured:
                self.inferred = {n: k for n, k in self.configured.items() if n in columns and n != self.vector}
            else:
                named = frame[list(columns.values())].set_axis(list(columns), axis=1)
                self.inferred = infer_types(named, self.vector)
            self.kinds.update(self.inferred)
        elif self.schema is not None:
            for name, n in new_values(self.schema, frame, columns).items():
                self.unseen_values[name] = max(self.unseen_values.get(name, 0), n)
        return self.kinds

    def record_first(self, valid: pd.DataFrame, vector_dims: dict[str, int]) -> None:
        """After a batch is validated: record version 1 when this run inferred it (the domains from
        ``valid``, the accepted rows, as stored: typed and redacted)."""
        if self.schema is not None or not (self.inferred or (self.vector and self.vector in vector_dims)):
            return
        stored = None
        if len(valid) and "features" in valid:
            stored = pd.DataFrame([json.loads(f) if isinstance(f, str) else f for f in valid["features"]])
        types = dict(self.inferred)
        if self.vector and self.vector in vector_dims:
            types[self.vector] = "vector"
        features = infer_schema(stored, vector=self.vector, types=types)
        if self.vector in features and features[self.vector].get("length") is None:
            features[self.vector]["length"] = vector_dims[self.vector]
        self.schema = record_schema(self.engine, features, self.first_reason, source=self.source, first=True)
        # Another run may have recorded version 1 first: from the next batch on, its types rule.
        self.kinds.update(self.schema.scalar_types)

    def new_features(self) -> list[str]:
        """The feature columns this run stored that the schema does not have."""
        known = set(self.schema.features) if self.schema else set(self.inferred)
        return sorted(set(self.kinds) - known)
