"""Training the challenger: no retries and no caching, by design."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NONE

from models.train import predict_texts, save_checkpoint, train
from refit.db import engine_for
from refit.devset import dev_rows, ensure_devset
from refit.modeling import score, train_config, training_data
from refit.registry import checkout, new_version
from refit.settings import Settings
from refit.snapshots import Snapshot, SplitConfig, features_frame, get_snapshot, snapshot_rows


@dataclass
class Challenger:
    version: str
    folder: Path
    dev_metrics: dict
    best_epoch: int
    epochs_run: int
    train_rows: int
    samples_per_second: float


@task(name="train-challenger", cache_policy=NONE, timeout_seconds=6 * 3600)
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
    logger.info(
        "training %s on %d rows (dev %d) from %s",
        version,
        len(data.train_texts),
        len(data.dev_texts),
        config.init_from or config.base_model,
    )
    result = train(config, data, on_epoch=lambda record: logger.info("epoch %s", record))
    logger.info(
        "trained on %s at %.1f samples/s; best epoch %d; start: %s",
        result.device,
        result.samples_per_second,
        result.best_epoch,
        result.init,
    )
    extra_metrics = {}
    test = rows[rows["split"] == "test"]
    if len(test):
        texts, features = test["text"].tolist(), features_frame(test)
        prediction = predict_texts(result.model, result.tokenizer, texts, features, config.task, config.max_length)
        extra_metrics["test"] = score(prediction, test, settings.task, settings.labels)
    folder = Path(settings.work_dir) / "checkpoints" / version
    save_checkpoint(
        result,
        folder,
        lineage={
            "version": version,
            "base_model": settings.base_model,
            "parent_version": champion["version"] if champion else None,
            "snapshot_id": snapshot.id,
            "snapshot_hash": snapshot.content_hash,
            "watermark_from": snapshot.watermark_from,
            "watermark_to": snapshot.watermark_to,
            "train_rows": len(data.train_texts),
            "dev_set": devset.version,
        },
        extra_metrics=extra_metrics,
    )
    return Challenger(
        version=version,
        folder=folder,
        dev_metrics=result.dev_metrics,
        best_epoch=result.best_epoch,
        epochs_run=len(result.history),
        train_rows=len(data.train_texts),
        samples_per_second=result.samples_per_second,
    )
