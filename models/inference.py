"""Scoring texts with a model: tokenizing, padding per batch, and turning logits into predictions.

Training (the dev metric every epoch), checkpoint loading for serving, and ensembles share these;
nothing here imports the trainer or the optimizer.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from refit.models.fusion import SatisfactionModel, take


def encode(tokenizer, texts: list[str], max_length: int) -> list[list[int]]:
    """Token ids per text, truncated, unpadded (padding happens per batch)."""
    return tokenizer(list(texts), truncation=True, max_length=max_length, padding=False)["input_ids"]


def collate(ids: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Pad a batch to its own longest sequence, never to a fixed length."""
    width = max(len(seq) for seq in ids)
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for row, seq in enumerate(ids):
        input_ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, : len(seq)] = 1
    return {"input_ids": input_ids, "attention_mask": mask}


def outputs_to_prediction(task: str, logits: torch.Tensor) -> torch.Tensor:
    """Scores in [0, 1] (regression) or class probabilities (classification)."""
    if task == "regression":
        return torch.sigmoid(logits.squeeze(-1).float())
    return torch.softmax(logits.float(), dim=-1)


@torch.inference_mode()
def predict_ids(
    model: SatisfactionModel,
    ids: list[list[int]],
    task: str,
    pad_id: int,
    device: torch.device,
    batch_size: int | None = None,
    features: dict[str, torch.Tensor] | None = None,
) -> np.ndarray:
    """Predictions for pre-tokenized texts, batched by length, returned in the input order.

    Args:
        model: the model (or the int8 ONNX Runtime model).
        ids: token ids per text, unpadded.
        task: ``regression`` or ``classification``.
        pad_id: the tokenizer's padding id.
        device: where the model runs.
        batch_size: texts per model call; None takes the model's ``preferred_batch`` (the int8
            ONNX Runtime model runs its padded batches fastest small), else 64.
        features: the encoded behaviour features, one row per text.

    Returns:
        Scores in [0, 1] (regression) or class probabilities (classification), one row per text.
    """
    batch_size = batch_size or getattr(model, "preferred_batch", 64)
    model.eval()
    order = np.argsort([len(seq) for seq in ids], kind="stable")
    parts: list[np.ndarray] = []
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = {k: v.to(device) for k, v in collate([ids[i] for i in idx], pad_id).items()}
        logits = model(**batch, features=take(features, idx, device) if features else None)
        parts.append(outputs_to_prediction(task, logits).cpu().numpy())
    if not parts:
        return np.zeros((0,) if task == "regression" else (0, model.n_outputs))
    stacked = np.concatenate(parts, axis=0)
    result = np.empty_like(stacked)
    result[order] = stacked
    return result


def predict_texts(
    model: SatisfactionModel,
    tokenizer,
    texts: list[str],
    features: pd.DataFrame | list[dict] | None,
    task: str,
    max_length: int,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """Predictions for raw texts and their behaviour features.

    Args:
        model: the model.
        tokenizer: its tokenizer.
        texts: the texts.
        features: their behaviour features (a frame, or a dict per text); missing features read as
            unknown.
        task: ``regression`` or ``classification``.
        max_length: longer texts are truncated to this many tokens.
        device: where the model runs.

    Returns:
        Scores in [0, 1] (regression) or class probabilities (classification), one row per text.
    """
    texts = [str(t) for t in texts]
    if isinstance(features, list):
        features = pd.DataFrame(features)
    if features is not None:
        features = features.reset_index(drop=True)
    encoded = model.schema.encode(features, len(texts))
    ids = encode(tokenizer, texts, max_length)
    return predict_ids(model, ids, task, tokenizer.pad_token_id or 0, torch.device(device), features=encoded or None)
