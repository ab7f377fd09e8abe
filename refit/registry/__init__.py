"""The model registry: versions in the object store and in ``model_versions``.

Store layout under the store root (``REFIT_STORE_URL``), per model name (``REFIT_MODEL_NAME``)::

    models/<name>/versions/<version>/...             checkpoint files, MODEL_CARD.md
    models/<name>/versions/<version>/manifest.json   size and SHA-256 of every file, version,
                                                     lineage; written last, never overwritten
    models/<name>/champion.json                      the pointer: version, manifest URI and
                                                     SHA-256, promoted at; moved last, by ETag
    reports/drift/<id>/report.{html,json}

A version exists once its manifest exists. A crash mid-upload leaves files without a manifest:
publishing the same version again skips the files already there with the right checksum,
uploads the rest and seals it; a published version is never replaced.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import Engine, text

from refit.core.errors import CheckpointError, NoChampionError, RefitError, StoreError
from refit.gate import GateDecision
from refit.models.checkpoint import MANIFEST, build_manifest, manifest_digest, read_metadata, verify_folder
from refit.registry.store import AlreadyExists, Conflict, ObjectStore

DEFAULT_MODEL = "satisfaction"


def model_prefix(version: str, model_name: str = DEFAULT_MODEL) -> str:
    return f"models/{model_name}/versions/{version}"


def pointer_key(model_name: str = DEFAULT_MODEL) -> str:
    return f"models/{model_name}/champion.json"


POINTER = pointer_key()


def new_version(now: datetime | None = None) -> str:
    """A sortable, unique version name: ``v20261127-190512-123456``."""
    now = now or datetime.now(timezone.utc)
    return now.strftime("v%Y%m%d-%H%M%S-%f")


@dataclass(frozen=True)
class Published:
    version: str
    uri: str
    manifest_sha256: str


def publish_checkpoint(store: ObjectStore, folder: Path, version: str, model_name: str = DEFAULT_MODEL) -> Published:
    """Upload a checkpoint under its immutable version path, verify it, and seal it with its manifest.

    Publishing again after a crash completes the version; publishing an identical version again
    is a no-op.

    Raises:
        AlreadyExists: the version was published before with other content (it is never replaced).
        CheckpointError: an uploaded file does not match its checksum.
    """
    folder = Path(folder)
    prefix = model_prefix(version, model_name)
    manifest = build_manifest(folder, version)
    metadata = read_metadata(folder)
    manifest.update(model_name=model_name, lineage=metadata.get("lineage") or {})
    if metadata.get("int8"):  # the int8 artifact's measured dev-set difference (models/quantize.py)
        manifest["int8"] = metadata["int8"]
    sealed = store.head(f"{prefix}/{MANIFEST}")
    if sealed is not None:
        existing = json.loads(store.get(f"{prefix}/{MANIFEST}"))
        if existing.get("files") != manifest["files"]:
            raise AlreadyExists(f"model version {version} is already published at {store.uri(prefix)}")
        return Published(version, store.uri(prefix), manifest_digest(existing))
    for rel, entry in manifest["files"].items():
        key = f"{prefix}/{rel}"
        there = store.head(key)
        if there is not None and there.sha256 != entry["sha256"]:
            raise AlreadyExists(f"{store.uri(key)} exists with other content; version {version} is not replaced")
        if there is not None and there.size == entry["bytes"] and store.holds(key, folder / rel, there):
            continue  # uploaded before an interruption
        # Absent, or declared as this file but damaged in transit: the version is not sealed yet,
        # so the file is uploaded (again).
        store.put_file(key, folder / rel, sha256=entry["sha256"])
    for rel, entry in manifest["files"].items():  # every file there, whole, before the seal
        key = f"{prefix}/{rel}"
        there = store.head(key)
        # The recorded SHA-256 is what was declared; the stored bytes are checked too (ETag or read-back).
        if there is None or there.size != entry["bytes"] or not store.holds(key, folder / rel, there):
            raise CheckpointError(
                f"{store.uri(key)} did not arrive intact; not publishing {version}", permanent=False
            )  # a retry uploads it again
    body = json.dumps(manifest, indent=2, sort_keys=True).encode()
    store.put(f"{prefix}/{MANIFEST}", body, if_absent=True)
    return Published(version, store.uri(prefix), manifest_digest(manifest))


def withdraw_unregistered(engine: Engine, store: ObjectStore, version: str, model_name: str = DEFAULT_MODEL) -> int:
    """Delete a published version that the registry never recorded (a publish whose recording
    failed); manifest first. A recorded version is left alone. Returns how many objects went."""
    with engine.connect() as conn:
        if conn.execute(text("SELECT 1 FROM model_versions WHERE version = :v"), {"v": version}).first():
            return 0
    return delete_version(store, version, model_name)


def delete_version(store: ObjectStore, version: str, model_name: str = DEFAULT_MODEL) -> int:
    """Delete every object of a version, its manifest first, so a half-deleted version is never
    taken for a published one. Returns how many objects went."""
    keys = store.list(f"{model_prefix(version, model_name)}/")
    for key in sorted(keys, key=lambda k: not k.endswith(MANIFEST)):
        store.delete(key)
    return len(keys)


def fetch_checkpoint(store: ObjectStore, version: str, dest: Path, model_name: str = DEFAULT_MODEL) -> Path:
    """Download a published version into ``dest`` and verify every file against its manifest."""
    prefix = model_prefix(version, model_name)
    try:
        manifest = json.loads(store.get(f"{prefix}/{MANIFEST}"))
    except json.JSONDecodeError:
        raise CheckpointError(f"the manifest of {version} in the store is corrupt") from None
    dest = Path(dest)
    if dest.exists():
        shutil.rmtree(dest)
    for rel in manifest["files"]:
        store.get_file(f"{prefix}/{rel}", dest / rel)
    (dest / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    verify_folder(dest, manifest)
    return dest


def checkout(settings, version: str) -> Path:
    """A verified local copy of a published version under ``work_dir/champions/``, downloaded
    only when the copy there is missing or does not match its manifest."""
    from refit.registry.store import store_for

    folder = Path(settings.work_dir) / "champions" / version
    if (folder / MANIFEST).is_file():
        try:
            verify_folder(folder)
            return folder
        except CheckpointError:
            pass  # damaged or partial: download it again
    return fetch_checkpoint(store_for(settings), version, folder, settings.model_name)


def read_pointer(store: ObjectStore, model_name: str = DEFAULT_MODEL) -> dict | None:
    key = pointer_key(model_name)
    if not store.exists(key):
        return None
    try:
        return json.loads(store.get(key))
    except json.JSONDecodeError:
        raise StoreError(f"the champion pointer {store.uri(key)} is corrupt") from None


def write_pointer(
    store: ObjectStore, published: Published, expected: str | None, model_name: str = DEFAULT_MODEL
) -> None:
    """Move the champion pointer from ``expected`` to ``published``, conditional on the pointer's
    ETag, so two publishers can never overwrite each other.

    Raises:
        Conflict: the pointer names another version than ``expected``, or changed while moving.
    """
    key = pointer_key(model_name)
    head = store.head(key)
    if head is not None:
        try:
            current = json.loads(store.get(key)).get("version")
        except json.JSONDecodeError:
            current = "(corrupt)"
        if current != expected and current != published.version:
            raise Conflict(f"the champion pointer {store.uri(key)} names {current}, not {expected}; not moved")
    pointer = {
        "version": published.version,
        "uri": published.uri,
        "manifest_uri": f"{published.uri}/{MANIFEST}",
        "manifest_sha256": published.manifest_sha256,
        "promoted_at": datetime.now(timezone.utc).isoformat(),
    }
    store.put_if_match(key, json.dumps(pointer, indent=2).encode(), head.etag if head else None)


# --- the registry table ---------------------------------------------------------------------


def champion(engine: Engine) -> dict | None:
    """The champion's registry row, or None before the first promotion."""
    with engine.connect() as conn:
        row = conn.execute(text("SELECT * FROM model_versions WHERE is_champion")).mappings().first()
    return dict(row) if row else None


