"""Ensembles: K checkpoints served as one model whose prediction is the mean of theirs.

An ensemble checkpoint is a folder with ``refit.json`` (``"ensemble"`` names the members), the
shared tokenizer, and each member as a complete checkpoint under ``members/<i>/`` (its own
weights, encoder config, feature schema). Its manifest therefore lists K weight files, and it is
published, gated and served as one version: :class:`models.predict.Predictor` loads it as an
:class:`EnsembleModel`, which plugs into the same prediction code as a single model.

The members are either K seeds of one training run or the new model plus the K-1 previous
champions. They must share the tokenizer (the same base model's vocabulary) and the task; their
feature schemas may differ (each encodes the behaviour features it was trained on).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from torch import nn

from refit.core.errors import CheckpointError
from refit.core.hashing import sha256_file
from refit.models.checkpoint import MANIFEST, read_metadata, write_metadata
from refit.models.fusion import FeatureSchema, load_model_folder
from refit.models.inference import outputs_to_prediction

MEMBERS_DIR = "members"
ENSEMBLE_SEED_STRIDE = 1000  # member k of a seeds ensemble trains with seed + k * this
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json")


class EnsembleSchema:
    """The members' feature schemas behind one ``encode``: member ``i``'s tensors are keyed ``i/name``."""

    def __init__(self, schemas: list[FeatureSchema]):
        self.schemas = schemas

    @property
    def empty(self) -> bool:
        return all(s.empty for s in self.schemas)

    def names(self) -> list[str]:
        return sorted({name for s in self.schemas for name in s.names()})

    def encode(self, frame, n_rows: int) -> dict[str, torch.Tensor]:
        out = {}
        for i, schema in enumerate(self.schemas):
            out.update({f"{i}/{k}": v for k, v in schema.encode(frame, n_rows).items()})
        return out


class EnsembleModel(nn.Module):
    """K satisfaction models as one: the forward pass returns logits whose sigmoid (regression)
    or softmax (classification) is the mean of the members' predictions, so every caller of a
    single model (prediction, the gate, int8 quantization, serving) works on it unchanged."""

    def __init__(self, members: list[nn.Module], task: str):
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)
        self.task = task
        self.n_outputs = members[0].n_outputs
        self.schema = EnsembleSchema([m.schema for m in members])

    @property
    def encoder(self):
        """The first member's encoder: drift embeddings of an ensemble are its first member's."""
        return self.members[0].encoder

    def pooled(self, *args, **kwargs) -> torch.Tensor:
        return self.members[0].pooled(*args, **kwargs)

    def member_predictions(self, input_ids, attention_mask, features=None) -> torch.Tensor:
        """``[members, rows]`` scores or ``[members, rows, labels]`` probabilities."""
        outs = []
        for i, member in enumerate(self.members):
            own = {k.split("/", 1)[1]: v for k, v in (features or {}).items() if k.startswith(f"{i}/")}
            logits = member(input_ids=input_ids, attention_mask=attention_mask, features=own or None)
            outs.append(outputs_to_prediction(self.task, logits))
        return torch.stack(outs)

    @property
    def head(self):
        raise NotImplementedError("an ensemble has no single head: explain one of its members instead")

    def forward(self, input_ids=None, attention_mask=None, features=None, inputs_embeds=None, feature_input=None):
        if inputs_embeds is not None or feature_input is not None:
            # Embeddings of one member mean nothing to the others (explanations need a single model).
            raise NotImplementedError("an ensemble scores token ids, not one member's input embeddings")
        mean = self.member_predictions(input_ids, attention_mask, features).double().mean(0)
        if self.task == "regression":
            return torch.logit(mean.clamp(1e-12, 1 - 1e-12)).unsqueeze(-1).float()
        return torch.log(mean.clamp_min(1e-30)).float()  # softmax(log p) = p when p sums to 1


def member_folders(folder: Path, meta: dict | None = None) -> list[Path]:
    meta = meta or read_metadata(folder)
    return [Path(folder) / rel for rel in meta["ensemble"]["members"]]


def load_ensemble(folder: Path):
    """The :class:`EnsembleModel`, its tokenizer and ``refit.json`` of an ensemble folder."""
    from transformers import AutoTokenizer  # slow to import: only loading a model needs it

    folder = Path(folder)
    meta = read_metadata(folder)
    members = [load_model_folder(path)[0] for path in member_folders(folder, meta)]
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot load the tokenizer of ensemble {folder}: {str(exc).splitlines()[0]}") from None
    model = EnsembleModel(members, meta["task"])
    model.eval()
    return model, tokenizer, meta


def _tokenizer_digest(folder: Path) -> str:
    digests = [f"{name}:{sha256_file(folder / name)}" for name in TOKENIZER_FILES[:2] if (folder / name).is_file()]
    if not digests:
        raise CheckpointError(f"{folder} has no tokenizer files")
    return ";".join(digests)


def same_tokenizer(a: Path, b: Path) -> bool:
    """Whether two checkpoints share their tokenizer files (so one tokenizer serves both)."""
    try:
        return _tokenizer_digest(Path(a)) == _tokenizer_digest(Path(b))
    except CheckpointError:
        return False


def build_ensemble(members: list[Path], dest: Path, lineage: dict, metrics: dict | None = None) -> Path:
    """Write an ensemble checkpoint folder from member checkpoint folders.

    Args:
        members: the member checkpoints (plain, not ensembles); copied under ``dest/members/<i>``.
        dest: the new folder (must not exist or be empty).
        lineage: the version's lineage (``version`` among it), as for a single checkpoint.
        metrics: the ensemble's own metrics (``{"dev": {...}, "test": {...}}``).

    Returns:
        ``dest``.

    Raises:
        ValueError: the members do not fit together (task, labels, tokenizer), or one is an ensemble.
    """
    dest = Path(dest)
    if len(members) < 2:
        raise ValueError("an ensemble needs at least two members")
    metas = [read_metadata(m) for m in members]
    if any(meta.get("ensemble") for meta in metas):
        raise ValueError("an ensemble member must be a single model, not an ensemble")
    first = metas[0]
    for path, meta in zip(members[1:], metas[1:], strict=True):
        if (meta["task"], meta.get("labels")) != (first["task"], first.get("labels")):
            raise ValueError(f"ensemble member {path} predicts another task or other labels")
        if not same_tokenizer(path, members[0]):
            raise ValueError(f"ensemble member {path} has another tokenizer; members must share the base vocabulary")
    dest.mkdir(parents=True, exist_ok=True)
    rels = []
    for i, source in enumerate(members):
        rel = f"{MEMBERS_DIR}/{i}"
        shutil.copytree(source, dest / rel, ignore=shutil.ignore_patterns(MANIFEST))
        rels.append(rel)
    for name in TOKENIZER_FILES:
        if (Path(members[0]) / name).is_file():
            shutil.copy2(Path(members[0]) / name, dest / name)
    meta = {
        "format": 2,
        "version": lineage.get("version"),
        "task": first["task"],
        "labels": first.get("labels"),
        "output": first.get("output"),
        "max_length": min(int(m.get("max_length", 128)) for m in metas),
        "features": first.get("features"),
        "ensemble": {
            "members": rels,
            "combine": "mean of the members' predictions",
            "member_versions": [m.get("version") for m in metas],
            "member_seeds": [m.get("lineage", {}).get("seed") for m in metas],
        },
        "train_config": first.get("train_config"),
        "metrics": metrics or {},
        "training": {"seconds": round(sum(m.get("training", {}).get("seconds", 0.0) for m in metas), 3)},
        "lineage": {**first.get("lineage", {}), **lineage},
    }
    write_metadata(dest, meta)
    return dest
