"""The int8 artifact: dynamic int8 quantization of a checkpoint's linear layers, published beside
the float weights with its measured dev-set difference.

The quantization itself is serving's (:func:`refit.serving.quantized`); this module measures it on
the dev rows at publish time, saves the int8 state as ``model.int8.pt`` (plain tensors, loaded with
``weights_only=True``) and records the difference in ``refit.json`` under ``int8``, which the
publish step copies into the version's manifest. ``refit serve`` with ``REFIT_SERVE_QUANTIZE``
loads this file when the version has one.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from refit.core.errors import CheckpointError
from refit.models.checkpoint import METADATA, read_metadata

INT8_FILE = "model.int8.pt"


def quantize_model(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` with its linear layers dynamically quantized to int8."""
    return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)


def load_int8(model: torch.nn.Module, folder: Path) -> torch.nn.Module:
    """``model`` (float, freshly loaded from ``folder``) turned into the folder's int8 model."""
    path = Path(folder) / INT8_FILE
    if not path.is_file():
        raise CheckpointError(f"{folder} has no int8 artifact ({INT8_FILE})")
    quant = quantize_model(model)
    quant.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    quant.eval()
    return quant


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
    from refit.models.metrics import task_metrics
    from refit.models.predict import Predictor
    from refit.serving import quantized

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
    (folder / METADATA).write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
    return record
