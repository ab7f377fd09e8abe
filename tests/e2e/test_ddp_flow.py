"""Data-parallel training from the flow: the real ``retrain`` flow trains with 2 gloo processes
under torchrun (REFIT_TRAIN_PROCESSES), on the real Postgres and S3 server, and gets the dev
metrics that one process gets on the same rows; a rank the kernel kills fails the training cleanly."""

import contextlib
import json
import os
import signal
import threading
import time
from pathlib import Path

import psutil
import pytest

from refit.core.settings import load_settings
from refit.data.db import get_engine
from refit.data.ingest import ingest_file
from refit.data.snapshots import SplitConfig, take_snapshot
from refit.data.validate import IngestRules
from refit.flows.retrain import retrain
from refit.ops.synth import generate_feedback, write_feedback
from refit.registry.layout import model_prefix
from refit.registry.store import open_store
from refit.training.launch import CHILD_MODULE, TrainingKilled, train_in_child

from helpers import count


def test_retrain_trains_data_parallel_with_two_processes_like_one(prefect_api, refit_env, tmp_path, monkeypatch):
    settings = refit_env
    engine = get_engine(settings.database_url)
    store = open_store(settings.store_url)
    rows = write_feedback(generate_feedback(300, seed=1), tmp_path / "feedback.csv")
    ingest_file(engine, rows, IngestRules.from_settings(settings))
    monkeypatch.setenv("REFIT_DEVICE", "cpu")  # gloo, also on a GPU machine
    monkeypatch.setenv("REFIT_TRAIN_PROCESSES", "2")

    ddp = retrain()  # the first run: no champion, no dev set yet (the task creates it before the ranks start)
    assert ddp["outcome"] in ("promoted", "rejected"), ddp
    # the same rows again, from the base model as the first run, in one process (a flow parameter)
    single = retrain(snapshot_id=ddp["snapshot"]["id"], warm_start=False, train_processes=1)
    assert single["outcome"] in ("promoted", "rejected"), single

    ddp_meta, single_meta = (json.loads(store.get(f"{model_prefix(r['version'])}/refit.json")) for r in (ddp, single))
    assert ddp_meta["training"]["world_size"] == 2
    assert single_meta["training"]["world_size"] == 1
    # the same layout and precision in both: the comparison is of the data parallelism alone
    assert ddp_meta["training"]["path"]["attention"] == single_meta["training"]["path"]["attention"] == "padded"
    assert ddp_meta["training"]["path"]["precision"] == single_meta["training"]["path"]["precision"] == "fp32"
    # The model's own dev metrics, epoch by epoch (the summary's may be a blend with TF-IDF). Each
    # rank draws its own dropout masks, so the two runs are close, not equal: here they differed by
    # at most 0.0025 in loss and 0.0014 in MSE; exact equality without dropout is tests/model/test_ddp.py's.
    for a, b in zip(ddp_meta["history"], single_meta["history"], strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=0.01), (a, b)
        assert a["dev_mse"] == pytest.approx(b["dev_mse"], abs=0.005), (a, b)
        assert a["dev_mae"] == pytest.approx(b["dev_mae"], abs=0.01), (a, b)
    assert ddp_meta["best_epoch"] == single_meta["best_epoch"]
    assert ddp["dev_metrics"]["mse"] == pytest.approx(single["dev_metrics"]["mse"], abs=0.005)
    # one dev set, one checkpoint folder per run: the second rank wrote nothing of its own
    assert count(engine, "dev_sets") == 1 and ddp["gate"]["dev_set"] == single["gate"]["dev_set"] == 1
    assert sorted(os.listdir(settings.work_dir / "checkpoints")) == sorted([ddp["version"], single["version"]])
    assert count(engine, "model_versions") == 2
    assert not list((settings.work_dir / "training-process").iterdir())  # settings and status files gone


def test_a_rank_killed_by_the_kernel_fails_the_training_cleanly(refit_env, tmp_path, monkeypatch):
    monkeypatch.setenv("REFIT_DEVICE", "cpu")
    monkeypatch.setenv("REFIT_EPOCHS", "50")  # still training when the kill lands
    settings = load_settings().with_overrides(train_processes=2)
    engine = get_engine(settings.database_url)
    rows = write_feedback(generate_feedback(200, seed=1), tmp_path / "feedback.csv")
    ingest_file(engine, rows, IngestRules.from_settings(settings))
    snapshot = take_snapshot(engine, SplitConfig.from_settings(settings))
    ranks: list[psutil.Process] = []
    killer = threading.Thread(target=_kill_a_rank_once_it_trains, args=(ranks,), daemon=True)
    killer.start()
    with pytest.raises(TrainingKilled, match=r"killed \(SIGKILL\)"):
        train_in_child(settings, snapshot, None)
    killer.join(5)
    assert len(ranks) == 2
    _, alive = psutil.wait_procs(ranks, timeout=10)
    assert not alive  # torchrun stopped the other rank: no orphan trains on
    assert count(engine, "model_versions") == 0


def _kill_a_rank_once_it_trains(ranks: list) -> None:
    """SIGKILL rank 1 (as the kernel's OOM killer would) a second after rank 0 reports that it trains."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        workers = []
        for process in psutil.Process().children(recursive=True):
            with contextlib.suppress(psutil.Error):
                command = process.cmdline()
                if CHILD_MODULE in command and "torch.distributed.run" not in command:
                    workers.append((process, command))
        status = Path(workers[0][1][-1]) if workers else None
        if len(workers) == 2 and status.is_file() and status.read_text() == "training":
            time.sleep(1)
            ranks.extend(process for process, _ in workers)
            rank1 = next(p for p in ranks if p.environ().get("RANK") == "1")
            rank1.send_signal(signal.SIGKILL)
            return
        time.sleep(0.05)
