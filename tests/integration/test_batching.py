"""Micro-batching (refit/serving/batching.py) on a real event loop with a real tiny predictor:
concurrent requests share calls and get their own rows, a bad request fails alone, requests that
arrive during a call go into the next one together, a lone request does not wait for the budget,
a batch finishes on the version it started with, and ``idle`` says when the model is free."""

from __future__ import annotations

import asyncio
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

from refit.models.predict import Predictor
from refit.models.saving import save_checkpoint
from refit.models.train import train
from refit.serving.batching import Batcher, CallCost
from refit.serving.follower import Loaded

from model_helpers import review_data, tiny_config

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def predictor(tiny_model, tmp_path_factory):
    """A tiny BERT with numeric, categorical and vector features (a bad vector is a ValueError)."""
    data = review_data(120, features=True)
    for frame in (data.train_features, data.dev_features):
        frame["vec"] = [[0.1 * (i % 3), 0.2] for i in range(len(frame))]
    config = tiny_config(
        tiny_model, epochs=1, feature_types={"category": "categorical", "sessions_7d": "numeric"}, vector_feature="vec"
    )
    folder = save_checkpoint(train(config, data), tmp_path_factory.mktemp("batching"), {"version": "v1"})
    return Predictor(folder)


class Held:
    """The predictor, with each call held at its start until released (to fix what is in flight)."""

    def __init__(self, predictor):
        self.predictor, self.feature_names = predictor, predictor.feature_names
        self.entered, self.release = threading.Event(), threading.Event()
        self.sizes: list[int] = []

    def predict(self, texts, features=None):
        self.sizes.append(len(texts))
        self.entered.set()
        self.release.wait(30)
        return self.predictor.predict(texts, features)


def source(predictor, version="v1"):
    return SimpleNamespace(current=Loaded(version, predictor, None))


TEXTS = [f"review {i}: {'love it, works well' if i % 2 else 'broke after a day'}" for i in range(24)]


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, 120))


def test_concurrent_requests_share_calls_and_each_gets_its_own_rows(predictor):
    async def scenario():
        batcher = Batcher(source(predictor), max_size=32, wait_ms=50)
        await batcher.start()
        try:
            assert batcher.idle
            features = [[{"category": "books", "sessions_7d": i}] for i in range(len(TEXTS))]
            answers = await asyncio.gather(*(batcher.submit([t], f) for t, f in zip(TEXTS, features, strict=True)))
            assert batcher.idle
            return answers, features, batcher.calls
        finally:
            await batcher.stop()

    answers, features, calls = run(scenario())
    assert calls < len(TEXTS)  # they shared model calls
    for (prediction, loaded), text, feature in zip(answers, TEXTS, features, strict=True):
        assert loaded.version == "v1"
        assert np.allclose(prediction, predictor.predict([text], feature), atol=1e-5)  # as if scored alone


def test_one_bad_request_fails_alone_and_the_others_are_answered(predictor):
    held = Held(predictor)

    async def scenario():
        batcher = Batcher(source(held), max_size=32, wait_ms=5)
        await batcher.start()
        try:
            first = asyncio.create_task(batcher.submit(["first"], None))
            await asyncio.to_thread(held.entered.wait, 30)  # the first call is in flight
            good = [asyncio.create_task(batcher.submit([t], [{"vec": [0.1, 0.2]}])) for t in TEXTS[:7]]
            bad = asyncio.create_task(batcher.submit(["bad"], [{"vec": [1, 2, 3]}]))  # 3 values, 2 expected
            await asyncio.sleep(0.05)
            held.release.set()
            results = await asyncio.gather(first, *good, bad, return_exceptions=True)
            return results, batcher.calls
        finally:
            await batcher.stop()

    results, calls = run(scenario())
    first, *good, bad = results
    assert isinstance(bad, ValueError) and "has 3 values, expected 2" in str(bad)
    for (prediction, _), text in zip(good, TEXTS[:7], strict=True):
        assert np.allclose(prediction, predictor.predict([text], [{"vec": [0.1, 0.2]}]), atol=1e-5)
    assert not isinstance(first, Exception)
    # The 8 that queued during the first call went in one call; it failed, and its halves were
    # scored apart down to the bad request: far fewer calls than one per request after it.
    assert held.sizes[:2] == [1, 8] and calls <= 1 + 1 + 2 + 2 + 2


