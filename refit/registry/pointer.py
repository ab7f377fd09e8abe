"""The champion pointer (``models/<name>/champion.json``): read it, and move it by compare-and-swap
on its ETag, so two publishers can never overwrite each other. The candidate pointer
(``models/<name>/candidate.json``) names the version in live rollout, its stage and its share;
``refit serve`` follows both."""

from __future__ import annotations

import json
from datetime import datetime, timezone

from refit.core.errors import StoreError
from refit.models.checkpoint import MANIFEST
from refit.registry.layout import DEFAULT_MODEL, candidate_key, pointer_key
from refit.registry.store import Conflict, ObjectStore
from refit.registry.versions import Published


def read_pointer(store: ObjectStore, model_name: str = DEFAULT_MODEL) -> dict | None:
    """The champion pointer of ``model_name``, or None when there is none yet.

    Raises:
        StoreError: the pointer is not JSON.
    """
    return _read_json(store, pointer_key(model_name), "champion")


def read_candidate(store: ObjectStore, model_name: str = DEFAULT_MODEL) -> dict | None:
    """The candidate pointer of ``model_name`` (the version in live rollout), or None when no
    rollout is live.

    Raises:
        StoreError: the pointer is not JSON.
    """
    return _read_json(store, candidate_key(model_name), "candidate")


def _read_json(store: ObjectStore, key: str, what: str) -> dict | None:
    if not store.exists(key):
        return None
    try:
        return json.loads(store.get(key))
    except json.JSONDecodeError:
        raise StoreError(f"the {what} pointer {store.uri(key)} is corrupt") from None


def write_candidate(
    store: ObjectStore,
    published: Published,
    *,
    rollout_id: int,
    stage: str,
    share: float,
    shadow_share: float,
    model_name: str = DEFAULT_MODEL,
) -> None:
    """Name a published version as the candidate of a live rollout.

    Written by compare-and-swap on the pointer's ETag: a pointer that changed meanwhile raises
    :class:`Conflict` rather than being overwritten.

    Args:
        store: the object store.
        published: the candidate version.
        rollout_id: the rollout it serves in.
        stage: ``shadow`` or ``canary``.
        share: the share of requests the candidate answers in canary (0 in shadow).
        shadow_share: the share of the other requests' items it scores unseen.
        model_name: the model the pointer belongs to.
    """
    key = candidate_key(model_name)
    head = store.head(key)
    pointer = {
        "version": published.version,
        "uri": published.uri,
        "manifest_uri": f"{published.uri}/{MANIFEST}",
        "manifest_sha256": published.manifest_sha256,
        "rollout_id": rollout_id,
        "stage": stage,
        "share": share if stage == "canary" else 0.0,
        "shadow_share": shadow_share,
        "written_at": datetime.now(timezone.utc).isoformat(),
    }
    store.put_if_match(key, json.dumps(pointer, indent=2).encode(), head.etag if head else None)


def clear_candidate(store: ObjectStore, model_name: str = DEFAULT_MODEL) -> None:
    """Remove the candidate pointer (the rollout ended): ``refit serve`` drops the candidate."""
    key = candidate_key(model_name)
    if store.exists(key):
        store.delete(key)


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
