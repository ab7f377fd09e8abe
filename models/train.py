"""Fine-tuning a BERT sequence model on feedback: ``train(config, data) -> TrainResult``.

The flow, the CLI and the benchmarks call the same function. Regression predicts a satisfaction
score in [0, 1] through a sigmoid on a single logit; classification predicts named labels with
cross-entropy. Batches are grouped by length and padded to the batch's longest text, the dev
metric is checked every epoch, training stops early on patience, and the best weights (not the
last) are kept.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import platform
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from models.checkpoint import METADATA
from models.metrics import DEFAULT_METRIC, DIRECTION, task_metrics

log = logging.getLogger("refit.train")


@dataclass
class TrainConfig:
    """Everything that decides a training run; saved in the checkpoint."""

    task: str = "regression"
    labels: list[str] = field(default_factory=lambda: ["negative", "neutral", "positive"])
    base_model: str = ""
    epochs: int = 3
    batch_size: int = 16
    learning_rate: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    max_length: int = 128
    patience: int = 1
    min_delta: float = 0.0
    metric: str = ""
    seed: int = 13
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.task not in ("regression", "classification"):
            raise ValueError(f"task must be regression or classification, not {self.task!r}")
        self.metric = self.metric or DEFAULT_METRIC[self.task]
        if self.metric not in DIRECTION:
            raise ValueError(f"unknown metric {self.metric!r}")

    @property
    def n_outputs(self) -> int:
        return 1 if self.task == "regression" else len(self.labels)


@dataclass
class TrainData:
    """Texts and targets (scores in [0, 1], or label indices) for the train and dev splits."""

    train_texts: list[str]
    train_targets: np.ndarray
    dev_texts: list[str]
    dev_targets: np.ndarray


@dataclass
class TrainResult:
    model: torch.nn.Module
    tokenizer: object
    config: TrainConfig
    history: list[dict]
    best_epoch: int
    dev_metrics: dict[str, float]
    stopped_early: bool
    train_seconds: float
    samples_per_second: float
    device: str


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("REFIT_DEVICE=cuda but CUDA is not available on this machine")
    return torch.device(name)


def load_model(source: str, config: TrainConfig):
    """A sequence model and tokenizer from a base model or a checkpoint folder (offline)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the "newly initialized head" notice is expected here
    hf_logging.disable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(source)
    # A base model's head (if any) is replaced by one sized for this task.
    kwargs = {"num_labels": config.n_outputs, "ignore_mismatched_sizes": True}
    if config.task == "classification":
        kwargs["id2label"] = dict(enumerate(config.labels))
        kwargs["label2id"] = {name: i for i, name in enumerate(config.labels)}
    model = AutoModelForSequenceClassification.from_pretrained(source, **kwargs)
    return model, tokenizer


def encode(tokenizer, texts: list[str], max_length: int) -> list[list[int]]:
    """Token ids per text, truncated, unpadded (padding happens per batch)."""
    return tokenizer(list(texts), truncation=True, max_length=max_length, padding=False)["input_ids"]


