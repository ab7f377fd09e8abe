"""Fine-tuning the satisfaction model on feedback: ``train(config, data) -> TrainResult``.

The flow, the CLI, ``torchrun`` and the benchmarks call the same function. Regression predicts a
satisfaction score in [0, 1] through a sigmoid on a single logit (MSE or BCE); classification
predicts named labels with cross-entropy (class weights optional). Batches are grouped by length
and padded to the batch's longest text; gradients can be accumulated over several batches and are
clipped; the dev metric is checked every epoch, training stops early on patience and min-delta,
and the best weights (not the last) are kept.

Fine-tuning strategies: ``full``; ``freeze`` (the embeddings and the lower ``freeze_layers``
encoder layers stay fixed); ``lora`` (``peft`` adapters on the attention projections, merged into
the weights before the model is returned, so serving needs no peft). A warm start from the
champion's checkpoint is used when its architecture matches; the result says which start was used.

Runs are seeded (Python, NumPy, torch) with a deterministic data order, and resumable: with a
``resume_dir``, the full state is written after every epoch and a killed run picks up from it.
Under ``torchrun`` (a ``torch.distributed`` process group already initialized) each rank takes its
share of every batch and DistributedDataParallel averages the gradients, so the optimizer sees the
same global batches as a single process.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import platform
import random
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.nn import functional as F

from refit.models.adversarial import METHODS as ADVERSARIAL
from refit.models.adversarial import EmbeddingAttack
from refit.models.augment import AugmentConfig, Paraphraser, augment_texts
from refit.models.checkpoint import METADATA, read_metadata
from refit.models.fusion import (
    FeatureSchema,
    SatisfactionModel,
    architecture,
    build_model,
    load_model_folder,
    save_model_files,
    take,
)
from refit.models.metrics import DEFAULT_METRIC, DIRECTION, task_metrics
from refit.models.prune import drop_layers, head_counts, head_importance, least_important, prune_heads, remaining_heads

log = logging.getLogger("refit.train")
STATE_FILE = "last_epoch.pt"
CURVE_FILE = "training_curve.png"
STRATEGIES = ("full", "freeze", "lora")


@dataclass
class TrainConfig:
    """Everything that decides a training run; saved in the checkpoint."""

    task: str = "regression"
    labels: list[str] = field(default_factory=lambda: ["negative", "neutral", "positive"])
    base_model: str = ""
    epochs: int = 3
    batch_size: int = 16
    learning_rate: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    max_length: int = 128
    patience: int = 1
    min_delta: float = 0.0
    metric: str = ""
    seed: int = 13
    device: str = "auto"
    # --- loss, strategy, features, start ----------------------------------------------------
    loss: str = ""  # regression: mse | bce; classification: cross_entropy
    class_weights: str | list[float] = "none"  # none | balanced | one weight per label
    grad_accum_steps: int = 1
    strategy: str = "full"  # full | freeze | lora
    freeze_layers: int = 0
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    feature_types: dict[str, str] = field(default_factory=dict)  # name -> numeric | categorical
    vector_feature: str | None = None  # a column of precomputed embedding vectors
    fusion_width: int = 64
    dropout: float | None = None  # None: the encoder's own
    init_from: str | None = None  # a champion checkpoint folder to warm-start from
    num_threads: int | None = None  # CPU threads for torch; None leaves torch's default
    unpad: bool = True  # BERT encoders compute real tokens only (models/unpad.py); same result
    # --- defences and compression (issue 10) ------------------------------------------------
    augment_delete_rate: float = 0.0  # training texts only (models/augment.py)
    augment_swap_rate: float = 0.0
    augment_synonym_rate: float = 0.0
    augment_paraphrase_rate: float = 0.0  # needs a paraphrase hook passed to train()
    adversarial: str = "none"  # none | fgm | pgd, on the word embeddings (models/adversarial.py)
    adversarial_epsilon: float = 1.0
    adversarial_steps: int = 3  # PGD only
    keep_layers: int | None = None  # keep the bottom L encoder layers (models/prune.py)
    prune_heads: int = 0  # attention heads removed by importance after prune_after_epoch
    prune_after_epoch: int = 1

    def __post_init__(self) -> None:
        if self.task not in ("regression", "classification"):
            raise ValueError(f"task must be regression or classification, not {self.task!r}")
        self.metric = self.metric or DEFAULT_METRIC[self.task]
        if self.metric not in DIRECTION:
            raise ValueError(f"unknown metric {self.metric!r}")
        losses = {"regression": ("mse", "bce"), "classification": ("cross_entropy",)}[self.task]
        self.loss = self.loss or losses[0]
        if self.loss not in losses:
            raise ValueError(f"loss {self.loss!r} does not fit task {self.task}; expected {' or '.join(losses)}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, not {self.strategy!r}")
        if self.grad_accum_steps < 1 or self.batch_size < 1 or self.epochs < 1:
            raise ValueError("epochs, batch_size and grad_accum_steps must be at least 1")
        if isinstance(self.class_weights, str):
            if self.class_weights not in ("none", "balanced"):
                raise ValueError(f"class_weights must be none, balanced or a list, not {self.class_weights!r}")
        elif len(self.class_weights) != len(self.labels):
            raise ValueError(f"class_weights has {len(self.class_weights)} values for {len(self.labels)} labels")
        _ = self.augmentation  # validates the rates
        if self.adversarial not in ADVERSARIAL:
            raise ValueError(f"adversarial must be one of {', '.join(ADVERSARIAL)}, not {self.adversarial!r}")
        if self.keep_layers is not None and self.keep_layers < 1:
            raise ValueError("keep_layers must be at least 1")
        if self.prune_heads < 0:
            raise ValueError("prune_heads must not be negative")
        if self.prune_heads and not 1 <= self.prune_after_epoch < self.epochs:
            raise ValueError("pruning heads needs prune_after_epoch in [1, epochs) (then it fine-tunes)")
        if self.prune_heads and self.strategy == "lora":
            raise ValueError("head pruning and LoRA do not combine: pruning rebuilds the projections LoRA wraps")

    @property
    def augmentation(self) -> AugmentConfig:
        return AugmentConfig(
            self.augment_delete_rate, self.augment_swap_rate, self.augment_synonym_rate, self.augment_paraphrase_rate
        )

    @property
    def n_outputs(self) -> int:
        return 1 if self.task == "regression" else len(self.labels)


@dataclass
class TrainData:
    """Texts, targets (scores in [0, 1], or label indices) and features for train and dev.

    ``*_features`` are frames with one column per behaviour feature (as
    :func:`refit.snapshots.features_frame` gives them), row-aligned with the texts; None for
    text-only training.
    """

    train_texts: list[str]
    train_targets: np.ndarray
    dev_texts: list[str]
    dev_targets: np.ndarray
    train_features: pd.DataFrame | None = None
    dev_features: pd.DataFrame | None = None

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for texts, targets in ((self.train_texts, self.train_targets), (self.dev_texts, self.dev_targets)):
            digest.update("\x1f".join(map(str, texts)).encode())
            digest.update(np.asarray(targets, dtype=float).tobytes())
        for frame in (self.train_features, self.dev_features):
            if frame is not None:
                digest.update(frame.to_json(orient="split", default_handler=str).encode())
        return digest.hexdigest()


@dataclass
class TrainResult:
    model: SatisfactionModel
    tokenizer: object
    config: TrainConfig
    history: list[dict]
    best_epoch: int
    dev_metrics: dict[str, float]
    stopped_early: bool
    train_seconds: float
    samples_per_second: float
    device: str
    init: dict = field(default_factory=dict)
    architecture: dict = field(default_factory=dict)
    world_size: int = 1
    resumed_from_epoch: int = 0


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(name: str, rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("REFIT_DEVICE=cuda but CUDA is not available on this machine")
        return torch.device("cuda", rank % torch.cuda.device_count())
    return torch.device(name)


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


def length_bucketed_batches(
    lengths: list[int], batch_size: int, rng: np.random.Generator, pool: int = 50
) -> list[np.ndarray]:
    """Shuffled batches of similar length: shuffle, sort within pools of ``pool`` batches, cut,
    then shuffle the batch order, so each batch pads little and the order stays random."""
    order = rng.permutation(len(lengths))
    lengths_arr = np.asarray(lengths)
    batches = []
    span = batch_size * pool
    for start in range(0, len(order), span):
        chunk = order[start : start + span]
        chunk = chunk[np.argsort(lengths_arr[chunk], kind="stable")]
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def outputs_to_prediction(task: str, logits: torch.Tensor) -> torch.Tensor:
    """Scores in [0, 1] (regression) or class probabilities (classification)."""
    if task == "regression":
        return torch.sigmoid(logits.squeeze(-1).float())
    return torch.softmax(logits.float(), dim=-1)


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
    """Per-label loss weights: none, given, or balanced (n / (k * count), unseen labels weigh 1)."""
    if config.task != "classification" or config.class_weights == "none":
        return None
    if config.class_weights == "balanced":
        counts = np.bincount(np.asarray(targets, dtype=int), minlength=config.n_outputs).astype(float)
        weights = np.where(counts > 0, counts.sum() / (config.n_outputs * np.maximum(counts, 1)), 1.0)
        return torch.tensor(weights, dtype=torch.float32)
    return torch.tensor(config.class_weights, dtype=torch.float32)


@torch.inference_mode()
def predict_ids(
    model: SatisfactionModel,
    ids: list[list[int]],
    task: str,
    pad_id: int,
    device: torch.device,
    batch_size: int = 64,
    features: dict[str, torch.Tensor] | None = None,
) -> np.ndarray:
    """Predictions for pre-tokenized texts, batched by length, returned in the input order."""
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
    """Predictions for raw texts and their behaviour features (missing features read as unknown)."""
    texts = [str(t) for t in texts]
    if isinstance(features, list):
        features = pd.DataFrame(features)
    if features is not None:
        features = features.reset_index(drop=True)
    encoded = model.schema.encode(features, len(texts))
    ids = encode(tokenizer, texts, max_length)
    return predict_ids(model, ids, task, tokenizer.pad_token_id or 0, torch.device(device), features=encoded or None)


# --- start and strategy -------------------------------------------------------------------------


def warm_start_problem(config: TrainConfig, schema: FeatureSchema) -> str | None:
    """Why ``config.init_from`` cannot seed this run (None when its architecture matches)."""
    from transformers import AutoConfig

    try:
        meta = read_metadata(Path(config.init_from))
    except Exception as exc:  # noqa: BLE001 - any unreadable champion means a cold start, with the reason
        return str(exc).splitlines()[0]
    arch = meta.get("architecture")
    if meta.get("ensemble"):
        return f"the champion is an ensemble of {len(meta['ensemble']['members'])} models"
    if not arch:
        return "the champion's checkpoint predates format 2"
    if meta.get("task") != config.task:
        return f"task differs ({meta.get('task')} vs {config.task})"
    if config.task == "classification" and meta.get("labels") != config.labels:
        return "labels differ"
    base = AutoConfig.from_pretrained(config.base_model)
    mine = {
        "model_type": base.model_type,
        "hidden_size": base.hidden_size,
        "num_hidden_layers": min(base.num_hidden_layers, config.keep_layers or base.num_hidden_layers),
        "vocab_size": base.vocab_size,
    }
    if arch.get("pruned_heads"):
        return "the champion has pruned attention heads"
    if arch["encoder"] != mine:
        return f"encoder differs ({arch['encoder']} vs {mine})"
    theirs = FeatureSchema.from_dict(meta.get("features"))
    if (sorted(theirs.numeric), sorted(theirs.categorical), theirs.vector, theirs.vector_dim) != (
        sorted(schema.numeric),
        sorted(schema.categorical),
        schema.vector,
        schema.vector_dim,
    ):
        return "features differ"
    if not schema.empty and arch.get("fusion_width") != config.fusion_width:
        return "fusion width differs"
    return None


def initial_model(config: TrainConfig, schema: FeatureSchema):
    """The model to train: the champion's weights when they fit, else the base encoder and a new head."""
    init = {"from": "base", "base_model": config.base_model}
    if config.init_from:
        problem = warm_start_problem(config, schema)
        if problem is None:
            model, tokenizer, meta = load_model_folder(Path(config.init_from), dropout=config.dropout)
            return model, tokenizer, {"from": "champion", "parent_version": meta.get("version")}
        init["warm_start_refused"] = problem
        log.info("cold start from the base model: %s", problem)
    model, tokenizer = build_model(config.base_model, config.n_outputs, schema, config.fusion_width, config.dropout)
    return model, tokenizer, init


