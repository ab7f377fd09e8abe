"""What decides a training run and what it returns: ``TrainConfig``, ``TrainData``, ``TrainResult``.

The config is validated on construction (task, loss, strategy, defences, compression) and saved
whole in the checkpoint; the data's fingerprint ties a resumable state to the rows it was made on.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from refit.core.settings import DEFAULT_LABELS, STRATEGIES, TASKS, Strategy, Task  # one definition, shared
from refit.models.adversarial import METHODS as ADVERSARIAL
from refit.models.augment import AugmentConfig
from refit.models.fusion import SatisfactionModel
from refit.models.metrics import DEFAULT_METRIC, DIRECTION
from refit.models.paths import ATTENTIONS, PRECISIONS


@dataclass
class TrainConfig:
    """Everything that decides a training run; saved in the checkpoint."""

    task: Task = "regression"
    labels: list[str] = field(default_factory=lambda: list(DEFAULT_LABELS))
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
    strategy: Strategy = "full"
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
    attention: str = "auto"  # auto | encoder | padded | packed: how BERT runs (models/unpad.py, models/paths.py)
    precision: str = "auto"  # auto | fp32 | bf16 autocast (models/paths.py)
    path_cache: str | None = None  # the machine's file of measured attention layouts (models/paths.py)
    head_lr_factor: float = 1.0  # the head's learning rate is this times learning_rate
    budget_seconds: float | None = None  # training stops here with the best weights so far
    recipe: dict = field(default_factory=dict)  # what decided the choices above (refit.training.recipe)
    # --- defences and compression ------------------------------------------------
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
        if self.task not in TASKS:
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
            if self.class_weights not in ("none", "balanced", "sqrt"):
                raise ValueError(f"class_weights must be none, balanced, sqrt or a list, not {self.class_weights!r}")
        elif len(self.class_weights) != len(self.labels):
            raise ValueError(f"class_weights has {len(self.class_weights)} values for {len(self.labels)} labels")
        _ = self.augmentation  # validates the rates
        if self.attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {', '.join(ATTENTIONS)}, not {self.attention!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {self.precision!r}")
        if self.adversarial not in ADVERSARIAL:
            raise ValueError(f"adversarial must be one of {', '.join(ADVERSARIAL)}, not {self.adversarial!r}")
        if self.keep_layers is not None and self.keep_layers < 1:
            raise ValueError("keep_layers must be at least 1")
        if self.budget_seconds is not None and self.budget_seconds <= 0:
            raise ValueError("budget_seconds must be positive")
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
    stopped_by: str | None = None  # "patience", "budget", or None when every epoch ran
    path: dict = field(default_factory=dict)  # the attention layout and precision (models/paths.py)
