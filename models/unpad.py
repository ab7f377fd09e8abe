"""A BERT forward pass that computes no padding.

Length bucketing leaves a little padding in every batch, and random order leaves a lot. Every
dense layer of a BERT layer (the query, key, value and output projections, the feed-forward pair,
the layer norms, dropout) works token by token, so it can run on the batch's real tokens packed
into one ``[tokens, hidden]`` matrix; only the attention needs the sequences apart, and it gets
them by scattering the packed queries, keys and values back into ``[batch, heads, length, dim]``
for PyTorch's scaled-dot-product attention. The weights are the encoder's own modules (LoRA-wrapped
ones included), so checkpoints are unchanged; the result equals the padded forward up to float
rounding (tested).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def bert_modules(encoder):
    """The plain ``BertModel`` under ``encoder`` (through a peft wrapper), or None when this fast
    path does not apply (another architecture, a decoder, relative positions)."""
    model = encoder.get_base_model() if hasattr(encoder, "get_base_model") else encoder
    config = getattr(model, "config", None)
    if config is None or config.model_type != "bert" or getattr(config, "is_decoder", False):
        return None
    if getattr(config, "position_embedding_type", "absolute") != "absolute":
        return None
    if not (hasattr(model, "embeddings") and hasattr(model, "encoder")):
        return None
    return model


def unpadded_mean_pool(bert, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The last hidden state mean-pooled over real tokens, computed on the real tokens only."""
    batch, length = input_ids.shape
    mask = attention_mask.bool()
    real = mask.reshape(-1).nonzero().squeeze(1)  # flat positions of the real tokens
    row_of = real // length
    positions = real % length
    emb = bert.embeddings
    x = (
        emb.word_embeddings(input_ids.reshape(-1)[real])
        + emb.position_embeddings(positions)
        + emb.token_type_embeddings(torch.zeros_like(positions))
    )
    x = emb.dropout(emb.LayerNorm(x))
    attend = mask[:, None, None, :]
    hidden = x.shape[-1]
    for layer in bert.encoder.layer:
        attention = layer.attention.self
        heads, head_dim = attention.num_attention_heads, attention.attention_head_size

        shape = (batch, length, heads, head_dim)
        context = F.scaled_dot_product_attention(
            _spread(attention.query(x), real, shape),
            _spread(attention.key(x), real, shape),
            _spread(attention.value(x), real, shape),
            attn_mask=attend,
            dropout_p=attention.dropout.p if attention.training else 0.0,
            scale=attention.scaling,
        )
        # heads * head_dim, not hidden: a pruned layer has fewer heads (models/prune.py).
        context = context.transpose(1, 2).reshape(batch * length, heads * head_dim).index_select(0, real)
        out = layer.attention.output
        x = out.LayerNorm(out.dropout(out.dense(context)) + x)
        inner = layer.intermediate.intermediate_act_fn(layer.intermediate.dense(x))
        out = layer.output
        x = out.LayerNorm(out.dropout(out.dense(inner)) + x)
    sums = x.new_zeros(batch, hidden).index_add(0, row_of, x)
    counts = mask.sum(1, keepdim=True).clamp(min=1).to(x.dtype)
    return sums / counts


def _spread(packed: torch.Tensor, real: torch.Tensor, shape: tuple[int, int, int, int]) -> torch.Tensor:
    """Packed ``[tokens, heads * dim]`` back to padded ``[batch, heads, length, dim]`` (zeros at padding)."""
    batch, length, heads, head_dim = shape
    full = packed.new_zeros(batch * length, heads * head_dim).index_copy(0, real, packed)
    return full.view(batch, length, heads, head_dim).transpose(1, 2)
