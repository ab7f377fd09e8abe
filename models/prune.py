"""Pruning the encoder: dropping upper layers, and removing attention heads by importance.

**Layer dropping** (Sajjad et al., "On the effect of dropping layers"): keep the bottom ``L`` of
``N`` encoder layers, then fine-tune. The encoder's ``config.json`` then says ``L`` layers, so the
checkpoint loads as it is.

**Head pruning** (Michel et al., "Are sixteen heads really better than one?"): a head's importance
is the first-order estimate of how much the loss changes when the head is masked,
``|sum(context_h * dLoss/dcontext_h)|`` over the training rows, which is the gradient of a head mask
at 1. The least important heads are removed from the query, key and value projections and from the
attention output. transformers 5 dropped ``PreTrainedModel.prune_heads`` and the ``pruned_heads``
config entry, so refit prunes with transformers' ``prune_linear_layer`` and records the removed
heads in the encoder's ``config.json`` (``refit_pruned_heads``) and in ``refit.json``'s
architecture; loading a checkpoint prunes the freshly built encoder the same way before the
weights go in, so a pruned folder loads alone.
"""

from __future__ import annotations

import numpy as np
import torch

PRUNED_HEADS_KEY = "refit_pruned_heads"


def _bert(encoder):
    model = encoder.get_base_model() if hasattr(encoder, "get_base_model") else encoder
    if not hasattr(model, "encoder") or not hasattr(model.encoder, "layer"):
        raise ValueError(f"pruning needs a BERT-style encoder, not a {type(model).__name__}")
    return model


def drop_layers(encoder, keep: int) -> None:
    """Keep the bottom encoder layers (in place) and say so in the encoder's config.

    Args:
        encoder: the encoder.
        keep: how many layers stay.

    Raises:
        ValueError: ``keep`` is not between 1 and the encoder's layer count.
    """
    bert = _bert(encoder)
    layers = bert.encoder.layer
    if not 1 <= keep <= len(layers):
        raise ValueError(f"keep_layers={keep} but the encoder has {len(layers)} layers")
    bert.encoder.layer = torch.nn.ModuleList(list(layers)[:keep])
    bert.config.num_hidden_layers = keep
    pruned = pruned_heads(bert.config)
    if pruned:
        set_pruned_heads(bert.config, {k: v for k, v in pruned.items() if k < keep})


def pruned_heads(config) -> dict[int, list[int]]:
    """The heads removed so far, per layer, as recorded in an encoder config."""
    raw = getattr(config, PRUNED_HEADS_KEY, None) or {}
    return {int(layer): sorted(int(h) for h in heads) for layer, heads in raw.items()}


def set_pruned_heads(config, heads: dict[int, list[int]]) -> None:
    # String keys: the config goes through JSON.
    setattr(config, PRUNED_HEADS_KEY, {str(k): sorted(v) for k, v in sorted(heads.items()) if v})


def head_counts(encoder) -> list[int]:
    """Attention heads left in each layer."""
    return [layer.attention.self.num_attention_heads for layer in _bert(encoder).encoder.layer]


def prune_heads(encoder, heads: dict[int, list[int]], record: bool = True) -> None:
    """Remove ``heads`` (layer -> original head indices) from the encoder, in place.

    Args:
        encoder: a BERT-style encoder.
        heads: per layer, the heads to remove, numbered as in the unpruned layer.
        record: add them to the config's record (False when re-applying the record on load).
    """
    from transformers.pytorch_utils import prune_linear_layer  # transformers is slow to import: pruning only

    bert = _bert(encoder)
    done = pruned_heads(bert.config)
    for layer_index, remove in heads.items():
        remove = set(remove) - (set(done.get(layer_index, [])) if record else set())
        if not remove:
            continue
        attention = bert.encoder.layer[layer_index].attention
        self_attn, size = attention.self, attention.self.attention_head_size
        # Original head numbers of the heads still present, in order.
        already = set(done.get(layer_index, [])) if record else set()
        original = [h for h in range(self_attn.num_attention_heads + len(already)) if h not in already]
        keep_positions = [pos for pos, h in enumerate(original) if h not in remove]
        if not keep_positions:
            raise ValueError(f"cannot remove every head of layer {layer_index}")
        index = torch.cat([torch.arange(p * size, (p + 1) * size) for p in keep_positions]).long()
        self_attn.query = prune_linear_layer(self_attn.query, index)
        self_attn.key = prune_linear_layer(self_attn.key, index)
        self_attn.value = prune_linear_layer(self_attn.value, index)
        attention.output.dense = prune_linear_layer(attention.output.dense, index, dim=1)
        self_attn.num_attention_heads = len(keep_positions)
        self_attn.all_head_size = size * len(keep_positions)
        if record:
            done[layer_index] = sorted(set(done.get(layer_index, [])) | remove)
    if record:
        set_pruned_heads(bert.config, done)


