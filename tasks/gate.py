"""The gate as a task: champion and challenger scored on the same dev rows, in this run."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE

from refit.core.settings import Settings
from refit.data.db import engine_for
from refit.data.devset import dev_periods, dev_rows, devset_for
from refit.data.schema import schema_types
from refit.data.snapshots import Snapshot, SplitConfig, features_frame, get_snapshot, snapshot_rows
from refit.gate.baselines import baseline_predictions
from refit.gate.fallback import first_model_decision
from refit.gate.records import MODEL_CARD, decision_markdown, model_card
from refit.gate.rule import GateDecision, GatePolicy, gate
from refit.gate.slices import known_items, slice_frame
from refit.models.checkpoint import read_metadata
from refit.models.predict import Predictor
from refit.models.text_baseline import TextBaseline, blend_of, has_text_model, write_blend
from refit.registry.versions import checkout
from refit.tasks import RESUMABLE
from refit.training.challenger import Challenger
from refit.training.modeling import targets, training_data


def predict_folder(folder: Path, dev) -> np.ndarray:
    """A checkpoint's predictions on the dev rows, with their behaviour features (its files are
    verified when it loads)."""
    return Predictor(folder).predict(dev["text"].tolist(), features_frame(dev).reset_index(drop=True))


def use_text_model_alone(folder: Path, data, task: str, n_labels: int, reason: str) -> None:
    """Make the checkpoint predict with its TF-IDF model alone (fitting it first when the recipe did
    not blend), recording why."""
    if not has_text_model(folder):
        TextBaseline.fit(task, data.train_texts, data.train_targets, n_labels).save(folder)
    previous = blend_of(read_metadata(folder))
    write_blend(folder, 0.0, fitted_on="first gate", reason=reason, trained_bert_weight=previous["bert_weight"])


@task(name="gate", cache_policy=RESUMABLE, timeout_seconds=3600)
def gate_challenger(
    settings: Settings, snapshot: Snapshot, challenger: Challenger, champion: dict | None
) -> GateDecision:
    """Score the challenger and the champion (or the baselines) on the frozen dev set, and decide."""
    logger = get_run_logger()
    engine = engine_for(settings)
    split = SplitConfig.from_settings(settings)
    devset = devset_for(engine, split, snapshot, "initial: first gate", grow=settings.devset_grow)
    dev = dev_rows(engine, devset, split)
    n_labels = 1 if settings.task == "regression" else len(settings.labels)
    data = None
    if champion is None:
        # Only the first gate reads training rows: the baselines learn from the rows the challenger
        # learned from (its validation fold held out the same way), so its TF-IDF is this one.
        data = training_data(
            snapshot_rows(engine, snapshot, split),
            settings.task,
            settings.labels,
            settings.max_train_rows,
            settings.retention_days,
            seed=settings.seed,
            val_fraction=settings.val_fraction,
        )
        texts = dev["text"].tolist()
        references = baseline_predictions(
            settings.gate_first_baselines, settings.task, data.train_texts, data.train_targets, texts, n_labels
        )
        seen_upto = 0
    else:
        references = {"champion": predict_folder(checkout(settings, champion["version"]), dev)}
        seen_upto = get_snapshot(engine, champion["snapshot_id"]).watermark_to
    args = (
        GatePolicy.from_settings(settings),
        settings.task,
        targets(dev, settings.task, settings.labels),
        predict_folder(challenger.folder, dev),
        references,
        n_labels,
        slice_frame(dev, known_items(engine, seen_upto), settings.gate_slice_features, schema_types(engine)),
    )
    kind = blend_of(read_metadata(challenger.folder))["kind"]
    if champion is None:
        decision, kind = first_model_decision(*args, challenger_kind=kind)
        if decision.fallback == "tfidf":
            use_text_model_alone(challenger.folder, data, settings.task, n_labels, decision.reason)
    else:
        # The rows the champion's period never held decide (REFIT_GATE_RULE=recent); every period
        # is a slice the challenger must not be worse on.
        decision = gate(*args, periods=dev_periods(engine, dev["id"]), recent=(dev["id"] > seen_upto).to_numpy())
    decision = replace(decision, dev_set=devset.version, kind=kind)
    logger.info("gate on dev set v%d (%d rows): %s", devset.version, len(dev), decision.reason)
    markdown = decision_markdown(decision.as_dict(), challenger.version)
    create_markdown_artifact(key="gate-decision", markdown=markdown, description="refit promotion gate")
    return decision


@task(name="model-card", cache_policy=NONE, timeout_seconds=60)
def write_model_card(challenger: Challenger, decision: GateDecision, snapshot: Snapshot) -> str:
    """Write the model card into the checkpoint folder (so it is published and checksummed with it)."""
    card = model_card(challenger.version, read_metadata(challenger.folder), decision.as_dict(), snapshot.as_dict())
    (Path(challenger.folder) / MODEL_CARD).write_text(card)
    create_markdown_artifact(key="model-card", markdown=card, description=f"model card of {challenger.version}")
    return card
