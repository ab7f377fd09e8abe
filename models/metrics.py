"""Metrics for both tasks, the direction of each, and the trivial baselines the gate uses."""

from __future__ import annotations

import math
import warnings

import numpy as np
from scipy.stats import spearmanr
from sklearn.metrics import accuracy_score, f1_score

# metric name -> True when higher is better
DIRECTION = {"mse": False, "mae": False, "spearman": True, "accuracy": True, "macro_f1": True}
DEFAULT_METRIC = {"regression": "mse", "classification": "macro_f1"}


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    y_true, y_pred = np.asarray(y_true, dtype=float), np.asarray(y_pred, dtype=float)
    errors = y_pred - y_true
    constant = np.std(y_pred) == 0 or np.std(y_true) == 0  # a constant predictor ranks nothing
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # near-constant predictions: rho is undefined, counted as 0
        rho = 0.0 if constant else float(spearmanr(y_true, y_pred).statistic)
    return {
        "mse": float(np.mean(errors**2)),
        "mae": float(np.mean(np.abs(errors))),
        "spearman": 0.0 if math.isnan(rho) else rho,
    }


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, n_labels: int) -> dict[str, float]:
    labels = list(range(n_labels))
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
    }


def task_metrics(task: str, y_true: np.ndarray, prediction: np.ndarray, n_labels: int) -> dict[str, float]:
    """The task's metrics of a prediction.

    Args:
        task: ``regression`` or ``classification``.
        y_true: the targets (scores, or label indices).
        prediction: scores for regression, class probabilities for classification.
        n_labels: the number of classes (1 for regression).

    Returns:
        Each metric's value, by name.
    """
    if task == "regression":
        return regression_metrics(y_true, prediction)
    return classification_metrics(y_true, np.asarray(prediction).argmax(axis=1), n_labels)


def improvement(metric: str, challenger: float, champion: float) -> float:
    """How much better the challenger is, signed so that a positive number is always better."""
    if metric not in DIRECTION:
        raise ValueError(f"unknown metric {metric!r}; expected one of {', '.join(DIRECTION)}")
    return challenger - champion if DIRECTION[metric] else champion - challenger


def baseline_prediction(task: str, train_targets: np.ndarray, n_rows: int, n_labels: int) -> np.ndarray:
    """The trivial predictor a first champion must beat: the mean score, or the majority class."""
    train_targets = np.asarray(train_targets)
    if task == "regression":
        return np.full(n_rows, float(np.mean(train_targets)))
    counts = np.bincount(train_targets.astype(int), minlength=n_labels)
    probs = np.zeros((n_rows, n_labels))
    probs[:, int(np.argmax(counts))] = 1.0
    return probs
