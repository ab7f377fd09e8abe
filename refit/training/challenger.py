"""What a challenger is, and how one is trained in this process: the data it trains on, its seed
members, warm start, ensemble, blend and int8 copy, as plain functions (no Prefect).

``tasks/training.py`` wraps :func:`train_challenger` in a task; ``refit ablate`` and the benchmarks
call the same functions. Running it in a child process, or in data-parallel processes under
``torchrun``, is :mod:`refit.training.launch`'s.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd

from refit.core.settings import Settings
from refit.data.db import engine_for
from refit.data.devset import DevSet, devset_for
from refit.data.feature_types import feature_types_for
from refit.data.schema import schema_types
from refit.data.snapshots import Snapshot, SplitConfig, features_frame, get_snapshot, labelled, snapshot_rows
from refit.models.checkpoint import read_metadata, write_metadata
from refit.models.config import TrainConfig, TrainData
from refit.models.dev_sample import write_dev_sample
from refit.models.distributed import is_main_rank
from refit.models.ensemble import ENSEMBLE_SEED_STRIDE, build_ensemble, member_folders, same_tokenizer
from refit.models.inference import predict_texts
from refit.models.int8_artifact import add_int8_artifact
from refit.models.metrics import task_metrics
from refit.models.optimization import StepPlan
from refit.models.predict import Predictor
from refit.models.saving import save_checkpoint
from refit.models.train import pick_device, train
from refit.registry.versions import checkout, new_version
from refit.training.arms import Arm, fold_prediction, learn_from_unlabelled
from refit.training.blend import attach_text_baseline
from refit.training.modeling import score, train_config, training_data
from refit.training.progress import ProgressLog
from refit.training.recipe import Recipe, decide, replay_fraction
from refit.training.unlabelled import Pool, unlabelled_pool

log = logging.getLogger("refit.training")

# The reason recorded on the first dev set, by whichever of a training and its launcher creates it.
FIRST_DEVSET_REASON = "initial: first training"


@dataclass
class Challenger:
    """A trained challenger, before the gate judges it.

    Attributes:
        version: its version name.
        folder: its checkpoint folder (weights, tokenizer, metadata, manifest-ready).
        dev_metrics: its metrics on the rows it stopped early on (a blend's or an ensemble's
            when it is one).
        best_epoch: the epoch whose weights it kept.
        epochs_run: the epochs it trained.
        train_rows: the rows it trained on.
        samples_per_second: the training speed.
    """

    version: str
    folder: Path
    dev_metrics: dict
    best_epoch: int
    epochs_run: int
    train_rows: int
    samples_per_second: float
    train_seconds: float = 0.0  # wall time of the training itself (every member), not of the whole challenger
    stopped_by: str | None = None  # "patience" or "budget" when training ended before its last epoch
    unlabelled: dict | None = None  # what the run tried with its unlabelled rows, and what it kept


def member_seeds(seed: int, size: int) -> list[int]:
    """The seeds of an ensemble's members.

    Args:
        seed: the first member's seed.
        size: how many members.

    Returns:
        ``seed``, then ``seed + ENSEMBLE_SEED_STRIDE``, and so on: ``size`` seeds.
    """
    return [seed + ENSEMBLE_SEED_STRIDE * i for i in range(size)]


def train_seed_members(config: TrainConfig, size: int, fit: Callable[[int, TrainConfig], object]) -> list:
    """Train the members of a seed ensemble (one model when ``size`` is 1), one ``fit`` call each.

    The one loop over member seeds that a retrain and ``refit ablate`` share.

    Args:
        config: the first member's config; member ``i`` gets it at seed ``member_seeds(...)[i]``.
        size: how many members.
        fit: trains (or, in the ablation, reuses) member ``i`` with its config: ``fit(i, config)``.

    Returns:
        What ``fit`` returned for each member, in member order.
    """
    return [fit(i, replace(config, seed=seed)) for i, seed in enumerate(member_seeds(config.seed, size))]


def train_challenger(
    settings: Settings,
    snapshot: Snapshot,
    champion: dict | None,
    logger: logging.Logger | None = None,
    version: str | None = None,
) -> Challenger:
    """Train a challenger on ``snapshot``: warm-started from ``champion`` when REFIT_WARM_START,
    REFIT_ENSEMBLE_SIZE seed members or previous champions, and an int8 copy when REFIT_PUBLISH_INT8.

    Args:
        settings: refit's settings (database, store, training).
        snapshot: the snapshot to train on.
        champion: the champion's registry row, or None before the first promotion.
        logger: where progress goes (the task passes Prefect's run logger).
        version: the challenger's version (default: a new one). The ranks of a data-parallel run
            (under torchrun) share the one their launcher picked; only rank 0 writes the checkpoint.

    Returns:
        The challenger: its version, checkpoint folder, dev metrics and training figures.
    """
    logger = logger or log
    engine = engine_for(settings)
    plan = plan_training(settings, engine, snapshot, champion, logger)
    version = version or new_version()
    folder = Path(settings.work_dir) / "checkpoints" / version
    lineage = _lineage(settings, snapshot, champion, version, plan)
    members, results = _train_members(settings, plan, folder, lineage, logger)
    if not is_main_rank():  # the other ranks of a data-parallel run only help train: rank 0 writes
        return _other_rank_challenger(version, folder, results, len(plan.data.train_texts))
    result = results[0]
    ensemble_metrics = _gather_members(settings, engine, members, folder, lineage, plan, logger)
    train_rows, unlabelled = len(plan.data.train_texts), None
    if plan.pool is not None:
        result, train_rows, unlabelled = _unlabelled(settings, plan, champion, folder, lineage, result, logger)
    dev_metrics = result.dev_metrics if ensemble_metrics is None else ensemble_metrics
    if plan.recipe.blend:
        dev_metrics = _blend(settings, folder, plan, logger)
    _add_serving_files(settings, folder, plan, logger)
    return Challenger(
        version=version,
        folder=folder,
        dev_metrics=dev_metrics,
        best_epoch=result.best_epoch,
        epochs_run=len(result.history),
        train_rows=train_rows,
        samples_per_second=result.samples_per_second,
        train_seconds=round(sum(r.train_seconds for r in results), 2),
        stopped_by=result.stopped_by,
        unlabelled=unlabelled,
    )


def _unlabelled(
    settings: Settings, plan: TrainingPlan, champion: dict | None, folder: Path, lineage: dict, result, logger
) -> tuple[object, int, dict]:
    """Learn from the snapshot's unlabelled rows where the recipe may and the fold says it pays
    (refit.training.arms); returns the kept model's training result, its training rows, and the
    record of what was tried (also written into the checkpoint)."""
    pool = plan.pool
    if not pool.usable or plan.pool_note:
        record = {"pool": pool.summary(), "chosen": ["plain"], "arms": [], "why": plan.pool_note or pool.left_out}
        if pool.seen:
            logger.info("unlabelled rows: %d, not used: %s", pool.seen, record["why"])
        meta = read_metadata(folder)
        meta["unlabelled"] = record
        write_metadata(folder, meta)
        return result, len(plan.data.train_texts), record
    logger.info(
        "unlabelled rows: %d in the pool (%d outside the training split or the fold, %d repeats dropped)",
        len(pool.rows),
        pool.outside_train,
        pool.repeats,
    )

    def fit(config: TrainConfig, data: TrainData, target: Path, arm_lineage: dict):
        return _train_and_save(settings, config, data, plan.test, target, arm_lineage, logger)

    teacher = None
    if champion is not None:
        teacher = Path(plan.config.init_from) if plan.config.init_from else checkout(settings, champion["version"])
    first = Arm("plain", folder, result, plan.config, plan.data, fold_prediction(folder, plan.data), {})
    best, record = learn_from_unlabelled(settings, pool, first, fit, teacher, logger)
    return best.result, len(best.data.train_texts), record


@dataclass
class TrainingPlan:
    """What a challenger trains on and how, decided before anything trains.

    Attributes:
        data: the training rows and the rows it stops early on (texts, targets, features).
        test: the snapshot's test rows (scored, never trained on).
        devset: the gate's dev set (created with the first training).
        recipe: the training recipe's choices for this data, and why.
        config: the trainer's config, warm start and feature types included.
        pool: the snapshot's unlabelled rows a run may learn from (None when the recipe never
            looks at them: no unlabelled row, or every arm off).
        pool_note: why the pool is not used by this run even when it is usable (an ensemble, a
            data-parallel run), or None.
    """

    data: TrainData
    test: pd.DataFrame
    devset: DevSet
    recipe: Recipe
    config: TrainConfig
    pool: Pool | None = None
    pool_note: str | None = None


def plan_training(
    settings: Settings, engine, snapshot: Snapshot, champion: dict | None, logger: logging.Logger
) -> TrainingPlan:
    """Read the snapshot's rows and decide the challenger's data, recipe and trainer config.

    Args:
        settings: refit's settings.
        engine: the database the snapshot, the dev set and the feature schema are in.
        snapshot: the snapshot to train on.
        champion: the champion's registry row (a warm start's origin), or None.
        logger: where the recipe's choices and the features go.

    Returns:
        The plan :func:`train_challenger` trains by.
    """
    split = SplitConfig.from_settings(settings)
    rows = snapshot_rows(engine, snapshot, split)
    devset = devset_for(engine, split, snapshot, FIRST_DEVSET_REASON, grow=settings.devset_grow)
    champion_folder, champion_watermark = _warm_start(settings, engine, champion)
    on_cpu = pick_device(settings.device).type == "cpu"
    warm = champion_folder is not None
    pool = _pool(settings, rows, split)
    note = None
    if settings.ensemble_size > 1 or settings.train_processes > 1:
        note = "an ensemble or a data-parallel run trains on the labelled rows alone"
    data = training_data(
        rows,
        settings.task,
        settings.labels,
        settings.max_train_rows,
        settings.retention_days,
        new_after=champion_watermark,
        replay_fraction=replay_fraction(settings, on_cpu, warm=warm),
        seed=settings.seed,
        val_fraction=settings.val_fraction,
        fold_by_id=pool is not None and pool.usable and note is None,
        val_max_rows=settings.val_max_rows,
    )
    recipe = decide(settings, len(data.train_texts), data.train_targets, on_cpu=on_cpu, warm=warm)
    logger.info("recipe %s: %s", recipe.name, json.dumps(recipe.reasons))
    config = train_config(settings, init_from=champion_folder, recipe=recipe)
    # The recorded feature schema's types, not a guess from these rows.
    types = feature_types_for(settings, data.train_features, schema_types(engine))
    config = replace(config, feature_types=types)
    logger.info("behaviour features: %s", json.dumps(config.feature_types) if config.feature_types else "none")
    test = rows[rows["split"] == "test"]
    return TrainingPlan(data=data, test=test, devset=devset, recipe=recipe, config=config, pool=pool, pool_note=note)


def _pool(settings: Settings, rows: pd.DataFrame, split: SplitConfig) -> Pool | None:
    """The unlabelled rows this run may learn from, checked; None when it never looks at them
    (no unlabelled row, every arm off, or the manual recipe without an ``on``)."""
    wanted = {settings.adapt, settings.setfit, settings.self_train}
    if wanted == {"off"} or (settings.recipe != "auto" and "on" not in wanted):
        return None
    has_target = labelled(rows)
    if has_target.all():
        return None
    train_texts = rows.loc[(rows["split"] == "train") & has_target, "text"].tolist()
    return unlabelled_pool(rows, split, settings.val_fraction, train_texts)


def _warm_start(settings: Settings, engine, champion: dict | None) -> tuple[Path | None, int | None]:
    """The champion's local folder and its snapshot's watermark, for a warm start (None, None without)."""
    if champion is None or not settings.warm_start:
        return None, None
    folder = checkout(settings, champion["version"])
    watermark = None
    if champion.get("snapshot_id") is not None:
        watermark = get_snapshot(engine, champion["snapshot_id"]).watermark_to
    return folder, watermark


def _lineage(settings: Settings, snapshot: Snapshot, champion: dict | None, version: str, plan: TrainingPlan) -> dict:
    """Where the challenger comes from, as its checkpoint records it."""
    return {
        "version": version,
        "base_model": settings.base_model,
        "parent_version": champion["version"] if champion else None,
        "snapshot_id": snapshot.id,
        "snapshot_hash": snapshot.content_hash,
        "watermark_from": snapshot.watermark_from,
        "watermark_to": snapshot.watermark_to,
        "train_rows": len(plan.data.train_texts),
        "dev_set": plan.devset.version,
    }


def _train_members(
    settings: Settings, plan: TrainingPlan, folder: Path, lineage: dict, logger: logging.Logger
) -> tuple[list[Path], list]:
    """Train the challenger's model, or the seed members of its ensemble (each in a folder of its
    own beside ``folder``); returns the members' folders and their training results."""
    # Defences and compression: K seeds, or this run plus previous champions.
    ensemble = settings.ensemble_size > 1
    runs = settings.ensemble_size if ensemble and settings.ensemble_source == "seeds" else 1
    version, data, config = lineage["version"], plan.data, plan.config
    members: list[Path] = []

    def fit(i: int, member_config: TrainConfig):
        target = folder.parent / f"{version}-members" / str(i) if ensemble else folder
        logger.info(
            "training %s%s on %d rows (dev %d) from %s",
            version,
            f" member {i} (seed {member_config.seed})" if ensemble else "",
            len(data.train_texts),
            len(data.dev_texts),
            config.init_from or config.base_model,
        )
        members.append(target)
        return _train_and_save(settings, member_config, data, plan.test, target, lineage, logger)

    results = train_seed_members(config, runs, fit)
    return members, results


