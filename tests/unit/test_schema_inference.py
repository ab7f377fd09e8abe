"""Inferring the feature schema from feature values, and what changes between two versions (pure)."""

import pandas as pd

from refit.data.schema import MAX_VALUES, diff, infer_schema, infer_type


def test_a_feature_is_numeric_when_nearly_every_present_value_is_a_number():
    assert infer_type(pd.Series(["3", "0", "12", "7", "lots", "5", "2", "9"])) == "numeric"  # 7 of 8
    assert infer_type(pd.Series(["3", "x", "12", "y", None, ""])) == "categorical"  # 2 of 4 present
    assert infer_type(pd.Series([1.0, float("inf"), 2.0])) == "categorical"  # inf is not a finite number
    assert infer_type(pd.Series([True, False, True])) == "categorical"
    assert infer_type(pd.Series([None, ""])) is None  # nothing to tell from


def test_domains_are_recorded_per_type():
    frame = pd.DataFrame(
        {
            "count": [3, 0, 12.5, None],
            "device": ["ios", "web", "ios", "ios"],
            "vec": [[1.0, 2.0], [3.0, 4.0], None, [5.0, 6.0]],
            "code": [f"c{i}" for i in range(MAX_VALUES + 4)][:4],
        }
    )
    assert infer_schema(frame, vector="vec") == {
        "code": {"type": "categorical", "values": ["c0", "c1", "c2", "c3"], "distinct": 4},
        "count": {"type": "numeric", "min": 0, "max": 12.5},
        "device": {"type": "categorical", "values": ["ios", "web"], "distinct": 2},
        "vec": {"type": "vector", "length": 2},
    }
    many = pd.DataFrame({"code": [f"c{i:04d}" for i in range(MAX_VALUES + 10)]})
    spec = infer_schema(many)["code"]
    assert len(spec["values"]) == MAX_VALUES and spec["distinct"] == MAX_VALUES + 10
    # a given type wins over the values, and a given feature with no values is still recorded
    assert infer_schema(frame[["count"]], types={"count": "categorical", "later": "numeric"}) == {
        "count": {"type": "categorical", "values": ["0", "12.5", "3"], "distinct": 3},
        "later": {"type": "numeric", "min": None, "max": None},
    }


def test_the_diff_names_added_removed_and_retyped_features():
    old = {"a": {"type": "numeric", "min": 0, "max": 1}, "b": {"type": "categorical", "values": ["x"]}, "gone": {}}
    old["gone"] = {"type": "numeric", "min": 0, "max": 0}
    new = {"a": {"type": "numeric", "min": 0, "max": 9}, "b": {"type": "numeric", "min": 1, "max": 2}, "c": {}}
    new["c"] = {"type": "categorical", "values": [], "distinct": 0}
    assert diff(old, new) == {
        "added": ["c"],
        "removed": ["gone"],
        "retyped": {"b": "categorical -> numeric"},
        "domains": ["a"],
    }
    assert diff(None, new)["added"] == ["a", "b", "c"]
