"""The satisfaction model: a BERT-family encoder, mean-pooled, with an optional gated fusion of
behaviour features.

Text-only (no features configured) is a linear head on the mean-pooled last hidden state. With
features, the pooled text and a feature vector (standardized numeric features, embedded
categorical features with an unknown bucket, and an optional precomputed embedding vector with a
presence flag) are projected to the same width and mixed by a learned sigmoid gate, so the model
can lean on whichever side carries the signal. The :class:`FeatureSchema` (names, types,
normalization statistics, category vocabularies) is saved in ``refit.json``; loading a checkpoint
folder needs nothing else.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from refit.core.errors import CheckpointError
from refit.models.checkpoint import read_metadata
from refit.models.prune import apply_recorded_pruning
from refit.models.unpad import bert_modules, unpadded_mean_pool

WEIGHTS = "model.safetensors"
MAX_CATEGORIES = 256  # the most frequent values of a categorical feature get an embedding; others are unknown


@dataclass
class FeatureSchema:
    """The behaviour features a model reads, with what it learned about them at training time.

    Index 0 of every categorical vocabulary is the unknown bucket (unseen or missing values).
    A missing numeric value is read as the training mean (0 after standardization).
    """

    numeric: list[str] = field(default_factory=list)
    means: list[float] = field(default_factory=list)
    stds: list[float] = field(default_factory=list)
    categorical: list[str] = field(default_factory=list)
    vocab: dict[str, list[str]] = field(default_factory=dict)
    vector: str | None = None
    vector_dim: int = 0

    @property
    def empty(self) -> bool:
        return not (self.numeric or self.categorical or self.vector)

    def names(self) -> list[str]:
        return [*self.numeric, *self.categorical, *([self.vector] if self.vector else [])]

    def signature(self) -> dict:
        """What decides the head's shape: names, types and sizes (not the statistics)."""
        return {
            "numeric": self.numeric,
            "categorical": {name: len(self.vocab[name]) for name in self.categorical},
            "vector": [self.vector, self.vector_dim] if self.vector else None,
        }

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict | None) -> FeatureSchema:
        return cls(**(data or {}))

    @classmethod
    def fit(cls, feature_types: dict[str, str], frame: pd.DataFrame | None, vector: str | None = None) -> FeatureSchema:
        """Learn the features' statistics and vocabularies from the training rows.

        Args:
            feature_types: name -> ``numeric`` or ``categorical``.
            frame: the training rows' features (None: no rows, no statistics).
            vector: the column that holds a precomputed embedding vector, if any.

        Returns:
            The schema the model encodes its features by.
        """
        if not feature_types and not vector:
            return cls()
        if frame is None:
            raise ValueError("features are configured but the training data has no feature columns")
        schema = cls()
        for name, kind in sorted(feature_types.items()):
            if kind not in ("numeric", "categorical"):
                raise ValueError(f"feature {name}: type must be numeric or categorical, not {kind!r}")
            column = frame[name] if name in frame else pd.Series(np.nan, index=frame.index)
            if kind == "numeric":
                values = pd.to_numeric(column, errors="coerce").astype(float)
                mean = float(values.mean()) if values.notna().any() else 0.0
                std = float(values.std(ddof=0)) if values.notna().sum() > 1 else 1.0
                schema.numeric.append(name)
                schema.means.append(mean)
                schema.stds.append(std if std > 1e-12 else 1.0)
            else:
                counts = column.dropna().astype(str).value_counts(sort=False)
                ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:MAX_CATEGORIES]
                schema.categorical.append(name)
                schema.vocab[name] = [value for value, _ in ranked]
        if vector:
            present = [v for v in frame.get(vector, []) if _is_vector(v)]
            if not present:
                raise ValueError(f"vector feature {vector!r} has no values in the training rows")
            schema.vector, schema.vector_dim = vector, len(present[0])
        return schema

    def encode(self, frame: pd.DataFrame | None, n_rows: int) -> dict[str, torch.Tensor]:
        """The model's feature tensors for some rows.

        Args:
            frame: the rows' features (None, or a missing column: read as missing values).
            n_rows: how many rows.

        Returns:
            ``numeric`` (standardized) and ``categorical`` (vocabulary indices, 0 for missing or
            unseen), and with a vector column ``vector`` and ``has_vector``: ``n_rows`` rows each
            (empty for a model without features).

        Raises:
            ValueError: ``frame`` has another number of rows, or a vector that the model cannot read.
        """
        if self.empty:
            return {}
        if frame is None:
            frame = pd.DataFrame(index=range(n_rows))
        if len(frame) != n_rows:
            raise ValueError(f"features have {len(frame)} rows for {n_rows} texts")
        out: dict[str, torch.Tensor] = {}
        numeric = np.zeros((n_rows, len(self.numeric)), dtype=np.float32)
        for j, name in enumerate(self.numeric):
            if name in frame:
                values = pd.to_numeric(frame[name], errors="coerce").to_numpy(dtype=float)
                scaled = (values - self.means[j]) / self.stds[j]
                numeric[:, j] = np.where(np.isfinite(scaled), scaled, 0.0)
        out["numeric"] = torch.from_numpy(numeric)
        categorical = np.zeros((n_rows, len(self.categorical)), dtype=np.int64)
        for j, name in enumerate(self.categorical):
            if name in frame:
                index = {value: i + 1 for i, value in enumerate(self.vocab[name])}
                categorical[:, j] = [index.get(str(v), 0) if _present(v) else 0 for v in frame[name]]
        out["categorical"] = torch.from_numpy(categorical)
        if self.vector:
            vectors = np.zeros((n_rows, self.vector_dim), dtype=np.float32)
            has = np.zeros(n_rows, dtype=np.float32)
            for i, value in enumerate(frame.get(self.vector, [])):
                vector = _vector_row(value, self.vector, i, self.vector_dim)
                if vector is not None:
                    vectors[i], has[i] = vector, 1.0
            out["vector"] = torch.from_numpy(vectors)
            out["has_vector"] = torch.from_numpy(has)
        return out