def _gather_members(
    settings: Settings, engine, members: list[Path], folder: Path, lineage: dict, plan: TrainingPlan, logger
) -> dict | None:
    """Put the challenger in ``folder``: an ensemble of the trained members (and, with
    REFIT_ENSEMBLE_SOURCE=champions, previous champions), or the one model. Returns the
    ensemble's dev metrics, or None for a single model (its own stand)."""
    if settings.ensemble_size > 1 and settings.ensemble_source == "champions":
        members += previous_champion_folders(settings, engine, settings.ensemble_size - 1, like=members[0])
    if len(members) > 1:
        dev_metrics = _build_ensemble(settings, members, folder, lineage, plan.data, plan.test)
        logger.info("ensemble of %d models: dev %s", len(members), dev_metrics)
        return dev_metrics
    if members[0] != folder:
        shutil.move(str(members[0]), folder)  # no previous champion to join: a single model
    return None


def _blend(settings: Settings, folder: Path, plan: TrainingPlan, logger: logging.Logger) -> dict:
    """Blend the checkpoint with TF-IDF (the recipe asked for it); returns the blend's dev metrics."""
    n_labels = 1 if settings.task == "regression" else len(settings.labels)
    dev_metrics = attach_text_baseline(folder, plan.data, settings.task, n_labels, plan.config.metric, settings.seed)
    blend = read_metadata(folder)["blend"]
    logger.info(
        "blend with TF-IDF: BERT weight %.2f (%s: %s), on the validation fold %s",
        blend["bert_weight"],
        blend["kind"],
        blend["why"],
        json.dumps(blend["fold"]),
    )
    if len(plan.test):
        _rescore_test(folder, plan.test, settings)
    return dev_metrics