def apply_strategy(model: SatisfactionModel, config: TrainConfig) -> None:
    """Freeze lower layers, or wrap the encoder with LoRA adapters (the head always trains)."""
    if config.strategy == "freeze":
        layers = encoder_layers(model.encoder)
        if config.freeze_layers > len(layers):
            raise ValueError(f"freeze_layers={config.freeze_layers} but the encoder has {len(layers)} layers")
        for param in model.encoder.embeddings.parameters():
            param.requires_grad_(False)
        for layer in layers[: config.freeze_layers]:
            for param in layer.parameters():
                param.requires_grad_(False)
    elif config.strategy == "lora":
        from peft import LoraConfig, get_peft_model
        from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as TARGETS

        targets = TARGETS.get(model.encoder.config.model_type, ["query", "value"])
        lora = LoraConfig(
            r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout, target_modules=targets
        )
        model.encoder = get_peft_model(model.encoder, lora)


def merge_adapters(model: SatisfactionModel) -> None:
    """Fold LoRA adapters into the encoder's weights, leaving a plain encoder."""
    if hasattr(model.encoder, "merge_and_unload"):
        model.encoder = model.encoder.merge_and_unload()
    for param in model.parameters():
        param.requires_grad_(True)


def encoder_layers(encoder) -> list:
    for path in ("encoder.layer", "transformer.layer", "layers"):
        node = encoder
        for part in path.split("."):
            node = getattr(node, part, None)
        if node is not None:
            return list(node)
    raise ValueError(f"cannot find the layers of a {type(encoder).__name__} encoder to freeze")


