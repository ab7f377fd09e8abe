"""The int8 artifact: a checkpoint's int8 quantization (:mod:`refit.models.quantize`), published
beside the float weights with its measured dev-set difference.

This module measures the quantization on the dev rows at publish time, saves the int8 state as
``model.int8.pt`` (plain tensors, loaded with ``weights_only=True``) and records the difference in
``refit.json`` under ``int8``, which the publish step copies into the version's manifest.
``refit serve`` with ``REFIT_SERVE_QUANTIZE`` loads this file when the version has one.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from refit.models.checkpoint import read_metadata, write_metadata
from refit.models.metrics import task_metrics
from refit.models.predict import Predictor
from refit.models.quantize import INT8_FILE, quantized


def add_int8_artifact(
    folder: Path,
    dev_texts: list[str],
    dev_targets: np.ndarray,
    dev_features=None,
    tolerance: float = 0.05,
) -> dict:
    """Quantize the checkpoint in ``folder``, measure it against the float model on the dev rows,
    and save the artifact when the difference is within ``tolerance``.

    Args:
        folder: a checkpoint folder (single model or ensemble), before publishing.
        dev_texts, dev_targets, dev_features: the dev rows.
        tolerance: the largest absolute difference of a prediction allowed between int8 and float.

    Returns:
        The record written to ``refit.json``'s ``int8``: the file (None when over tolerance), the
        largest and mean absolute difference, both models' dev metrics, the tolerance, the size.
    """
    folder = Path(folder)
    predictor = Predictor(folder, verify=False)
    texts = [str(t) for t in dev_texts]
    float_pred = predictor.predict(texts, dev_features)
    quant = quantized(predictor, math.inf, sample=texts, features=dev_features)
    int8_pred = quant.predict(texts, dev_features)
    diff = np.abs(np.asarray(int8_pred, dtype=float) - np.asarray(float_pred, dtype=float))
    n_outputs = 1 if predictor.task == "regression" else len(predictor.labels)
    record = {
        "file": None,
        "dev_rows": len(texts),
        "max_abs_diff": float(diff.max()) if diff.size else 0.0,
        "mean_abs_diff": float(diff.mean()) if diff.size else 0.0,
        "tolerance": tolerance,
        "dev_metrics_float": task_metrics(predictor.task, dev_targets, float_pred, n_outputs),
        "dev_metrics_int8": task_metrics(predictor.task, dev_targets, int8_pred, n_outputs),
    }
    if record["max_abs_diff"] <= tolerance:
        torch.save(quant.model.state_dict(), folder / INT8_FILE)
        record.update(file=INT8_FILE, bytes=(folder / INT8_FILE).stat().st_size)
    meta = read_metadata(folder)
    meta["int8"] = record
    write_metadata(folder, meta)
    return record