def apply_recorded_pruning(encoder) -> None:
    """Prune a freshly built (full) encoder as its config records, before loading pruned weights."""
    recorded = pruned_heads(encoder.config)
    if recorded:
        prune_heads(encoder, recorded, record=False)


def head_importance(model, batches, loss_fn) -> np.ndarray:
    """Importance of every remaining head, ``[layers, max heads]`` (NaN where a head is gone).

    Args:
        model: a SatisfactionModel.
        batches: an iterable of ``(inputs, targets)``: ``inputs`` are keyword arguments of the model.
        loss_fn: ``loss_fn(logits, targets) -> scalar`` summed over the batch.
    """
    bert = _bert(model.encoder)
    layers = bert.encoder.layer
    counts = [layer.attention.self.num_attention_heads for layer in layers]
    scores = np.full((len(layers), max(counts)), np.nan)
    totals = [torch.zeros(n, dtype=torch.float64) for n in counts]
    captured: dict[int, torch.Tensor] = {}

    def capture(index):
        def hook(_module, args):
            context = args[0]
            context.retain_grad()
            captured[index] = context

        return hook

    handles = [layer.attention.output.dense.register_forward_pre_hook(capture(i)) for i, layer in enumerate(layers)]
    was_training = model.training
    model.eval()  # no dropout: the estimate is of the model as it predicts
    try:
        for inputs, targets in batches:
            captured.clear()
            model.zero_grad(set_to_none=True)
            loss_fn(model(**inputs), targets).backward()
            for i, context in captured.items():
                size = layers[i].attention.self.attention_head_size
                per_dim = (context * context.grad).reshape(-1, counts[i], size).sum(-1)  # rows/tokens x heads
                totals[i] += per_dim.sum(0).detach().double().cpu()
    finally:
        for handle in handles:
            handle.remove()
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    for i, total in enumerate(totals):
        scores[i, : counts[i]] = total.abs().numpy()
    return scores


def least_important(scores: np.ndarray, n: int, original: list[list[int]]) -> dict[int, list[int]]:
    """The ``n`` least important heads (never the last head of a layer), by original number.

    Args:
        scores: ``[layers, max heads]`` from :func:`head_importance`.
        n: how many heads to remove.
        original: per layer, the original number of each remaining head, in order.
    """
    left = [len(heads) for heads in original]
    ranked = sorted(
        ((scores[i, j], i, j) for i in range(len(original)) for j in range(len(original[i]))),
        key=lambda t: (t[0], t[1], t[2]),
    )
    chosen: dict[int, list[int]] = {}
    for _score, i, j in ranked:
        if sum(len(v) for v in chosen.values()) >= n:
            break
        if left[i] <= 1:
            continue
        chosen.setdefault(i, []).append(original[i][j])
        left[i] -= 1
    return chosen


def remaining_heads(encoder) -> list[list[int]]:
    """Per layer, the original numbers of the heads still present."""
    bert = _bert(encoder)
    done = pruned_heads(bert.config)
    out = []
    for i, layer in enumerate(bert.encoder.layer):
        n = layer.attention.self.num_attention_heads + len(done.get(i, []))
        out.append([h for h in range(n) if h not in set(done.get(i, []))])
    return out
