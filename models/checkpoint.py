"""Self-describing checkpoint folders.

A checkpoint is a folder holding ``model.safetensors``, ``config.json``, the tokenizer files and
``refit.json`` (task, label map, training config, lineage, metrics). ``manifest.json`` lists the
SHA-256 and size of every other file; loading verifies it, so a corrupt or partial folder is
refused with a clear error instead of serving garbage.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from refit.core.errors import CheckpointError
from refit.core.hashing import sha256_file

MANIFEST = "manifest.json"
METADATA = "refit.json"
REQUIRED = ("config.json", "model.safetensors", METADATA)


def build_manifest(folder: Path, version: str) -> dict:
    """The manifest of a checkpoint folder: every file but the manifest, with size and SHA-256."""
    folder = Path(folder)
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel == MANIFEST:
            continue
        files[rel] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    missing = [name for name in required_files(folder) if name not in files]
    if missing:
        raise CheckpointError(f"checkpoint {folder} is missing {', '.join(missing)}")
    return {"version": version, "files": files}


def required_files(folder: Path) -> list[str]:
    """The files a checkpoint cannot do without: for an ensemble (models/ensemble.py), its
    ``refit.json`` and every member's weights, config and ``refit.json``."""
    try:
        members = (read_metadata(folder).get("ensemble") or {}).get("members")
    except CheckpointError:
        members = None
    if not members:
        return list(REQUIRED)
    return [METADATA, *(f"{member}/{name}" for member in members for name in REQUIRED)]


def manifest_digest(manifest: dict) -> str:
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()


def verify_folder(folder: Path, manifest: dict | None = None) -> dict:
    """Check every file of ``folder`` against its manifest; return the manifest.

    Raises:
        CheckpointError: a file is missing, has the wrong size, or the wrong checksum.
    """
    folder = Path(folder)
    if manifest is None:
        path = folder / MANIFEST
        if not path.is_file():
            raise CheckpointError(f"checkpoint {folder} has no {MANIFEST}")
        try:
            manifest = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{path} is not valid JSON: {exc.msg}") from None
    for rel, entry in manifest.get("files", {}).items():
        path = folder / rel
        if not path.is_file():
            raise CheckpointError(f"checkpoint {folder}: {rel} is missing")
        if path.stat().st_size != entry["bytes"] or sha256_file(path) != entry["sha256"]:
            raise CheckpointError(f"checkpoint {folder}: {rel} does not match its manifest checksum")
    return manifest


def write_metadata(folder: Path, meta: dict) -> None:
    """Write ``refit.json`` (sorted, indented; values JSON cannot hold as their ``str``)."""
    (Path(folder) / METADATA).write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))


def read_metadata(folder: Path) -> dict:
    path = Path(folder) / METADATA
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{folder} is not a refit checkpoint (no {METADATA})") from None
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc.msg}") from None
