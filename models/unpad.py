"""A BERT forward pass that computes no padding, with two layouts for the attention.

Every dense layer of a BERT layer (the query, key, value and output projections, the feed-forward
pair, the layer norms, dropout) works token by token, so it runs on the batch's real tokens packed
into one ``[tokens, hidden]`` matrix, from the embeddings on (the padding is removed before the
embedding lookup, as ModernBERT does). Only the attention needs the sequences apart:

- ``padded``: the packed queries, keys and values are scattered back into
  ``[batch, heads, length, dim]`` for one masked attention call, and the result gathered again;
- ``packed``: each sequence attends over its own slice of the packed tensors (a block-diagonal
  attention): no padding anywhere, and no scatter or gather. On a GPU the slices go to PyTorch's
  variable-length (jagged nested tensor) attention in one call, flash attention where it applies;
  on the CPU, one call per sequence.

Which one is faster depends on the device, the model's size and how much padding the batch has;
:mod:`models.paths` measures them and the trainer picks (``encoder``, the plain Hugging Face
forward, is the third choice). The weights are the encoder's own modules (LoRA-wrapped ones
included), so checkpoints are unchanged; all three give the same result up to float rounding
(tested).

On the CPU, dropout draws its mask from 16-bit uniform integers (64 random bits per draw, four
elements each) instead of ``bernoulli_``: the same distribution (a keep probability rounded to
1/65536), 1.3x to 3.2x faster in two runs of ``bench/train_bench.py``; dropout was a fifth of a
MiniLM training step on two cores.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

ATTENTION_LAYOUTS = ("padded", "packed")


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


class _MaskedScale(torch.autograd.Function):
    """``x * keep / (1 - p)`` with the boolean mask saved for the backward pass."""

    @staticmethod
    def forward(ctx, x, keep, scale: float):
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return torch.where(keep, x * scale, 0)

    @staticmethod
    def backward(ctx, grad):
        (keep,) = ctx.saved_tensors
        return torch.where(keep, grad * ctx.scale, 0), None, None


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Inverted dropout; on the CPU with a mask from 16-bit uniform integers (see the module doc)."""
    if not training or p <= 0:
        return x
    if x.device.type != "cpu":
        return F.dropout(x, p, True)
    n = x.numel()
    bits = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-(2**63), 2**63 - 1)
    keep = bits.view(torch.int16)[:n].view(x.shape) >= -32768 + round(p * 65536)
    return _MaskedScale.apply(x, keep, 1.0 / (1.0 - p))


def attention(q, k, v, mask, p: float, training: bool, scale: float) -> torch.Tensor:
    """Scaled dot-product attention over ``[..., heads, length, dim]``.

    PyTorch's fused kernels where there is no dropout (or on a GPU); on the CPU with dropout, the
    same product with this module's dropout (PyTorch falls back to its unfused math there anyway,
    with ``bernoulli_``).

    Args:
        q: the queries, ``[..., heads, length, dim]``.
        k: the keys, shaped as ``q``.
        v: the values, shaped as ``q``.
        mask: a boolean ``[..., 1, 1, length]`` of the keys to attend to, or None.
        p: the dropout probability on the attention weights.
        training: whether dropout applies.
        scale: the scale of the attention scores.

    Returns:
        The context, shaped as ``q``.
    """
    if not training or p <= 0 or q.device.type != "cpu":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p if training else 0.0, scale=scale)
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    # In the scores' own dtype: PyTorch's CPU softmax accumulates a bf16 row in fp32 and rounds the
    # result once, as an fp32 softmax cast back would, without the two casts of [batch, heads,
    # length, length] each way: 1.14x train()'s samples/s in bf16 on 2 cores (Sapphire Rapids).
    probs = dropout(torch.softmax(scores, dim=-1), p, True)
    return torch.matmul(probs, v)


