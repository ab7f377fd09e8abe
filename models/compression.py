"""Compression during a run: keeping only the bottom encoder layers, and removing the attention
heads that matter least on the training rows (the primitives are in :mod:`refit.models.prune`)."""

from __future__ import annotations

import logging

import numpy as np
import torch

from refit.models.config import TrainConfig
from refit.models.fusion import SatisfactionModel, take
from refit.models.inference import collate
from refit.models.objective import per_sample_loss
from refit.models.prune import drop_layers, head_counts, head_importance, least_important, prune_heads, remaining_heads
from refit.models.strategies import encoder_layers

log = logging.getLogger("refit.train")


def keep_bottom_layers(model: SatisfactionModel, config: TrainConfig) -> None:
    """Drop the encoder layers above ``config.keep_layers`` (nothing when it is unset).

    Raises:
        ValueError: ``keep_layers`` is more than the encoder has.
    """
    if not config.keep_layers:
        return
    current = len(encoder_layers(model.encoder))
    if config.keep_layers > current:
        raise ValueError(f"keep_layers={config.keep_layers} but the encoder has {current} layers")
    if config.keep_layers < current:
        drop_layers(model.encoder, config.keep_layers)


def prune_by_importance(
    model: SatisfactionModel,
    config: TrainConfig,
    train_ids: list[list[int]],
    train_features: dict[str, torch.Tensor],
    targets: torch.Tensor,
    pad_id: int,
    device: torch.device,
) -> int:
    """Remove ``config.prune_heads`` heads, least important on the training rows first.

    Args:
        model: the model being trained; pruned in place and moved back to ``device``.
        config: the run's settings.
        train_ids: the training rows' token ids.
        train_features: the training rows' encoded features (empty for a text-only model).
        targets: the training rows' targets.
        pad_id: the tokenizer's padding id.
        device: where the model runs.

    Returns:
        How many heads went.
    """

    def batches():
        for start in range(0, len(train_ids), 64):
            idx = np.arange(start, min(start + 64, len(train_ids)))
            inputs = {k: v.to(device) for k, v in collate([train_ids[i] for i in idx], pad_id).items()}
            inputs["features"] = take(train_features, idx, device) if train_features else None
            yield inputs, targets[idx].to(device)

    def loss_fn(logits, batch_targets):
        return per_sample_loss(config, logits, batch_targets).sum()

    scores = head_importance(model, batches(), loss_fn)
    chosen = least_important(scores, config.prune_heads, remaining_heads(model.encoder))
    prune_heads(model.encoder, chosen)
    model.to(device)
    n = sum(len(v) for v in chosen.values())
    log.info("pruned %d attention heads (%s); heads per layer now %s", n, chosen, head_counts(model.encoder))
    return n