def require_champion(engine: Engine) -> dict:
    row = champion(engine)
    if row is None:
        raise NoChampionError("there is no champion model yet: run `refit run` first")
    return row


def list_versions(engine: Engine) -> list[dict]:
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT * FROM model_versions ORDER BY created_at DESC")).mappings().all()
    return [dict(r) for r in rows]


ACTOR = "refit"


def promote_if_current(conn, version: str, expected: str | None) -> bool:
    """Make ``version`` champion if ``expected`` is still the champion (compare-and-swap).

    Concurrent callers serialize on the ``registry_head`` row; the loser sees the changed
    champion and gets False. Runs inside the caller's transaction.
    """
    won = conn.execute(
        text(
            "UPDATE registry_head SET champion = :v, changed_at = now()"
            " WHERE id = 1 AND champion IS NOT DISTINCT FROM :expected RETURNING id"
        ),
        {"v": version, "expected": expected},
    ).first()
    if won is None:
        return False
    conn.execute(text("UPDATE model_versions SET is_champion = FALSE, status = 'retired' WHERE is_champion"))
    conn.execute(
        text(
            "UPDATE model_versions SET is_champion = TRUE, status = 'champion', promoted_at = now() WHERE version = :v"
        ),
        {"v": version},
    )
    return True


def log_entry(
    conn,
    *,
    version: str,
    champion_version: str | None,
    decision: str,
    reason: str,
    actor: str,
    flow_run_id: str | None = None,
    gate: dict | None = None,
) -> None:
    """Append one line to the promotion log (the database refuses edits of old lines)."""
    gate = gate or {}
    conn.execute(
        text(
            "INSERT INTO promotion_log (challenger_version, champion_version, decision, metric, challenger_score,"
            " champion_score, reason, details, actor, flow_run_id)"
            " VALUES (:c, :ch, :d, :m, :cs, :chs, :r, CAST(:details AS JSONB), :actor, :run)"
        ),
        {
            "c": version,
            "ch": champion_version,
            "d": decision,
            "m": gate.get("metric"),
            "cs": _finite(gate.get("challenger_score")),
            "chs": _finite(gate.get("champion_score")),
            "r": reason,
            "details": json.dumps(gate, default=str, allow_nan=False) if gate else "{}",
            "actor": actor,
            "run": flow_run_id,
        },
    )


