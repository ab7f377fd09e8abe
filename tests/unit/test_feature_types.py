"""Behaviour features by default: types inferred from the training rows, the settings that pin
or turn them off, and the vector column's checks at ingest (pure validation, no database)."""

import json
from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pytest

from refit.core.settings import load_settings
from refit.data.feature_types import feature_types_for, infer_feature_types
from refit.data.read import RawBatch
from refit.data.validate import IngestRules, validate_batch
from refit.models.fusion import FeatureSchema


def training_features(n: int = 200) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {
            "sessions_7d": rng.integers(0, 30, n).astype(float),
            "dwell_seconds": np.where(rng.random(n) < 0.3, np.nan, rng.normal(40, 10, n)),  # often missing is fine
            "device": rng.choice(["ios", "android", "web"], n),
            "plan": rng.choice(["free", "pro"], n).astype(object),
            "is_mobile": rng.choice([True, False], n),
            "country": ["DE"] * n,  # constant
            "coupon": [None] * (n - 3) + ["A", "B", "C"],  # almost always missing
            "session_id": [f"s-{i}" for i in range(n)],  # an identifier
            "zip": [str(10_000 + i % 7) for i in range(n)],  # digits as text are numbers
            "mixed": ["3", "x"] * (n // 2),  # one present value is not a number
            "item_vec": [[0.1, 0.2]] * n,
        }
    )


def test_types_are_inferred_and_useless_features_left_out():
    types = infer_feature_types(training_features(), skip=["item_vec"])
    assert types == {
        "device": "categorical",
        "dwell_seconds": "numeric",
        "is_mobile": "categorical",
        "mixed": "categorical",
        "plan": "categorical",
        "sessions_7d": "numeric",
        "zip": "numeric",
    }
    # a list-valued column is never a scalar feature, even when it is not named as the vector
    assert "item_vec" not in infer_feature_types(training_features())


def test_no_feature_rows_give_no_features():
    assert infer_feature_types(None) == {}
    assert infer_feature_types(pd.DataFrame(index=range(5))) == {}


def test_a_non_finite_value_makes_a_feature_categorical():
    frame = pd.DataFrame({"score": [1.0, 2.0, float("inf"), 2.0, 1.0, 3.0]})
    assert infer_feature_types(frame) == {"score": "categorical"}


def test_configured_types_win_and_features_can_be_turned_off(monkeypatch):
    frame = training_features()
    assert feature_types_for(load_settings(), frame) == infer_feature_types(frame)
    assert feature_types_for(load_settings(vector_feature="item_vec"), frame) == infer_feature_types(frame)
    monkeypatch.setenv("REFIT_FEATURES", "none")
    assert feature_types_for(load_settings(), frame) == {}
    monkeypatch.setenv("REFIT_FEATURE_TYPES", "device:categorical,item_vec:numeric")
    assert feature_types_for(load_settings(vector_feature="item_vec"), frame) == {"device": "categorical"}


def test_inferred_types_fit_a_schema_next_to_the_vector():
    frame = training_features()
    schema = FeatureSchema.fit(infer_feature_types(frame, skip=["item_vec"]), frame, vector="item_vec")
    assert schema.numeric == ["dwell_seconds", "sessions_7d", "zip"]
    assert schema.categorical == ["device", "is_mobile", "mixed", "plan"]
    assert (schema.vector, schema.vector_dim) == ("item_vec", 2)
    encoded = schema.encode(frame, len(frame))
    assert encoded["vector"].shape == (len(frame), 2) and bool(encoded["has_vector"].all())


def test_the_features_setting_is_validated(monkeypatch):
    from refit.core.errors import ConfigError

    monkeypatch.setenv("REFIT_FEATURES", "some")
    with pytest.raises(ConfigError, match="REFIT_FEATURES"):
        load_settings()


# --- the vector column at ingest ---------------------------------------------------------------


def validate(values: list, vector_dims: dict | None = None, **rules):
    rows = [
        {"text": f"review {i}", "created_at": "2024-05-01T12:00:00Z", "rating": 4, "item_vec": value}
        for i, value in enumerate(values)
    ]
    batch = RawBatch(pd.DataFrame.from_records(rows), np.arange(1, len(rows) + 1))
    rules = IngestRules(labels=("negative", "neutral", "positive"), **{"vector_feature": "item_vec", **rules})
    return validate_batch(batch, rules, datetime.now(timezone.utc), {}, vector_dims)


