"""What the auto recipe decides, and the validation fold it trains against: never the gate's dev set."""

import numpy as np
import pandas as pd
import pytest

from refit.core.settings import load_settings
from refit.training.modeling import train_config, training_data, validation_fold
from refit.training.recipe import LEARNING_RATES, MANUAL, decide


def _rows(n: int = 400, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    labels = rng.choice(["negative", "neutral", "positive"], size=n, p=[0.1, 0.25, 0.65])
    return pd.DataFrame(
        {
            "id": np.arange(n),
            "feedback_id": [f"fb-{i}" for i in range(n)],
            "text": [f"review {i}" for i in range(n)],
            "label": labels,
            "satisfaction": rng.random(n),
            "split": rng.choice(["train", "dev", "test"], size=n, p=[0.7, 0.15, 0.15]),
            "created_at": pd.Timestamp("2026-01-01", tz="UTC"),
            "features": ["{}"] * n,
        }
    )


def test_the_early_stopping_fold_and_the_gate_dev_set_never_share_a_row():
    rows = _rows()
    gate_dev = rows[rows["split"] == "dev"]
    train_rows = rows[rows["split"] == "train"]
    fit, fold = validation_fold(train_rows, 0.15, "classification", seed=13)
    assert set(fold["feedback_id"]).isdisjoint(gate_dev["feedback_id"])
    assert set(fold["feedback_id"]).isdisjoint(fit["feedback_id"])
    assert set(fold["feedback_id"]) | set(fit["feedback_id"]) == set(train_rows["feedback_id"])
    # stratified: every label keeps its share of the fold
    for label, share in train_rows["label"].value_counts(normalize=True).items():
        assert abs((fold["label"] == label).mean() - share) < 0.05
    # what training sees: the fold's texts as its dev rows, none of the gate's
    data = training_data(rows, "classification", ["negative", "neutral", "positive"], seed=13, val_fraction=0.15)
    assert set(data.dev_texts) == set(fold["text"])
    assert set(data.dev_texts).isdisjoint(gate_dev["text"]) and set(data.train_texts).isdisjoint(gate_dev["text"])
    assert set(data.dev_texts).isdisjoint(data.train_texts)


def test_the_fold_stops_growing_at_its_cap_and_every_row_past_it_trains():
    rows = _rows(4000, seed=2)
    train_rows = int((rows["split"] == "train").sum())
    labels = ["negative", "neutral", "positive"]
    uncapped = training_data(rows, "classification", labels, seed=13, val_fraction=0.15)
    capped = training_data(rows, "classification", labels, seed=13, val_fraction=0.15, val_max_rows=300)
    assert len(uncapped.dev_texts) == pytest.approx(0.15 * train_rows, abs=3)
    assert len(capped.dev_texts) == pytest.approx(300, abs=3)
    assert len(capped.train_texts) + len(capped.dev_texts) == train_rows
    # Under the cap, nothing changes.
    small = _rows(400)
    assert training_data(small, "regression", labels, seed=13, val_fraction=0.15, val_max_rows=300).dev_texts == (
        training_data(small, "regression", labels, seed=13, val_fraction=0.15).dev_texts
    )


def test_a_fold_leaves_a_training_row_and_refuses_a_single_row():
    rows = _rows(3)
    fit, fold = validation_fold(rows, 0.4, "regression", seed=1)
    assert len(fit) >= 1 and len(fold) >= 1
    with pytest.raises(ValueError, match="too few"):
        validation_fold(rows.iloc[:1], 0.15, "regression", seed=1)


def test_class_weights_are_the_square_root_of_balanced_by_default_for_classification():
    settings = load_settings(task="classification")
    recipe = decide(settings, 420, np.array([0] * 42 + [1] * 105 + [2] * 273))
    assert recipe.class_weights == "sqrt"
    assert "macro-F1" in recipe.reasons["class_weights"] and "65%" in recipe.reasons["class_weights"]
    assert train_config(settings, base_model="x", recipe=recipe).class_weights == "sqrt"
    assert decide(load_settings(task="regression"), 420).class_weights == "none"
    for pinned in ("none", "balanced"):
        assert decide(load_settings(task="classification", class_weights=pinned), 420).class_weights == pinned
    assert decide(load_settings(task="classification", recipe="manual"), 420).class_weights == "none"


def test_schedules_follow_the_data_size_and_pins_win():
    settings = load_settings()
    small, large = decide(settings, 200), decide(settings, 30_000)
    assert small.epochs > large.epochs >= 3  # few rows get more passes, so enough steps
    assert small.epochs * np.ceil(200 / 16) >= 150
    assert small.patience >= 2 and small.epochs > small.patience + 1  # early stopping can fire
    pinned = decide(load_settings(epochs=4, patience=0, learning_rate=1e-4), 200)
    assert (pinned.epochs, pinned.patience, pinned.learning_rate) == (4, 0, 1e-4)
    assert pinned.reasons["epochs"] == "pinned"
    manual = decide(load_settings(recipe="manual"), 200)
    assert (manual.epochs, manual.patience, manual.learning_rate) == (
        MANUAL["epochs"],
        MANUAL["patience"],
        MANUAL["learning_rate"],
    )


def test_each_strategy_gets_its_own_learning_rate():
    assert decide(load_settings(strategy="lora"), 500).learning_rate == LEARNING_RATES["lora"]
    assert decide(load_settings(strategy="full"), 500).learning_rate == LEARNING_RATES["full"]
    head_only = decide(load_settings(strategy="freeze", freeze_layers=6), 500, n_encoder_layers=6)
    assert head_only.learning_rate == LEARNING_RATES["freeze_all"]
    assert LEARNING_RATES["lora"] > LEARNING_RATES["full"]


def test_a_cpu_retrain_is_bounded_to_new_rows_plus_a_replay_sample():
    settings = load_settings()
    assert decide(settings, 500, on_cpu=True, warm=True).replay_fraction == 1.0
    assert decide(settings, 500, on_cpu=False, warm=True).replay_fraction is None
    assert decide(settings, 500, on_cpu=True, warm=False).replay_fraction is None
    assert decide(load_settings(replay_fraction=0.3), 500, on_cpu=True, warm=True).replay_fraction == 0.3


def test_the_replay_window_is_new_rows_plus_as_many_old_and_everything_when_nothing_is_new():
    from refit.training.modeling import replay_window

    frame = pd.DataFrame({"id": np.arange(220), "text": [f"t{i}" for i in range(220)]})
    window = replay_window(frame, new_after=199, replay_fraction=1.0, seed=1)
    assert len(window) == 40 and (window["id"] > 199).sum() == 20  # 20 new + 20 replayed, not 220
    assert len(replay_window(frame, new_after=219, replay_fraction=1.0, seed=1)) == 220  # a forced rerun


def test_the_fresh_head_learns_faster_than_the_encoder_up_to_a_cap():
    assert decide(load_settings(), 500).head_lr_factor == 20.0  # 5e-5 encoder, 1e-3 head
    assert decide(load_settings(strategy="lora"), 500).head_lr_factor == 2.0  # capped at 1e-3
    assert decide(load_settings(learning_rate=1e-3), 500).head_lr_factor == 1.0
    assert decide(load_settings(recipe="manual"), 500).head_lr_factor == 1.0
