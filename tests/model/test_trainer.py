"""The trainer: strategies, warm start, resume, threads, accumulation, and the settings that drive it."""

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from refit.core.errors import ConfigError
from refit.core.settings import load_settings
from refit.models.config import TrainData
from refit.models.fusion import FeatureSchema, build_model
from refit.models.inference import predict_texts
from refit.models.objective import class_weight_tensor
from refit.models.predict import Predictor
from refit.models.saving import save_checkpoint
from refit.models.strategies import apply_strategy, merge_adapters
from refit.models.train import train
from refit.training.modeling import replay_window, train_config

from model_helpers import LABELS, review_data, tiny_config


def subset(data: TrainData, n_train: int) -> TrainData:
    return TrainData(data.train_texts[:n_train], data.train_targets[:n_train], data.dev_texts, data.dev_targets)


def test_min_delta_counts_small_gains_as_no_gain_and_keeps_the_best_epoch(tiny_model):
    result = train(tiny_config(tiny_model, epochs=4, patience=1, min_delta=10.0), review_data(150))
    # no later epoch beats the first by 10 in MSE: after patience + 1 epochs without a gain it stops
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    assert result.best_epoch == 1 and result.stopped_early
    assert result.dev_metrics["mse"] == result.history[0]["dev_mse"]


@pytest.fixture(scope="module")
def sentiment_base(tiny_model, tmp_path_factory):
    """A base-model folder whose encoder has learned the review words (a random encoder gives a
    frozen or adapter-only fine-tune nothing to build on, unlike a real pretrained BERT)."""
    result = train(tiny_config(tiny_model, epochs=2), review_data(600, seed=11))
    folder = tmp_path_factory.mktemp("sentiment-base")
    result.model.encoder.save_pretrained(folder)
    result.tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("strategy", ["freeze", "lora"])
def test_fine_tuning_strategies_train_and_load(sentiment_base, tmp_path, strategy):
    data = review_data(300)
    config = tiny_config(sentiment_base, strategy=strategy, freeze_layers=1, epochs=2, learning_rate=3e-3)
    result = train(config, data)
    base = load_file(sentiment_base / "model.safetensors")
    folder = save_checkpoint(result, tmp_path / strategy, lineage={"version": f"v-{strategy}"})
    saved = load_file(folder / "model.safetensors")
    assert not any("lora" in key for key in saved)  # adapters are merged: serving needs no peft
    layer0 = "encoder.layer.0.attention.self.query.weight"
    layer1 = "encoder.layer.1.attention.self.query.weight"
    if strategy == "freeze":
        assert torch.equal(saved[f"encoder.{layer0}"], base[layer0])  # frozen
        assert torch.equal(
            saved["encoder.embeddings.word_embeddings.weight"], base["embeddings.word_embeddings.weight"]
        )
        assert not torch.equal(saved[f"encoder.{layer1}"], base[layer1])  # trained
    else:
        # the merged query projections moved (the adapters' product was added), keys and values are untouched
        assert not torch.equal(saved[f"encoder.{layer0}"], base[layer0])
        key = "encoder.layer.0.attention.self.key.weight"
        assert torch.equal(saved[f"encoder.{key}"], base[key])
    predictor = Predictor(folder)
    prediction = predictor.predict(data.dev_texts)
    assert np.mean((prediction - data.dev_targets) ** 2) == pytest.approx(result.dev_metrics["mse"], abs=1e-5)
    baseline_mse = float(np.mean((data.dev_targets - data.train_targets.mean()) ** 2))
    assert result.dev_metrics["mse"] < 0.8 * baseline_mse


def test_lora_adapters_merge_into_the_weights_without_changing_predictions(tiny_model):
    config = tiny_config(tiny_model, strategy="lora", lora_r=4)
    model, tokenizer = build_model(config.base_model, 1, FeatureSchema())
    apply_strategy(model, config)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora" in name or name.startswith("head.") for name in trainable)
    torch.manual_seed(0)
    with torch.no_grad():  # trained adapters: B is no longer zero
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)
    texts = ["the kettle is excellent, love it.", "the scarf is flimsy, returned it."]
    before = predict_texts(model, tokenizer, texts, None, "regression", 32)
    merge_adapters(model)
    after = predict_texts(model, tokenizer, texts, None, "regression", 32)
    assert not any("lora" in name for name in model.state_dict())
    assert type(model.encoder).__name__ == "BertModel"
    assert after == pytest.approx(before, abs=1e-5)


def test_freezing_more_layers_than_the_encoder_has_is_a_clear_error(tiny_model):
    with pytest.raises(ValueError, match="freeze_layers=5 but the encoder has 2 layers"):
        train(tiny_config(tiny_model, strategy="freeze", freeze_layers=5, epochs=1), review_data(40))


