"""Loading a checkpoint folder and scoring feedback with it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from refit.models.checkpoint import MANIFEST, read_metadata, verify_folder
from refit.models.ensemble import load_ensemble
from refit.models.fusion import load_model_folder
from refit.models.inference import collate, encode, predict_texts
from refit.models.quantize import load_int8
from refit.models.text_baseline import TextBaseline, blend_of, has_text_model


class Predictor:
    """A loaded checkpoint. Its folder alone is enough: task, labels, lengths and the feature
        schema come from ``refit.json``; the files are verified against ``manifest.json`` when there
        is one. An ensemble folder (:mod:`models.ensemble`) loads as one model that predicts the mean
        of its members. A blended checkpoint (:mod:`models.text_baseline`) mixes its BERT's predictions
    with its TF-IDF model's by the weight it records, and one of kind ``tfidf`` predicts with TF-IDF
    alone. With ``int8``, the folder's published int8 artifact (:mod:`models.quantize`, an
        ONNX Runtime model) scores instead of the float weights."""

    def __init__(self, folder: Path, device: str = "cpu", verify: bool = True, int8: bool = False):
        self.folder = Path(folder)
        if verify and (self.folder / MANIFEST).exists():
            verify_folder(self.folder)
        if read_metadata(self.folder).get("ensemble"):
            model, self.tokenizer, self.meta = load_ensemble(self.folder)
        else:
            model, self.tokenizer, self.meta = load_model_folder(self.folder)
        if int8:
            model = load_int8(model, self.folder)
        self.task: str = self.meta["task"]
        self.labels: list[str] | None = self.meta.get("labels")
        self.max_length: int = int(self.meta.get("max_length", 128))
        self.version: str | None = self.meta.get("version")
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.model.eval()
        # A blended checkpoint mixes in its TF-IDF model; one of kind "tfidf" is that model alone.
        self.blend = blend_of(self.meta)
        self.kind: str = self.blend["kind"]
        self.bert_weight = float(self.blend["bert_weight"])
        self.text_model = (
            TextBaseline.load(self.folder) if self.kind != "bert" and has_text_model(self.folder) else None
        )
        if self.text_model is None:
            self.bert_weight, self.kind = 1.0, "bert"

    @property
    def feature_names(self) -> list[str]:
        """The behaviour features the model reads (empty for a text-only model)."""
        return self.model.schema.names()

    def predict(self, texts: list[str], features: pd.DataFrame | list[dict] | None = None) -> np.ndarray:
        """Scores in [0, 1] (regression) or class probabilities, one row per text.

        Args:
            texts: the review texts.
            features: behaviour features row-aligned with ``texts`` (a frame with one column per
                feature, or one dict per row); missing ones read as unknown (categorical) or the
                training mean (numeric). Ignored by a text-only model.
        """
        if self.text_model is not None and self.bert_weight <= 0.0:
            return self.text_model.predict(texts)
        bert = predict_texts(self.model, self.tokenizer, texts, features, self.task, self.max_length, self.device)
        if self.text_model is None:
            return bert
        return self.bert_weight * bert + (1.0 - self.bert_weight) * self.text_model.predict(texts)

    @torch.inference_mode()
    def embed(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """The model's own sentence embeddings: its encoder's last hidden state, mean-pooled over
        the real tokens.

        Args:
            texts: the texts.
            batch_size: texts per model call.

        Returns:
            One row per text, in the input order.
        """
        ids = encode(self.tokenizer, [str(t) for t in texts], self.max_length)
        pad_id = self.tokenizer.pad_token_id or 0
        order = np.argsort([len(seq) for seq in ids], kind="stable")
        out = np.zeros((len(ids), self.model.encoder.config.hidden_size), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            batch = {k: v.to(self.device) for k, v in collate([ids[i] for i in idx], pad_id).items()}
            out[idx] = self.model.pooled(**batch).float().cpu().numpy()
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
