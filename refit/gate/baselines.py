"""The baselines a first model must beat: the trivial predictor, and TF-IDF plus a linear model.

Both are fitted on the same training rows as the challenger and return predictions in the
model's own format (scores in [0, 1], or class probabilities), so the gate scores them exactly
as it scores a BERT checkpoint.
"""

from __future__ import annotations

import numpy as np

from refit.models.metrics import baseline_prediction
from refit.models.text_baseline import TextBaseline

BASELINES = ("trivial", "tfidf")


def trivial_predictions(task: str, train_targets: np.ndarray, n_rows: int, n_labels: int) -> np.ndarray:
    """The mean score (regression) or the majority class (classification), for every row."""
    return baseline_prediction(task, train_targets, n_rows, n_labels)


def tfidf_predictions(
    task: str, train_texts: list[str], train_targets: np.ndarray, texts: list[str], n_labels: int
) -> np.ndarray:
    """TF-IDF over word uni- and bigrams, then ridge regression (clipped to [0, 1]) or
    class-balanced logistic regression, fitted on the training rows and applied to ``texts``: the
    same model a blended checkpoint carries (:mod:`refit.models.text_baseline`)."""
    return TextBaseline.fit(task, train_texts, train_targets, n_labels).predict(texts)


def baseline_predictions(
    names: list[str] | tuple[str, ...],
    task: str,
    train_texts: list[str],
    train_targets: np.ndarray,
    texts: list[str],
    n_labels: int,
) -> dict[str, np.ndarray]:
    """Predictions of each named baseline on ``texts``."""
    unknown = set(names) - set(BASELINES)
    if unknown:
        raise ValueError(f"unknown baseline(s) {sorted(unknown)}; expected some of {', '.join(BASELINES)}")
    out = {}
    for name in names:
        if name == "trivial":
            out[name] = trivial_predictions(task, train_targets, len(texts), n_labels)
        else:
            out[name] = tfidf_predictions(task, train_texts, train_targets, texts, n_labels)
    return out
