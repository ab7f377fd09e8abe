"""The training recipe: what ``REFIT_RECIPE=auto`` decides from the data, and why.

A plain function of the settings and the training rows. Every choice a user pinned by hand
(``REFIT_EPOCHS``, ``REFIT_PATIENCE``, ``REFIT_LEARNING_RATE``, ``REFIT_CLASS_WEIGHTS``) is kept
as given; the others follow the data:

- **Steps, not epochs.** A run aims at about ``TARGET_STEPS`` optimizer steps, so 300 reviews get
  many short epochs and 30,000 get few long ones; between ``MIN_EPOCHS`` and ``MAX_EPOCHS``.
  Early stopping watches the validation fold with a patience of ``PATIENCE`` epochs, so it can
  actually stop, and the best epoch's weights are kept.
- **Class imbalance**: in classification, class weights the square root of balanced ones
  (``sqrt``), since the gate and early stopping judge macro-F1. Fully balanced weights gave up
  0.046 macro-F1 on Yelp's 1,049 training rows (classes 68/17/15%) and won 0.010 on Amazon's
  7,182 (88/7/4%); the square root was within 0.010 of the best on both, and above no weights on
  both (``SQRT_CLASS_WEIGHTS_WHY``).
- **A learning rate per strategy**: a full fine-tune and a partial freeze move the whole encoder
  (5e-5); LoRA trains small adapters from zero (5e-4); a frozen encoder trains the head alone (1e-3).
- **A bounded retrain on CPU**: a warm-started retrain trains on the rows new since the champion
  plus as many older ones replayed (``REFIT_REPLAY_FRACTION`` unset → 1.0), not on the whole
  history every time.

``REFIT_RECIPE=manual`` gives the fixed defaults of earlier releases (3 epochs, patience 1, 5e-5,
no class weights). The recipe is saved in the checkpoint and printed on the model card.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from refit.core.settings import Settings

TARGET_STEPS = 150
MIN_EPOCHS, MAX_EPOCHS = 3, 12
PATIENCE = 2
LEARNING_RATES = {"full": 5e-5, "freeze": 5e-5, "freeze_all": 1e-3, "lora": 5e-4}
MANUAL = {"epochs": 3, "patience": 1, "learning_rate": 5e-5, "class_weights": "none"}
CPU_REPLAY_FRACTION = 1.0
# Measured through the real loop on the later test rows of the two real sets (bench/quality_bench.py,
# classification, one run each, 2 cores): macro-F1 with none / sqrt / balanced class weights was
# 0.7070 / 0.7244 / 0.6782 on Yelp (1,049 rows, classes 68/17/15%) and 0.6109 / 0.6196 / 0.6292 on
# Amazon (7,182 rows, 88/7/4%). Balanced weights over-predict the small classes when they are not
# that small; the square root lifts them without that cost.
SQRT_CLASS_WEIGHTS_WHY = "the square root of balanced weights: the small classes count, the large one is not given up"
# The head starts from random weights (a gated MLP when behaviour features are fused): at the
# encoder's 5e-5 it barely moves in a few hundred steps. It learns at up to HEAD_LR_FACTOR times
# the encoder's rate, never above HEAD_LR_CAP.
HEAD_LR_FACTOR, HEAD_LR_CAP = 20.0, 1e-3


def replay_fraction(settings: Settings, on_cpu: bool, warm: bool) -> float | None:
    """The replay share of a warm-started retrain: REFIT_REPLAY_FRACTION, or under the auto recipe
    on a CPU ``CPU_REPLAY_FRACTION``; None trains on the whole history."""
    if settings.replay_fraction is not None:
        return settings.replay_fraction
    return CPU_REPLAY_FRACTION if settings.recipe == "auto" and on_cpu and warm else None


@dataclass(frozen=True)
class Recipe:
    """The choices of one run and the reason for each (what the checkpoint records)."""

    name: str
    epochs: int
    patience: int
    learning_rate: float
    class_weights: str
    replay_fraction: float | None
    budget_seconds: float | None
    blend: bool
    head_lr_factor: float
    reasons: dict

    def as_dict(self) -> dict:
        return asdict(self)


def decide(
    settings: Settings,
    n_train: int,
    train_targets: np.ndarray | None = None,
    n_encoder_layers: int | None = None,
    on_cpu: bool = True,
    warm: bool = False,
) -> Recipe:
    """The recipe for ``n_train`` training rows (after the validation fold is held out).

    Args:
        settings: refit's settings; a choice set there (not None) is kept as pinned.
        n_train: training rows the model steps through.
        train_targets: the label indices, for the reasons (class balance).
        n_encoder_layers: the base model's layer count (a freeze of all of them trains the head only).
        on_cpu: training runs on a CPU (the retrain window is bounded).
        warm: the run warm-starts from the champion.

    Returns:
        The recipe: each choice, and the reason for it.
    """
    choices = _Choices(settings)
    steps_per_epoch = max(1, math.ceil(math.ceil(n_train / settings.batch_size) / settings.grad_accum_steps))
    wanted = min(MAX_EPOCHS, max(MIN_EPOCHS, math.ceil(TARGET_STEPS / steps_per_epoch)))
    why = f"about {TARGET_STEPS} steps at {steps_per_epoch} steps per epoch ({n_train} rows)"
    epochs = choices.pick("epochs", wanted, why)
    patience = choices.pick("patience", PATIENCE, f"stop after {PATIENCE} epochs without a better validation score")
    strategy = settings.strategy
    if strategy == "freeze" and n_encoder_layers is not None and settings.freeze_layers >= n_encoder_layers:
        strategy = "freeze_all"
    learning_rate = choices.pick("learning_rate", LEARNING_RATES[strategy], f"the rate for strategy {strategy}")
    class_weights = _class_weights(settings, train_targets, choices)
    replay = replay_fraction(settings, on_cpu, warm)
    if replay is not None and settings.replay_fraction is None:
        choices.reasons["replay_fraction"] = "a CPU retrain trains on the new rows plus as many older ones"
    budget = settings.train_budget_minutes * 60 if settings.train_budget_minutes else None
    head_lr_factor = max(1.0, min(HEAD_LR_FACTOR, HEAD_LR_CAP / float(learning_rate))) if choices.auto else 1.0
    if head_lr_factor > 1:
        choices.reasons["head_lr_factor"] = f"the fresh head learns at {head_lr_factor * float(learning_rate):.0e}"
    reasons = choices.reasons
    return Recipe(
        name=settings.recipe,
        epochs=int(epochs),
        patience=int(patience),
        learning_rate=float(learning_rate),
        class_weights=class_weights,
        replay_fraction=replay,
        budget_seconds=budget,
        blend=settings.blend_text_baseline,
        head_lr_factor=head_lr_factor,
        reasons=reasons,
    )


class _Choices:
    """The recipe's choices as they are made, each with its reason: a setting pinned by hand wins,
    then the manual recipe's default (REFIT_RECIPE=manual), then the automatic choice."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.auto = settings.recipe == "auto"
        self.reasons: dict[str, str] = {}

    def pick(self, name: str, automatic, why: str):
        pinned = getattr(self.settings, name)
        if pinned is not None:
            self.reasons[name] = "pinned"
            return pinned
        if not self.auto:
            self.reasons[name] = "manual recipe default"
            return MANUAL[name]
        self.reasons[name] = why
        return automatic


def _class_weights(settings: Settings, train_targets: np.ndarray | None, choices: _Choices) -> str:
    """Square-root balanced class weights for classification (the reason gives the class shares);
    for regression, the setting or none."""
    if settings.task != "classification":
        return settings.class_weights or "none"
    balance = ""
    if train_targets is not None and len(train_targets):
        counts = np.bincount(np.asarray(train_targets, dtype=int), minlength=len(settings.labels))
        balance = " (class shares " + ", ".join(f"{c / counts.sum():.0%}" for c in counts) + ")"
    why = f"the gate and early stopping judge macro-F1; {SQRT_CLASS_WEIGHTS_WHY}{balance}"
    return choices.pick("class_weights", "sqrt", why)
