"""Learning from unlabelled feedback, chosen by measurement: the recipe's arms, each judged on the
validation fold against the best model so far.

With a usable pool of unlabelled rows (:mod:`refit.training.unlabelled`), after the run's plain
model has trained, the auto recipe tries:

- **adaptation** (``REFIT_ADAPT``): the encoder's masked-language-model pre-training continued on
  the feedback's own text (:mod:`refit.training.adapt`, cached), then fine-tuned as the plain model
  was. On a cold start only: a warm start's encoder is the champion's.
- **SetFit's contrastive stage** (``REFIT_SETFIT``; classification, at most ``REFIT_SETFIT_MAX_ROWS``
  labelled training rows under ``auto``): the encoder tuned on pairs of the labelled training rows
  (:mod:`refit.training.contrastive`), then fine-tuned as the plain model was. On a cold start only.
  It needs no unlabelled row, but is tried with the other arms only: a run with no unlabelled rows
  stays exactly the plain recipe.
- **self-training** (``REFIT_SELF_TRAIN``): the teacher (the champion, or the best model of this
  run on a first run) labels the pool; the rows it is surest of join the training rows
  (:func:`refit.training.unlabelled.pseudo_rows`), and the model trains again from the same start.

An arm replaces the best model only when it beats it on the fold beyond the fold's noise: the
lower end of a paired bootstrap interval (``KEEP_CONFIDENCE``) of its improvement is above zero.
``on`` keeps an arm without asking; ``off`` never tries it. What was tried, with its fold figures,
is recorded in the checkpoint (``refit.json``'s ``unlabelled``) and on the model card. A warm
retrain under ``auto`` does not try again an arm the champion's fold turned down, until the pool
has grown by ``REFIT_ADAPT_REFRESH``.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from refit.core.settings import Settings
from refit.data.snapshots import features_frame
from refit.gate.bootstrap import Interval, paired_bootstrap
from refit.models.checkpoint import read_metadata, write_metadata
from refit.models.config import TrainConfig, TrainData
from refit.models.metrics import task_metrics
from refit.models.predict import Predictor
from refit.models.text_baseline import TextBaseline
from refit.models.train import pick_device
from refit.training.unlabelled import Pool, pseudo_rows

# Masked-LM samples per second of the packaged MiniLM-L6 on a CPU core pair (2 threads, fp32,
# max_length 128, batch 16), measured unloaded on the 2-core reference machine: a 4-minute budget
# then covers about 3,400 texts, a third of one pass over 10,000. Under ``auto``, adaptation is
# tried on a CPU only when the budget covers a whole pass over the corpus at this rate; a GPU
# always tries it. ``REFIT_ADAPT=on`` tries it anywhere.
CPU_ADAPT_SAMPLES_PER_SECOND = 14.0
# SetFit's sentence pairs per second of the packaged MiniLM-L6 on the 2-core reference machine
# (2 threads, fp32, max_length 128, 16 pairs a step), measured on Yelp reviews: its 3-minute budget
# covers about 1,100 pairs, all 20 pairs a row of about 55 rows. Under ``auto``, SetFit's stage is
# tried on a CPU only when the budget covers all of its pairs at this rate (a GPU always tries it, up
# to REFIT_SETFIT_MAX_ROWS): on Yelp's 219 training rows a quarter of its pairs scored 0.04 below the
# plain model on the fold. ``REFIT_SETFIT=on`` tries it anywhere.
CPU_SETFIT_PAIRS_PER_SECOND = 6.4
# The teacher scores at most this many times the pseudo-label cap: enough to choose the surest
# rows among, without scoring a pool of 100,000 to keep 1,000.
SCORED_PER_PSEUDO = 4
KEEP_CONFIDENCE = 0.8  # two-sided: an arm is kept when its improvement's 10th percentile is above 0
RESAMPLES = 1000


def beats_beyond_noise(
    metric: str, y_true: np.ndarray, candidate: np.ndarray, reference: np.ndarray, n_labels: int, seed: int
) -> tuple[Interval, bool]:
    """The candidate's improvement over the reference on the fold, and whether it is beyond the
    fold's noise: the lower end of its paired bootstrap interval (``KEEP_CONFIDENCE``) above zero.
    The rule an arm and the TF-IDF blend (:mod:`refit.training.blend`) are kept by."""
    interval = paired_bootstrap(metric, y_true, candidate, reference, n_labels, RESAMPLES, KEEP_CONFIDENCE, seed)
    return interval, interval.low > 0


# fit(config, data, folder, lineage) trains one model and writes its checkpoint in folder.
Fit = Callable[[TrainConfig, TrainData, Path, dict], object]


@dataclass
class Arm:
    """One trained candidate: where it is, how it was trained, and its fold predictions."""

    name: str
    folder: Path
    result: object
    config: TrainConfig
    data: TrainData
    fold_prediction: np.ndarray
    lineage: dict


def learn_from_unlabelled(
    settings: Settings,
    pool: Pool,
    first: Arm,
    fit: Fit,
    teacher_folder: Path | None,
    logger: logging.Logger,
) -> tuple[Arm, dict]:
    """Try the arms the settings allow on the pool; the best model ends in ``first.folder``.

    Args:
        settings: refit's settings (``adapt``, ``self_train``, their knobs, the seed).
        pool: the unlabelled rows (usable).
        first: the run's plain model, already trained into the challenger's folder.
        fit: trains one model into a folder (the challenger's own training, scoring and saving).
        teacher_folder: the champion's checkpoint, the self-training teacher; None on a first run
            (the best model of this run teaches).
        logger: where each arm's figures go.

    Returns:
        The kept arm (its files in ``first.folder``) and the record of what was tried.
    """
    metric, n_labels = first.config.metric, _n_labels(first.config)
    record: dict = {"pool": pool.summary(), "metric": metric, "keep_confidence": KEEP_CONFIDENCE, "arms": []}
    record["arms"].append(_arm_line(first, metric, n_labels, None, kept=True, why="the plain recipe"))
    best = first
    work = first.folder.parent / f"{first.folder.name}-arms"
    champion_verdicts = _champion_verdicts(teacher_folder)
    for name, mode, trainer in (
        ("adapt", settings.adapt, _adapted),
        ("setfit", settings.setfit, _setfit),
        ("self_train", settings.self_train, _self_trained),
    ):
        if mode == "off":
            record["arms"].append({"arm": name, "tried": False, "why": f"REFIT_{name.upper()}=off"})
            continue
        declined = _declined_by_champion(settings, name, mode, pool, champion_verdicts)
        if declined is not None:
            why, judged_on = declined
            record["arms"].append({"arm": name, "tried": False, "why": why, "declined_on_pool_rows": judged_on})
            logger.info("unlabelled rows, %s: not tried (%s)", name, why)
            continue
        started = time.monotonic()
        arm, why = trainer(settings, pool, best, fit, work / name, teacher_folder, logger)
        if arm is None:
            record["arms"].append({"arm": name, "tried": False, "why": why})
            logger.info("unlabelled rows, %s: not tried (%s)", name, why)
            continue
        interval, beyond = beats_beyond_noise(
            metric, arm.data.dev_targets, arm.fold_prediction, best.fold_prediction, n_labels, settings.seed
        )
        keep = mode == "on" or beyond
        if mode == "on":
            verdict = f"REFIT_{name.upper()}=on"
        else:
            verdict = "beyond the fold's noise" if keep else "within the fold's noise"
        line = _arm_line(arm, metric, n_labels, interval.as_dict(), kept=keep, why=f"{why}; {verdict}")
        line["seconds"] = round(time.monotonic() - started, 1)
        if not keep:
            line["declined_on_pool_rows"] = len(pool.rows)
        record["arms"].append(line)
        logger.info(
            "unlabelled rows, %s: fold %s %.4f against %.4f (improvement %+.4f, %d%% interval %+.4f..%+.4f): %s",
            name,
            metric,
            line["fold"][metric],
            _fold_metrics(best, metric, n_labels)[metric],
            interval.point,
            round(100 * KEEP_CONFIDENCE),
            interval.low,
            interval.high,
            "kept" if keep else "not kept",
        )
        if keep:
            best = arm
    record["chosen"] = [a["arm"] for a in record["arms"] if a.get("kept") and a["arm"] != "plain"] or ["plain"]
    if best is not first:
        shutil.rmtree(first.folder)
        shutil.move(str(best.folder), first.folder)
        best = replace(best, folder=first.folder)
    shutil.rmtree(work, ignore_errors=True)
    meta = read_metadata(best.folder)
    meta["unlabelled"] = record
    meta.setdefault("lineage", {}).update(best.lineage)
    write_metadata(best.folder, meta)
    return best, record


def fold_prediction(folder: Path, data: TrainData) -> np.ndarray:
    """A checkpoint's predictions of the validation fold (its BERT alone: no blend is attached yet)."""
    return Predictor(folder, verify=False).predict(data.dev_texts, data.dev_features)


def _champion_verdicts(champion: Path | None) -> tuple[str, dict[str, int]] | None:
    """The champion's version, and each arm its own run turned down with the pool size it judged it
    on (None without a champion)."""
    if champion is None:
        return None
    meta = read_metadata(champion)
    declined = {
        line["arm"]: int(line["declined_on_pool_rows"])
        for line in meta.get("unlabelled", {}).get("arms", [])
        if line.get("declined_on_pool_rows") is not None
    }
    return _version(meta, champion), declined


def _declined_by_champion(
    settings: Settings, name: str, mode: str, pool: Pool, verdicts: tuple[str, dict[str, int]] | None
) -> tuple[str, int] | None:
    """Why a warm retrain does not try an arm again, and the pool size it was judged on; None to try it.

    Each arm costs a second training. When the champion's own run found, on its fold, that the arm did
    not pay on a pool of N rows, trying it again on about the same pool would pay that cost every
    retrain for the same verdict. Under ``auto`` the verdict stands until the pool has grown by
    ``REFIT_ADAPT_REFRESH`` (a share of N); ``on`` always tries.
    """
    if mode != "auto" or verdicts is None:
        return None
    version, declined = verdicts
    judged_on = declined.get(name)
    if judged_on is None or len(pool.rows) >= judged_on * (1 + settings.adapt_refresh):
        return None
    again = int(np.ceil(judged_on * (1 + settings.adapt_refresh)))
    why = f"champion {version}'s fold found it did not pay on {judged_on} unlabelled rows"
    return f"{why}; tried again once the pool reaches {again} (REFIT_ADAPT_REFRESH)", judged_on


def _version(meta: dict, folder: Path) -> str:
    """A checkpoint's version: its record's, or a checked-out champion's folder name, which is its
    version (a checkpoint records none until it is published)."""
    return meta.get("version") or folder.name


def _adapted(settings, pool, best, fit, folder, teacher_folder, logger) -> tuple[Arm | None, str]:
    """The adaptation arm: the encoder adapted on the training texts and the pool, then fine-tuned."""
    if best.config.init_from:
        return None, "warm-started from the champion, whose encoder this run keeps"
    corpus = list(best.data.train_texts) + pool.texts
    if settings.adapt == "auto" and _on_cpu(settings):
        passes = settings.adapt_budget_minutes * 60 * CPU_ADAPT_SAMPLES_PER_SECOND / len(corpus)
        if passes < 1:
            return None, (
                f"on a CPU the {settings.adapt_budget_minutes:g}-minute budget covers about {passes:.0%} of one pass"
                f" over {len(corpus)} texts (REFIT_ADAPT=on tries it anyway)"
            )
    from refit.training.adapt import adapted_encoder  # torch and transformers' MLM head, only when tried

    adapted = adapted_encoder(settings, best.config.base_model, corpus, logger)
    arm = _fine_tuned_from("adapt", adapted.folder, {"adapted": adapted.lineage()}, best, fit, folder)
    how = "reused the cached adaptation" if adapted.reused else "adapted anew"
    return arm, f"{how} on corpus {adapted.corpus_version} ({adapted.corpus_rows} texts)"


def _setfit(settings, pool, best, fit, folder, teacher_folder, logger) -> tuple[Arm | None, str]:
    """SetFit's arm: the encoder tuned on pairs of the labelled training rows, then fine-tuned."""
    if best.config.task != "classification":
        return None, "contrastive pairs need classes (SetFit has no regression)"
    if best.config.init_from:
        return None, "warm-started from the champion, whose encoder this run keeps"
    rows = len(best.data.train_texts)
    if settings.setfit == "auto" and rows > settings.setfit_max_rows:
        return None, f"{rows} labelled training rows, more than REFIT_SETFIT_MAX_ROWS ({settings.setfit_max_rows})"
    if settings.setfit == "auto" and _on_cpu(settings):
        from refit.training.contrastive import PAIRS_PER_ROW

        covered = settings.setfit_budget_minutes * 60 * CPU_SETFIT_PAIRS_PER_SECOND / (PAIRS_PER_ROW * rows)
        if covered < 1:
            return None, (
                f"on a CPU the {settings.setfit_budget_minutes:g}-minute budget covers about {covered:.0%} of the"
                f" {PAIRS_PER_ROW * rows} pairs of {rows} rows (REFIT_SETFIT=on tries it anyway)"
            )
    from refit.training.contrastive import contrastive_encoder  # torch and transformers, only when tried

    tuned = contrastive_encoder(
        settings,
        best.config.base_model,
        list(best.data.train_texts),
        best.data.train_targets,
        folder.parent / f"{folder.name}-encoder",
        logger,
    )
    arm = _fine_tuned_from("setfit", tuned.folder, {"contrastive": tuned.lineage()}, best, fit, folder)
    record = tuned.record
    return arm, (
        f"the encoder tuned on {record['pairs_trained']} of {record['pairs_planned']} pairs of {rows} rows"
        f" ({record['stopped_by']} ended it)"
    )


def _fine_tuned_from(name: str, encoder: Path, lineage: dict, best: Arm, fit: Fit, folder: Path) -> Arm:
    """An arm fine-tuned as ``best`` was, from another encoder (an adapted or a SetFit-tuned one),
    its lineage recording where that encoder came from."""
    config = replace(best.config, base_model=str(encoder))
    lineage = {**best.lineage, **lineage}
    result = fit(config, best.data, folder, lineage)
    return Arm(name, folder, result, config, best.data, fold_prediction(folder, best.data), lineage)


def _self_trained(settings, pool, best, fit, folder, teacher_folder, logger) -> tuple[Arm | None, str]:
    """The self-training arm: the teacher's surest pseudo-labels added to the training rows."""
    teacher = Predictor(teacher_folder or best.folder, verify=False)
    who = f"champion {_version(teacher.meta, teacher_folder)}" if teacher_folder else f"this run's {best.name} model"
    scored = SCORED_PER_PSEUDO * max(1, int(settings.pseudo_share * len(best.data.train_texts)))
    if len(pool.rows) > scored:  # a seeded sample of a large pool
        pool = replace(pool, rows=pool.rows.sample(n=scored, random_state=settings.seed).reset_index(drop=True))
    prediction = teacher.predict(pool.texts, pool.rows.pipe(_features, best.data))
    uncertainty = None
    data = best.data
    if best.config.task == "regression":
        # Two views of each row: where the BERT and a TF-IDF ridge on the labelled rows disagree
        # least, the score is surest.
        text = TextBaseline.fit("regression", data.train_texts, data.train_targets, 1)
        uncertainty = np.abs(np.asarray(prediction, dtype=float) - np.clip(text.predict(pool.texts), 0, 1))
    pseudo = pseudo_rows(
        pool,
        prediction,
        best.config.task,
        data.train_targets,
        confidence=settings.pseudo_confidence,
        share=settings.pseudo_share,
        uncertainty=uncertainty,
        teacher=who,
    )
    if not pseudo.record["pseudo_rows"]:
        return None, f"the teacher ({who}) was sure of no unlabelled row"
    student = TrainData(
        train_texts=list(data.train_texts) + pseudo.texts,
        train_targets=np.concatenate([data.train_targets, pseudo.targets.astype(data.train_targets.dtype)]),
        dev_texts=data.dev_texts,
        dev_targets=data.dev_targets,
        train_features=_joined(data.train_features, pseudo.features),
        dev_features=data.dev_features,
    )
    lineage = {**best.lineage, "pseudo_labelled": pseudo.record}
    result = fit(best.config, student, folder, lineage)
    arm = Arm("self_train", folder, result, best.config, student, fold_prediction(folder, best.data), lineage)
    return arm, f"{pseudo.record['pseudo_rows']} pseudo-labelled rows from {who}"


def _on_cpu(settings: Settings) -> bool:
    return pick_device(settings.device).type == "cpu"


def _features(rows: pd.DataFrame, data: TrainData) -> pd.DataFrame | None:
    """The pool rows' behaviour features, as the training rows carry them (None for text only)."""
    if data.train_features is None or data.train_features.shape[1] == 0:
        return None
    return features_frame(rows).reindex(columns=data.train_features.columns).reset_index(drop=True)


def _joined(labelled: pd.DataFrame | None, pseudo: pd.DataFrame | None) -> pd.DataFrame | None:
    if labelled is None:
        return None
    if pseudo is None:
        return labelled
    return pd.concat([labelled, pseudo.reindex(columns=labelled.columns)], ignore_index=True)


def _n_labels(config: TrainConfig) -> int:
    return 1 if config.task == "regression" else len(config.labels)


def _fold_metrics(arm: Arm, metric: str, n_labels: int) -> dict:
    return task_metrics(arm.config.task, arm.data.dev_targets, arm.fold_prediction, n_labels)


def _arm_line(arm: Arm, metric: str, n_labels: int, interval: dict | None, kept: bool, why: str) -> dict:
    fold = _fold_metrics(arm, metric, n_labels)
    line = {
        "arm": arm.name,
        "tried": True,
        "kept": kept,
        "fold": {k: round(float(v), 4) for k, v in fold.items()},
        "train_rows": len(arm.data.train_texts),
        "why": why,
    }
    if interval is not None:
        line["improvement"] = {k: interval[k] for k in ("point", "low", "high")}
    return line
