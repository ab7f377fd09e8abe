"""Micro-batching: concurrent requests scored together in one model call.

The batch window adapts to what the batcher observes, after BentoML's adaptive batching (its
``CorkDispatcher``):

- **One call at a time, on one thread.** While a call runs, requests queue; when it ends, what
  queued goes into the next call at once, up to ``max_size`` texts (a request is never split). Under
  load the window is the call itself and nothing waits on a timer. The calls run on one dedicated
  thread, so torch's intra-op thread pool is always the same one (the event loop's default
  executor would hand calls to several threads, each with a thread team of its own).
- **Waiting only while it pays.** With the model free and fewer than ``max_size`` texts queued, the
  batcher may wait for more. It fits each call's duration to ``fixed + per_text * texts`` (least
  squares over the recent calls, newer ones weighing more) and keeps a moving average of the gap
  between arrivals (a pause longer than a few budgets counts as that much, so clients waiting on a
  call do not pass for slow traffic). Merging the next arrival into this call spares it a call's
  fixed cost, so the batcher waits while the gap is shorter than that cost and the arrivals keep
  coming (the newest within a few gaps), and never longer than the latency budget ``wait_ms``
  after the model became free (or the oldest request arrived, if later). Calls that cost nothing
  fixed, or traffic slower than that cost, go at once: a lone request does not wait for the budget.
- **One bad request does not fail the others.** A call that raises is split in halves, each
  scored on its own, down to the request that fails; the rest get their predictions. All of it
  runs on the version the call started with, even across a hot reload.
- **One model call, live or in shadow.** :func:`model_call` is the call itself: the features
  passed only when an item has some and the model reads any, timed on the thread that runs it. The
  shadow scorer (:mod:`refit.serving.router`) makes its calls with it too, so both models of a
  rollout are scored and timed the same way; :meth:`Batcher.score` says how many items the call
  held and how long it took.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from refit.core.errors import NoChampionError

BURST_GAPS = 3.0  # the arrivals are over once none came for this many typical gaps
GAP_WEIGHT = 0.1  # each arrival's weight in the moving average of the gap between arrivals
GAP_CLIP_BUDGETS = 4.0  # a longer gap counts as this many latency budgets
FORGET = 0.9  # each call's weight in the cost fit, relative to the one after it


@dataclass
class _Job:
    texts: list[str]
    features: list[dict] | None
    future: asyncio.Future
    arrived: float


@dataclass(frozen=True)
class Scored:
    """A request's share of one model call.

    Attributes:
        prediction: the request's rows, in order.
        loaded: the version that scored them.
        call_items: the items the call scored: the request's and those batched with it.
        seconds: the call's duration, timed on the thread that ran it (not the wait for it).
    """

    prediction: np.ndarray
    loaded: Any
    call_items: int
    seconds: float


@dataclass
class CallCost:
    """A call's duration fitted to ``fixed + per_text * texts`` by exponentially weighted least
    squares over the calls seen (newer calls weigh more)."""

    forget: float = FORGET
    _sums: list[float] = field(default_factory=lambda: [0.0] * 5)  # weight, x, y, xx, xy

    def observe(self, texts: int, seconds: float) -> None:
        w, x, y, xx, xy = (s * self.forget for s in self._sums)
        self._sums = [w + 1, x + texts, y + seconds, xx + texts * texts, xy + texts * seconds]

    @property
    def calls(self) -> float:
        return self._sums[0]

    def _fit(self) -> tuple[float, float]:
        w, x, y, xx, xy = self._sums
        if w <= 0:
            return 0.0, 0.0
        mean_x, mean_y = x / w, y / w
        spread = xx / w - mean_x * mean_x
        if spread <= 1e-9 * max(1.0, mean_x * mean_x):  # one batch size seen: no slope to fit
            return 0.0, mean_y / max(mean_x, 1.0)
        per_text = max(0.0, (xy / w - mean_x * mean_y) / spread)
        fixed = min(max(0.0, mean_y - per_text * mean_x), mean_y)
        return fixed, per_text

    @property
    def fixed(self) -> float:
        """Seconds a call costs whatever its size (0 until calls of two sizes were seen)."""
        return self._fit()[0]

    @property
    def per_text(self) -> float:
        """Seconds each text adds to a call."""
        return self._fit()[1]

    def estimate(self, texts: int) -> float:
        """The expected duration of a call of ``texts`` texts."""
        fixed, per_text = self._fit()
        return fixed + per_text * texts


class Batcher:
    """Gathers concurrent requests into one model call (one call at a time, off the event loop).

    Args:
        source: what serves, with ``current`` (a loaded version: ``.predictor`` and ``.version``),
            read once per call; the champion follower.
        max_size: the most texts in one call (``REFIT_SERVE_BATCH_SIZE``).
        wait_ms: the latency budget: the most a request waits for others to join it while the
            model is free (``REFIT_SERVE_BATCH_WAIT_MS``); within it the window adapts.
    """

    def __init__(self, source, max_size: int, wait_ms: float):
        self.source, self.max_size, self.budget = source, max(1, int(max_size)), wait_ms / 1000
        self.calls = 0
        self.texts = 0  # texts scored, so texts / calls is the mean batch
        self.cost = CallCost()
        self._jobs: deque[_Job] = deque()
        self._arrived: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._scoring: list[_Job] = []  # the requests of the call in flight
        self._last_arrival: float | None = None
        self._gap: float | None = None  # moving average of the seconds between arrivals

    @property
    def idle(self) -> bool:
        """True when no live request is queued or being scored (a second model may use the CPU)."""
        return not self._scoring and all(job.future.done() for job in self._jobs)

    @property
    def gap(self) -> float:
        """The typical seconds between two arrivals (infinite until two have arrived)."""
        return math.inf if self._gap is None else self._gap

    async def start(self) -> None:
        """Start gathering (on the running event loop)."""
        self._arrived = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="refit-model")
        self._task = asyncio.create_task(self._run(), name="refit-batcher")

    async def stop(self) -> None:
        """Stop gathering; requests still queued fail with a ``CancelledError``."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for job in [*self._scoring, *self._jobs]:
            if not job.future.done():
                job.future.cancel()
        self._jobs.clear()
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None

    async def submit(self, texts: list[str], features: list[dict] | None):
        """Score ``texts`` in the next batch.

        Args:
            texts: the texts.
            features: their behaviour features, one dict per text, or None.

        Returns:
            ``(prediction, loaded)``: the rows' predictions and the version that made them.

        Raises:
            Exception: what scoring this request alone raised (e.g. ``ValueError`` for features
                the model cannot read); requests batched with it are not affected.
        """
        scored = await self.score(texts, features)
        return scored.prediction, scored.loaded

    async def score(self, texts: list[str], features: list[dict] | None) -> Scored:
        """Score ``texts`` in the next batch, as :meth:`submit` does, and say how: the call's size
        and duration beside the predictions.

        Raises:
            Exception: what scoring this request alone raised (see :meth:`submit`).
        """
        if self._task is None or self._task.done():
            raise RuntimeError("the batcher is not running: await start() first")
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self._last_arrival is not None:
            # A pause longer than a few budgets is the clients waiting on a call, not their pace.
            gap = min(now - self._last_arrival, GAP_CLIP_BUDGETS * self.budget)
            self._gap = gap if self._gap is None else (1 - GAP_WEIGHT) * self._gap + GAP_WEIGHT * gap
        self._last_arrival = now
        job = _Job(list(texts), features, loop.create_future(), now)
        self._jobs.append(job)
        self._arrived.set()
        return await job.future

    # --- the dispatcher ------------------------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._drop_abandoned()
            if not self._jobs:
                self._arrived.clear()
                await self._arrived.wait()
                continue
            await self._gather(loop)
            batch = self._take()
            if batch:
                await self._score(loop, batch)

    async def _gather(self, loop) -> None:
        """Wait for more requests while it pays (see the module's docstring); the model is free."""
        free_since = loop.time()
        while True:
            self._drop_abandoned()
            if not self._jobs:
                return
            if sum(len(job.texts) for job in self._jobs) >= self.max_size:
                return
            gap = self.gap
            if not gap < self.cost.fixed:
                return  # the next request is not expected before a call's fixed cost: no gain in waiting
            now = loop.time()
            start = max(free_since, self._jobs[0].arrived)
            deadline = min(start + self.budget, self._jobs[-1].arrived + BURST_GAPS * gap)
            if now >= deadline:
                return  # the budget is spent, or the arrivals stopped
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), deadline - now)
            except asyncio.TimeoutError:
                return

    def _drop_abandoned(self) -> None:
        while self._jobs and self._jobs[0].future.done():  # its client went away
            self._jobs.popleft()

    def _take(self) -> list[_Job]:
        """The queued requests of the next call: whole requests, at most ``max_size`` texts (a
        larger request goes alone)."""
        batch, size = [], 0
        while self._jobs:
            job = self._jobs[0]
            if job.future.done():
                self._jobs.popleft()
                continue
            if batch and size + len(job.texts) > self.max_size:
                break
            batch.append(self._jobs.popleft())
            size += len(job.texts)
        return batch

    async def _score(self, loop, batch: list[_Job]) -> None:
        loaded = self.source.current
        if loaded is None:
            for job in batch:
                _settle(job, exc=NoChampionError("no model is loaded yet"))
            return
        self._scoring = batch
        try:
            await self._score_group(loop, loaded, batch)
        except asyncio.CancelledError:  # stopped mid-call: nobody will answer these
            for job in batch:
                if not job.future.done():
                    job.future.cancel()
            raise
        finally:
            self._scoring = []

    async def _score_group(self, loop, loaded, group: list[_Job]) -> None:
        texts = [t for job in group for t in job.texts]
        features = [f for job in group for f in (job.features or [{}] * len(job.texts))]
        started = loop.time()
        try:
            call = loop.run_in_executor(self._executor, model_call, loaded.predictor, texts, features)
            prediction, seconds = await call
        except Exception as exc:  # a model failure fails its requests, not the server
            self.calls += 1
            if len(group) == 1:
                _settle(group[0], exc=exc)
                return
            # One bad request must not fail the others it was batched with: split until it is alone.
            half = len(group) // 2
            await self._score_group(loop, loaded, group[:half])
            await self._score_group(loop, loaded, group[half:])
            return
        self.cost.observe(len(texts), loop.time() - started)
        self.calls += 1
        self.texts += len(texts)
        start = 0
        for job in group:
            _settle(job, result=Scored(prediction[start : start + len(job.texts)], loaded, len(texts), seconds))
            start += len(job.texts)


def _settle(job: _Job, result=None, exc: BaseException | None = None) -> None:
    if job.future.done():  # cancelled while it was scored: nobody waits for it
        return
    if exc is not None:
        job.future.set_exception(exc)
    else:
        job.future.set_result(result)


def model_call(predictor, texts: list[str], features: list[dict] | None, predict=None) -> tuple[np.ndarray, float]:
    """One model call as serving makes it, live or in shadow.

    Args:
        predictor: the loaded predictor (its ``feature_names`` say whether it reads features).
        texts: the call's texts.
        features: one dict per text; passed to the model only when some item has features and the
            model reads any.
        predict: the function to call (default ``predictor.predict``; the shadow scorer passes the
            untimed one, so its calls are not taken for a live batch's).

    Returns:
        ``(prediction, seconds)``: the rows, and the call's duration on the thread that ran it.
    """
    with_features = bool(features) and any(features) and predictor.feature_names
    call = predict or predictor.predict
    started = time.perf_counter()
    prediction = call(texts, features if with_features else None)
    return prediction, time.perf_counter() - started