def _present(value) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def _is_vector(value) -> bool:
    return isinstance(value, (list, tuple, np.ndarray)) and len(value) > 0


def _vector_row(value, name: str, row: int, dim: int) -> np.ndarray | None:
    """One row's vector (None when it has none), or a ValueError that says what is wrong with it.

    A list, a tuple, an array, or a JSON array in text (a CSV cell) is a vector; blank text is none.
    """
    where = f"vector feature {name!r}: row {row}"
    if isinstance(value, str):
        if not value.strip():
            return None
        try:
            value = json.loads(value)
        except ValueError:
            raise ValueError(f"{where} is not a JSON array of numbers") from None
    if not _is_vector(value):
        return None
    if len(value) != dim:
        raise ValueError(f"{where} has {len(value)} values, expected {dim}")
    try:
        vector = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError):
        raise ValueError(f"{where} has a value that is not a number") from None
    if vector.ndim != 1 or not np.isfinite(vector).all():
        raise ValueError(f"{where} has a NaN, infinite or nested value")
    return vector


def take(features: dict[str, torch.Tensor], index, device: torch.device | None = None) -> dict[str, torch.Tensor]:
    """The rows ``index`` of every feature tensor (on ``device``)."""
    index = torch.as_tensor(np.asarray(index), dtype=torch.long)
    return {k: (v[index].to(device) if device is not None else v[index]) for k, v in features.items()}


class FusionHead(nn.Module):
    """Pooled text and behaviour features, each projected to ``width``, mixed by a sigmoid gate."""

    def __init__(self, hidden: int, schema: FeatureSchema, n_outputs: int, width: int, dropout: float):
        super().__init__()
        self.embeddings = nn.ModuleList(
            nn.Embedding(len(schema.vocab[name]) + 1, min(16, 2 + len(schema.vocab[name]) // 2))
            for name in schema.categorical
        )
        n_in = len(schema.numeric) + sum(e.embedding_dim for e in self.embeddings)
        self.vector = nn.Linear(schema.vector_dim, width) if schema.vector else None
        n_in += (width + 1) if schema.vector else 0
        self.text = nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden, width))
        self.features = nn.Sequential(nn.Linear(n_in, width), nn.GELU(), nn.Linear(width, width))
        self.gate = nn.Linear(2 * width, width)
        self.out = nn.Sequential(nn.LayerNorm(width), nn.GELU(), nn.Dropout(dropout), nn.Linear(width, n_outputs))

    def feature_vector(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        parts = [features["numeric"]]
        parts += [emb(features["categorical"][:, j]) for j, emb in enumerate(self.embeddings)]
        if self.vector is not None:
            has = features["has_vector"].unsqueeze(-1)
            parts += [self.vector(features["vector"]) * has, has]
        return torch.cat(parts, dim=-1)

    def forward(self, pooled: torch.Tensor, features: dict[str, torch.Tensor], feature_input=None) -> torch.Tensor:
        text = self.text(pooled)
        joined = self.features(feature_input if feature_input is not None else self.feature_vector(features))
        gate = torch.sigmoid(self.gate(torch.cat([text, joined], dim=-1)))
        return self.out(gate * text + (1 - gate) * joined)


class SatisfactionModel(nn.Module):
    """An encoder with a text-only or a gated-fusion head; returns logits."""

    def __init__(
        self,
        encoder: nn.Module,
        n_outputs: int,
        schema: FeatureSchema | None = None,
        fusion_width: int = 64,
        dropout: float = 0.1,
    ):
        super().__init__()
        self.encoder = encoder
        self.n_outputs = n_outputs
        self.attention = "padded"  # encoder | padded | packed (models/unpad.py); a runtime choice
        self.schema = schema or FeatureSchema()
        hidden = encoder.config.hidden_size
        if self.schema.empty:
            self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden, n_outputs))
        else:
            self.head = FusionHead(hidden, self.schema, n_outputs, fusion_width, dropout)

    @property
    def fused(self) -> bool:
        return not self.schema.empty

    def pooled(self, input_ids=None, attention_mask=None, inputs_embeds=None) -> torch.Tensor:
        """The last hidden state, mean-pooled over the real (non-padding) tokens.

        BERT encoders run unpadded (:mod:`models.unpad`, attention ``padded`` or ``packed``): the same
        result without computing padding; ``encoder`` is the plain Hugging Face forward.
        """
        if self.attention != "encoder" and inputs_embeds is None:
            bert = bert_modules(self.encoder)
            if bert is not None:
                return unpadded_mean_pool(bert, input_ids, attention_mask, self.attention)
        hidden = self.encoder(
            input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds
        ).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        features: dict[str, torch.Tensor] | None = None,
        inputs_embeds: torch.Tensor | None = None,
        feature_input: torch.Tensor | None = None,
    ) -> torch.Tensor:
        pooled = self.pooled(input_ids, attention_mask, inputs_embeds)
        if not self.fused:
            return self.head(pooled)
        return self.head(pooled, features or {}, feature_input)


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging  # transformers is slow to import: only when a model loads

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _encoder_from(source, dropout: float | None, config=None) -> nn.Module:
    """A BERT-family encoder without its pooler (refit mean-pools), pretrained or from a config."""
    from transformers import AutoConfig, AutoModel  # slow to import: only building a model needs it

    config = config or AutoConfig.from_pretrained(source)
    if dropout is not None:
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "dropout", "attention_dropout"):
            if hasattr(config, name):
                setattr(config, name, dropout)
    pretrained = source is not None
    try:
        if pretrained:
            return AutoModel.from_pretrained(source, config=config, add_pooling_layer=False)
        return AutoModel.from_config(config, add_pooling_layer=False)
    except TypeError:  # an encoder without a pooler option (e.g. DistilBERT)
        return AutoModel.from_pretrained(source, config=config) if pretrained else AutoModel.from_config(config)


