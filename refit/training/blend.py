"""Blending a challenger with TF-IDF: TF-IDF fitted on the challenger's own training rows, saved in
its checkpoint, and mixed with the BERT's predictions by a weight fitted on the validation fold.

On a few hundred reviews TF-IDF is often as good as a fine-tuned BERT and makes different
mistakes, so the mix beats both; on tens of thousands the fold gives the BERT nearly all the
weight. The gate's dev set plays no part: the weight is chosen on rows the gate never sees.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from refit.models.checkpoint import read_metadata, write_metadata
from refit.models.config import TrainData
from refit.models.metrics import DIRECTION, task_metrics
from refit.models.predict import Predictor
from refit.models.text_baseline import TextBaseline, fit_blend_weight, write_blend

# The fold is small and drawn from the training period, so its scores say little about later
# feedback: on Yelp a BERT at 0.56 macro-F1 on the fold (TF-IDF 0.52) scored 0.69 on the next year
# (TF-IDF 0.55). The fold may tilt the mix, but the BERT keeps at least half of it; TF-IDF alone
# is the gate's call, on the dev set (refit/gate/fallback.py).
MIN_BERT_WEIGHT = 0.5


def attach_text_baseline(folder: Path, data: TrainData, task: str, n_labels: int, metric: str) -> dict:
    """Fit TF-IDF on the training rows, save it into the checkpoint, fit the BERT share on the
    validation fold, and record it.

    The checkpoint's ``metrics["dev"]`` become the blend's (what serving will predict), and the
    BERT's alone are kept as ``metrics["bert_dev"]``.

    Args:
        folder: the challenger's checkpoint folder (the BERT is read from it, TF-IDF saved into it).
        data: the training rows TF-IDF is fitted on, and the validation fold the share is fitted on.
        task: ``regression`` or ``classification``.
        n_labels: the model's outputs (1 for regression).
        metric: the metric the share is chosen by.

    Returns:
        The blended checkpoint's metrics on the validation fold.
    """
    text = TextBaseline.fit(task, data.train_texts, data.train_targets, n_labels)
    bert = Predictor(folder, verify=False).predict(data.dev_texts, data.dev_features)
    tfidf = text.predict(data.dev_texts)
    sign = 1.0 if DIRECTION[metric] else -1.0

    def scored(y_true: np.ndarray, prediction: np.ndarray) -> float:
        return sign * task_metrics(task, y_true, prediction, n_labels)[metric]

    weight = fit_blend_weight(scored, data.dev_targets, bert, tfidf, low=MIN_BERT_WEIGHT)
    blended = weight * bert + (1 - weight) * tfidf
    text.save(folder)
    fold = {
        "bert": task_metrics(task, data.dev_targets, bert, n_labels)[metric],
        "tfidf": task_metrics(task, data.dev_targets, tfidf, n_labels)[metric],
        "blend": task_metrics(task, data.dev_targets, blended, n_labels)[metric],
    }
    write_blend(folder, weight, fitted_on="validation fold", fold_rows=len(data.dev_texts), metric=metric, fold=fold)
    metrics = task_metrics(task, data.dev_targets, blended, n_labels)
    meta = read_metadata(folder)
    meta.setdefault("metrics", {})
    meta["metrics"]["bert_dev"] = meta["metrics"].get("dev")
    meta["metrics"]["dev"] = metrics
    write_metadata(folder, meta)
    return metrics
