"""The registry table, ``model_versions``: the champion's row, the versions, their lineage, and the
garbage collection of old rejected versions."""

from __future__ import annotations

from sqlalchemy import Engine, text

from refit.core.errors import NoChampionError, RefitError
from refit.registry.layout import DEFAULT_MODEL
from refit.registry.store import ObjectStore
from refit.registry.versions import delete_version


def champion(engine: Engine) -> dict | None:
    """The champion's registry row, or None before the first promotion."""
    with engine.connect() as conn:
        row = conn.execute(text("SELECT * FROM model_versions WHERE is_champion")).mappings().first()
    return dict(row) if row else None


def require_champion(engine: Engine) -> dict:
    """The champion's registry row.

    Raises:
        NoChampionError: nothing was promoted yet.
    """
    row = champion(engine)
    if row is None:
        raise NoChampionError("there is no champion model yet: run `refit run` first")
    return row


def list_versions(engine: Engine) -> list[dict]:
    """Every version's registry row, newest first."""
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT * FROM model_versions ORDER BY created_at DESC")).mappings().all()
    return [dict(r) for r in rows]


def get_version(engine: Engine, version: str) -> dict:
    """A version's registry row, with its promotion log lines (oldest first)."""
    with engine.connect() as conn:
        row = conn.execute(text("SELECT * FROM model_versions WHERE version = :v"), {"v": version}).mappings().first()
        if row is None:
            raise RefitError(f"no model version {version!r} in the registry (see `refit models`)")
        log = conn.execute(
            text("SELECT * FROM promotion_log WHERE challenger_version = :v OR champion_version = :v ORDER BY id"),
            {"v": version},
        ).mappings()
        return {**dict(row), "log": [dict(r) for r in log]}


def lineage(engine: Engine, version: str) -> list[dict]:
    """The version and its ancestors through ``parent_version``, newest first."""
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "WITH RECURSIVE chain AS ("
                " SELECT version, parent_version, snapshot_id, status, created_at, 0 AS depth"
                " FROM model_versions WHERE version = :v"
                " UNION ALL SELECT m.version, m.parent_version, m.snapshot_id, m.status, m.created_at, c.depth + 1"
                " FROM model_versions m JOIN chain c ON m.version = c.parent_version)"
                " SELECT * FROM chain ORDER BY depth"
            ),
            {"v": version},
        ).mappings()
        return [dict(r) for r in rows]


def collect_garbage(
    engine: Engine, store: ObjectStore, keep: int, dry_run: bool = True, model_name: str = DEFAULT_MODEL
) -> list[dict]:
    """Delete old rejected versions from the store and mark them ``archived``.

    Kept: the ``keep`` newest versions, every version that was ever champion, and the version in
    live rollout (``refit serve`` may be scoring with it). A version's manifest goes first, so a
    half-deleted version is never taken for a published one.

    Returns:
        The versions that go (or would go, with ``dry_run``), oldest first.
    """
    rows = list_versions(engine)  # newest first
    newest = {r["version"] for r in rows[:keep]}
    with engine.connect() as conn:  # a version in live rollout is being served: it stays
        live = set(conn.execute(text("SELECT version FROM rollouts WHERE ended_at IS NULL")).scalars())
    doomed = [
        r
        for r in reversed(rows)
        if r["version"] not in newest | live and r["promoted_at"] is None and r["status"] in ("rejected", "candidate")
    ]
    gone = [{"version": r["version"], "status": r["status"], "created_at": r["created_at"]} for r in doomed]
    if dry_run:
        return gone
    for row in doomed:
        delete_version(store, row["version"], model_name)
        with engine.begin() as conn:
            conn.execute(
                text("UPDATE model_versions SET status = 'archived' WHERE version = :v"), {"v": row["version"]}
            )
    return gone
