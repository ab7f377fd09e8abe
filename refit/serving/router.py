"""Two models in one server: which one answers a request, the other's unseen scoring, and the
evidence both leave.

- **Routing.** With no candidate, or a candidate in shadow, the champion answers. In canary, a
  request goes to the candidate when a hash of (rollout id, user id) falls below the canary share,
  so a user stays on one model for the whole rollout; the whole request follows its first user id,
  and a request with none is routed at random. A candidate call that fails is answered by the
  champion: a live request never fails because of the candidate.
- **Shadow scoring.** The model that did not answer scores a ``shadow_share`` sample of the
  request's items after the response is sent (:class:`ShadowScorer`): only while no live request
  is in flight, on a thread of its own, from a bounded queue (items beyond it are dropped and
  counted). Its answers are never returned. Its calls are the live calls' size: items answered
  one at a time are scored one at a time, items answered in a call of k are scored k at a time
  (at most ``SHADOW_BATCH``), and each call is made and timed as a live call is
  (:func:`refit.serving.batching.model_call`), so the two models' latencies compare like with like.
- **Evidence.** While a rollout is live, every row both models score goes to the prediction log
  (role, served, rollout, request and item ids, the model call's duration and its size, or the
  error), even
  with ``REFIT_SERVE_LOG_PREDICTIONS`` off; outside one, the log is written only when that setting
  is on. Prometheus gets per-model series (:class:`ModelMetrics`): predictions, errors and model
  call latency by role and version, and the shadow pairs, their disagreements and the drops.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from prometheus_client import Counter, Histogram

from refit.core.hashing import stable_fraction
from refit.serving.batching import Batcher, model_call
from refit.serving.follower import Candidate, Champion, Loaded, Rollout
from refit.serving.predlog import PredictionLog

log = logging.getLogger("refit.serve")
SHADOW_BATCH = 4  # most texts per shadow call: a live request that arrives meanwhile waits for one small call at most
SHADOW_QUEUE = 1024  # items waiting to be scored in shadow; more are dropped (and counted)
IDLE_POLL_S = 0.005  # how often waiting shadow work looks for a moment without live requests
# How long the live batcher must have been idle before a shadow call starts: under steady load the
# next live requests arrive within a few ms of the last answers, and a shadow call started in that
# gap would make them wait (measured: p99 1.15x at 32 clients without it; bench/serve_bench.py).
QUIET_S = 0.02
DISAGREEMENT = 0.1  # two satisfaction scores further apart than this disagree
ERROR_CHARS = 500  # an error row keeps the first line of what was raised, cut to this


def canary_draw(rollout_id: int | None, user_id: str) -> float:
    """A user's fixed draw in [0, 1) for one rollout: below the canary share, the candidate answers.

    A hash, not a random number, so that the same user gets the same model on every request
    (and on every replica); the rollout id in it gives each rollout a fresh set of canary users.
    """
    return stable_fraction(f"{rollout_id}:{user_id}")


def disagree(served: dict, shadow: dict) -> bool:
    """Whether two predictions of one item disagree: another label, or satisfaction scores more
    than :data:`DISAGREEMENT` apart."""
    a, b = served["prediction"], shadow["prediction"]
    if isinstance(a, str) or isinstance(b, str):
        return a != b
    return abs(a - b) > DISAGREEMENT


def error_text(exc: BaseException) -> str:
    """What a failed model call logs: the exception's type and the first line of its message."""
    message = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {message}"[:ERROR_CHARS]


class ModelMetrics:
    """The per-model Prometheus series, labelled by role (``champion``, ``candidate``) and version."""

    def __init__(self, registry):
        labels = ["role", "version"]
        self.predictions = Counter(
            "refit_model_predictions", "Items scored, answered or in shadow", labels, registry=registry
        )
        self.errors = Counter("refit_model_errors", "Items whose model call failed", labels, registry=registry)
        self.call_seconds = Histogram(
            "refit_model_call_seconds", "Duration of one model call (a batch)", labels, registry=registry
        )
        self.pairs = Counter(
            "refit_shadow_pairs", "Items scored by both models, by candidate version", ["version"], registry=registry
        )
        self.disagreements = Counter(
            "refit_shadow_disagreements",
            f"Pairs whose predictions differ: another label, or satisfaction more than {DISAGREEMENT} apart",
            ["version"],
            registry=registry,
        )
        self.dropped = Counter(
            "refit_shadow_dropped", "Items not scored in shadow: its queue was full", registry=registry
        )

    def calls(self, role: str, loaded: Loaded) -> None:
        """Observe the model calls ``loaded`` made since the last look (each call once)."""
        if loaded.timer is not None:
            for seconds in loaded.timer.drain():
                self.call_seconds.labels(role, loaded.version).observe(seconds)


