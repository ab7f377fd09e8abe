"""int8 with ONNX Runtime (models/quantize.py): measured on dev at publish time, recorded, served,
and checked at serving time on the checkpoint's own dev rows (models/dev_sample.py)."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from refit.core.errors import RefitError
from refit.models.dev_sample import DEV_SAMPLE_FILE, read_dev_sample, write_dev_sample
from refit.models.ensemble import build_ensemble
from refit.models.int8_artifact import add_int8_artifact
from refit.models.predict import Predictor
from refit.models.quantize import INT8_FILE, OnnxModel, agreement, quantized
from refit.models.saving import save_checkpoint
from refit.models.train import train
from refit.registry.store import open_store
from refit.registry.versions import publish_checkpoint

from model_helpers import review_data, tiny_config

FEATURES = {"category": "categorical", "sessions_7d": "numeric"}


@pytest.fixture(scope="module")
def trained(tiny_model):
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the suite shares two cores
    data = review_data(160, features=True)
    config = tiny_config(tiny_model, epochs=1, feature_types=FEATURES)
    yield train(config, data), data
    torch.set_num_threads(threads)


def test_int8_difference_is_within_its_recorded_tolerance(trained, tmp_path):
    result, data = trained
    folder = save_checkpoint(result, tmp_path / "v1", {"version": "v1"})
    record = add_int8_artifact(folder, data.dev_texts, data.dev_targets, data.dev_features, tolerance=0.05)
    assert record["file"] == INT8_FILE and (folder / INT8_FILE).is_file()
    assert record["runtime"] == "onnxruntime" and record["dev_rows"] == len(data.dev_texts)
    assert 0 < record["max_abs_diff"] <= record["tolerance"] == 0.05  # int8 is close, and not identical
    assert 0.9 <= record["label_agreement"] <= 1
    assert json.loads((folder / "refit.json").read_text())["int8"] == record

    # The served int8 model is the published file, and its measured difference is the recorded one.
    float_pred = Predictor(folder).predict(data.dev_texts, data.dev_features)
    int8 = Predictor(folder, int8=True)
    assert isinstance(int8.model, OnnxModel) and set(int8.feature_names) == set(FEATURES)
    int8_pred = int8.predict(data.dev_texts, data.dev_features)
    assert np.max(np.abs(int8_pred - float_pred)) == pytest.approx(record["max_abs_diff"], abs=1e-6)
    assert (folder / INT8_FILE).stat().st_size < (folder / "model.safetensors").stat().st_size

    # Publishing copies the record into the version's manifest, beside the artifact's checksum.
    store = open_store((tmp_path / "store").as_uri())
    publish_checkpoint(store, folder, "v1")
    manifest = json.loads(store.get("models/satisfaction/versions/v1/manifest.json"))
    assert manifest["int8"]["max_abs_diff"] == record["max_abs_diff"]
    assert INT8_FILE in manifest["files"]


def test_over_tolerance_keeps_no_artifact(trained, tmp_path):
    result, data = trained
    folder = save_checkpoint(result, tmp_path / "v2", {"version": "v2"})
    record = add_int8_artifact(folder, data.dev_texts, data.dev_targets, data.dev_features, tolerance=1e-9)
    assert record["file"] is None and not (folder / INT8_FILE).exists()
    assert record["max_abs_diff"] > record["tolerance"]


def test_the_serving_check_runs_on_the_checkpoints_own_dev_rows(trained, tmp_path):
    result, data = trained
    folder = save_checkpoint(result, tmp_path / "v3", {"version": "v3"})
    assert write_dev_sample(folder, data.dev_texts, data.dev_features, rows=20) == 20
    texts, features = read_dev_sample(folder)
    assert texts[0] == data.dev_texts[0] and texts[-1] == data.dev_texts[-1]  # spread over the dev rows
    predictor = Predictor(folder)

    quant = quantized(predictor, tolerance=0.05)
    check = quant.int8_check
    assert check["source"] == "dev rows" and check["rows"] == 20
    # The gap it reports is the one on exactly those rows, features included.
    expected = agreement("regression", predictor.predict(texts, features), quant.predict(texts, features))
    assert check["max_abs_diff"] == pytest.approx(expected["max_abs_diff"], abs=1e-6) == quant.quantization_gap
    assert check["label_agreement"] == expected["label_agreement"]
    with pytest.raises(RefitError, match=r"int8 predictions differ from float by .* on 20 dev rows"):
        quantized(predictor, tolerance=1e-9)

    # A checkpoint saved before refit kept a sample is checked on the fixed texts.
    (folder / DEV_SAMPLE_FILE).unlink()
    assert quantized(predictor, tolerance=0.05).int8_check["source"] == "fixed texts"


def test_an_ensemble_with_features_quantizes_as_one_model(tiny_model, trained, tmp_path):
    result, data = trained
    first = save_checkpoint(result, tmp_path / "m0", {"version": "m0"})
    other = train(tiny_config(tiny_model, epochs=1, seed=7, feature_types=FEATURES), data)
    second = save_checkpoint(other, tmp_path / "m1", {"version": "m1"})
    folder = build_ensemble([first, second], tmp_path / "ensemble", {"version": "v-ens"})
    predictor = Predictor(folder)
    quant = quantized(predictor, 0.05, sample=data.dev_texts, features=data.dev_features)
    got, want = quant.predict(data.dev_texts, data.dev_features), predictor.predict(data.dev_texts, data.dev_features)
    assert got.shape == want.shape and 0 < np.abs(got - want).max() <= 0.05
    # Features reach the int8 model: another value moves its predictions as it moves float's.
    moved = data.dev_features.assign(sessions_7d=data.dev_features["sessions_7d"] * 10 + 50)
    assert np.abs(quant.predict(data.dev_texts, moved) - got).max() > 1e-3


def test_the_dev_sample_keeps_texts_and_feature_values(tmp_path):
    texts = [f"review {i}" for i in range(200)]
    frame = pd.DataFrame(
        {
            "device": ["ios", None] * 100,
            "sessions_7d": [float("nan") if i % 7 == 0 else i for i in range(200)],
            "vec": [[0.5, i] for i in range(200)],
        }
    )
    assert write_dev_sample(tmp_path, texts, frame) == 64
    lines = (tmp_path / DEV_SAMPLE_FILE).read_text().splitlines()
    assert len(lines) == 64 and all(json.loads(line)["text"].startswith("review ") for line in lines)
    got_texts, got = read_dev_sample(tmp_path)
    index = [int(t.split()[1]) for t in got_texts]
    assert index[0] == 0 and index[-1] == 199 and index == sorted(set(index))
    for row, i in zip(got.to_dict("records"), index, strict=True):
        assert row["device"] == frame["device"][i] and row["vec"] == [0.5, i]
        expected = frame["sessions_7d"][i]
        assert math.isnan(row["sessions_7d"]) if math.isnan(expected) else row["sessions_7d"] == expected
    assert write_dev_sample(tmp_path / "none", [], None) == 0 and read_dev_sample(tmp_path / "none") is None
