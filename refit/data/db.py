"""Postgres: the engine and the versioned migrations in ``sql/``."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import DBAPIError, OperationalError

from refit.core.errors import ConfigError, RefitError
from refit.core.resources import sql_dir

_MIGRATION_NAME = re.compile(r"^(\d{3,})_[a-z0-9_]+\.sql$")
# Any constant works; it only has to be the same for every refit process.
MIGRATION_LOCK = 0x7265666974  # "refit"
INGEST_LOCK = 0x7265666975


@lru_cache(maxsize=8)
def get_engine(url: str) -> Engine:
    """One pooled engine per URL (created on first use, never at import)."""
    return create_engine(url, pool_pre_ping=True, future=True)


def check_connection(engine: Engine) -> None:
    """Fail with one line when the database cannot be reached."""
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except OperationalError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        url = engine.url.render_as_string(hide_password=True)
        raise RefitError(f"cannot connect to the database at {url}: {reason}") from None


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations(folder: Path | None = None) -> list[Migration]:
    """The migration files, ordered by their number; a gap or a duplicate is an error."""
    folder = folder or sql_dir()
    migrations = []
    for path in sorted(folder.glob("*.sql")):
        match = _MIGRATION_NAME.match(path.name)
        if not match:
            raise ConfigError(f"migration file {path.name} is not named NNN_name.sql")
        migrations.append(Migration(int(match.group(1)), path.stem, path.read_text(encoding="utf-8")))
    versions = [m.version for m in migrations]
    if len(set(versions)) != len(versions):
        raise ConfigError(f"two migration files share a number in {folder}")
    return migrations


def upgrade(engine: Engine, folder: Path | None = None) -> list[str]:
    """Apply the migrations not yet applied, each whole or not at all.

    Returns:
        The names of the migrations applied by this call (empty when up to date).
    """
    migrations = load_migrations(folder)
    applied_now: list[str] = []
    with engine.begin() as conn:
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK})
        conn.execute(
            text(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version INTEGER PRIMARY KEY, name TEXT NOT NULL, checksum TEXT NOT NULL,"
                " applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
            )
        )
        done = {row.version: row for row in conn.execute(text("SELECT * FROM schema_migrations"))}
    for migration in migrations:
        if migration.version in done:
            if done[migration.version].checksum != migration.checksum:
                raise RefitError(f"migration {migration.name} was changed after it was applied; add a new one instead")
            continue
        try:
            with engine.begin() as conn:
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK})
                already = conn.execute(
                    text("SELECT 1 FROM schema_migrations WHERE version = :v"), {"v": migration.version}
                ).first()
                if already:
                    continue
                conn.exec_driver_sql(migration.sql)
                conn.execute(
                    text("INSERT INTO schema_migrations (version, name, checksum) VALUES (:v, :n, :c)"),
                    {"v": migration.version, "n": migration.name, "c": migration.checksum},
                )
        except DBAPIError as exc:
            first = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
            raise RefitError(f"migration {migration.name} failed and was rolled back: {first}") from None
        applied_now.append(migration.name)
    return applied_now


def applied_migrations(engine: Engine) -> list[str]:
    """Names of the migrations recorded as applied, in order."""
    with engine.connect() as conn:
        exists = conn.execute(text("SELECT to_regclass('schema_migrations')")).scalar()
        if not exists:
            return []
        return [r.name for r in conn.execute(text("SELECT name FROM schema_migrations ORDER BY version"))]


def require_schema(engine: Engine) -> None:
    """Fail with one line when the schema has not been created yet."""
    check_connection(engine)
    if not applied_migrations(engine):
        raise RefitError("the database has no refit schema yet: run `refit db upgrade`")


def engine_for(settings) -> Engine:
    """The engine for the configured database (a clear error when it is not configured)."""
    return get_engine(settings.require_database())