# --- resumable state --------------------------------------------------------------------------


def _run_fingerprint(config: TrainConfig, data: TrainData, world: int) -> str:
    settings = {k: v for k, v in asdict(config).items() if k not in ("device", "num_threads", "unpad")}
    return hashlib.sha256(json.dumps([settings, data.fingerprint(), world], default=str).encode()).hexdigest()


def _save_state(path: Path, state: dict) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # a kill while writing leaves the previous epoch's state intact


def _rng_state(rng: np.random.Generator) -> dict:
    return {
        "python": random.getstate(),
        "numpy_global": np.random.get_state(),
        "numpy": rng.bit_generator.state,
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def _restore_rng(state: dict, rng: np.random.Generator) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy_global"])
    rng.bit_generator.state = state["numpy"]
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --- the loop -------------------------------------------------------------------------------------


def train(
    config: TrainConfig,
    data: TrainData,
    on_epoch: Callable[[dict], None] | None = None,
    resume_dir: Path | None = None,
    on_step: Callable[[int, int], None] | None = None,
    tensorboard_dir: Path | None = None,
    paraphrase: Paraphraser | None = None,
    on_epoch_texts: Callable[[int, list[str]], None] | None = None,
) -> TrainResult:
    """Fine-tune on ``data`` with early stopping on the dev metric.

    Args:
        config: the run's settings.
        data: train and dev texts with targets (and features, when configured).
        on_epoch: called with each epoch's metrics (for logging).
        resume_dir: where the state is written after every epoch; a run started again with the
            same config, data and folder resumes after the last finished epoch. Removed on success.
        on_step: called after every optimizer step with (epoch, step in epoch).
        tensorboard_dir: where TensorBoard event files go (per-step loss and learning rate,
            per-epoch dev metrics); None writes none.
        paraphrase: the back-translation hook for ``augment_paraphrase_rate`` (refit ships none).
        on_epoch_texts: called with (epoch, the training texts of that epoch after augmentation).

    Returns:
        The model with its best-epoch weights (LoRA merged), the per-epoch history, the dev metrics.
    """
    if len(data.train_texts) == 0:
        raise ValueError("no training rows")
    if len(data.dev_texts) == 0:
        raise ValueError("no dev rows: early stopping and the gate need a dev split")
    previous_threads = torch.get_num_threads()
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    try:
        return _train(config, data, on_epoch, resume_dir, on_step, tensorboard_dir, paraphrase, on_epoch_texts)
    finally:
        torch.set_num_threads(previous_threads)


def _train(config, data, on_epoch, resume_dir, on_step, tensorboard_dir, paraphrase, on_epoch_texts) -> TrainResult:
    import torch.distributed as dist

    distributed = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    if distributed and (config.adversarial != "none" or config.prune_heads):
        raise ValueError("adversarial training and head pruning run in one process, not under torchrun")
    if resume_dir is not None and config.prune_heads:
        raise ValueError("a run that prunes heads cannot resume: the weights change shape mid-run")
    seed_everything(config.seed)
    device = pick_device(config.device, rank)
    schema = FeatureSchema.fit(config.feature_types, data.train_features, config.vector_feature)
    model, tokenizer, init = initial_model(config, schema)
    schema = model.schema  # a warm start keeps the champion's statistics and vocabularies
    model.unpad = config.unpad
    if config.keep_layers:
        current = len(encoder_layers(model.encoder))
        if config.keep_layers > current:
            raise ValueError(f"keep_layers={config.keep_layers} but the encoder has {current} layers")
        if config.keep_layers < current:
            drop_layers(model.encoder, config.keep_layers)
    apply_strategy(model, config)
    model.to(device)
    pad_id = tokenizer.pad_token_id or 0
    train_ids = encode(tokenizer, data.train_texts, config.max_length)
    dev_ids = encode(tokenizer, data.dev_texts, config.max_length)
    train_features = schema.encode(data.train_features, len(train_ids))
    dev_features = schema.encode(data.dev_features, len(dev_ids))
    targets = torch.tensor(np.asarray(data.train_targets))
    class_weights = class_weight_tensor(config, data.train_targets)
    class_weights = class_weights.to(device) if class_weights is not None else None
    rng = np.random.default_rng(config.seed)

    if distributed:
        from torch.nn.parallel import DistributedDataParallel

        runner = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    else:
        runner = model
    batches_per_epoch = math.ceil(len(train_ids) / config.batch_size)
    steps_per_epoch = math.ceil(batches_per_epoch / config.grad_accum_steps)
    total_steps = steps_per_epoch * config.epochs
    warmup = int(total_steps * config.warmup_ratio)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    def make_optimizer(steps_done: int = 0):
        decay, no_decay = [], []
        for name, param in model.named_parameters():
            if param.requires_grad:
                (no_decay if param.ndim < 2 or "LayerNorm" in name or "norm" in name else decay).append(param)
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=config.learning_rate,
            fused=device.type in ("cpu", "cuda"),  # one kernel instead of a dozen passes over every parameter
        )
        # A rebuilt optimizer (after head pruning) continues the same schedule.
        return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda step: schedule(step + steps_done))

    optimizer, scheduler = make_optimizer()
    # After the optimizer: frozen embeddings get a gradient for the attack but stay out of it.
    attack = (
        EmbeddingAttack(model, config.adversarial, config.adversarial_epsilon, config.adversarial_steps)
        if config.adversarial != "none"
        else None
    )
    augmentation = config.augmentation
    writer = _tensorboard_writer(tensorboard_dir) if tensorboard_dir is not None and rank == 0 else None
    higher_better = DIRECTION[config.metric]
    best_score, best_state, best_epoch, stale = None, None, 0, 0
    history: list[dict] = []
    seen, elapsed_before, train_seconds, stopped_early, start_epoch = 0, 0.0, 0.0, False, 1
    fingerprint = _run_fingerprint(config, data, world)
    state_path = Path(resume_dir) / STATE_FILE if resume_dir else None
    if state_path is not None and state_path.is_file():
        state = torch.load(state_path, map_location="cpu", weights_only=False)
        if state["fingerprint"] != fingerprint:
            raise ValueError(f"{state_path} belongs to another run (different config or data); remove it to start over")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        _restore_rng(state["rng"], rng)
        history, best_state, best_score = state["history"], state["best_state"], state["best_score"]
        best_epoch, stale, seen, elapsed_before = state["best_epoch"], state["stale"], state["seen"], state["elapsed"]
        train_seconds = state["train_seconds"]
        start_epoch = state["epoch"] + 1
        log.info("resuming after epoch %d from %s", state["epoch"], state_path)
    resumed_from = start_epoch - 1
    autocast = device.type == "cuda" and torch.cuda.is_bf16_supported()
    base_train_ids = train_ids
    show_progress = rank == 0 and sys.stderr.isatty()
    started = time.perf_counter()

    finished = start_epoch > config.epochs or (stale > config.patience)
    global_step = (start_epoch - 1) * steps_per_epoch
    for epoch in range(start_epoch, config.epochs + 1) if not finished else ():
        model.train()
        epoch_started, epoch_cpu = time.perf_counter(), time.process_time()
        epoch_loss = torch.zeros((), dtype=torch.float64)
        train_ids = base_train_ids
        if augmentation.active:  # training rows only; dev_ids above stay as the data is
            texts = augment_texts(data.train_texts, augmentation, config.seed, epoch, paraphrase)
            train_ids = encode(tokenizer, texts, config.max_length)
            if on_epoch_texts:
                on_epoch_texts(epoch, texts)
        elif on_epoch_texts:
            on_epoch_texts(epoch, list(data.train_texts))
        lengths = [len(seq) for seq in train_ids]
        batches = length_bucketed_batches(lengths, config.batch_size, rng)
        progress = _progress(len(batches), epoch) if show_progress else None
        for group_start in range(0, len(batches), config.grad_accum_steps):
            group = batches[group_start : group_start + config.grad_accum_steps]
            group_rows = sum(len(b) for b in group)
            group_loss = 0.0
            for micro, batch_idx in enumerate(group):
                local = batch_idx[rank::world]
                weight = world / group_rows  # DDP averages over ranks: this makes it the group's mean
                if len(local) == 0:  # a batch smaller than the world: this rank joins with a zero loss
                    local, weight = batch_idx[:1], 0.0
                batch = {k: v.to(device) for k, v in collate([train_ids[i] for i in local], pad_id).items()}
                feats = take(train_features, local, device) if train_features else None
                last = micro == len(group) - 1
                sync = runner.no_sync() if distributed and not last else nullcontext()
                with sync:
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                        logits = runner(**batch, features=feats)
                    batch_targets = targets[local].to(device)
                    losses = per_sample_loss(config, logits, batch_targets, class_weights)
                    (losses.sum() * weight).backward()
                    if attack is not None and weight:

                        def adversarial_loss(batch=batch, feats=feats, batch_targets=batch_targets, weight=weight):
                            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                                adv_logits = runner(**batch, features=feats)
                            return per_sample_loss(config, adv_logits, batch_targets, class_weights).sum() * weight

                        attack.backward_adversarial(adversarial_loss)
                batch_loss = float(losses.detach().sum()) if weight else 0.0
                epoch_loss += batch_loss
                group_loss += batch_loss
                if progress is not None:
                    progress.update(1)
            if config.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            optimizer.step()
            global_step += 1
            if writer is not None:
                writer.add_scalar("train/loss", group_loss / max(1, group_rows), global_step)
                writer.add_scalar("train/learning_rate", scheduler.get_last_lr()[0], global_step)
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            seen += group_rows
            if on_step:
                on_step(epoch, group_start // config.grad_accum_steps + 1)
        if progress is not None:
            progress.close()
        pruned_now = 0
        if config.prune_heads and epoch == config.prune_after_epoch:
            pruned_now = _prune_by_importance(model, config, train_ids, train_features, targets, pad_id, device)
            optimizer, scheduler = make_optimizer(global_step)
            # The unpruned epochs' weights do not fit the pruned model: the best is chosen from here on.
            best_score, best_state, best_epoch, stale = None, None, 0, 0
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        epoch_seconds = time.perf_counter() - epoch_started
        epoch_cpu = time.process_time() - epoch_cpu  # all threads of this process: robust on a shared machine
        train_seconds += epoch_seconds
        if distributed:  # each rank summed the loss of its own rows
            total = epoch_loss.to(device)
            dist.all_reduce(total)
            epoch_loss = total.cpu()
        dev_pred = predict_ids(model, dev_ids, config.task, pad_id, device, features=dev_features)
        metrics = task_metrics(config.task, data.dev_targets, dev_pred, config.n_outputs)
        score = metrics[config.metric]
        record = {
            "epoch": epoch,
            "train_loss": float(epoch_loss) / len(train_ids),
            "learning_rate": scheduler.get_last_lr()[0],
            "train_seconds": round(epoch_seconds, 3),
            "train_cpu_seconds": round(epoch_cpu, 3),
            **{f"dev_{k}": v for k, v in metrics.items()},
            **({"pruned_heads": pruned_now} if pruned_now else {}),
        }
        history.append(record)
        if writer is not None:
            writer.add_scalar("train/epoch_loss", record["train_loss"], epoch)
            for name, value in metrics.items():
                writer.add_scalar(f"dev/{name}", value, epoch)
            writer.flush()
        if on_epoch and rank == 0:
            on_epoch(record)
        log.info("epoch %d: %s", epoch, json.dumps(record))
        improved = best_score is None or (
            score > best_score + config.min_delta if higher_better else score < best_score - config.min_delta
        )
        if improved:
            best_score, best_epoch, stale = score, epoch, 0
            best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        else:
            stale += 1
        if state_path is not None:
            if rank == 0:
                state_path.parent.mkdir(parents=True, exist_ok=True)
                _save_state(
                    state_path,
                    {
                        "fingerprint": fingerprint,
                        "epoch": epoch,
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "rng": _rng_state(rng),
                        "history": history,
                        "best_state": best_state,
                        "best_score": best_score,
                        "best_epoch": best_epoch,
                        "stale": stale,
                        "seen": seen,
                        "elapsed": elapsed_before + time.perf_counter() - started,
                        "train_seconds": train_seconds,
                    },
                )
            if distributed:
                dist.barrier()
        if stale > config.patience:
            stopped_early = epoch < config.epochs
            break
    stopped_early = stopped_early or (len(history) < config.epochs)
    if writer is not None:
        writer.close()
    elapsed = elapsed_before + time.perf_counter() - started
    model.load_state_dict(best_state)
    merge_adapters(model)
    model.eval()
    if state_path is not None and rank == 0:
        state_path.unlink(missing_ok=True)
    best = history[best_epoch - 1]
    dev_metrics = {k.removeprefix("dev_"): v for k, v in best.items() if k.startswith("dev_")}
    return TrainResult(
        model=model.to("cpu"),
        tokenizer=tokenizer,
        config=copy.deepcopy(config),
        history=history,
        best_epoch=best_epoch,
        dev_metrics=dev_metrics,
        stopped_early=stopped_early,
        train_seconds=elapsed,
        samples_per_second=seen / train_seconds if train_seconds > 0 else 0.0,
        device=str(device),
        init=init,
        architecture=architecture(model, config.n_outputs, config.fusion_width),
        world_size=world,
        resumed_from_epoch=resumed_from,
    )


def _tensorboard_writer(folder: Path):
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(folder))


