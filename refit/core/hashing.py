"""Content hashes of files (checkpoints' manifests and the object store both check files by SHA-256),
and the stable draw in [0, 1) that splits, folds and canary users are assigned by."""

from __future__ import annotations

import hashlib
from pathlib import Path


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """The hex SHA-256 of a file's bytes, read in chunks so a large file never sits in memory.

    Args:
        path: the file.
        chunk: how many bytes are read at a time.

    Returns:
        The 64-character hex digest.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def stable_fraction(key: str) -> float:
    """A fixed number in [0, 1) for ``key``, from its SHA-256: the same key, the same draw, on every
    machine and in every run. A row's split, its validation fold and a user's canary draw are each a
    share of these draws (each with its own key, so that they are independent)."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64