@dataclass
class ShadowItem:
    """One item a model scores unseen, with what it needs to be logged and paired."""

    loaded: Loaded  # the model that scores it
    role: str
    text: str
    features: dict
    ids: dict
    request_id: str
    rollout: Rollout
    served: dict  # the answering model's record of it
    candidate_version: str
    call_items: int = 1  # the size of the answering model's call: the shadow call mirrors it


class ShadowScorer:
    """Items scored in shadow after their responses: off the live path, in calls the size of the
    live calls that answered them (at most ``batch`` items).

    Work waits until ``idle()`` has said no live request is in flight for ``QUIET_S``, then runs
    call after call while that holds, on one thread of its own (never the live batcher's), and its
    queue holds at most ``capacity`` items: what comes beyond is dropped, counted in
    :attr:`dropped` and in the metrics. Items of a rollout that ended while they waited
    (``live(item)`` is false) are discarded, not scored.
    """

    def __init__(
        self,
        idle,
        live,
        report,
        metrics: ModelMetrics,
        batch: int = SHADOW_BATCH,
        capacity: int = SHADOW_QUEUE,
    ):
        self.idle, self.live, self.report, self.metrics = idle, live, report, metrics
        self.batch, self.capacity = batch, capacity
        self.queue: deque[ShadowItem] = deque()
        self.scored = self.dropped = self.errors = self.discarded = 0
        self._ready: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None

    async def start(self) -> None:
        """Start the worker (on the running event loop)."""
        self._ready = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="refit-shadow")
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Stop the worker; what is still queued is not scored."""
        if self._task is not None:
            self._task.cancel()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    async def add(self, items: list[ShadowItem]) -> None:
        """Queue ``items`` (a background task of the response, so it runs after it is sent)."""
        room = max(0, self.capacity - len(self.queue))
        if len(items) > room:
            self.dropped += len(items) - room
            self.metrics.dropped.inc(len(items) - room)
            items = items[:room]
        self.queue.extend(items)
        if self.queue and self._ready is not None:
            self._ready.set()

    def _take(self) -> list[ShadowItem]:
        # The next call: items that one model scores and that were answered in live calls of one
        # size, as many as that size (at most `batch`), in queue order; the others keep their places.
        while self.queue and not self.live(self.queue[0]):
            self.queue.popleft()
            self.discarded += 1
        if not self.queue:
            return []
        first = self.queue[0]
        size = max(1, min(self.batch, first.call_items))
        batch, others = [], []
        while self.queue and len(batch) < size:
            item = self.queue.popleft()
            alike = item.loaded is first.loaded and min(self.batch, item.call_items) == size
            (batch if alike else others).append(item)
        self.queue.extendleft(reversed(others))
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._ready.wait()
            await self._quiet(loop)  # live requests first
            # Once quiet, calls follow one another while no live request comes (each waits for one
            # small call at most): the model stays as warm as a live model taking back-to-back
            # requests, so its calls are timed as the live ones are.
            while self.idle():
                batch = self._take()
                if not batch:
                    break
                await self._score(loop, batch)
            if not self.queue:
                self._ready.clear()

    async def _quiet(self, loop) -> None:
        """Return once no live request has been in flight for ``QUIET_S``."""
        quiet_since = None
        while quiet_since is None or loop.time() - quiet_since < QUIET_S:
            if not self.idle():
                quiet_since = None
            elif quiet_since is None:
                quiet_since = loop.time()
            await asyncio.sleep(IDLE_POLL_S)

    async def _score(self, loop, batch: list[ShadowItem]) -> None:
        """One shadow call, made and timed as a live call is, then reported and counted."""
        loaded = batch[0].loaded
        # The untimed call: the shadow scorer times its own calls, and they must not be taken
        # for the live batch a request waited on.
        untimed = loaded.timer.predict if loaded.timer is not None else None
        started = time.perf_counter()
        try:
            prediction, seconds = await loop.run_in_executor(
                self._executor,
                model_call,
                loaded.predictor,
                [i.text for i in batch],
                [i.features for i in batch],
                untimed,
            )
            records, error = loaded.predictor.to_records(prediction), None
        except Exception as exc:  # the shadow model failing never touches a live answer
            records, error, seconds = None, exc, time.perf_counter() - started
        try:
            self.report(batch, records, seconds, error)
        except Exception:  # a bug in reporting must not stop the worker
            log.exception("shadow results not reported")
        # Counted once reported: an item counted as scored has its rows in the prediction log.
        if error is None:
            self.scored += len(batch)
        else:
            self.errors += len(batch)


class _CandidateSource:
    """The candidate batcher's source: the candidate now, or, once dropped, the one the requests
    already routed to it were sent to, until they are answered (a batch never finds no model)."""

    def __init__(self, candidate: Candidate):
        self.candidate, self.last, self.waiting = candidate, None, 0

    @property
    def current(self) -> Loaded | None:
        loaded = self.candidate.current
        if loaded is not None:
            self.last = loaded
        return loaded or self.last

    def enter(self, loaded: Loaded) -> None:
        self.waiting += 1
        self.last = self.candidate.current or loaded

    def leave(self) -> None:
        self.waiting -= 1
        if self.waiting == 0 and self.candidate.current is None:
            self.last = None  # let the dropped model go


@dataclass
class Answer:
    """What a request gets: the answering model's records, that model, and the shadow work left."""

    records: list[dict]
    loaded: Loaded
    shadow: list[ShadowItem]


