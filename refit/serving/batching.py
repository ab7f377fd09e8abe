"""Micro-batching: concurrent requests gathered into one model call, up to
``REFIT_SERVE_BATCH_SIZE`` texts or ``REFIT_SERVE_BATCH_WAIT_MS``."""

from __future__ import annotations

import asyncio

import numpy as np

from refit.serving.follower import Champion


class Batcher:
    """Gathers concurrent requests into one model call (one call at a time, off the event loop)."""

    def __init__(self, champion: Champion, max_size: int, wait_ms: float):
        self.champion, self.max_size, self.wait = champion, max_size, wait_ms / 1000
        self.queue: asyncio.Queue | None = None
        self.calls = 0

    async def start(self) -> None:
        """Start gathering (on the running event loop)."""
        self.queue = asyncio.Queue()
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Stop gathering."""
        self._task.cancel()

    async def submit(self, texts: list[str], features: list[dict] | None):
        """Score ``texts`` in the next batch.

        Args:
            texts: the texts.
            features: their behaviour features, one dict per text, or None.

        Returns:
            ``(prediction, loaded)``: the rows' predictions and the version that made them.
        """
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((texts, features, future))
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = [await self.queue.get()]
            size = len(jobs[0][0])
            deadline = loop.time() + self.wait
            while size < self.max_size:
                timeout = deadline - loop.time()
                if timeout <= 0:
                    break
                try:
                    job = await asyncio.wait_for(self.queue.get(), timeout)
                except asyncio.TimeoutError:
                    break
                jobs.append(job)
                size += len(job[0])
            loaded = self.champion.current
            texts = [t for job in jobs for t in job[0]]
            features = [f for job in jobs for f in (job[1] or [{}] * len(job[0]))]
            try:
                prediction = await loop.run_in_executor(None, _predict, loaded.predictor, texts, features)
            except Exception as exc:  # a model failure fails its requests, not the server
                if len(jobs) == 1:
                    jobs[0][2].set_exception(exc)
                    continue
                # One bad request must not fail the others it was batched with: score each alone.
                for job_texts, job_features, future in jobs:
                    try:
                        alone = await loop.run_in_executor(
                            None, _predict, loaded.predictor, job_texts, job_features or [{}] * len(job_texts)
                        )
                        future.set_result((alone, loaded))
                    except Exception as job_exc:
                        future.set_exception(job_exc)
                    self.calls += 1
                continue
            self.calls += 1
            start = 0
            for job_texts, _, future in jobs:
                future.set_result((prediction[start : start + len(job_texts)], loaded))
                start += len(job_texts)


def _predict(predictor, texts: list[str], features: list[dict]) -> np.ndarray:
    with_features = any(features) and predictor.feature_names
    return predictor.predict(texts, features if with_features else None)
