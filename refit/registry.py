"""The model registry: versions in the object store and in ``model_versions``.

Store layout under the store root::

    models/<version>/...            checkpoint files (weights, tokenizer, refit.json)
    models/<version>/manifest.json  SHA-256 of every file; written last, never overwritten
    champion.json                   the champion pointer; written last when promoting
    reports/drift/<id>/report.{html,json}

A version exists once its manifest exists, so a crash mid-upload leaves a version that can be
uploaded again, and a published version can never be replaced.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import Engine, text

from models.checkpoint import MANIFEST, build_manifest, manifest_digest, verify_folder
from refit.errors import CheckpointError, NoChampionError, StoreError
from refit.gate import GateDecision
from refit.store import AlreadyExists, ObjectStore

POINTER = "champion.json"


def model_prefix(version: str) -> str:
    return f"models/{version}"


def new_version(now: datetime | None = None) -> str:
    """A sortable, unique version name: ``v20261127-190512-123456``."""
    now = now or datetime.now(timezone.utc)
    return now.strftime("v%Y%m%d-%H%M%S-%f")


@dataclass(frozen=True)
class Published:
    version: str
    uri: str
    manifest_sha256: str


def publish_checkpoint(store: ObjectStore, folder: Path, version: str) -> Published:
    """Upload a checkpoint under its immutable version path, manifest last.

    Raises:
        AlreadyExists: the version was published before (it is never overwritten).
    """
    prefix = model_prefix(version)
    manifest = build_manifest(folder, version)
    if store.exists(f"{prefix}/{MANIFEST}"):
        raise AlreadyExists(f"model version {version} is already published at {store.uri(prefix)}")
    for rel in manifest["files"]:
        store.put_file(f"{prefix}/{rel}", Path(folder) / rel)
    body = json.dumps(manifest, indent=2, sort_keys=True).encode()
    store.put(f"{prefix}/{MANIFEST}", body, if_absent=True)
    return Published(version, store.uri(prefix), manifest_digest(manifest))


def fetch_checkpoint(store: ObjectStore, version: str, dest: Path) -> Path:
    """Download a published version into ``dest`` and verify every file against its manifest."""
    prefix = model_prefix(version)
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


def read_pointer(store: ObjectStore) -> dict | None:
    if not store.exists(POINTER):
        return None
    try:
        return json.loads(store.get(POINTER))
    except json.JSONDecodeError:
        raise StoreError(f"the champion pointer {store.uri(POINTER)} is corrupt") from None


def write_pointer(store: ObjectStore, published: Published) -> None:
    pointer = {
        "version": published.version,
        "uri": published.uri,
        "manifest_sha256": published.manifest_sha256,
        "promoted_at": datetime.now(timezone.utc).isoformat(),
    }
    store.put(POINTER, json.dumps(pointer, indent=2).encode())


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
) -> None:
    """Record the challenger and the gate decision; when promoted, move the champion.

    The registry change and the promotion log entry are one transaction, and the store pointer
    is written last inside it: if the pointer write fails, the transaction rolls back and the old
    champion stays the champion everywhere.
    """
    status = "champion" if decision.promote else "rejected"
    with engine.begin() as conn:
        if decision.promote:
            conn.execute(text("UPDATE model_versions SET is_champion = FALSE, status = 'retired' WHERE is_champion"))
        conn.execute(
            text(
                "INSERT INTO model_versions (version, snapshot_id, parent_version, task, uri, manifest_sha256,"
                " metrics, status, is_champion, promoted_at)"
                " VALUES (:v, :s, :p, :t, :u, :m, CAST(:metrics AS JSONB), :status, :champ,"
                " CASE WHEN :champ THEN now() END)"
            ),
            {
                "v": published.version,
                "s": snapshot_id,
                "p": champion_version,
                "t": task,
                "u": published.uri,
                "m": published.manifest_sha256,
                "metrics": json.dumps(metrics, default=str),
                "status": status,
                "champ": decision.promote,
            },
        )
        conn.execute(
            text(
                "INSERT INTO promotion_log (challenger_version, champion_version, decision, metric,"
                " challenger_score, champion_score, reason, details)"
                " VALUES (:c, :ch, :d, :m, :cs, :chs, :r, CAST(:details AS JSONB))"
            ),
            {
                "c": published.version,
                "ch": champion_version,
                "d": "promoted" if decision.promote else "rejected",
                "m": decision.metric,
                "cs": decision.challenger_score,
                "chs": decision.champion_score,
                "r": decision.reason,
                "details": json.dumps(decision.as_dict(), default=str),
            },
        )
        if decision.promote:
            write_pointer(store, published)