def collate(ids: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Pad a batch to its own longest sequence, never to a fixed length."""
    width = max(len(seq) for seq in ids)
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for row, seq in enumerate(ids):
        input_ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, : len(seq)] = 1
    return {"input_ids": input_ids, "attention_mask": mask}


def length_bucketed_batches(
    lengths: list[int], batch_size: int, rng: np.random.Generator, pool: int = 50
) -> list[np.ndarray]:
    """Shuffled batches of similar length: shuffle, sort within pools of ``pool`` batches, cut,
    then shuffle the batch order, so each batch pads little and the order stays random."""
    order = rng.permutation(len(lengths))
    lengths_arr = np.asarray(lengths)
    batches = []
    span = batch_size * pool
    for start in range(0, len(order), span):
        chunk = order[start : start + span]
        chunk = chunk[np.argsort(lengths_arr[chunk], kind="stable")]
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def outputs_to_prediction(task: str, logits: torch.Tensor) -> torch.Tensor:
    """Scores in [0, 1] (regression) or class probabilities (classification)."""
    if task == "regression":
        return torch.sigmoid(logits.squeeze(-1).float())
    return torch.softmax(logits.float(), dim=-1)


def loss_fn(task: str, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    if task == "regression":
        return F.mse_loss(torch.sigmoid(logits.squeeze(-1).float()), targets.float())
    return F.cross_entropy(logits.float(), targets.long())


@torch.inference_mode()
def predict_ids(
    model, ids: list[list[int]], task: str, pad_id: int, device: torch.device, batch_size: int = 64
) -> np.ndarray:
    """Predictions for pre-tokenized texts, batched by length, returned in the input order."""
    model.eval()
    order = np.argsort([len(seq) for seq in ids], kind="stable")
    parts: list[np.ndarray] = []
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = {k: v.to(device) for k, v in collate([ids[i] for i in idx], pad_id).items()}
        parts.append(outputs_to_prediction(task, model(**batch).logits).cpu().numpy())
    if not parts:
        return np.zeros((0,) if task == "regression" else (0, model.config.num_labels))
    stacked = np.concatenate(parts, axis=0)
    result = np.empty_like(stacked)
    result[order] = stacked
    return result


def train(config: TrainConfig, data: TrainData, on_epoch: Callable[[dict], None] | None = None) -> TrainResult:
    """Fine-tune ``config.base_model`` on ``data`` with early stopping on the dev metric.

    Args:
        config: the run's settings.
        data: train and dev texts with targets.
        on_epoch: called with each epoch's metrics (for logging or progress).

    Returns:
        The model with its best-epoch weights, the per-epoch history and the dev metrics.
    """
    if len(data.train_texts) == 0:
        raise ValueError("no training rows")
    if len(data.dev_texts) == 0:
        raise ValueError("no dev rows: early stopping and the gate need a dev split")
    seed_everything(config.seed)
    device = pick_device(config.device)
    model, tokenizer = load_model(config.base_model, config)
    model.to(device)
    pad_id = tokenizer.pad_token_id or 0
    train_ids = encode(tokenizer, data.train_texts, config.max_length)
    dev_ids = encode(tokenizer, data.dev_texts, config.max_length)
    targets = torch.tensor(np.asarray(data.train_targets))
    rng = np.random.default_rng(config.seed)

    steps_per_epoch = math.ceil(len(train_ids) / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        (no_decay if param.ndim < 2 or "LayerNorm" in name else decay).append(param)
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.learning_rate,
    )
    warmup = int(total_steps * config.warmup_ratio)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    higher_better = DIRECTION[config.metric]
    best_score, best_state, best_epoch, stale = None, None, 0, 0
    history: list[dict] = []
    seen, started, stopped_early = 0, time.perf_counter(), False
    autocast = device.type == "cuda" and torch.cuda.is_bf16_supported()
    lengths = [len(seq) for seq in train_ids]

    for epoch in range(1, config.epochs + 1):
        model.train()
        epoch_loss = 0.0
        for batch_idx in length_bucketed_batches(lengths, config.batch_size, rng):
            batch = {k: v.to(device) for k, v in collate([train_ids[i] for i in batch_idx], pad_id).items()}
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                logits = model(**batch).logits
            loss = loss_fn(config.task, logits, targets[batch_idx].to(device))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            epoch_loss += float(loss.detach()) * len(batch_idx)
            seen += len(batch_idx)
        dev_pred = predict_ids(model, dev_ids, config.task, pad_id, device)
        metrics = task_metrics(config.task, data.dev_targets, dev_pred, config.n_outputs)
        score = metrics[config.metric]
        record = {
            "epoch": epoch,
            "train_loss": epoch_loss / len(train_ids),
            **{f"dev_{k}": v for k, v in metrics.items()},
        }
        history.append(record)
        if on_epoch:
            on_epoch(record)
        log.info("epoch %d: %s", epoch, json.dumps(record))
        improved = best_score is None or (
            score > best_score + config.min_delta if higher_better else score < best_score - config.min_delta
        )
        if improved:
            best_score, best_epoch, stale = score, epoch, 0
            best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        else:
            stale += 1
            if stale > config.patience:
                stopped_early = epoch < config.epochs
                break
    elapsed = time.perf_counter() - started
    model.load_state_dict(best_state)
    best = history[best_epoch - 1]
    dev_metrics = {k.removeprefix("dev_"): v for k, v in best.items() if k.startswith("dev_")}
    return TrainResult(
        model=model.to("cpu"),
        tokenizer=tokenizer,
        config=copy.deepcopy(config),
        history=history,
        best_epoch=best_epoch,
        dev_metrics=dev_metrics,
        stopped_early=stopped_early,
        train_seconds=elapsed,
        samples_per_second=seen / elapsed if elapsed > 0 else 0.0,
        device=str(device),
    )


def save_checkpoint(result: TrainResult, folder: Path, lineage: dict, extra_metrics: dict | None = None) -> Path:
    """Write a self-describing checkpoint folder (weights, config, tokenizer, ``refit.json``)."""
    import transformers

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    result.model.save_pretrained(folder, safe_serialization=True)
    result.tokenizer.save_pretrained(folder)
    meta = {
        "format": 1,
        "version": lineage.get("version"),
        "task": result.config.task,
        "labels": result.config.labels if result.config.task == "classification" else None,
        "output": "sigmoid score in [0,1]" if result.config.task == "regression" else "softmax over labels",
        "max_length": result.config.max_length,
        "train_config": asdict(result.config),
        "history": result.history,
        "best_epoch": result.best_epoch,
        "stopped_early": result.stopped_early,
        "metrics": {"dev": result.dev_metrics, **(extra_metrics or {})},
        "training": {
            "seconds": round(result.train_seconds, 3),
            "samples_per_second": round(result.samples_per_second, 2),
            "device": result.device,
        },
        "lineage": {
            **lineage,
            "seed": result.config.seed,
            "versions": {
                "python": platform.python_version(),
                "torch": torch.__version__,
                "transformers": transformers.__version__,
            },
        },
    }
    (folder / METADATA).write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
    return folder