def _prune_by_importance(model, config, train_ids, train_features, targets, pad_id, device) -> int:
    """Remove ``config.prune_heads`` heads, least important on the training rows first; returns
    how many went."""

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


def _progress(total: int, epoch: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"epoch {epoch}", unit="batch", leave=False)


# --- the checkpoint -------------------------------------------------------------------------------


def code_revision() -> str | None:
    """The git commit of the code that trained (None outside a git checkout)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


def save_training_curve(history: list[dict], metric: str, path: Path) -> Path | None:
    """Train loss and the dev metric per epoch as a PNG (None when matplotlib is missing)."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    epochs = [h["epoch"] for h in history]
    figure = Figure(figsize=(6, 3.2), dpi=100)
    loss_axis = figure.add_subplot(1, 1, 1)
    loss_axis.plot(epochs, [h["train_loss"] for h in history], "o-", color="tab:blue", label="train loss")
    loss_axis.set_xlabel("epoch")
    loss_axis.set_ylabel("train loss", color="tab:blue")
    metric_axis = loss_axis.twinx()
    metric_axis.plot(epochs, [h[f"dev_{metric}"] for h in history], "s--", color="tab:orange", label=f"dev {metric}")
    metric_axis.set_ylabel(f"dev {metric}", color="tab:orange")
    figure.suptitle("training curve")
    figure.tight_layout()
    figure.savefig(path)
    return path


