"""Data-parallel training under ``torchrun``: the same ``train()``, one process per device.

    torchrun --standalone --nproc_per_node 2 -m refit.models.distributed \\
        --config run.json --data data.parquet --out checkpoint/ [--resume-dir state/]

``run.json`` holds :class:`refit.models.config.TrainConfig` fields; ``data.parquet`` the rows written by
:func:`save_train_data`. Every rank reads the same data and builds the same length-bucketed
batches, takes its share of each batch, and DistributedDataParallel averages the gradients, so the
optimizer follows the same global batches as one process would. Rank 0 writes the checkpoint and
``result.json``. The backend is NCCL on CUDA and gloo on CPU; multi-node runs use torchrun's own
rendezvous options.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist

from refit.models.config import TrainConfig, TrainData
from refit.models.saving import save_checkpoint
from refit.models.train import train

FEATURE_PREFIX = "feature:"


def save_train_data(data: TrainData, path: Path) -> Path:
    """Write train and dev rows (text, target, features) to one Parquet file."""
    parts = []
    for split, texts, targets, features in (
        ("train", data.train_texts, data.train_targets, data.train_features),
        ("dev", data.dev_texts, data.dev_targets, data.dev_features),
    ):
        frame = pd.DataFrame({"split": split, "text": list(texts), "target": np.asarray(targets)})
        if features is not None:
            for name in features.columns:
                frame[FEATURE_PREFIX + str(name)] = features[name].to_numpy()
        parts.append(frame)
    pd.concat(parts, ignore_index=True).to_parquet(path)
    return Path(path)


def load_train_data(path: Path) -> TrainData:
    frame = pd.read_parquet(path)
    feature_columns = [c for c in frame.columns if c.startswith(FEATURE_PREFIX)]

    def part(split: str):
        rows = frame[frame["split"] == split].reset_index(drop=True)
        features = rows[feature_columns].rename(columns=lambda c: c.removeprefix(FEATURE_PREFIX))
        return rows["text"].tolist(), rows["target"].to_numpy(), features if feature_columns else None

    train_texts, train_targets, train_features = part("train")
    dev_texts, dev_targets, dev_features = part("dev")
    return TrainData(train_texts, train_targets, dev_texts, dev_targets, train_features, dev_features)


def backend_for(device: str) -> str:
    """The process group's backend for a run on ``device`` (``auto``, ``cpu``, ``cuda``): NCCL when it
    trains on CUDA, gloo on the CPU."""
    return "nccl" if device != "cpu" and torch.cuda.is_available() else "gloo"


@contextmanager
def process_group(device: str) -> Iterator[None]:
    """This torchrun worker's process group, for the block (torchrun's environment says where the
    others are).

    On CUDA, each rank's own GPU is made current, as :func:`refit.models.train.pick_device` places
    its model, so that collectives outside the model do not all land on GPU 0.

    Args:
        device: the run's device setting (``auto``, ``cpu``, ``cuda``): NCCL on CUDA, else gloo.

    Yields:
        Nothing; the group is destroyed when the block ends.
    """
    backend = backend_for(device)
    dist.init_process_group(backend=backend)
    try:
        if backend == "nccl":
            torch.cuda.set_device(dist.get_rank() % torch.cuda.device_count())
        yield
    finally:
        dist.destroy_process_group()


def is_main_rank() -> bool:
    """True in a single process, and on rank 0 of a process group: the process that writes and reports."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def die_with_launcher() -> None:
    """Have the kernel SIGKILL this worker when its launcher dies (Linux; elsewhere a no-op).

    A launcher killed by the kernel (out of memory) or by a timeout would otherwise leave its
    workers training on as orphans, holding its output pipe open, so that whoever waits on the
    launcher waits for them too.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1  # <linux/prctl.h>
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGKILL))


def load_config(path: Path) -> TrainConfig:
    values = json.loads(Path(path).read_text())
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{path}: unknown training settings {', '.join(unknown)}")
    return TrainConfig(**values)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--resume-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    config = load_config(args.config)
    data = load_train_data(args.data)
    die_with_launcher()
    with process_group(config.device):
        result = train(config, data, resume_dir=args.resume_dir)
        if is_main_rank():
            save_checkpoint(result, args.out, lineage={"version": args.out.name})
            summary = {
                "history": result.history,
                "best_epoch": result.best_epoch,
                "dev_metrics": result.dev_metrics,
                "world_size": result.world_size,
                "samples_per_second": result.samples_per_second,
            }
            (args.out / "result.json").write_text(json.dumps(summary, indent=2))
        dist.barrier()


if __name__ == "__main__":
    main()