def test_requests_that_arrive_during_a_call_go_into_the_next_one_together(predictor):
    held = Held(predictor)

    async def scenario():
        batcher = Batcher(source(held), max_size=32, wait_ms=5)
        await batcher.start()
        try:
            first = asyncio.create_task(batcher.submit(["first"], None))
            await asyncio.to_thread(held.entered.wait, 30)
            assert not batcher.idle  # being scored
            rest = [asyncio.create_task(batcher.submit([t], None)) for t in TEXTS[:12]]
            await asyncio.sleep(0.05)
            assert not batcher.idle  # queued
            held.release.set()
            await asyncio.gather(first, *rest)
            assert batcher.idle
            return batcher.calls
        finally:
            await batcher.stop()

    assert run(scenario()) == 2 and held.sizes == [1, 12]


def test_a_lone_request_does_not_wait_for_the_budget(predictor):
    async def scenario():
        batcher = Batcher(source(predictor), max_size=32, wait_ms=3000)
        for texts, seconds in ((1, 0.06), (32, 0.5)):  # calls have a fixed cost of about 45 ms
            batcher.cost.observe(texts, seconds)
        await batcher.start()
        try:
            await batcher.submit(["warm-up"], None)
            await asyncio.sleep(0.3)  # arrivals come slower than a call's fixed cost
            started = time.perf_counter()
            await batcher.submit(["just this one"], None)
            return time.perf_counter() - started
        finally:
            await batcher.stop()

    assert run(scenario()) < 1.5  # far under the 3 s budget: it went at once


def test_requests_arriving_faster_than_a_calls_fixed_cost_are_waited_for(predictor):
    held = Held(predictor)
    held.release.set()

    async def scenario():
        batcher = Batcher(source(held), max_size=6, wait_ms=2000)
        for texts, seconds in ((1, 0.5), (6, 0.55)):  # calls cost about half a second whatever their size
            batcher.cost.observe(texts, seconds)
        await batcher.start()
        try:
            for _ in range(2):  # the first round teaches the batcher the clients' pace
                tasks = []
                for text in TEXTS[:6]:
                    tasks.append(asyncio.create_task(batcher.submit([text], None)))
                    await asyncio.sleep(0.02)
                await asyncio.gather(*tasks)
        finally:
            await batcher.stop()

    run(scenario())
    assert held.sizes[-1] == 6  # the second round, 20 ms apart, waited for and scored in one call


def test_a_batch_finishes_on_the_version_it_started_with(predictor):
    held = Held(predictor)
    models = source(held, "v1")

    async def scenario():
        batcher = Batcher(models, max_size=32, wait_ms=5)
        await batcher.start()
        try:
            first = asyncio.create_task(batcher.submit(["first"], None))
            await asyncio.to_thread(held.entered.wait, 30)
            models.current = Loaded("v2", predictor, None)  # a hot reload while v1 scores
            held.release.set()
            before = await first
            after = await batcher.submit(["second"], None)
            return before[1].version, after[1].version
        finally:
            await batcher.stop()

    assert run(scenario()) == ("v1", "v2")


def test_stop_cancels_what_is_still_queued(predictor):
    held = Held(predictor)

    async def scenario():
        batcher = Batcher(source(held), max_size=1, wait_ms=5)
        await batcher.start()
        first = asyncio.create_task(batcher.submit(["first"], None))
        await asyncio.to_thread(held.entered.wait, 30)
        queued = asyncio.create_task(batcher.submit(["queued"], None))
        await asyncio.sleep(0.01)
        await batcher.stop()
        held.release.set()
        return await asyncio.gather(first, queued, return_exceptions=True)

    assert all(isinstance(r, asyncio.CancelledError) for r in run(scenario()))


def test_the_call_cost_fit_separates_the_fixed_cost_from_the_cost_per_text():
    cost = CallCost()
    assert cost.fixed == 0 and cost.estimate(10) == 0  # nothing seen: no reason to wait
    for _ in range(3):
        cost.observe(32, 0.5)
    assert cost.fixed == 0  # one size only: no fixed cost can be told apart
    for texts in (1, 4, 8, 16, 32, 1, 32):
        cost.observe(texts, 0.02 + 0.015 * texts)
    assert cost.fixed == pytest.approx(0.02, abs=1e-6) and cost.per_text == pytest.approx(0.015, abs=1e-6)
    assert cost.estimate(10) == pytest.approx(0.17, abs=1e-5)