class Router:
    """Routes each request to the champion or the candidate, and leaves the other model's shadow
    work and both models' evidence behind (see the module docstring)."""

    def __init__(
        self,
        settings,
        champion: Champion,
        candidate: Candidate,
        prediction_log: PredictionLog | None,
        metrics: ModelMetrics,
    ):
        self.settings, self.champion, self.candidate = settings, champion, candidate
        self.prediction_log, self.metrics = prediction_log, metrics
        self.champion_batcher = Batcher(champion, settings.serve_batch_size, settings.serve_batch_wait_ms)
        self.candidate_source = _CandidateSource(candidate)
        self.candidate_batcher = Batcher(self.candidate_source, settings.serve_batch_size, settings.serve_batch_wait_ms)
        self.shadow = ShadowScorer(self.idle, self._rollout_goes_on, self._report_shadow, metrics)
        self.live = 0  # requests between their arrival and their answer
        self._unlogged_warned = False
        self._failing: set[tuple[str, str]] = set()  # (role, version) whose failures were logged once

    async def start(self) -> None:
        """Start both batchers and the shadow worker."""
        await self.champion_batcher.start()
        await self.candidate_batcher.start()
        await self.shadow.start()

    async def stop(self) -> None:
        """Stop the shadow worker and both batchers."""
        await self.shadow.stop()
        await self.candidate_batcher.stop()
        await self.champion_batcher.stop()

    def _rollout_goes_on(self, item: ShadowItem) -> bool:
        """Whether the rollout a shadow item belongs to is still live (a dropped candidate's queued
        work is not scored)."""
        candidate = self.candidate.current
        return candidate is not None and candidate.rollout.id == item.rollout.id

    def _warn_once(self, role: str, version: str, message: str, *args) -> None:
        # A failing model fails every call: the first is logged, the rest are in the rows and metrics.
        if (role, version) not in self._failing:
            self._failing.add((role, version))
            log.warning(message + " (logged once for this version; counted in refit_model_errors)", *args)

    def idle(self) -> bool:
        """Whether no live request is queued or being scored (when shadow work may run)."""
        batchers = (self.champion_batcher, self.candidate_batcher)
        return self.live == 0 and all(getattr(b, "idle", True) for b in batchers)

    async def answer(
        self, texts: list[str], features: list[dict], ids: list[dict], request_id: str | None = None
    ) -> Answer:
        """Score a request with the model that answers it; log it; leave the other's shadow work.

        Args:
            texts: the texts, as scored.
            features: their behaviour features, one dict per text.
            ids: per text, its ``feedback_id``, ``user_id`` and ``item_id`` (any may be None).
            request_id: the caller's id of the request (a new one when None).

        Returns:
            The answer; its shadow items are to be queued after the response is sent.

        Raises:
            ValueError: the champion cannot read the features (a 422).
        """
        request_id = request_id or uuid.uuid4().hex
        candidate = self.candidate.current  # one look: the rollout this request belongs to
        rollout = candidate.rollout if candidate is not None else None
        if rollout is not None and self.prediction_log is None and not self._unlogged_warned:
            self._unlogged_warned = True
            log.warning(
                "rollout %s is live but REFIT_DATABASE_URL is not set: its predictions are not logged", rollout.id
            )
        logged = self.prediction_log is not None and (self.settings.serve_log_predictions or rollout is not None)
        context = {"rollout_id": rollout.id if rollout else None, "request_id": request_id, "ids": ids}
        self.live += 1
        try:
            answer, candidate_failed = None, False
            if rollout is not None and rollout.stage == "canary" and self._to_candidate(rollout, ids):
                self.candidate_source.enter(candidate)
                try:
                    answer = await self._call(self.candidate_batcher, "candidate", texts, features, logged, context)
                except Exception as exc:  # counted and logged by _call; the champion answers instead
                    candidate_failed = True
                    self._warn_once(
                        "candidate",
                        candidate.version,
                        "candidate %s failed a canary request, the champion answered: %s",
                        candidate.version,
                        error_text(exc),
                    )
                finally:
                    self.candidate_source.leave()
            if answer is None:
                answer = await self._call(self.champion_batcher, "champion", texts, features, logged, context)
        finally:
            self.live -= 1
        records, loaded, role, call_items = answer
        shadow = []
        if rollout is not None and not candidate_failed:
            # The model that did not answer scores a sample of the items unseen, for the pairs.
            other, other_role = (self.champion.current, "champion") if role == "candidate" else (candidate, "candidate")
            version = loaded.version if role == "candidate" else candidate.version
            for i, text in enumerate(texts):
                if random.random() < rollout.shadow_share:
                    item = ShadowItem(
                        other,
                        other_role,
                        text,
                        features[i],
                        ids[i],
                        request_id,
                        rollout,
                        records[i],
                        version,
                        call_items,
                    )
                    shadow.append(item)
        return Answer(records, loaded, shadow)

    def _to_candidate(self, rollout: Rollout, ids: list[dict]) -> bool:
        user = next((item["user_id"] for item in ids if item.get("user_id")), None)
        draw = canary_draw(rollout.id, user) if user is not None else random.random()
        return draw < rollout.share

    async def _call(self, batcher, role: str, texts, features, logged: bool, context: dict):
        """One live model call, counted and logged: ``(records, loaded, role, call_items)``, the
        last the size of the call that scored them.

        Raises:
            Exception: what the model call raised (its error rows are logged first).
        """
        try:
            scored = await batcher.score(texts, features)
            loaded = scored.loaded
            records = loaded.predictor.to_records(scored.prediction)
        except Exception as exc:
            source = self.champion if role == "champion" else self.candidate_source
            version = source.current.version if source.current is not None else "unknown"
            self.metrics.errors.labels(role, version).inc(len(texts))
            if logged:
                self.prediction_log.add(version, texts, None, role=role, served=False, error=error_text(exc), **context)
            raise
        self.metrics.calls(role, loaded)
        self.metrics.predictions.labels(role, loaded.version).inc(len(texts))
        if logged:
            # The duration of the model call that scored it (not the time it waited for its batch),
            # and the call's size: the call may hold other requests' items too.
            self.prediction_log.add(
                loaded.version,
                texts,
                records,
                role=role,
                served=True,
                latency_ms=scored.seconds * 1000,
                call_items=scored.call_items,
                **context,
            )
        return records, loaded, role, scored.call_items

    def _report_shadow(self, batch: list[ShadowItem], records: list[dict] | None, seconds: float, error) -> None:
        """Log a shadow call's rows and count them: predictions or errors, pairs and disagreements."""
        loaded, role = batch[0].loaded, batch[0].role
        self.metrics.call_seconds.labels(role, loaded.version).observe(seconds)
        if error is not None:
            self.metrics.errors.labels(role, loaded.version).inc(len(batch))
            self._warn_once(role, loaded.version, "%s %s failed in shadow: %s", role, loaded.version, error_text(error))
        else:
            self.metrics.predictions.labels(role, loaded.version).inc(len(batch))
        for i, item in enumerate(batch):
            record = records[i] if records is not None else None
            if record is not None:
                self.metrics.pairs.labels(item.candidate_version).inc()
                if disagree(item.served, record):
                    self.metrics.disagreements.labels(item.candidate_version).inc()
            if self.prediction_log is not None:
                self.prediction_log.add(
                    loaded.version,
                    [item.text],
                    None if record is None else [record],
                    role=role,
                    served=False,
                    rollout_id=item.rollout.id,
                    request_id=item.request_id,
                    ids=[item.ids],
                    latency_ms=seconds * 1000,
                    call_items=len(batch),
                    error=None if error is None else error_text(error),
                )