def _add_serving_files(settings: Settings, folder: Path, plan: TrainingPlan, logger: logging.Logger) -> None:
    """Write what serving reads beside the weights: a sample of the dev rows (serving's int8 check
    runs on it, models/dev_sample.py), and the int8 copy when REFIT_PUBLISH_INT8."""
    data = plan.data
    write_dev_sample(folder, data.dev_texts, data.dev_features)
    if settings.publish_int8:
        record = add_int8_artifact(
            folder, data.dev_texts, data.dev_targets, data.dev_features, settings.serve_quantize_tolerance
        )
        logger.info(
            "int8 artifact: largest dev difference %.4f (tolerance %.4f)", record["max_abs_diff"], record["tolerance"]
        )


def epoch_line(record: dict) -> str:
    """An epoch's record as a person reads it: ``epoch 2: train loss 0.0061, dev mse 0.0213, ... (41.2 s)``.

    Args:
        record: the trainer's per-epoch record (``epoch``, ``train_loss``, ``dev_*``, ``train_seconds``...).

    Returns:
        The line.
    """
    parts = [f"train loss {record['train_loss']:.4f}"]
    parts += [f"dev {k[4:]} {v:.4f}" for k, v in record.items() if k.startswith("dev_") and isinstance(v, float)]
    parts.append(f"learning rate {record['learning_rate']:.2e}")
    extra = "; stopped at the budget" if record.get("stopped_at_budget") else ""
    return f"epoch {record['epoch']}: {', '.join(parts)} ({record['train_seconds']:.1f} s){extra}"


