"""The followers: the versions the store's pointers name, downloaded, verified, loaded and warmed
up, then swapped in by one reference.

- **The champion** (:class:`Champion`, ``champion.json``). At start the pointer names a version;
  it is downloaded to the local cache, every file is checked against the manifest, and it is
  loaded. A version that fails the check is refused and the previous one keeps serving.
- **Hot reload.** :meth:`Champion.refresh` reads the pointer's ETag; on a change it loads the new
  version beside the old one, warms it up, swaps one reference, and drops the old one. Requests
  already batched finish on the model they started with.
- **The candidate** (:class:`Candidate`, ``candidate.json``): the version in live rollout, with
  its stage and shares (:class:`Rollout`). It is loaded, verified and swapped in the same way when
  the pointer appears or changes, and dropped when the pointer goes. A candidate that fails the
  check is refused and counted, and serving goes on with no candidate: the champion alone.

Each loaded predictor's ``predict`` is timed (:class:`CallTimer`), so the app can report the
model call's own duration, apart from the time a request waited for its batch.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any

from refit.core.errors import NoChampionError, RefitError
from refit.models.predict import Predictor
from refit.models.quantize import INT8_FILE, quantized
from refit.registry.layout import candidate_key, pointer_key
from refit.registry.pointer import read_candidate, read_pointer
from refit.registry.store import store_for
from refit.registry.versions import checkout
from refit.serving.scoring import no_champion_message

log = logging.getLogger("refit.serve")
STAGES = ("shadow", "canary")


class CallTimer:
    """A predictor's ``predict``, timed: each call's start and end are kept (the last ``keep``),
    and each duration waits in a list until it is drained into the metrics.

    The batcher calls ``predictor.predict`` and returns only the prediction; this lets the app
    find the call that scored a request (:meth:`within`) without reaching into the batcher.
    """

    def __init__(self, predict, keep: int = 256):
        self.predict = predict  # the untimed call (the shadow scorer times its own calls)
        self._calls: deque[tuple[float, float]] = deque(maxlen=keep)
        self._pending: list[float] = []
        self._lock = threading.Lock()  # calls end on executor threads; readers are on the event loop

    def __call__(self, texts, features=None):
        start = time.perf_counter()
        result = self.predict(texts, features)
        end = time.perf_counter()
        with self._lock:
            self._calls.append((start, end))
            self._pending.append(end - start)
        return result

    def within(self, submitted: float, answered: float) -> float | None:
        """The duration in seconds of the last call that ran between ``submitted`` and ``answered``
        (``time.perf_counter()`` readings), or None when no call fits."""
        with self._lock:
            calls = list(self._calls)
        for start, end in reversed(calls):
            if start >= submitted and end <= answered:
                return end - start
        return None

    def drain(self) -> list[float]:
        """The durations in seconds of the calls since the last drain."""
        with self._lock:
            pending, self._pending = self._pending, []
        return pending


@dataclass(frozen=True)
class Rollout:
    """What the candidate pointer says about the live rollout: its id (the ``rollouts`` row), its
    stage, the share of requests the candidate answers (canary only) and the share of the others'
    items it scores unseen (``shadow_share``)."""

    id: int | None
    stage: str
    share: float
    shadow_share: float

    @classmethod
    def from_pointer(cls, pointer: dict) -> Rollout:
        """The rollout a candidate pointer describes (shares clamped to [0, 1]; an unknown stage
        is read as shadow, which never answers a request)."""
        stage = pointer.get("stage") if pointer.get("stage") in STAGES else "shadow"

        def share(key: str) -> float:
            return min(1.0, max(0.0, float(pointer.get(key) or 0.0)))

        return cls(
            pointer.get("rollout_id"), stage, share("share") if stage == "canary" else 0.0, share("shadow_share")
        )


@dataclass
class Loaded:
    """One loaded version: what a batch runs on from start to end. A candidate also carries its
    rollout (stage and shares)."""

    version: str
    predictor: Any
    etag: str | None
    loaded_at: float = field(default_factory=time.time)
    rollout: Rollout | None = None
    timer: CallTimer | None = None


class Follower:
    """A model that follows a store pointer: loaded, verified, warmed up, swapped by one reference."""

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
        timer = CallTimer(predictor.predict)
        predictor.predict = timer  # this instance only: every caller's model call is timed
        return Loaded(version, predictor, etag, timer=timer)


class Champion(Follower):
    """The model being served and how it changes: load, verify, warm up, swap."""

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
                    raise NoChampionError(no_champion_message(self.settings))
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


class Candidate(Follower):
    """The version in live rollout, if any: loaded while the candidate pointer names it, dropped
    when the pointer goes. ``current`` is None when no rollout is live (or its version was refused)."""

    def __init__(self, settings, store=None):
        super().__init__(settings, store)
        self.drops = 0
        self._refused_etag: str | None = None

    def refresh(self, retry_refused: bool = False) -> bool:
        """Check the candidate pointer; load, update or drop the candidate. Returns whether the
        candidate or its rollout (stage, shares) changed.

        A version that cannot be loaded is refused: logged, counted, and no candidate is served.
        The poll does not retry a refused pointer (a download that failed its checksum fails the
        same way again); a rewritten pointer, or ``retry_refused`` (``POST /reload``), does.

        Raises:
            StoreError: the store cannot be read (the candidate, if any, stays as it was).
        """
        with self._lock:
            current = self.current
            key = candidate_key(self.settings.model_name)
            head = self.store.head(key)
            pointer = read_candidate(self.store, self.settings.model_name) if head is not None else None
            if pointer is None:
                self._refused_etag = None
                if current is None:
                    return False
                self.current, self.drops = None, self.drops + 1  # the rollout ended: the champion alone
                log.info("candidate %s dropped: the candidate pointer is gone", current.version)
                return True
            if current is not None and head.etag == current.etag:
                return False  # the pointer has not moved
            if current is None and head.etag == self._refused_etag and not retry_refused:
                return False  # refused as it is
            rollout = Rollout.from_pointer(pointer)
            if current is not None and pointer["version"] == current.version:
                if rollout == current.rollout:
                    current.etag = head.etag  # rewritten, same version and rollout
                    return False
                self.current = replace(current, etag=head.etag, rollout=rollout)  # a new stage or share
                log.info("candidate %s now in %s (share %.3g)", current.version, rollout.stage, rollout.share)
                return True
            try:
                loaded = self.load(pointer["version"], head.etag)
            except RefitError as exc:
                self.reload_failures += 1
                self.last_error = f"refused candidate {pointer['version']}: {exc}"
                self._refused_etag, self.current = head.etag, None
                log.error("%s; serving the champion alone", self.last_error)
                return current is not None
            loaded.rollout = rollout
            self.current = loaded  # the swap: one reference
            self.reloads += 1
            self.last_error = None
            log.info("candidate %s loaded in %s (share %.3g)", loaded.version, rollout.stage, rollout.share)
            return True
