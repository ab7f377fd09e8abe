"""TensorBoard event files in the checkpoint, read back; `refit tensorboard` finds them."""

from __future__ import annotations

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from typer.testing import CliRunner

from refit.cli import app
from refit.models.saving import save_checkpoint
from refit.models.train import train
from refit.registry.store import open_store
from refit.registry.versions import publish_checkpoint

from model_helpers import review_data, tiny_config


def test_event_files_hold_the_logged_scalars_and_the_cli_finds_them(tiny_model, tmp_path, monkeypatch):
    data = review_data(100)
    folder = tmp_path / "v-tb"
    config = tiny_config(tiny_model, epochs=2, batch_size=16)
    result = train(config, data, tensorboard_dir=folder / "tensorboard")
    save_checkpoint(result, folder, {"version": "v-tb"})

    events = EventAccumulator(str(folder / "tensorboard"))
    events.Reload()
    scalars = events.Tags()["scalars"]
    assert {"train/loss", "train/learning_rate", "train/epoch_loss", "dev/mse", "dev/spearman"} <= set(scalars)
    steps_per_epoch = -(-len(data.train_texts) // config.batch_size)
    loss = events.Scalars("train/loss")
    assert [e.step for e in loss] == list(range(1, 2 * steps_per_epoch + 1))  # one point per optimizer step
    rates = [e.value for e in events.Scalars("train/learning_rate")]
    assert max(rates) == pytest.approx(config.learning_rate, rel=1e-5) and rates[-1] < rates[0]  # warm-up, decay
    dev = events.Scalars("dev/mse")
    assert [e.step for e in dev] == [1, 2]
    assert [e.value for e in dev] == pytest.approx([h["dev_mse"] for h in result.history], rel=1e-6)

    # Published, then fetched again by `refit tensorboard`, which names the folder TensorBoard reads.
    store_root = tmp_path / "store"
    publish_checkpoint(open_store(store_root.as_uri()), folder, "v-tb")
    monkeypatch.setenv("REFIT_STORE_URL", store_root.as_uri())
    monkeypatch.setenv("REFIT_WORK_DIR", str(tmp_path / "work"))
    out = CliRunner().invoke(app, ["tensorboard", "v-tb", "--print-logdir"])
    assert out.exit_code == 0, out.output
    logdir = out.output.strip()
    assert logdir == str(tmp_path / "work" / "champions" / "v-tb")
    fetched = EventAccumulator(logdir + "/tensorboard")
    fetched.Reload()
    assert len(fetched.Scalars("train/loss")) == len(loss)

    missing = CliRunner().invoke(app, ["tensorboard", "v-none", "--print-logdir"])
    assert missing.exit_code != 0
