"""int8 dynamic quantization of a model's linear layers: the model, a predictor checked against its
float self, and the int8 artifact ``model.int8.pt`` loaded back.

Serving quantizes the champion with :func:`quantized` when ``REFIT_SERVE_QUANTIZE`` is set and the
version has no artifact; :mod:`refit.models.int8_artifact` measures the same quantization on the
dev rows at publish time and saves it.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import numpy as np
import torch

from refit.core.errors import CheckpointError, RefitError

INT8_FILE = "model.int8.pt"
log = logging.getLogger("refit.serve")  # the check runs when serving loads a champion: its log is serving's


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


def quantized(predictor, tolerance: float, sample: list[str] | None = None, features=None):
    """A copy of ``predictor`` on int8 dynamic quantization of its linear layers, kept only if its
    predictions stay within ``tolerance`` of the float model's on a sample of texts (the largest
    absolute difference).

    Args:
        predictor: a loaded :class:`refit.models.predict.Predictor` (any object with ``model`` and
            ``predict(texts, features)``); it is left as it is.
        tolerance: the largest absolute difference of a prediction allowed between int8 and float.
        sample: the texts to compare on; None uses :data:`QUANTIZATION_CHECK_TEXTS`.
        features: the sample's behaviour features (the publish-time check passes the dev rows').

    Returns:
        The int8 predictor, with the measured difference in ``quantization_gap``.

    Raises:
        RefitError: the int8 predictions differ from float by more than ``tolerance``.
    """
    float_model = predictor.model
    texts = sample or QUANTIZATION_CHECK_TEXTS
    before = predictor.predict(texts, features)
    quant = copy.copy(predictor)
    quant.model = quantize_model(copy.deepcopy(float_model))
    after = quant.predict(texts, features)
    gap = float(np.max(np.abs(after - before)))
    if gap > tolerance:
        raise RefitError(f"int8 predictions differ from float by {gap:.4f} > {tolerance}; serving float instead")
    quant.quantization_gap = gap
    log.info("int8 model within %.4f of float on %d texts", gap, len(texts))
    return quant


QUANTIZATION_CHECK_TEXTS = [
    "The headphones are excellent, love it, arrived on time.",
    "Terrible charger, broke after a day, returned it.",
    "The kettle is okay, does the job, nothing special.",
    "Solid jacket, works well, would recommend to my friends.",
    "Cheaply made and flimsy; customer service never answered.",
    "Absolutely fantastic cookbook, best purchase ever.",
    "Meh quality, not worth the price, shipping was slow.",
    "Good blender but the lid leaks a little.",
]