def test_a_list_of_numbers_is_stored_as_the_vector_and_bad_ones_get_a_clear_reason():
    values = [
        [0.5, -1.0, 2.0],  # JSONL
        np.array([1, 2, 3], dtype=np.float32),  # Parquet
        "[0.25, 0.5, 0.75]",  # CSV
        None,  # no vector: still a valid row
        [1.0, 2.0],  # ragged
        [1.0, "x", 3.0],
        [1.0, float("nan"), 3.0],
        [True, False, True],
        [[1.0], [2.0], [3.0]],
        [],
        "not a vector",
        {"x": 1.0},
    ]
    vector_dims: dict = {}
    valid, rejections = validate(values, vector_dims)
    assert vector_dims == {"item_vec": 3}
    stored = [json.loads(f).get("item_vec") for f in valid["features"]]
    assert stored == [[0.5, -1.0, 2.0], [1.0, 2.0, 3.0], [0.25, 0.5, 0.75], None]
    assert {r.reason for r in rejections} == {"bad_feature"}
    assert [(r.line_no, r.detail) for r in rejections] == [
        (5, "feature item_vec has 2 values, expected 3"),
        (6, "feature item_vec has an entry that is not a number"),
        (7, "feature item_vec has a NaN or infinite entry"),
        (8, "feature item_vec has an entry that is not a number"),
        (9, "feature item_vec has an entry that is not a number"),
        (10, "feature item_vec is an empty list"),
        (11, "feature item_vec should be a list of numbers"),
        (12, "feature item_vec should be a list of numbers"),
    ]
    assert rejections[0].raw["item_vec"] == [1.0, 2.0]  # the raw row is kept for a requeue


def test_the_stored_length_wins_over_the_batch_and_other_lists_stay_nested_values():
    valid, rejections = validate([[1.0, 2.0], [3.0, 4.0], [1.0, 2.0, 3.0]], {"item_vec": 3})
    assert len(valid) == 1
    assert [r.detail for r in rejections] == ["feature item_vec has 2 values, expected 3"] * 2
    # without REFIT_VECTOR_FEATURE a list is still a nested value, quarantined with a hint
    valid, rejections = validate([[1.0, 2.0]], vector_feature=None)
    assert len(valid) == 0
    assert "nested value" in rejections[0].detail and "REFIT_VECTOR_FEATURE" in rejections[0].detail


def test_the_vector_is_a_feature_beside_configured_types():
    valid, rejections = validate([[1.0, 2.0]], feature_types=(("device", "categorical"),))
    assert not rejections
    assert json.loads(valid["features"][0]) == {"item_vec": [1.0, 2.0]}


def test_drift_compares_the_scalar_features_and_leaves_the_vector_out():
    from refit.drift.signals import column_kinds

    def window(seed: int) -> pd.DataFrame:
        rng = np.random.default_rng(seed)
        return pd.DataFrame(
            {
                "text": ["a review"] * 50,
                "target": rng.random(50),
                "f_device": rng.choice(["ios", "web"], 50),
                "f_item_vec": [list(rng.normal(size=4)) for _ in range(50)],  # every value distinct
            }
        )

    kinds = column_kinds(window(1), window(2), "regression")
    assert kinds["f_device"] == "categorical"
    assert "f_item_vec" not in kinds


# --- the feature schema's types (issue 16): the model and drift read them, not guesses ----------


def test_the_schemas_types_win_over_the_rows_and_useless_features_are_still_left_out():
    frame = training_features()
    schema = {
        "zip": "categorical",  # digits as text: the rows alone would make it numeric
        "mixed": "numeric",  # one word in its values: the rows alone would make it categorical
        "device": "categorical",
        "country": "categorical",  # constant in these rows: still left out
        "session_id": "categorical",  # an identifier: still left out
        "item_vec": "vector",  # the vector has its own path
    }
    types = feature_types_for(load_settings(vector_feature="item_vec"), frame, schema)
    assert types == {"device": "categorical", "mixed": "numeric", "zip": "categorical"}
    # features the schema lacks are not trained on; without a schema the rows decide
    assert "sessions_7d" not in types
    assert feature_types_for(load_settings(), frame, None) == infer_feature_types(frame)


def test_configured_types_win_over_the_schema(monkeypatch):
    monkeypatch.setenv("REFIT_FEATURE_TYPES", "zip:numeric")
    assert feature_types_for(load_settings(), training_features(), {"zip": "categorical"}) == {"zip": "numeric"}


def test_drift_takes_each_features_kind_from_the_schema():
    from refit.drift.signals import column_kinds

    def window(seed: int) -> pd.DataFrame:
        rng = np.random.default_rng(seed)
        return pd.DataFrame(
            {
                "text": ["a review"] * 50,
                "target": rng.random(50),
                "f_stars_given": rng.integers(1, 4, 50),  # few distinct numbers: guessed categorical
                "f_plan_code": rng.integers(100, 200, 50),  # many distinct numbers: guessed numeric
            }
        )

    guessed = column_kinds(window(1), window(2), "regression")
    assert (guessed["f_stars_given"], guessed["f_plan_code"]) == ("categorical", "numeric")
    typed = column_kinds(window(1), window(2), "regression", {"stars_given": "numeric", "plan_code": "categorical"})
    assert (typed["f_stars_given"], typed["f_plan_code"]) == ("numeric", "categorical")
