"""Loading a checkpoint folder and scoring feedback with it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from models.checkpoint import MANIFEST, read_metadata, verify_folder
from models.train import collate, encode, predict_ids
from refit.errors import CheckpointError


class Predictor:
    """A loaded checkpoint. Its folder alone is enough: task, labels and lengths come from
    ``refit.json``; the files are verified against ``manifest.json`` when there is one."""

    def __init__(self, folder: Path, device: str = "cpu", verify: bool = True):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
        from transformers.utils import logging as hf_logging

        self.folder = Path(folder)
        if verify and (self.folder / MANIFEST).exists():
            verify_folder(self.folder)
        self.meta = read_metadata(self.folder)
        self.task: str = self.meta["task"]
        self.labels: list[str] | None = self.meta.get("labels")
        self.max_length: int = int(self.meta.get("max_length", 128))
        self.version: str | None = self.meta.get("version")
        self.device = torch.device(device)
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.folder)
            self.model = AutoModelForSequenceClassification.from_pretrained(self.folder).to(self.device)
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"cannot load checkpoint {self.folder}: {str(exc).splitlines()[0]}") from None
        self.model.eval()

    def predict(self, texts: list[str]) -> np.ndarray:
        """Scores in [0, 1] (regression) or class probabilities, one row per text."""
        ids = encode(self.tokenizer, [str(t) for t in texts], self.max_length)
        return predict_ids(self.model, ids, self.task, self.tokenizer.pad_token_id or 0, self.device)

    @torch.inference_mode()
    def embed(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """The model's own sentence embeddings: its encoder's last hidden state, mean-pooled over
        the real tokens, one row per text (in the input order)."""
        ids = encode(self.tokenizer, [str(t) for t in texts], self.max_length)
        encoder = self.model.base_model
        pad_id = self.tokenizer.pad_token_id or 0
        order = np.argsort([len(seq) for seq in ids], kind="stable")
        out = np.zeros((len(ids), self.model.config.hidden_size), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            batch = {k: v.to(self.device) for k, v in collate([ids[i] for i in idx], pad_id).items()}
            hidden = encoder(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            out[idx] = ((hidden * mask).sum(1) / mask.sum(1).clamp(min=1)).float().cpu().numpy()
        return out

    def to_records(self, prediction: np.ndarray) -> list[dict]:
        """Prediction rows as users read them: the score or label, plus per-class probabilities."""
        if self.task == "regression":
            return [{"prediction": float(p)} for p in prediction]
        rows = []
        for probs in prediction:
            row = {"prediction": self.labels[int(np.argmax(probs))]}
            row.update({f"p_{name}": float(p) for name, p in zip(self.labels, probs, strict=True)})
            rows.append(row)
        return rows