def build_model(
    base_model: str,
    n_outputs: int,
    schema: FeatureSchema,
    fusion_width: int = 64,
    dropout: float | None = None,
):
    """A new model on a pretrained encoder folder (offline), and its tokenizer.

    Args:
        base_model: the pretrained encoder's folder.
        n_outputs: 1 for regression, the number of classes for classification.
        schema: the behaviour features the head reads.
        fusion_width: the width of the head's fusion layer.
        dropout: the encoder's dropout (default: its config's).

    Returns:
        The model and its tokenizer.

    Raises:
        ValueError: the base model cannot be loaded.
    """
    from transformers import AutoTokenizer  # slow to import: only building a model needs it

    _quiet_transformers()
    try:
        tokenizer = AutoTokenizer.from_pretrained(base_model)
        encoder = _encoder_from(base_model, dropout)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot load base model {base_model}: {str(exc).splitlines()[0]}") from None
    head_dropout = 0.1 if dropout is None else dropout
    return SatisfactionModel(encoder, n_outputs, schema, fusion_width, head_dropout), tokenizer


def architecture(model: SatisfactionModel, n_outputs: int, fusion_width: int) -> dict:
    """What a warm start must match: the encoder's shape, the head, the outputs, the features."""
    cfg = model.encoder.config
    return {
        "encoder": {
            "model_type": cfg.model_type,
            "hidden_size": cfg.hidden_size,
            "num_hidden_layers": cfg.num_hidden_layers,
            "vocab_size": cfg.vocab_size,
        },
        "pooling": "mean",
        "head": "gated_fusion" if model.fused else "linear",
        "fusion_width": fusion_width if model.fused else None,
        "n_outputs": n_outputs,
        "features": model.schema.signature(),
        **({"pruned_heads": pruned} if (pruned := getattr(cfg, "refit_pruned_heads", None)) else {}),
    }


def load_model_folder(folder: Path, dropout: float | None = None):
    """The model, tokenizer and ``refit.json`` of a checkpoint folder, from the folder alone.

    Raises:
        CheckpointError: the folder is not a loadable refit checkpoint.
    """
    from transformers import AutoConfig, AutoTokenizer  # slow to import: only loading a model needs it

    folder = Path(folder)
    meta = read_metadata(folder)
    arch = meta.get("architecture")
    if not arch:
        raise CheckpointError(f"{folder} predates refit's checkpoint format 2 (no architecture in refit.json)")
    _quiet_transformers()
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
        encoder = _encoder_from(None, dropout, config=AutoConfig.from_pretrained(folder))
        apply_recorded_pruning(encoder)  # a head-pruned checkpoint's weights have fewer heads
        schema = FeatureSchema.from_dict(meta.get("features"))
        width = arch.get("fusion_width") or 64
        head_dropout = 0.1 if dropout is None else dropout
        model = SatisfactionModel(encoder, arch["n_outputs"], schema, width, head_dropout)
        model.load_state_dict(load_file(folder / WEIGHTS))
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise CheckpointError(f"cannot load checkpoint {folder}: {str(exc).splitlines()[0]}") from None
    model.eval()
    return model, tokenizer, meta


def save_model_files(model: SatisfactionModel, tokenizer, folder: Path) -> None:
    """Weights (safetensors), the encoder's ``config.json`` and the tokenizer files."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    save_file(state, folder / WEIGHTS, metadata={"format": "pt"})
    model.encoder.config.to_json_file(folder / "config.json")
    tokenizer.save_pretrained(folder)
