"""The champion follower: the version the store's pointer names, downloaded, verified, loaded and
warmed up, then swapped in by one reference.

- **The champion.** At start the pointer names a version; it is downloaded to the local cache,
  every file is checked against the manifest, and it is loaded. A version that fails the check
  is refused and the previous one keeps serving.
- **Hot reload.** :meth:`Champion.refresh` reads the pointer's ETag; on a change it loads the new
  version beside the old one, warms it up, swaps one reference, and drops the old one. Requests
  already batched finish on the model they started with.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from refit.core.errors import NoChampionError, RefitError
from refit.models.predict import Predictor
from refit.models.quantize import INT8_FILE, quantized
from refit.registry.layout import pointer_key
from refit.registry.pointer import read_pointer
from refit.registry.store import store_for
from refit.registry.versions import checkout

log = logging.getLogger("refit.serve")


@dataclass
class Loaded:
    """One loaded version: what a batch runs on from start to end."""

    version: str
    predictor: Any
    etag: str | None
    loaded_at: float = field(default_factory=time.time)


class Champion:
    """The model being served and how it changes: load, verify, warm up, swap."""

    def __init__(self, settings, store=None):
        self.settings = settings
        self.store = store or store_for(settings)
        self.current: Loaded | None = None
        self.reloads = 0
        self.reload_failures = 0
        self.last_error: str | None = None
        self._lock = threading.Lock()  # one load at a time

    def load(self, version: str, etag: str | None) -> Loaded:
        """Download (or reuse the verified cache of) ``version``, load and warm it up."""
        folder = checkout(self.settings, version)
        if self.settings.serve_quantize and (folder / INT8_FILE).is_file():
            # The int8 weights published beside the float ones, checked on the dev set then.
            predictor = Predictor(folder, int8=True)
            predictor.quantization_gap = predictor.meta["int8"]["max_abs_diff"]
        else:
            predictor = Predictor(folder)
            if self.settings.serve_quantize:
                predictor = quantized(predictor, self.settings.serve_quantize_tolerance)
        predictor.predict(["warm-up text for a new model"])  # first-call costs before the swap
        return Loaded(version, predictor, etag)

    def refresh(self, force: bool = False) -> bool:
        """Check the pointer; load and swap when it moved. Returns whether the model changed.

        A version that cannot be loaded (checksum mismatch, unreadable files) is refused: the
        reason is logged and counted, and the current model keeps serving.
        """
        with self._lock:
            current = self.current
            head = self.store.head(pointer_key(self.settings.model_name))
            if head is not None and current is not None and not force and head.etag == current.etag:
                return False  # the pointer has not moved: nothing to read
            pointer = read_pointer(self.store, self.settings.model_name) if head is not None else None
            if pointer is None:
                if current is None:
                    raise NoChampionError("the store has no champion pointer yet: run `refit run` first")
                return False
            etag = head.etag
            if current is not None and not force and pointer["version"] == current.version:
                current.etag = etag  # rewritten, same version
                return False
            try:
                loaded = self.load(pointer["version"], etag)
            except RefitError as exc:
                self.reload_failures += 1
                self.last_error = f"refused {pointer['version']}: {exc}"
                log.error("%s; still serving %s", self.last_error, current.version if current else "nothing")
                if current is None:
                    raise
                return False
            self.current = loaded  # the swap: one reference
            self.reloads += 1
            self.last_error = None
            log.info("now serving %s (was %s)", loaded.version, current.version if current else "none")
            return True