def _train_and_save(settings: Settings, config, data, test, folder: Path, lineage: dict, logger: logging.Logger):
    """Train one model, score it on the test rows, and write its checkpoint (TensorBoard events inside)."""
    tensorboard_dir = folder / "tensorboard" if settings.tensorboard else None
    plan = StepPlan.of(config, len(data.train_texts))
    progress = ProgressLog(logger, plan.steps_per_epoch, config.epochs) if is_main_rank() else None
    result = train(
        config,
        data,
        on_epoch=lambda record: logger.info("%s", epoch_line(record)),
        on_step=progress.step if progress else None,
        tensorboard_dir=tensorboard_dir,
    )
    logger.info(
        "trained on %s at %.1f samples/s; best epoch %d; start: %s",
        result.device,
        result.samples_per_second,
        result.best_epoch,
        result.init,
    )
    if not is_main_rank():  # under torchrun every rank holds the same model; rank 0 writes it
        return result
    extra_metrics = {}
    if len(test):
        texts, features = test["text"].tolist(), features_frame(test)
        prediction = predict_texts(result.model, result.tokenizer, texts, features, config.task, config.max_length)
        extra_metrics["test"] = score(prediction, test, settings.task, settings.labels)
    save_checkpoint(result, folder, lineage=lineage, extra_metrics=extra_metrics)
    return result