def _finite(value) -> float | None:
    return value if isinstance(value, (int, float)) and math.isfinite(value) else None


def _json_safe(value):
    """NaN and infinities become null, so a decision always stores as JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def record_decision(
    engine: Engine,
    store: ObjectStore,
    published: Published,
    *,
    snapshot_id: int,
    task: str,
    metrics: dict,
    decision: GateDecision,
    champion_version: str | None,
    config_hash: str | None = None,
    flow_run_id: str | None = None,
    actor: str = ACTOR,
    model_name: str = DEFAULT_MODEL,
) -> str:
    """Record the challenger and the gate decision; when promoted, move the champion.

    The registry change and the promotion log line are one transaction, and the store pointer
    is written last inside it: if the pointer write fails, the transaction rolls back and the old
    champion stays the champion everywhere. Promotion is a compare-and-swap on
    ``champion_version``: if another run promoted meanwhile, this one is recorded as superseded.

    Returns:
        ``promoted``, ``rejected`` or ``superseded``.
    """
    gate = _json_safe(decision.as_dict())
    moved: dict = {}
    try:
        return _record(engine, store, published, snapshot_id, task, metrics, decision, champion_version,
                       config_hash, flow_run_id, actor, model_name, gate, moved)  # fmt: skip
    except Exception:
        if moved:
            _restore_pointer(engine, store, published, moved["previous"], model_name)
        raise


def _restore_pointer(engine: Engine, store: ObjectStore, published: Published, previous, model_name: str) -> None:
    """The registry transaction failed after the pointer moved to ``published`` (a dropped
    connection at commit): unless the commit did land, move the pointer back to ``previous``
    (a ``Published``, or None: no pointer before), so the store never names a champion the
    registry does not have, and a rolled-back upload is not pointed at once withdrawn."""
    import logging

    try:
        with engine.connect() as conn:
            head = conn.execute(text("SELECT champion FROM registry_head WHERE id = 1")).scalar()
        if head == published.version:
            return  # the commit landed before the connection went
        if previous is None:
            store.delete(pointer_key(model_name))
        else:
            write_pointer(store, previous, published.version, model_name)
    except Exception as exc:  # the original error is what the caller must see
        logging.getLogger("refit.registry").error(
            "the champion pointer names %s but the registry did not record it, and restoring it failed: %s",
            published.version,
            exc,
        )


def _record(engine, store, published, snapshot_id, task, metrics, decision, champion_version, config_hash,
            flow_run_id, actor, model_name, gate, moved) -> str:  # fmt: skip
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO model_versions (version, snapshot_id, parent_version, task, uri, manifest_sha256,"
                " metrics, status, config_hash, flow_run_id)"
                " VALUES (:v, :s, :p, :t, :u, :m, CAST(:metrics AS JSONB), :status, :config, :run)"
            ),
            {
                "v": published.version,
                "s": snapshot_id,
                "p": champion_version,
                "t": task,
                "u": published.uri,
                "m": published.manifest_sha256,
                "metrics": json.dumps(_json_safe(metrics), default=str),
                "status": "candidate" if decision.promote else "rejected",
                "config": config_hash,
                "run": flow_run_id,
            },
        )
        outcome, reason = ("rejected", decision.reason)
        if decision.promote:
            if promote_if_current(conn, published.version, champion_version):
                outcome = "promoted"
            else:
                current = conn.execute(text("SELECT champion FROM registry_head WHERE id = 1")).scalar()
                outcome = "superseded"
                reason = (
                    f"superseded: the gate passed against {champion_version or 'no champion'}, but {current} "
                    f"was promoted meanwhile; {decision.reason}"
                )
                conn.execute(
                    text("UPDATE model_versions SET status = 'rejected' WHERE version = :v"), {"v": published.version}
                )
        log_entry(
            conn,
            version=published.version,
            champion_version=champion_version,
            decision=outcome,
            reason=reason,
            actor=actor,
            flow_run_id=flow_run_id,
            gate=gate,
        )
        if outcome == "promoted":
            row = conn.execute(
                text("SELECT version, uri, manifest_sha256 FROM model_versions WHERE version = :v"),
                {"v": champion_version},
            ).first()
            previous = Published(row.version, row.uri, row.manifest_sha256) if row else None
            write_pointer(store, published, champion_version, model_name)
            moved["previous"] = previous  # from here a failed commit must move the pointer back
    return outcome


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


def previous_champion(engine: Engine) -> str | None:
    """The version that was champion before the current one (what a bare rollback restores)."""
    with engine.connect() as conn:
        return conn.execute(
            text(
                "SELECT champion_version FROM promotion_log"
                " WHERE decision IN ('promoted', 'rolled_back')"
                " AND challenger_version = (SELECT champion FROM registry_head WHERE id = 1)"
                " ORDER BY id DESC LIMIT 1"
            )
        ).scalar()


def rollback(
    engine: Engine,
    store: ObjectStore,
    version: str | None,
    reason: str,
    actor: str,
    work_dir: Path,
    model_name: str = DEFAULT_MODEL,
) -> dict:
    """Make an earlier champion the champion again.

    The target's files are downloaded and checked against its manifest, and the manifest against
    the registry's checksum, before anything changes; then the registry moves by
    compare-and-swap, the log records who and why, and the store pointer moves last.

    Args:
        version: the version to restore; default, the champion before the current one.
        reason: why, for the log.
        actor: who (an operator's name, or ``refit``).
        work_dir: where the verification download goes.

    Returns:
        ``{"from": old champion, "to": restored version}``.
    """
    current = require_champion(engine)["version"]
    target = version or previous_champion(engine)
    if target is None:
        raise RefitError(f"{current} has no earlier champion to roll back to; name a version")
    row = get_version(engine, target)
    if target == current:
        raise RefitError(f"{target} is already the champion")
    if row["promoted_at"] is None or row["status"] != "retired":
        raise RefitError(f"{target} was never a champion (status {row['status']}); only earlier champions come back")
    folder = Path(work_dir) / "rollback" / target
    fetch_checkpoint(store, target, folder, model_name)  # raises CheckpointError on any checksum mismatch
    manifest = json.loads((folder / MANIFEST).read_text())
    if manifest_digest(manifest) != row["manifest_sha256"]:
        raise CheckpointError(f"the manifest of {target} in the store does not match the registry's checksum")
    shutil.rmtree(folder, ignore_errors=True)
    restored, moved = Published(target, row["uri"], row["manifest_sha256"]), False
    try:
        with engine.begin() as conn:
            if not promote_if_current(conn, target, current):
                raise RefitError("the champion changed while rolling back; check `refit models` and try again")
            log_entry(conn, version=target, champion_version=current, decision="rolled_back", reason=reason,
                      actor=actor)  # fmt: skip
            write_pointer(store, restored, current, model_name)
            moved = True
    except Exception:
        if moved:  # the commit was lost after the pointer moved: as for a promotion, move it back
            was = get_version(engine, current)
            _restore_pointer(engine, store, restored, Published(current, was["uri"], was["manifest_sha256"]),
                             model_name)  # fmt: skip
        raise
    return {"from": current, "to": target}


def collect_garbage(
    engine: Engine, store: ObjectStore, keep: int, dry_run: bool = True, model_name: str = DEFAULT_MODEL
) -> list[dict]:
    """Delete old rejected versions from the store and mark them ``archived``.

    Kept: the ``keep`` newest versions, and every version that was ever champion. A version's
    manifest goes first, so a half-deleted version is never taken for a published one.

    Returns:
        The versions that go (or would go, with ``dry_run``), oldest first.
    """
    rows = list_versions(engine)  # newest first
    newest = {r["version"] for r in rows[:keep]}
    doomed = [
        r
        for r in reversed(rows)
        if r["version"] not in newest and r["promoted_at"] is None and r["status"] in ("rejected", "candidate")
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