def test_warm_start_from_the_champion_beats_a_cold_start_on_a_small_new_window(tiny_model, tmp_path):
    old = review_data(800, seed=1)
    champion = train(tiny_config(tiny_model, epochs=3), old)
    folder = save_checkpoint(champion, tmp_path / "champion", lineage={"version": "v-champ"})
    new = subset(review_data(300, seed=7), 48)  # a small new window, scored on its own dev rows
    cold = train(tiny_config(tiny_model, epochs=2), new)
    warm = train(tiny_config(tiny_model, epochs=2, init_from=str(folder)), new)
    assert warm.init == {"from": "champion", "parent_version": "v-champ"}
    assert cold.init["from"] == "base"
    assert warm.dev_metrics["mse"] < 0.7 * cold.dev_metrics["mse"]
    # a champion whose architecture differs (another task) is not used, and the lineage says why
    mismatched = train(
        tiny_config(tiny_model, task="classification", labels=LABELS, epochs=1, init_from=str(folder)),
        review_data(60, "classification"),
    )
    assert mismatched.init["from"] == "base" and "task differs" in mismatched.init["warm_start_refused"]


def test_replay_window_keeps_every_new_row_and_a_seeded_share_of_old_ones():
    frame = pd.DataFrame({"id": range(1, 101), "text": [f"t{i}" for i in range(1, 101)]})
    mixed = replay_window(frame, new_after=80, replay_fraction=0.5, seed=3)
    assert set(range(81, 101)) <= set(mixed["id"])
    assert (mixed["id"] <= 80).sum() == 10
    assert mixed["id"].tolist() == replay_window(frame, 80, 0.5, seed=3)["id"].tolist()
    assert mixed["id"].is_monotonic_increasing


class Killed(Exception):
    pass


def test_a_run_killed_mid_epoch_resumes_with_the_same_result(tiny_model, tmp_path):
    data = review_data(200)
    config = tiny_config(tiny_model, epochs=3, patience=5)
    straight = train(config, data, resume_dir=tmp_path / "straight")

    def kill(epoch, step):
        if epoch == 2 and step == 3:
            raise Killed  # nothing after this point is written: the state on disk is epoch 1's

    with pytest.raises(Killed):
        train(config, data, resume_dir=tmp_path / "run", on_step=kill)
    assert (tmp_path / "run" / "last_epoch.pt").is_file()
    resumed = train(config, data, resume_dir=tmp_path / "run")
    assert resumed.resumed_from_epoch == 1 and straight.resumed_from_epoch == 0
    assert len(resumed.history) == len(straight.history) == 3
    for a, b in zip(straight.history, resumed.history, strict=True):
        for key in ("train_loss", "dev_mse", "dev_spearman"):
            assert a[key] == pytest.approx(b[key], abs=1e-6)
    assert not (tmp_path / "run" / "last_epoch.pt").exists()
    # another run's state in the folder is refused rather than mixed in
    with pytest.raises(Killed):
        train(config, data, resume_dir=tmp_path / "other", on_step=kill)
    with pytest.raises(ValueError, match="belongs to another run"):
        train(tiny_config(tiny_model, epochs=3, patience=5, seed=4), data, resume_dir=tmp_path / "other")


