"""Data-parallel training through torchrun: 2 gloo processes on CPU match one process."""

import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from refit.models.distributed import load_train_data, save_train_data
from refit.models.predict import Predictor
from refit.models.train import train

from model_helpers import review_data, tiny_config


def test_two_gloo_processes_match_one_process(tiny_model, tmp_path):
    data = review_data(240, features=True)
    # dropout off: each rank draws its own dropout masks, which a single process cannot reproduce
    config = tiny_config(
        tiny_model,
        epochs=2,
        batch_size=16,
        dropout=0.0,
        feature_types={"device": "categorical", "sessions_7d": "numeric"},
    )
    (tmp_path / "run.json").write_text(json.dumps(asdict(config)))
    save_train_data(data, tmp_path / "data.parquet")
    assert load_train_data(tmp_path / "data.parquet").train_texts == data.train_texts
    launched = subprocess.run(
        [
            sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            "-m", "refit.models.distributed", "--config", str(tmp_path / "run.json"),
            "--data", str(tmp_path / "data.parquet"), "--out", str(tmp_path / "ddp"),
        ],
        capture_output=True, text=True, timeout=240, cwd=str(Path(__file__).parents[2]),
    )  # fmt: skip
    assert launched.returncode == 0, launched.stderr[-3000:]
    ddp = json.loads((tmp_path / "ddp" / "result.json").read_text())
    single = train(config, data)
    assert ddp["world_size"] == 2 and single.world_size == 1
    for a, b in zip(single.history, ddp["history"], strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-6)
        assert a["dev_mse"] == pytest.approx(b["dev_mse"], abs=1e-6)
    prediction = Predictor(tmp_path / "ddp").predict(data.dev_texts, data.dev_features)
    assert np.mean((prediction - data.dev_targets) ** 2) == pytest.approx(single.dev_metrics["mse"], abs=1e-4)
