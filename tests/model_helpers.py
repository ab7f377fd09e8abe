"""Small synthetic training sets and tiny-model configs shared by the model tests."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

from refit.core.settings import Settings
from refit.models.config import TrainConfig, TrainData
from refit.ops.synth import generate_feedback

LABELS = ["negative", "neutral", "positive"]


def review_data(n: int = 800, task: str = "regression", seed: int = 1, features: bool = False) -> TrainData:
    """Synthetic reviews whose words follow their rating; 80% train, 20% dev."""
    rows = generate_feedback(n, seed=seed)
    texts = [r["text"] for r in rows]
    if task == "regression":
        y = np.array([(r["rating"] - 1) / 4 for r in rows])
    else:
        y = np.array([0 if r["rating"] <= 2 else 1 if r["rating"] == 3 else 2 for r in rows])
    cut = int(n * 0.8)
    frame = pd.DataFrame([{k: r[k] for k in ("category", "device", "sessions_7d")} for r in rows]) if features else None
    return TrainData(
        texts[:cut],
        y[:cut],
        texts[cut:],
        y[cut:],
        frame.iloc[:cut].reset_index(drop=True) if features else None,
        frame.iloc[cut:].reset_index(drop=True) if features else None,
    )


def tiny_config(tiny_model, **overrides) -> TrainConfig:
    """Fast settings for the tiny BERT. One thread: the tests share two cores, and oversubscribed
    threads run many times slower."""
    values = {
        "base_model": str(tiny_model),
        "epochs": 3,
        "learning_rate": 1e-3,
        "max_length": 64,
        "seed": 3,
        "num_threads": 1,
        "precision": "fp32",  # as the thresholds were calibrated; bf16 is tested on purpose
    }
    return TrainConfig(**{**values, **overrides})


def clean_settings(**values) -> Settings:
    """Settings from ``values`` alone: no .env, and no REFIT_* from the environment."""
    with pytest.MonkeyPatch.context() as patch:
        for key in [key for key in os.environ if key.startswith("REFIT_")]:
            patch.delenv(key)
        return Settings(_env_file=None, **values)


class Clock:
    """A clock that moves one second each time it is read: a budget runs out after a few steps."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now
