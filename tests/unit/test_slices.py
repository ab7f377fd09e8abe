"""Slices of feedback: new items, categories, text length."""

import pandas as pd

from refit.gate.slices import length_bucket, slice_frame, slice_metrics


def frame():
    return pd.DataFrame(
        {
            "item_id": ["a", "b", "c", None],
            "text": ["short", "x" * 150, "y" * 500, "z" * 20],
            "features": ['{"category": "books"}', '{"category": "garden"}', "{}", '{"category": "books"}'],
        }
    )


def test_slices_name_new_items_categories_and_lengths():
    slices = slice_frame(frame(), items_seen={"a"})
    assert slices["new_item"].tolist() == ["no", "yes", "yes", "no"]
    assert slices["category"].tolist() == ["books", "garden", "(none)", "books"]
    assert slices["length"].tolist() == ["short", "medium", "long", "short"]


def test_length_buckets_have_edges():
    assert length_bucket(pd.Series([0, 99, 100, 399, 400])).tolist() == ["short", "short", "medium", "medium", "long"]


def test_slice_metrics_skip_small_slices():
    slices = slice_frame(frame(), items_seen={"a"})
    metrics = slice_metrics(slices, lambda mask: {"n": int(mask.sum())}, min_rows=2)
    assert metrics == {
        "new_item=no": {"rows": 2, "n": 2},
        "new_item=yes": {"rows": 2, "n": 2},
        "category=books": {"rows": 2, "n": 2},
        "length=short": {"rows": 2, "n": 2},
    }


def test_configured_features_become_slices_and_numbers_fall_in_quartiles():
    feedback = pd.DataFrame(
        {
            "item_id": ["a"] * 8,
            "text": ["t"] * 8,
            "features": [f'{{"device": "{d}", "sessions_7d": {n}}}' for d, n in zip("iaiaiaia", range(8), strict=True)],
        }
    )
    slices = slice_frame(feedback, set(), features=["device", "sessions_7d", "missing"])
    assert list(slices.columns) == ["new_item", "length", "device", "sessions_7d", "missing"]
    assert slices["device"].tolist() == list("iaiaiaia")
    assert slices["sessions_7d"].nunique() == 4  # quartile ranges, two rows each
    assert set(slices["missing"]) == {"(none)"}


def test_the_schemas_types_decide_how_a_feature_is_sliced():
    feedback = pd.DataFrame(
        {
            "item_id": ["a"] * 8,
            "text": ["t"] * 8,
            "features": [f'{{"store": "{n}", "tier": "{t}"}}' for n, t in zip(range(8), "1234567x", strict=True)],
        }
    )
    guessed = slice_frame(feedback, set(), features=["store", "tier"])
    assert guessed["store"].nunique() == 4  # numbers as text: guessed numeric, in quartiles
    typed = slice_frame(
        feedback, set(), features=["store", "tier"], feature_types={"store": "categorical", "tier": "numeric"}
    )
    assert typed["store"].tolist() == [str(n) for n in range(8)]  # a code, each value its own slice
    assert typed["tier"].nunique() == 4 + 1  # numbers in quartiles, and the one word as (none)
    assert typed["tier"].iloc[-1] == "(none)"
