"""The trainer and checkpoints, with the tiny BERT (and one run of the real packaged weights)."""

import json

import numpy as np
import pytest

from refit.core.errors import CheckpointError
from refit.core.settings import PACKAGED_MODEL
from refit.models.checkpoint import MANIFEST, build_manifest, verify_folder
from refit.models.config import TrainConfig
from refit.models.inference import collate
from refit.models.predict import Predictor
from refit.models.saving import save_checkpoint
from refit.models.train import length_bucketed_batches, train
from refit.training.modeling import resolve_base_model

from model_helpers import LABELS, review_data, tiny_config


def test_collate_pads_to_the_batch_longest():
    batch = collate([[1, 2, 3], [4]], pad_id=0)
    assert batch["input_ids"].tolist() == [[1, 2, 3], [4, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


def test_length_buckets_cover_every_row_once_and_pad_less_than_random():
    rng = np.random.default_rng(0)
    lengths = list(rng.integers(5, 250, size=2000))
    batches = length_bucketed_batches(lengths, 16, np.random.default_rng(1))
    assert sorted(np.concatenate(batches).tolist()) == list(range(2000))
    lengths_arr = np.array(lengths)

    def padded(bs):
        return sum(len(b) * lengths_arr[b].max() for b in bs)

    shuffled = np.random.default_rng(1).permutation(2000)
    random_batches = [shuffled[i : i + 16] for i in range(0, 2000, 16)]
    assert padded(batches) < 0.7 * padded(random_batches)


def test_training_learns_and_keeps_the_best_epoch(tiny_model, tmp_path):
    d = review_data()
    result = train(tiny_config(tiny_model, epochs=4), d)
    baseline_mse = float(np.mean((d.dev_targets - d.train_targets.mean()) ** 2))
    scores = [h["dev_mse"] for h in result.history]
    assert result.best_epoch == int(np.argmin(scores)) + 1
    assert result.dev_metrics["mse"] == min(scores)
    assert result.dev_metrics["mse"] < 0.6 * baseline_mse
    # the returned weights are the best epoch's: re-scoring them gives the recorded metric
    folder = save_checkpoint(result, tmp_path / "ckpt", lineage={"version": "v-test"})
    prediction = Predictor(folder).predict(d.dev_texts)
    assert np.mean((prediction - d.dev_targets) ** 2) == pytest.approx(result.dev_metrics["mse"], abs=1e-5)


def test_early_stopping_stops_on_patience(tiny_model):
    # a learning rate this high makes the dev metric stall or worsen quickly
    result = train(tiny_config(tiny_model, epochs=8, learning_rate=0.05, patience=0), review_data(200))
    assert result.stopped_early
    assert len(result.history) < 8
    assert len(result.history) == result.best_epoch + 1


def test_same_seed_gives_the_same_metrics(tiny_model):
    d = review_data(200)
    first = train(tiny_config(tiny_model, epochs=2), d)
    second = train(tiny_config(tiny_model, epochs=2), d)
    for a, b in zip(first.history, second.history, strict=True):
        assert a["dev_mse"] == pytest.approx(b["dev_mse"], abs=1e-6)


def test_classification_checkpoint_describes_itself(tiny_model, tmp_path):
    result = train(
        tiny_config(tiny_model, task="classification", labels=LABELS, epochs=2), review_data(300, "classification")
    )
    assert set(result.dev_metrics) == {"accuracy", "macro_f1"}
    folder = save_checkpoint(result, tmp_path / "ckpt", lineage={"version": "v-cls", "snapshot_id": 7})
    meta = json.loads((folder / "refit.json").read_text())
    assert meta["task"] == "classification" and meta["labels"] == LABELS
    assert meta["lineage"]["snapshot_id"] == 7 and meta["lineage"]["seed"] == 3
    predictor = Predictor(folder)
    records = predictor.to_records(predictor.predict(["the kettle is excellent, love it."]))
    assert records[0]["prediction"] in LABELS
    assert sum(records[0][f"p_{name}"] for name in LABELS) == pytest.approx(1.0, abs=1e-5)


def test_corrupt_checkpoint_is_refused(tiny_model, tmp_path):
    result = train(tiny_config(tiny_model, epochs=1), review_data(100))
    folder = save_checkpoint(result, tmp_path / "ckpt", lineage={"version": "v1"})
    (folder / MANIFEST).write_text(json.dumps(build_manifest(folder, "v1")))
    verify_folder(folder)
    weights = folder / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-10] ^= 0xFF
    weights.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="model.safetensors does not match"):
        Predictor(folder)


@pytest.mark.slow
def test_real_packaged_bert_trains_a_few_steps(tmp_path):
    d = review_data(60)
    config = TrainConfig(
        base_model=resolve_base_model(PACKAGED_MODEL), epochs=1, batch_size=16, max_length=48, learning_rate=5e-5
    )
    result = train(config, d)
    assert np.isfinite(result.history[0]["train_loss"])
    folder = save_checkpoint(result, tmp_path / "real", lineage={"version": "v-real"})
    prediction = Predictor(folder).predict(d.dev_texts)
    assert prediction.shape == (len(d.dev_texts),)
    assert np.all((prediction >= 0) & (prediction <= 1))
    meta = json.loads((folder / "refit.json").read_text())
    assert meta["training"]["samples_per_second"] > 0
