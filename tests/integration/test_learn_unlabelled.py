"""Learning from unlabelled feedback through the real training (tiny BERT, real Postgres, real S3):
no dev, validation or test row reaches adaptation or self-training; without unlabelled rows (or with
a pool that is left out) a run is what it was; self-training and adaptation are tried, judged on
the fold and recorded, and a checkpoint trained on an adapted encoder loads from its folder alone."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from refit.core.settings import load_settings
from refit.data.db import get_engine
from refit.data.snapshots import SplitConfig, snapshot_rows, split_of, take_snapshot
from refit.gate.records import model_card
from refit.models.checkpoint import read_metadata
from refit.models.predict import Predictor
from refit.ops.synth import generate_feedback
from refit.training import challenger
from refit.training.unlabelled import in_fold

from helpers import gate_decision, ingest_rows

pytestmark = pytest.mark.integration


def unlabelled(rows: list[dict]) -> list[dict]:
    """The rows with their rating cleared: stored unlabelled by ingest."""
    return [{**row, "rating": ""} for row in rows]


def settings_with(monkeypatch, **values):
    for key, value in values.items():
        monkeypatch.setenv(f"REFIT_{key.upper()}", str(value))
    return load_settings()


def recipe_of(folder: Path) -> dict:
    return read_metadata(folder)["train_config"]["recipe"]


def test_no_dev_validation_or_test_row_reaches_adaptation_or_self_training(refit_env, monkeypatch, tmp_path):
    settings = settings_with(monkeypatch, adapt="auto", self_train="auto")
    split = SplitConfig.from_settings(settings)
    engine = get_engine(settings.database_url)
    ingest_rows(settings, generate_feedback(160, seed=1, id_prefix="lab"), tmp_path / "labelled.csv")
    pool_rows = unlabelled(generate_feedback(400, seed=2, id_prefix="unl"))
    ingest_rows(settings, pool_rows, tmp_path / "unlabelled.csv")
    snapshot = take_snapshot(engine, split)

    plan = challenger.plan_training(settings, engine, snapshot, None, challenger.log)

    assert plan.pool is not None and plan.pool.usable
    # What adaptation reads (the training texts and the pool) and what self-training may label
    # (the pool): no row whose id is in the dev or test split, or in the validation fold.
    rows = snapshot_rows(engine, snapshot, split)
    kept_out = rows[
        rows["feedback_id"].map(lambda fid: split_of(fid, split) != "train" or in_fold(fid, settings.val_fraction))
    ]
    seen = set(plan.data.train_texts) | set(plan.pool.texts)
    assert set(plan.pool.rows["feedback_id"]).isdisjoint(kept_out["feedback_id"])
    assert not (set(kept_out["text"]) - set(rows.loc[~rows.index.isin(kept_out.index), "text"])) & seen
    unlabelled_outside = [r["feedback_id"] for r in pool_rows if r["feedback_id"] in set(kept_out["feedback_id"])]
    assert unlabelled_outside and plan.pool.outside_train == len(unlabelled_outside)
    # The fold is the same rows in every run, by id: a pool row labelled later trains, never judges.
    fold_ids = {fid for fid in rows["feedback_id"] if in_fold(fid, settings.val_fraction)}
    assert len(plan.data.dev_texts) == len(rows[rows["feedback_id"].isin(fold_ids) & rows["split"].eq("train")])
    later = plan.pool.rows.iloc[:30]
    ingest_rows(
        settings,
        [{**r, "rating": 5} for r in pool_rows if r["feedback_id"] in set(later["feedback_id"])],
        tmp_path / "labels.csv",
    )
    plan = challenger.plan_training(settings, engine, take_snapshot(engine, split), None, challenger.log)
    assert set(later["text"]) <= set(plan.data.train_texts)
    assert not set(later["text"]) & set(plan.data.dev_texts)


def test_without_unlabelled_rows_or_with_a_pool_left_out_a_run_is_what_it_was(refit_env, monkeypatch, tmp_path):
    engine = get_engine(refit_env.database_url)
    ingest_rows(refit_env, generate_feedback(200, seed=3), tmp_path / "labelled.csv")
    snapshot = take_snapshot(engine, SplitConfig.from_settings(refit_env))
    before = challenger.train_challenger(refit_env, snapshot, None)  # adaptation and self-training off
    auto = settings_with(monkeypatch, adapt="auto", self_train="auto", setfit="auto")
    after = challenger.train_challenger(auto, snapshot, None)

    assert after.unlabelled is None
    assert recipe_of(after.folder) == recipe_of(before.folder)
    assert after.dev_metrics == before.dev_metrics
    assert (after.best_epoch, after.train_rows) == (before.best_epoch, before.train_rows)

    # A pool that is mostly one repeated text is left out with its reason, and the run is unchanged.
    spam = unlabelled(generate_feedback(150, seed=4, id_prefix="spam"))
    spam = [{**row, "text": "Great app!!! Click here for a FREE gift"} for row in spam[:120]] + spam[120:]
    ingest_rows(auto, spam, tmp_path / "spam.csv")
    left_out = challenger.train_challenger(auto, take_snapshot(engine, SplitConfig.from_settings(auto)), None)

    assert left_out.unlabelled["why"].startswith("mostly one repeated text: 'great app!!! click here")
    assert left_out.unlabelled["arms"] == [] and left_out.unlabelled["chosen"] == ["plain"]
    assert left_out.dev_metrics == before.dev_metrics and left_out.train_rows == before.train_rows
    assert read_metadata(left_out.folder)["unlabelled"]["why"] == left_out.unlabelled["why"]


def test_self_training_and_adaptation_are_tried_judged_on_the_fold_and_recorded(refit_env, monkeypatch, tmp_path):
    settings = settings_with(monkeypatch, adapt="on", self_train="on", adapt_budget_minutes=0.2)
    engine = get_engine(settings.database_url)
    ingest_rows(settings, generate_feedback(160, seed=5, id_prefix="lab"), tmp_path / "labelled.csv")
    ingest_rows(settings, unlabelled(generate_feedback(300, seed=6, id_prefix="unl")), tmp_path / "unl.csv")
    snapshot = take_snapshot(engine, SplitConfig.from_settings(settings))

    result = challenger.train_challenger(settings, snapshot, None)

    record = result.unlabelled
    arms = {arm["arm"]: arm for arm in record["arms"]}
    assert {name for name, arm in arms.items() if arm["tried"]} == {"plain", "adapt", "self_train"}
    assert arms["setfit"] == {"arm": "setfit", "tried": False, "why": "REFIT_SETFIT=off"}
    assert record["chosen"] == ["adapt", "self_train"]  # `on` keeps them without asking the fold
    for name in ("adapt", "self_train"):
        assert arms[name]["kept"] and "improvement" in arms[name] and record["metric"] in arms[name]["fold"]
    meta = read_metadata(result.folder)
    pseudo = meta["lineage"]["pseudo_labelled"]
    assert pseudo["pseudo_rows"] > 0 and pseudo["pseudo_rows"] <= pseudo["cap"]
    assert result.train_rows == arms["plain"]["train_rows"] + pseudo["pseudo_rows"]
    adapted = meta["lineage"]["adapted"]
    assert adapted["adapted_on"] and adapted["corpus_rows"] == arms["plain"]["train_rows"] + record["pool"]["pool_rows"]

    card = model_card(result.version, meta, gate_decision(True).as_dict(), {})
    assert "unlabelled feedback: 300 rows" in card and "chosen: adapt, self_train" in card

    # The checkpoint holds the adapted encoder's fine-tuned weights: it loads and predicts with the
    # adaptation's cache (work dir) gone.
    shutil.rmtree(Path(settings.work_dir) / "adapted")
    prediction = Predictor(result.folder).predict(["The knife set is terrible, broke after a day."])
    assert prediction.shape[0] == 1


def test_setfit_tunes_the_encoder_on_the_training_rows_alone_and_its_checkpoint_stands_alone(
    refit_env, monkeypatch, tmp_path
):
    from dataclasses import replace

    from refit.training.arms import Arm, _setfit
    from refit.training.contrastive import rows_digest

    settings = settings_with(monkeypatch, task="classification", setfit="on", setfit_budget_minutes=0.1)
    engine = get_engine(settings.database_url)
    labels = {1: "negative", 2: "negative", 3: "neutral", 4: "positive", 5: "positive"}
    rows = [{**row, "label": labels[row["rating"]]} for row in generate_feedback(160, seed=5, id_prefix="lab")]
    ingest_rows(settings, rows, tmp_path / "labelled.csv")
    ingest_rows(settings, unlabelled(generate_feedback(100, seed=6, id_prefix="unl")), tmp_path / "unl.csv")
    snapshot = take_snapshot(engine, SplitConfig.from_settings(settings))

    result = challenger.train_challenger(settings, snapshot, None)

    arms = {arm["arm"]: arm for arm in result.unlabelled["arms"]}
    assert [name for name, arm in arms.items() if arm["tried"]] == ["plain", "setfit"]
    assert arms["setfit"]["kept"] and result.unlabelled["chosen"] == ["setfit"]  # `on` keeps it
    # The pairs were drawn from the training rows alone, with their labels: not the validation
    # fold, the gate's dev rows or a test split, and no unlabelled row.
    plan = challenger.plan_training(settings, engine, snapshot, None, challenger.log)
    tuned = read_metadata(result.folder)["lineage"]["contrastive"]
    assert tuned["rows"] == len(plan.data.train_texts) == arms["plain"]["train_rows"]
    assert tuned["rows_digest"] == rows_digest(plan.data.train_texts, plan.data.train_targets)
    assert 0 < tuned["pairs_trained"] <= tuned["pairs_planned"]
    # The tuned encoder was a scratch folder, gone with the run: the checkpoint holds its weights.
    assert not list(Path(settings.work_dir).rglob("*-encoder"))
    assert Predictor(result.folder).predict(["The knife set is terrible, broke after a day."]).shape[0] == 1

    # Under auto it is not tried for regression, nor above REFIT_SETFIT_MAX_ROWS.
    plain = Arm("plain", result.folder, None, plan.config, plan.data, None, {})
    regression = replace(plain, config=replace(plan.config, task="regression", loss="mse", metric="mse"))
    assert _setfit(settings, None, regression, None, tmp_path / "r", None, challenger.log) == (
        None,
        "contrastive pairs need classes (SetFit has no regression)",
    )
    few = settings_with(monkeypatch, setfit="auto", setfit_max_rows=10)
    arm, why = _setfit(few, None, plain, None, tmp_path / "f", None, challenger.log)
    assert arm is None
    assert why == f"{len(plan.data.train_texts)} labelled training rows, more than REFIT_SETFIT_MAX_ROWS (10)"
    # Nor on a CPU when its budget covers only part of its pairs.
    short = settings_with(monkeypatch, setfit="auto", setfit_max_rows=500, setfit_budget_minutes=0.1, device="cpu")
    arm, why = _setfit(short, None, plain, None, tmp_path / "s", None, challenger.log)
    pairs = 20 * len(plan.data.train_texts)
    assert arm is None and why.startswith("on a CPU the 0.1-minute budget covers about ")
    assert f"of the {pairs} pairs of {len(plan.data.train_texts)} rows" in why


def test_auto_tries_what_pays_for_itself_and_keeps_an_arm_only_beyond_the_folds_noise(refit_env, monkeypatch, tmp_path):
    # A budget that covers a sliver of one pass over the corpus on a CPU: auto does not adapt.
    settings = settings_with(monkeypatch, adapt="auto", self_train="auto", adapt_budget_minutes=0.05)
    engine = get_engine(settings.database_url)
    ingest_rows(settings, generate_feedback(160, seed=7, id_prefix="lab"), tmp_path / "labelled.csv")
    ingest_rows(settings, unlabelled(generate_feedback(300, seed=8, id_prefix="unl")), tmp_path / "unl.csv")

    result = challenger.train_challenger(settings, take_snapshot(engine, SplitConfig.from_settings(settings)), None)

    arms = {arm["arm"]: arm for arm in result.unlabelled["arms"]}
    assert not arms["adapt"]["tried"] and arms["adapt"]["why"].startswith("on a CPU the 0.05-minute budget covers")
    student = arms["self_train"]
    assert student["tried"] and student["train_rows"] > arms["plain"]["train_rows"]
    gain = student["improvement"]
    assert gain["low"] <= gain["point"] <= gain["high"]
    # Kept exactly when the interval's lower end is above zero, and then it is the model shipped.
    assert student["kept"] == (gain["low"] > 0)
    assert result.unlabelled["chosen"] == (["self_train"] if student["kept"] else ["plain"])
    assert result.train_rows == (student if student["kept"] else arms["plain"])["train_rows"]
    assert ("pseudo_labelled" in read_metadata(result.folder)["lineage"]) == student["kept"]


def test_a_warm_retrain_keeps_the_champions_verdict_on_an_arm_until_the_pool_grows(refit_env, monkeypatch, tmp_path):
    from refit.models.checkpoint import write_metadata
    from refit.registry.promotion import record_decision
    from refit.registry.store import store_for
    from refit.registry.table import champion as champion_row
    from refit.registry.versions import publish_checkpoint

    settings = settings_with(monkeypatch, adapt="off", self_train="auto")
    engine = get_engine(settings.database_url)
    split = SplitConfig.from_settings(settings)
    ingest_rows(settings, generate_feedback(160, seed=7, id_prefix="lab"), tmp_path / "labelled.csv")
    ingest_rows(settings, unlabelled(generate_feedback(300, seed=8, id_prefix="unl")), tmp_path / "unl.csv")
    snapshot = take_snapshot(engine, split)
    first = challenger.train_challenger(settings, snapshot, None)
    pool_rows = first.unlabelled["pool"]["pool_rows"]
    judged = {arm["arm"]: arm for arm in first.unlabelled["arms"]}["self_train"]
    assert judged["tried"] and judged.get("declined_on_pool_rows") == (None if judged["kept"] else pool_rows)
    # The champion is the run's plain model, whose fold turned self-training down on this pool (the
    # verdict its run records when the interval's lower end is not above zero).
    meta = read_metadata(first.folder)
    meta["unlabelled"]["arms"] = [
        {**arm, "kept": False, "declined_on_pool_rows": pool_rows} if arm["arm"] == "self_train" else arm
        for arm in meta["unlabelled"]["arms"]
    ]
    meta["unlabelled"]["chosen"] = ["plain"]
    write_metadata(first.folder, meta)
    store = store_for(settings)
    record_decision(
        engine,
        store,
        publish_checkpoint(store, first.folder, first.version),
        snapshot_id=None,
        task=settings.task,
        metrics={"dev": first.dev_metrics},
        decision=gate_decision(True),
        champion_version=None,
    )

    def retrain(snapshot):
        result = challenger.train_challenger(settings, snapshot, champion_row(engine))
        return result, {arm["arm"]: arm for arm in result.unlabelled["arms"]}

    # The same pool: the verdict stands, and the retrain trains once, on the labelled rows.
    second, arms = retrain(snapshot)
    assert not arms["self_train"]["tried"] and arms["self_train"]["declined_on_pool_rows"] == pool_rows
    assert arms["self_train"]["why"].startswith(f"champion {first.version}'s fold found it did not pay on {pool_rows}")
    assert second.train_rows == arms["plain"]["train_rows"] and second.unlabelled["chosen"] == ["plain"]
    assert "pseudo_labelled" not in read_metadata(second.folder)["lineage"]

    # Half as many unlabelled rows again: the arm is judged anew, the champion teaching.
    ingest_rows(settings, unlabelled(generate_feedback(200, seed=9, id_prefix="more")), tmp_path / "more.csv")
    third, arms = retrain(take_snapshot(engine, split))
    assert third.unlabelled["pool"]["pool_rows"] >= 1.5 * pool_rows
    assert arms["self_train"]["tried"]
    assert f"pseudo-labelled rows from champion {first.version}" in arms["self_train"]["why"]
