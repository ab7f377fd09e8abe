"""The champion pointer (``models/<name>/champion.json``): read it, and move it by compare-and-swap
on its ETag, so two publishers can never overwrite each other."""

from __future__ import annotations

import json
from datetime import datetime, timezone

from refit.core.errors import StoreError
from refit.models.checkpoint import MANIFEST
from refit.registry.layout import DEFAULT_MODEL, pointer_key
from refit.registry.store import Conflict, ObjectStore
from refit.registry.versions import Published


def read_pointer(store: ObjectStore, model_name: str = DEFAULT_MODEL) -> dict | None:
    """The champion pointer of ``model_name``, or None when there is none yet.

    Raises:
        StoreError: the pointer is not JSON.
    """
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