def _rescore_test(folder: Path, test, settings: Settings) -> None:
    """Score the checkpoint as it will be served (blended) on the snapshot's test rows."""
    prediction = Predictor(folder, verify=False).predict(test["text"].tolist(), features_frame(test))
    meta = read_metadata(folder)
    meta.setdefault("metrics", {})["test"] = score(prediction, test, settings.task, settings.labels)
    write_metadata(folder, meta)


def _build_ensemble(settings: Settings, members: list[Path], folder: Path, lineage: dict, data, test) -> dict:
    """Write the ensemble checkpoint and score it as it will be served; returns its dev metrics."""
    build_ensemble(members, folder, lineage)
    predictor = Predictor(folder, verify=False)
    n_outputs = 1 if settings.task == "regression" else len(settings.labels)
    metrics = {
        "dev": task_metrics(
            settings.task, data.dev_targets, predictor.predict(data.dev_texts, data.dev_features), n_outputs
        )
    }
    if len(test):
        metrics["test"] = score(
            predictor.predict(test["text"].tolist(), features_frame(test)), test, settings.task, settings.labels
        )
    meta = read_metadata(folder)
    meta["metrics"] = metrics
    write_metadata(folder, meta)
    return metrics["dev"]


def previous_champion_folders(settings: Settings, engine, n: int, like: Path) -> list[Path]:
    """The model folders of the most recent previous champions, to join a challenger's ensemble.

    Args:
        settings: refit's settings (the store the champions are checked out from).
        engine: the registry's database.
        n: the most folders to return.
        like: a member's folder; a champion whose tokenizer differs from its tokenizer is skipped.

    Returns:
        Up to ``n`` folders, newest champion first; an ensemble champion gives its members.
    """
    from sqlalchemy import text

    with engine.connect() as conn:
        versions = conn.execute(
            text("SELECT version FROM model_versions WHERE promoted_at IS NOT NULL ORDER BY promoted_at DESC")
        ).scalars()
        versions = list(versions)
    out: list[Path] = []
    for version in versions:
        checked = checkout(settings, version)
        meta = read_metadata(checked)
        candidates = member_folders(checked, meta) if meta.get("ensemble") else [checked]
        for candidate in candidates:
            if len(out) < n and same_tokenizer(candidate, like):
                out.append(candidate)
        if len(out) >= n:
            break
    return out


def _other_rank_challenger(version: str, folder: Path, results: list, train_rows: int) -> Challenger:
    """What a rank other than 0 of a data-parallel run knows after training: rank 0 writes and reports."""
    result = results[0]
    return Challenger(
        version=version,
        folder=folder,
        dev_metrics=result.dev_metrics,
        best_epoch=result.best_epoch,
        epochs_run=len(result.history),
        train_rows=train_rows,
        samples_per_second=result.samples_per_second,
        train_seconds=round(sum(r.train_seconds for r in results), 2),
    )