def save_checkpoint(result: TrainResult, folder: Path, lineage: dict, extra_metrics: dict | None = None) -> Path:
    """Write a self-describing checkpoint folder: ``model.safetensors``, ``config.json``, the
    tokenizer files, ``refit.json`` and ``training_curve.png``."""
    import transformers

    folder = Path(folder)
    save_model_files(result.model, result.tokenizer, folder)
    save_training_curve(result.history, result.config.metric, folder / CURVE_FILE)
    versions = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    if result.config.strategy == "lora":
        import peft

        versions["peft"] = peft.__version__
    meta = {
        "format": 2,
        "version": lineage.get("version"),
        "task": result.config.task,
        "labels": result.config.labels if result.config.task == "classification" else None,
        "output": "sigmoid score in [0,1]" if result.config.task == "regression" else "softmax over labels",
        "max_length": result.config.max_length,
        "architecture": result.architecture,
        "features": result.model.schema.to_dict(),
        "train_config": asdict(result.config),
        "history": result.history,
        "best_epoch": result.best_epoch,
        "stopped_early": result.stopped_early,
        "metrics": {"dev": result.dev_metrics, **(extra_metrics or {})},
        "training": {
            "seconds": round(result.train_seconds, 3),
            "samples_per_second": round(result.samples_per_second, 2),
            "device": result.device,
            "world_size": result.world_size,
        },
        "lineage": {
            **lineage,
            "init": result.init,
            "seed": result.config.seed,
            "code_revision": code_revision(),
            "versions": versions,
        },
    }
    (folder / METADATA).write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
    return folder