def unpadded_mean_pool(
    bert, input_ids: torch.Tensor, attention_mask: torch.Tensor, layout: str = "padded"
) -> torch.Tensor:
    """The last hidden state mean-pooled over real tokens, computed on the real tokens only.

    Args:
        bert: the BERT encoder.
        input_ids: the padded batch, ``[batch, length]``.
        attention_mask: 1 for a real token, 0 for padding.
        layout: the attention's layout, ``padded`` or ``packed`` (see the module doc).

    Returns:
        One pooled vector per row, ``[batch, hidden]``.

    Raises:
        ValueError: ``layout`` is not a layout.
    """
    if layout not in ATTENTION_LAYOUTS:
        raise ValueError(f"attention layout must be one of {', '.join(ATTENTION_LAYOUTS)}, not {layout!r}")
    batch, length = input_ids.shape
    mask = attention_mask.bool()
    real = mask.reshape(-1).nonzero().squeeze(1)  # flat positions of the real tokens
    row_of = real // length
    positions = real % length
    counts = mask.sum(1)
    x = _embed_real_tokens(bert.embeddings, input_ids, real, positions)
    if layout == "packed":
        # Rows of the packed matrix are in row-major order, so sequence i is one contiguous slice.
        sizes = [int(c) for c in counts.tolist()]
        offsets = torch.nn.functional.pad(counts.cumsum(0), (1, 0))
    hidden = x.shape[-1]
    for layer in bert.encoder.layer:
        attn = layer.attention.self
        heads, head_dim = attn.num_attention_heads, attn.attention_head_size
        p, training = attn.dropout.p, attn.training
        q, k, v = attn.query(x), attn.key(x), attn.value(x)
        if layout == "packed":
            context = packed_attention(q, k, v, sizes, offsets, heads, head_dim, p, training, attn.scaling)
        else:
            shape = (batch, length, heads, head_dim)
            context = attention(
                _spread(q, real, shape),
                _spread(k, real, shape),
                _spread(v, real, shape),
                mask[:, None, None, :],
                p,
                training,
                attn.scaling,
            )
            # heads * head_dim, not hidden: a pruned layer has fewer heads (models/prune.py).
            context = context.transpose(1, 2).reshape(batch * length, heads * head_dim).index_select(0, real)
        out = layer.attention.output
        x = out.LayerNorm(dropout(out.dense(context), out.dropout.p, out.training) + x)
        inner = layer.intermediate.intermediate_act_fn(layer.intermediate.dense(x))
        out = layer.output
        x = out.LayerNorm(dropout(out.dense(inner), out.dropout.p, out.training) + x)
    sums = x.new_zeros(batch, hidden).index_add(0, row_of, x)
    return sums / counts.clamp(min=1).to(x.dtype).unsqueeze(1)


def _embed_real_tokens(emb, input_ids: torch.Tensor, real: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """BERT's input embeddings (word, position and token type, then LayerNorm and dropout) of the
    real tokens only: ``real`` are their flat positions in the batch, ``positions`` in their rows."""
    x = (
        emb.word_embeddings(input_ids.reshape(-1)[real])
        + emb.position_embeddings(positions)
        + emb.token_type_embeddings(torch.zeros_like(positions))
    )
    return dropout(emb.LayerNorm(x), emb.dropout.p, emb.training)


def packed_attention(
    q, k, v, sizes: list[int], offsets, heads: int, head_dim: int, p, training, scale, jagged: bool | None = None
) -> torch.Tensor:
    """Block-diagonal attention on packed projections: each sequence attends within its own slice.

    Args:
        q: the packed ``[tokens, heads * dim]`` queries.
        k: the packed keys, shaped as ``q``.
        v: the packed values, shaped as ``q``.
        sizes: each sequence's token count (the per-sequence path).
        offsets: where each sequence starts, and the end (the jagged path).
        heads: attention heads.
        head_dim: the size of one head.
        p: the dropout probability on the attention weights.
        training: whether dropout applies.
        scale: the scale of the attention scores.
        jagged: one call on jagged nested tensors (default: on a GPU), else one call per sequence.

    Returns:
        The packed ``[tokens, heads * dim]`` context.
    """
    if q.is_cuda if jagged is None else jagged:

        def nested(t):
            return torch.nested.nested_tensor_from_jagged(t.view(-1, heads, head_dim), offsets).transpose(1, 2)

        out = F.scaled_dot_product_attention(
            nested(q), nested(k), nested(v), dropout_p=p if training else 0.0, scale=scale
        )
        return out.transpose(1, 2).values().reshape(-1, heads * head_dim)
    outs = []
    for qi, ki, vi in zip(q.split(sizes), k.split(sizes), v.split(sizes), strict=True):
        if qi.shape[0] == 0:
            outs.append(qi)
            continue
        qi, ki, vi = (t.view(-1, heads, head_dim).transpose(0, 1) for t in (qi, ki, vi))
        outs.append(attention(qi, ki, vi, None, p, training, scale).transpose(0, 1).reshape(-1, heads * head_dim))
    return torch.cat(outs)


def _spread(packed: torch.Tensor, real: torch.Tensor, shape: tuple[int, int, int, int]) -> torch.Tensor:
    """Packed ``[tokens, heads * dim]`` back to padded ``[batch, heads, length, dim]`` (zeros at padding)."""
    batch, length, heads, head_dim = shape
    full = packed.new_zeros(batch * length, heads * head_dim).index_copy(0, real, packed)
    return full.view(batch, length, heads, head_dim).transpose(1, 2)
