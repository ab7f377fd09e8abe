"""The int8 artifact (models/quantize.py): measured on dev at publish time, recorded, served."""

from __future__ import annotations

import json

import numpy as np
import pytest

from refit.models.int8_artifact import add_int8_artifact
from refit.models.predict import Predictor
from refit.models.quantize import INT8_FILE
from refit.models.saving import save_checkpoint
from refit.models.train import train
from refit.registry.store import open_store
from refit.registry.versions import publish_checkpoint

from model_helpers import review_data, tiny_config


@pytest.fixture(scope="module")
def trained(tiny_model):
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the suite shares two cores
    data = review_data(160, features=True)
    config = tiny_config(tiny_model, epochs=1, feature_types={"category": "categorical", "sessions_7d": "numeric"})
    yield train(config, data), data
    torch.set_num_threads(threads)


def test_int8_difference_is_within_its_recorded_tolerance(trained, tmp_path):
    result, data = trained
    folder = save_checkpoint(result, tmp_path / "v1", {"version": "v1"})
    record = add_int8_artifact(folder, data.dev_texts, data.dev_targets, data.dev_features, tolerance=0.05)
    assert record["file"] == INT8_FILE and (folder / INT8_FILE).is_file()
    assert record["dev_rows"] == len(data.dev_texts)
    assert 0 < record["max_abs_diff"] <= record["tolerance"] == 0.05  # int8 is close, and not identical
    assert json.loads((folder / "refit.json").read_text())["int8"] == record

    # The served int8 model is the published file, and its measured difference is the recorded one.
    float_pred = Predictor(folder).predict(data.dev_texts, data.dev_features)
    int8 = Predictor(folder, int8=True)
    int8_pred = int8.predict(data.dev_texts, data.dev_features)
    assert np.max(np.abs(int8_pred - float_pred)) == pytest.approx(record["max_abs_diff"], abs=1e-7)
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