def test_accumulation_threads_curve_and_class_weights(tiny_model, tmp_path):
    data = review_data(200, "classification")
    steps, threads = [], []

    def record(epoch, step):
        steps.append((epoch, step))
        threads.append(torch.get_num_threads())

    before = torch.get_num_threads()
    config = tiny_config(
        tiny_model, task="classification", labels=LABELS, epochs=2, batch_size=8, grad_accum_steps=3,
        class_weights="balanced",
    )  # fmt: skip
    result = train(config, data, on_step=record)
    # 160 rows in batches of 8 make 20 batches per epoch: 7 optimizer steps of up to 3 batches
    assert [s for e, s in steps if e == 1] == list(range(1, 8))
    assert set(threads) == {1} and torch.get_num_threads() == before
    folder = save_checkpoint(result, tmp_path / "cls", lineage={"version": "v-cls"})
    png = (folder / "training_curve.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5000
    assert json.loads((folder / "refit.json").read_text())["train_config"]["class_weights"] == "balanced"
    weights = class_weight_tensor(config, np.array([0, 0, 0, 2]))
    assert weights.tolist() == pytest.approx([4 / 9, 1.0, 4 / 3])  # the unseen label weighs 1
    softer = class_weight_tensor(dataclasses.replace(config, class_weights="sqrt"), np.array([0, 0, 0, 2]))
    assert softer.tolist() == pytest.approx([(4 / 9) ** 0.5, 1.0, (4 / 3) ** 0.5])
    with pytest.raises(ValueError, match="class_weights must be none, balanced, sqrt"):
        dataclasses.replace(config, class_weights="inverse")


def test_settings_drive_the_trainer(monkeypatch, tmp_path):
    for key, value in {
        "REFIT_STRATEGY": "lora",
        "REFIT_LORA_R": "4",
        "REFIT_GRAD_ACCUM_STEPS": "2",
        "REFIT_NUM_THREADS": "1",
        "REFIT_FEATURE_TYPES": "device:categorical,sessions_7d:numeric",
        "REFIT_REGRESSION_LOSS": "bce",
        "REFIT_BASE_MODEL": str(tmp_path),
    }.items():
        monkeypatch.setenv(key, value)
    config = train_config(load_settings(), init_from=tmp_path / "champion")
    assert (config.strategy, config.lora_r, config.grad_accum_steps, config.num_threads) == ("lora", 4, 2, 1)
    assert config.feature_types == {"device": "categorical", "sessions_7d": "numeric"}
    assert config.loss == "bce" and config.init_from == str(tmp_path / "champion")
    # the measured layouts are the machine's, whatever the work dir; a setting can move them
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert config.path_cache is not None
    assert train_config(load_settings()).path_cache == str(tmp_path / "cache" / "refit" / "train_paths.json")
    monkeypatch.setenv("REFIT_WORK_DIR", str(tmp_path / "elsewhere"))
    assert train_config(load_settings()).path_cache == str(tmp_path / "cache" / "refit" / "train_paths.json")
    monkeypatch.setenv("REFIT_TRAIN_PATH_CACHE", str(tmp_path / "volume" / "paths.json"))
    assert train_config(load_settings()).path_cache == str(tmp_path / "volume" / "paths.json")
    monkeypatch.setenv("REFIT_WARM_START", "false")
    assert train_config(load_settings(), init_from=tmp_path / "champion").init_from is None
    monkeypatch.setenv("REFIT_EARLY_STOPPING_METRIC", "macro_f1")
    with pytest.raises(ConfigError, match="REFIT_EARLY_STOPPING_METRIC=macro_f1 does not fit REFIT_TASK=regression"):
        load_settings()


def test_the_same_seed_gives_the_same_metrics_with_the_path_the_trainer_measured_and_recorded(tiny_model, tmp_path):
    import refit.models.paths as paths

    data = review_data(520)  # 416 training rows: 26 steps an epoch, enough for the trainer to probe
    config = tiny_config(tiny_model, epochs=2, patience=5, path_cache=str(tmp_path / "train_paths.json"))
    runs = []
    for _ in range(2):
        paths._CHOSEN.clear()  # as a new process on this machine would
        runs.append(train(config, data))
    first, second = runs
    assert first.path["chosen_by"] == "measured"
    assert second.path["chosen_by"] == "measured earlier on this machine"
    assert second.path["attention"] == first.path["attention"]
    assert set(first.path["step_ms"]) == {"encoder", "padded", "packed"}
    assert first.path["attention"] in first.path["step_ms"]
    assert first.path["precision"] == "fp32"  # tiny_config pins fp32
    for a, b in zip(first.history, second.history, strict=True):
        for key in ("train_loss", "dev_mse", "dev_spearman"):
            assert a[key] == pytest.approx(b[key], abs=1e-6)
    folder = save_checkpoint(first, tmp_path / "ckpt", lineage={"version": "v1"})
    recorded = json.loads((folder / "refit.json").read_text())["training"]["path"]
    assert recorded == first.path
    (tmp_path / "train_paths.json").write_text("{not json")  # a damaged file is measured again, and replaced
    paths._CHOSEN.clear()
    assert train(config, data).path["chosen_by"] == "measured"
    assert json.loads((tmp_path / "train_paths.json").read_text())
    pinned = train(tiny_config(tiny_model, epochs=1, attention="packed", precision="fp32"), data)
    assert (pinned.path["attention"], pinned.path["chosen_by"]) == ("packed", "setting")
    if torch.ops.mkldnn._is_mkldnn_bf16_supported():  # bf16 autocast is as reproducible on the CPU
        fp32, *bf16 = (
            train(tiny_config(tiny_model, epochs=1, attention="padded", precision=p), data)
            for p in ("fp32", "bf16", "bf16")
        )
        assert bf16[0].path["precision"] == "bf16"
        assert bf16[0].history[0]["train_loss"] == pytest.approx(bf16[1].history[0]["train_loss"], abs=1e-6)
        assert bf16[0].history[0]["dev_mse"] == pytest.approx(bf16[1].history[0]["dev_mse"], abs=1e-6)
        # and it does run in bf16: the weights move apart from fp32's (by 2.5e-3 here). The epoch's
        # mean loss is no witness: on an AMD EPYC it agreed with fp32's to 1.4e-8.
        assert _largest_weight_difference(bf16[0], bf16[1]) == 0
        assert _largest_weight_difference(bf16[0], fp32) > 1e-4
    with pytest.raises(ValueError, match="attention must be one of"):
        tiny_config(tiny_model, attention="flash")


def _largest_weight_difference(a, b) -> float:
    pairs = zip(a.model.state_dict().values(), b.model.state_dict().values(), strict=True)
    return max((x - y).abs().max().item() for x, y in pairs if x.is_floating_point())


def test_precision_follows_the_hardware_and_the_width():
    from refit.models.paths import cpu_has_fast_bf16, resolve_precision

    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu, hidden_size=384) == ("bf16" if cpu_has_fast_bf16() else "fp32")
    assert resolve_precision("auto", cpu, hidden_size=64) == "fp32"  # not measured to pay
    assert resolve_precision("fp32", cpu, hidden_size=384) == "fp32"
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("fp16", cpu)
