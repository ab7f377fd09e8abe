"""Published versions in the object store: publish, fetch, check out, withdraw.

A version exists once its manifest exists. A crash mid-upload leaves files without a manifest:
publishing the same version again skips the files already there with the right checksum,
uploads the rest and seals it; a published version is never replaced.
"""

from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import Engine, text

from refit.core.errors import CheckpointError
from refit.models.checkpoint import MANIFEST, build_manifest, manifest_digest, read_metadata, verify_folder
from refit.registry.layout import DEFAULT_MODEL, model_prefix
from refit.registry.store import AlreadyExists, ObjectStore, store_for

FILES_IN_FLIGHT = 4  # files uploaded or checked at once


def new_version(now: datetime | None = None) -> str:
    """A sortable, unique version name: ``v20261127-190512-123456``."""
    now = now or datetime.now(timezone.utc)
    return now.strftime("v%Y%m%d-%H%M%S-%f")


@dataclass(frozen=True)
class Published:
    """A sealed version in the store: its name, its URI and its manifest's SHA-256."""

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
    keys = {rel: f"{prefix}/{rel}" for rel in manifest["files"]}
    # The files go up side by side (a large one in parallel parts of its own), and the checks before
    # and after are one HEAD per file, sent together: each is a round trip to the store.
    with ThreadPoolExecutor(max_workers=FILES_IN_FLIGHT) as pool:
        before = dict(zip(keys, pool.map(store.head, keys.values()), strict=True))
        for rel, there in before.items():
            if there is not None and there.sha256 != manifest["files"][rel]["sha256"]:
                raise AlreadyExists(
                    f"{store.uri(keys[rel])} exists with other content; version {version} is not replaced"
                )

        def upload(rel: str) -> str | None:
            """The file sent (its expected checksum or ETag, computed while sending), unless it
            is there whole from before an interruption."""
            there, path, entry = before[rel], folder / rel, manifest["files"][rel]
            if there is not None and there.size == entry["bytes"] and store.holds(keys[rel], path, there):
                return None  # uploaded before an interruption
            # Absent, or declared as this file but damaged in transit: the version is not sealed
            # yet, so the file is uploaded (again).
            return store.put_file(keys[rel], path, sha256=entry["sha256"])

        sent = dict(zip(keys, pool.map(upload, keys), strict=True))
        after = dict(zip(keys, pool.map(store.head, keys.values()), strict=True))
    for rel, entry in manifest["files"].items():  # every file there, whole, before the seal
        there = after[rel]
        # The recorded SHA-256 is what was declared; the stored bytes are checked too: against what
        # the upload computed as it sent them, or for a file sent before an interruption the file's own.
        if there is None or there.size != entry["bytes"] or not store.holds(keys[rel], folder / rel, there, sent[rel]):
            raise CheckpointError(
                f"{store.uri(keys[rel])} did not arrive intact; not publishing {version}", permanent=False
            )  # a retry uploads it again
    body = json.dumps(manifest, indent=2, sort_keys=True).encode()
    store.put(f"{prefix}/{MANIFEST}", body, if_absent=True)
    return Published(version, store.uri(prefix), manifest_digest(manifest))


def withdraw_unregistered(engine: Engine, store: ObjectStore, version: str, model_name: str = DEFAULT_MODEL) -> int:
    """Delete a published version that the registry never recorded (a publish whose recording
    failed), manifest first; a recorded version is left alone.

    Args:
        engine: the registry's database.
        store: the object store.
        version: the version to withdraw.
        model_name: the model it belongs to.

    Returns:
        How many objects were deleted (0 for a recorded version).
    """
    with engine.connect() as conn:
        if conn.execute(text("SELECT 1 FROM model_versions WHERE version = :v"), {"v": version}).first():
            return 0
    return delete_version(store, version, model_name)


def delete_version(store: ObjectStore, version: str, model_name: str = DEFAULT_MODEL) -> int:
    """Delete every object of a version, its manifest first, so a half-deleted version is never
    taken for a published one.

    Args:
        store: the object store.
        version: the version to delete.
        model_name: the model it belongs to.

    Returns:
        How many objects were deleted.
    """
    keys = store.list(f"{model_prefix(version, model_name)}/")
    for key in sorted(keys, key=lambda k: not k.endswith(MANIFEST)):
        store.delete(key)
    return len(keys)


def fetch_checkpoint(store: ObjectStore, version: str, dest: Path, model_name: str = DEFAULT_MODEL) -> Path:
    """Download a published version and verify every file against its manifest.

    Args:
        store: the object store.
        version: the version to download.
        dest: the folder to download into (emptied first).
        model_name: the model it belongs to.

    Returns:
        ``dest``, holding the version's files and its manifest.

    Raises:
        CheckpointError: the manifest is corrupt, or a file does not match it.
    """
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
    """A verified local copy of a published version, downloaded only when needed.

    Args:
        settings: refit's settings (the store, the model name, ``work_dir``).
        version: the version to check out.

    Returns:
        Its folder under ``work_dir/champions/``: the copy already there when it matches its
        manifest, else a fresh download.
    """
    folder = Path(settings.work_dir) / "champions" / version
    if (folder / MANIFEST).is_file():
        try:
            verify_folder(folder)
            return folder
        except CheckpointError:
            pass  # damaged or partial: download it again
    return fetch_checkpoint(store_for(settings), version, folder, settings.model_name)
