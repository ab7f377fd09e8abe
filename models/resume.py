"""Resumable runs: the full state written after every epoch, and read back by a run started again.

The state holds the weights, the optimizer and scheduler, every random generator, the history and
the best epoch so far. It is tied to one run by a fingerprint of the settings and the data, so a
state left by another run is refused instead of being continued.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from refit.models.config import TrainConfig, TrainData

STATE_FILE = "last_epoch.pt"


@dataclass
class Progress:
    """What a run has done so far: its history, its best epoch, and its counters."""

    history: list[dict] = field(default_factory=list)
    best_score: float | None = None
    best_state: dict | None = None
    best_epoch: int = 0
    stale: int = 0  # epochs since the last improvement
    seen: int = 0  # training rows processed, for samples per second
    elapsed: float = 0.0  # wall seconds of the run before this process took it up
    train_seconds: float = 0.0  # seconds inside training epochs
    epoch: int = 0  # the last finished epoch

    def forget_best(self) -> None:
        """Start choosing the best epoch afresh (the weights before it no longer fit the model)."""
        self.best_score, self.best_state, self.best_epoch, self.stale = None, None, 0, 0


def run_fingerprint(config: TrainConfig, data: TrainData, world: int) -> str:
    """The identity of a run: its settings (less where it runs), its data and its world size."""
    runtime = ("device", "num_threads", "attention", "precision", "path_cache", "budget_seconds")
    settings = {k: v for k, v in asdict(config).items() if k not in runtime}
    return hashlib.sha256(json.dumps([settings, data.fingerprint(), world], default=str).encode()).hexdigest()


def rng_state(rng: np.random.Generator) -> dict:
    """Every random generator a run draws from: Python's, NumPy's global and the run's own, torch's."""
    return {
        "python": random.getstate(),
        "numpy_global": np.random.get_state(),
        "numpy": rng.bit_generator.state,
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def restore_rng(state: dict, rng: np.random.Generator) -> None:
    """Put every random generator back where :func:`rng_state` found it."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy_global"])
    rng.bit_generator.state = state["numpy"]
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_state(
    path: Path, fingerprint: str, model, optimizer, scheduler, rng, progress: Progress, elapsed: float
) -> None:
    """Write the run's full state after an epoch, atomically.

    Args:
        path: the state file.
        fingerprint: the run's :func:`run_fingerprint`.
        model: the model being trained (its current, not its best, weights).
        optimizer: the optimizer.
        scheduler: the learning-rate scheduler.
        rng: the run's own NumPy generator.
        progress: the run so far.
        elapsed: the run's wall seconds up to now, over every process that worked on it.
    """
    state = {
        **{f.name: getattr(progress, f.name) for f in fields(Progress)},
        "fingerprint": fingerprint,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": rng_state(rng),
        "elapsed": elapsed,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # a kill while writing leaves the previous epoch's state intact


def load_state(path: Path, fingerprint: str, model, optimizer, scheduler, rng) -> Progress:
    """Restore a run from its state file into ``model``, ``optimizer``, ``scheduler`` and the generators.

    Returns:
        The run's progress up to its last finished epoch.

    Raises:
        ValueError: the state belongs to another run (different config or data).
    """
    state = torch.load(path, map_location="cpu", weights_only=False)
    if state["fingerprint"] != fingerprint:
        raise ValueError(f"{path} belongs to another run (different config or data); remove it to start over")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    restore_rng(state["rng"], rng)
    return Progress(**{f.name: state[f.name] for f in fields(Progress)})
