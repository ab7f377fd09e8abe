"""The training loss: per-row loss for regression (MSE or BCE on a sigmoid) and classification
(cross-entropy), and the class weights it may use."""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from refit.models.config import TrainConfig


def per_sample_loss(
    config: TrainConfig, logits: torch.Tensor, targets: torch.Tensor, class_weights: torch.Tensor | None = None
) -> torch.Tensor:
    """The loss of each row (class-weighted for classification when weights are given)."""
    if config.task == "regression":
        logit = logits.squeeze(-1).float()
        if config.loss == "bce":  # soft targets in [0, 1]
            return F.binary_cross_entropy_with_logits(logit, targets.float(), reduction="none")
        return (torch.sigmoid(logit) - targets.float()) ** 2
    return F.cross_entropy(logits.float(), targets.long(), weight=class_weights, reduction="none")


def class_weight_tensor(config: TrainConfig, targets: np.ndarray) -> torch.Tensor | None:
    """Per-label loss weights: none, given, balanced (n / (k * count), unseen labels weigh 1), or sqrt
    (the square root of balanced: half the correction, in log terms)."""
    if config.task != "classification" or config.class_weights == "none":
        return None
    if config.class_weights in ("balanced", "sqrt"):
        counts = np.bincount(np.asarray(targets, dtype=int), minlength=config.n_outputs).astype(float)
        weights = np.where(counts > 0, counts.sum() / (config.n_outputs * np.maximum(counts, 1)), 1.0)
        return torch.tensor(np.sqrt(weights) if config.class_weights == "sqrt" else weights, dtype=torch.float32)
    return torch.tensor(config.class_weights, dtype=torch.float32)
