"""Shadow calls mirror the live calls that answered their items (refit/serving/router.py): items
answered one at a time are scored one at a time, items answered in a call of k are scored k at a
time (at most SHADOW_BATCH), so the two models' latencies are timed on calls of the same size."""

from types import SimpleNamespace

from refit.serving.router import SHADOW_BATCH, ShadowItem, ShadowScorer


def scorer() -> ShadowScorer:
    return ShadowScorer(idle=lambda: True, live=lambda item: True, report=None, metrics=None)


def items(loaded, n: int, call_items: int, start: int = 0) -> list[ShadowItem]:
    rollout = SimpleNamespace(id=1)
    return [
        ShadowItem(loaded, "candidate", f"text {start + i}", {}, {}, f"r{start + i}", rollout, {}, "v2", call_items)
        for i in range(n)
    ]


def calls(shadow: ShadowScorer) -> list[tuple[int, int]]:
    """The calls the scorer would make, in order: (items, the live call size they mirror)."""
    made = []
    while batch := shadow._take():
        assert len({item.call_items for item in batch}) == 1 and len({id(item.loaded) for item in batch}) == 1
        made.append((len(batch), batch[0].call_items))
    return made


def test_items_answered_one_at_a_time_are_scored_one_at_a_time():
    shadow = scorer()
    shadow.queue.extend(items(SimpleNamespace(), 6, call_items=1))
    assert calls(shadow) == [(1, 1)] * 6


def test_a_shadow_call_holds_as_many_items_as_the_live_call_it_mirrors_and_at_most_shadow_batch():
    candidate, champion = SimpleNamespace(), SimpleNamespace()
    shadow = scorer()
    shadow.queue.extend(items(candidate, 3, call_items=3))
    shadow.queue.extend(items(candidate, 2, call_items=1, start=3))
    shadow.queue.extend(items(champion, 2, call_items=2, start=5))  # a canary's champion work
    shadow.queue.extend(items(candidate, 10, call_items=32, start=7))
    assert calls(shadow) == [(3, 3), (1, 1), (1, 1), (2, 2), (SHADOW_BATCH, 32), (SHADOW_BATCH, 32), (2, 32)]


def test_items_of_other_sizes_keep_their_places_in_the_queue():
    loaded = SimpleNamespace()
    shadow = scorer()
    queue = items(loaded, 1, call_items=2) + items(loaded, 1, call_items=1, start=1) + items(loaded, 1, 2, start=2)
    shadow.queue.extend(queue)
    first = shadow._take()
    assert [item.request_id for item in first] == ["r0", "r2"]  # the two items answered in calls of two
    assert [item.request_id for item in shadow.queue] == ["r1"]
