"""The int8 artifact: a checkpoint's int8 ONNX Runtime model (:mod:`refit.models.quantize`),
published beside the float weights with its measured dev-set difference.

This module measures the quantization on the dev rows at publish time, saves the int8 model as
``model.int8.onnx`` (one self-contained file) and records the difference in ``refit.json`` under
``int8``, which the publish step copies into the version's manifest. ``refit serve`` with
``REFIT_SERVE_QUANTIZE`` loads this file when the version has one.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from refit.models.checkpoint import read_metadata, write_metadata
from refit.models.metrics import task_metrics
from refit.models.predict import Predictor
from refit.models.quantize import INT8_FILE, RUNTIME, agreement, quantized


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
        runtime, the dev rows, the largest and mean absolute difference, the share of dev rows
        given the same label, both models' dev metrics, the tolerance, the size.
    """
    folder = Path(folder)
    predictor = Predictor(folder, verify=False)
    texts = [str(t) for t in dev_texts]
    float_pred = predictor.predict(texts, dev_features)
    quant = quantized(predictor, math.inf, sample=texts, features=dev_features)
    int8_pred = quant.predict(texts, dev_features)
    n_outputs = 1 if predictor.task == "regression" else len(predictor.labels)
    close = agreement(predictor.task, float_pred, int8_pred)
    record = {
        "file": None,
        "runtime": RUNTIME,
        "dev_rows": close["rows"],
        "max_abs_diff": close["max_abs_diff"],
        "mean_abs_diff": close["mean_abs_diff"],
        "label_agreement": close["label_agreement"],
        "tolerance": tolerance,
        "dev_metrics_float": task_metrics(predictor.task, dev_targets, float_pred, n_outputs),
        "dev_metrics_int8": task_metrics(predictor.task, dev_targets, int8_pred, n_outputs),
    }
    if record["max_abs_diff"] <= tolerance:
        quant.model.save(folder / INT8_FILE)
        record.update(file=INT8_FILE, bytes=(folder / INT8_FILE).stat().st_size)
    meta = read_metadata(folder)
    meta["int8"] = record
    write_metadata(folder, meta)
    return record
