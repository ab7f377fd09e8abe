"""Saving a trained model as a self-describing checkpoint folder (:mod:`refit.models.checkpoint`)."""

from __future__ import annotations

import platform
import subprocess
from dataclasses import asdict
from pathlib import Path

import torch

from refit.models.checkpoint import write_metadata
from refit.models.config import TrainResult
from refit.models.curves import CURVE_FILE, save_training_curve
from refit.models.fusion import save_model_files


def code_revision() -> str | None:
    """The git commit of the code that trained (None outside a git checkout)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


def save_checkpoint(result: TrainResult, folder: Path, lineage: dict, extra_metrics: dict | None = None) -> Path:
    """Write a self-describing checkpoint folder: ``model.safetensors``, ``config.json``, the
    tokenizer files, ``refit.json`` and ``training_curve.png``.

    Args:
        result: the trained model and how it was trained.
        folder: where the checkpoint goes (created when missing).
        lineage: where the model comes from (``version``, data snapshot, parent); kept in ``refit.json``.
        extra_metrics: metrics beside the dev ones (e.g. the test split's), by split.

    Returns:
        ``folder``.
    """
    import transformers  # slow to import, and only its version is needed here

    folder = Path(folder)
    save_model_files(result.model, result.tokenizer, folder)
    save_training_curve(result.history, result.config.metric, folder / CURVE_FILE)
    versions = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    if result.config.strategy == "lora":
        import peft  # optional: only LoRA runs have it

        versions["peft"] = peft.__version__
    meta = {
        "format": 2,
        "version": lineage.get("version"),
        "task": result.config.task,
        "labels": result.config.labels if result.config.task == "classification" else None,
        "output": "sigmoid score in [0,1]" if result.config.task == "regression" else "softmax over labels",
        "max_length": result.config.max_length,
        "architecture": result.architecture,
        "features": result.model.schema.to_dict(),
        "train_config": asdict(result.config),
        "history": result.history,
        "best_epoch": result.best_epoch,
        "stopped_early": result.stopped_early,
        "stopped_by": result.stopped_by,
        "metrics": {"dev": result.dev_metrics, **(extra_metrics or {})},
        "training": {
            "seconds": round(result.train_seconds, 3),
            "samples_per_second": round(result.samples_per_second, 2),
            "device": result.device,
            "world_size": result.world_size,
            "path": result.path,
        },
        "lineage": {
            **lineage,
            "init": result.init,
            "seed": result.config.seed,
            "code_revision": code_revision(),
            "versions": versions,
        },
    }
    write_metadata(folder, meta)
    return folder
