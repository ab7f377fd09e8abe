"""Training the challenger: no retries, and no cache across runs, by design."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

from prefect import get_run_logger, task

from refit.core.settings import Settings
from refit.data.db import engine_for
from refit.data.devset import dev_rows, ensure_devset
from refit.data.snapshots import Snapshot, SplitConfig, features_frame, get_snapshot, snapshot_rows
from refit.models.checkpoint import METADATA, read_metadata
from refit.models.ensemble import ENSEMBLE_SEED_STRIDE, build_ensemble, member_folders, same_tokenizer
from refit.models.metrics import task_metrics
from refit.models.predict import Predictor
from refit.models.quantize import add_int8_artifact
from refit.models.train import predict_texts, save_checkpoint, train
from refit.registry import checkout, new_version
from refit.tasks import RESUMABLE
from refit.training.modeling import score, train_config, training_data


@dataclass
class Challenger:
    version: str
    folder: Path
    dev_metrics: dict
    best_epoch: int
    epochs_run: int
    train_rows: int
    samples_per_second: float


# No retries: a failed training is a result to look at, not to repeat. Cached only within one flow
# run, so that a retried run resumes after a finished training.
@task(name="train-challenger", cache_policy=RESUMABLE, timeout_seconds=6 * 3600)
def train_challenger(settings: Settings, snapshot: Snapshot, champion: dict | None) -> Challenger:
    logger = get_run_logger()
    engine = engine_for(settings)
    split = SplitConfig.from_settings(settings)
    rows = snapshot_rows(engine, snapshot, split)
    devset = ensure_devset(engine, split, snapshot.watermark_to, "initial: first training")
    champion_folder, champion_watermark = None, None
    if champion is not None and settings.warm_start:
        champion_folder = checkout(settings, champion["version"])
        if champion.get("snapshot_id") is not None:
            champion_watermark = get_snapshot(engine, champion["snapshot_id"]).watermark_to
    data = training_data(
        rows,
        settings.task,
        settings.labels,
        settings.max_train_rows,
        settings.retention_days,
        dev=dev_rows(engine, devset, split),
        new_after=champion_watermark,
        replay_fraction=settings.replay_fraction,
        seed=settings.seed,
    )
    config = train_config(settings, init_from=champion_folder)
    version = new_version()
    folder = Path(settings.work_dir) / "checkpoints" / version
    lineage = {
        "version": version,
        "base_model": settings.base_model,
        "parent_version": champion["version"] if champion else None,
        "snapshot_id": snapshot.id,
        "snapshot_hash": snapshot.content_hash,
        "watermark_from": snapshot.watermark_from,
        "watermark_to": snapshot.watermark_to,
        "train_rows": len(data.train_texts),
        "dev_set": devset.version,
    }
    test = rows[rows["split"] == "test"]
    # --- defences and compression (issue 10): K seeds, or this run plus previous champions
    ensemble = settings.ensemble_size > 1
    runs = settings.ensemble_size if ensemble and settings.ensemble_source == "seeds" else 1
    members, results = [], []
    for i in range(runs):
        member_config = replace(config, seed=config.seed + ENSEMBLE_SEED_STRIDE * i)
        target = folder.parent / f"{version}-members" / str(i) if ensemble else folder
        logger.info(
            "training %s%s on %d rows (dev %d) from %s",
            version,
            f" member {i} (seed {member_config.seed})" if ensemble else "",
            len(data.train_texts),
            len(data.dev_texts),
            config.init_from or config.base_model,
        )
        results.append(_train_and_save(settings, member_config, data, test, target, lineage))
        members.append(target)
    if ensemble and settings.ensemble_source == "champions":
        members += previous_champion_folders(settings, engine, settings.ensemble_size - 1, like=members[0])
    result = results[0]
    dev_metrics = result.dev_metrics
    if len(members) > 1:
        dev_metrics = _build_ensemble(settings, members, folder, lineage, data, test)
        logger.info("ensemble of %d models: dev %s", len(members), dev_metrics)
    elif members[0] != folder:
        shutil.move(str(members[0]), folder)  # no previous champion to join: a single model
    if settings.publish_int8:
        record = add_int8_artifact(
            folder, data.dev_texts, data.dev_targets, data.dev_features, settings.serve_quantize_tolerance
        )
        logger.info(
            "int8 artifact: largest dev difference %.4f (tolerance %.4f)", record["max_abs_diff"], record["tolerance"]
        )
    return Challenger(
        version=version,
        folder=folder,
        dev_metrics=dev_metrics,
        best_epoch=result.best_epoch,
        epochs_run=len(result.history),
        train_rows=len(data.train_texts),
        samples_per_second=result.samples_per_second,
    )


def _train_and_save(settings: Settings, config, data, test, folder: Path, lineage: dict):
    """Train one model, score it on the test rows, and write its checkpoint (TensorBoard events inside)."""
    logger = get_run_logger()
    tensorboard_dir = folder / "tensorboard" if settings.tensorboard else None
    result = train(
        config, data, on_epoch=lambda record: logger.info("epoch %s", record), tensorboard_dir=tensorboard_dir
    )
    logger.info(
        "trained on %s at %.1f samples/s; best epoch %d; start: %s",
        result.device,
        result.samples_per_second,
        result.best_epoch,
        result.init,
    )
    extra_metrics = {}
    if len(test):
        texts, features = test["text"].tolist(), features_frame(test)
        prediction = predict_texts(result.model, result.tokenizer, texts, features, config.task, config.max_length)
        extra_metrics["test"] = score(prediction, test, settings.task, settings.labels)
    save_checkpoint(result, folder, lineage=lineage, extra_metrics=extra_metrics)
    return result


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
    (folder / METADATA).write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
    return metrics["dev"]


def previous_champion_folders(settings: Settings, engine, n: int, like: Path) -> list[Path]:
    """Up to ``n`` model folders of the most recent previous champions (an ensemble champion gives
    its members), skipping any whose tokenizer differs from ``like``'s."""
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
