"""Fine-tuning the satisfaction model on feedback: ``train(config, data) -> TrainResult``.

The flow, the CLI, ``torchrun`` and the benchmarks call the same function. Regression predicts a
satisfaction score in [0, 1] through a sigmoid on a single logit (MSE or BCE); classification
predicts named labels with cross-entropy (class weights optional). Batches are grouped by length
and padded to the batch's longest text; gradients can be accumulated over several batches and are
clipped; the dev metric is checked every epoch, training stops early on patience and min-delta,
and the best weights (not the last) are kept.

The pieces live beside this loop: the settings in :mod:`refit.models.config`, the start and the
fine-tuning strategy in :mod:`refit.models.strategies`, the loss in :mod:`refit.models.objective`,
the optimizer in :mod:`refit.models.optimization`, compression in :mod:`refit.models.compression`,
the resumable state in :mod:`refit.models.resume`, TensorBoard in :mod:`refit.models.curves`, and
the checkpoint in :mod:`refit.models.saving`.

Runs are seeded (Python, NumPy, torch) with a deterministic data order, and resumable: with a
``resume_dir``, the full state is written after every epoch and a killed run picks up from it.
Under ``torchrun`` (a ``torch.distributed`` process group already initialized) each rank takes its
share of every batch and DistributedDataParallel averages the gradients, so the optimizer sees the
same global batches as a single process.
"""

from __future__ import annotations

import copy
import json
import logging
import random
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from refit.models.adversarial import EmbeddingAttack
from refit.models.augment import Paraphraser, augment_texts
from refit.models.compression import keep_bottom_layers, prune_by_importance
from refit.models.config import TrainConfig, TrainData, TrainResult
from refit.models.curves import TensorBoardLog
from refit.models.fusion import FeatureSchema, architecture, take
from refit.models.inference import collate, encode, predict_ids
from refit.models.metrics import DIRECTION, task_metrics
from refit.models.objective import class_weight_tensor, per_sample_loss
from refit.models.optimization import StepPlan, make_optimizer
from refit.models.paths import TrainPath, choose_attention, resolve_precision
from refit.models.resume import STATE_FILE, Progress, load_state, run_fingerprint, save_state
from refit.models.strategies import apply_strategy, initial_model, merge_adapters

log = logging.getLogger("refit.train")


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(name: str, rank: int = 0) -> torch.device:
    """The device for ``name`` (``auto``, ``cpu``, ``cuda``…); under torchrun each rank gets its own GPU.

    Raises:
        RuntimeError: CUDA was asked for and there is none.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("REFIT_DEVICE=cuda but CUDA is not available on this machine")
        return torch.device("cuda", rank % torch.cuda.device_count())
    return torch.device(name)


def length_bucketed_batches(
    lengths: list[int], batch_size: int, rng: np.random.Generator, pool: int = 50
) -> list[np.ndarray]:
    """Shuffled batches of similar length, so each batch pads little and the order stays random.

    Shuffle, sort within pools of ``pool`` batches, cut, then shuffle the batch order.

    Args:
        lengths: each row's token count.
        batch_size: rows per batch.
        rng: the run's random generator.
        pool: batches sorted together.

    Returns:
        The batches, as arrays of row indices.
    """
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


def train(
    config: TrainConfig,
    data: TrainData,
    on_epoch: Callable[[dict], None] | None = None,
    resume_dir: Path | None = None,
    on_step: Callable[[int, int], None] | None = None,
    tensorboard_dir: Path | None = None,
    paraphrase: Paraphraser | None = None,
    on_epoch_texts: Callable[[int, list[str]], None] | None = None,
) -> TrainResult:
    """Fine-tune on ``data`` with early stopping on the dev metric.

    Args:
        config: the run's settings.
        data: train and dev texts with targets (and features, when configured).
        on_epoch: called with each epoch's metrics (for logging).
        resume_dir: where the state is written after every epoch; a run started again with the
            same config, data and folder resumes after the last finished epoch. Removed on success.
        on_step: called after every optimizer step with (epoch, step in epoch).
        tensorboard_dir: where TensorBoard event files go (per-step loss and learning rate,
            per-epoch dev metrics); None writes none.
        paraphrase: the back-translation hook for ``augment_paraphrase_rate`` (refit ships none).
        on_epoch_texts: called with (epoch, the training texts of that epoch after augmentation).

    Returns:
        The model with its best-epoch weights (LoRA merged), the per-epoch history, the dev metrics.
    """
    if len(data.train_texts) == 0:
        raise ValueError("no training rows")
    if len(data.dev_texts) == 0:
        raise ValueError("no dev rows: early stopping and the gate need a dev split")
    previous_threads = torch.get_num_threads()
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    try:
        hooks = _Hooks(on_epoch, on_step, paraphrase, on_epoch_texts)
        return _Run(config, data, hooks, resume_dir, tensorboard_dir).run()
    finally:
        torch.set_num_threads(previous_threads)


@dataclass
class _Hooks:
    """The caller's callbacks (see :func:`train`)."""

    on_epoch: Callable[[dict], None] | None
    on_step: Callable[[int, int], None] | None
    paraphrase: Paraphraser | None
    on_epoch_texts: Callable[[int, list[str]], None] | None


class _Run:
    """One call of :func:`train`. Building it prepares the model, the rows, the optimizer and a
    resumed state; :meth:`run` is the loop, one method per step of an epoch."""

    def __init__(self, config: TrainConfig, data: TrainData, hooks: _Hooks, resume_dir, tensorboard_dir):
        self.config, self.data, self.hooks = config, data, hooks
        self.distributed = dist.is_available() and dist.is_initialized()
        self.rank, self.world = (dist.get_rank(), dist.get_world_size()) if self.distributed else (0, 1)
        if self.distributed and (config.adversarial != "none" or config.prune_heads):
            raise ValueError("adversarial training and head pruning run in one process, not under torchrun")
        if resume_dir is not None and config.prune_heads:
            raise ValueError("a run that prunes heads cannot resume: the weights change shape mid-run")
        seed_everything(config.seed)
        self.device = pick_device(config.device, self.rank)
        self._prepare_model()
        self._encode_rows()
        self.rng = np.random.default_rng(config.seed)
        if self.distributed:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.runner = DistributedDataParallel(self.model, device_ids=device_ids)
        else:
            self.runner = self.model
        self.plan = StepPlan.of(config, len(self.train_ids))
        self.optimizer, self.scheduler = make_optimizer(self.model, config, self.device, self.plan)
        # After the optimizer: frozen embeddings get a gradient for the attack but stay out of it.
        self.attack = (
            EmbeddingAttack(self.model, config.adversarial, config.adversarial_epsilon, config.adversarial_steps)
            if config.adversarial != "none"
            else None
        )
        self.tensorboard = TensorBoardLog(tensorboard_dir if self.rank == 0 else None)
        self.fingerprint = run_fingerprint(config, data, self.world)
        self.state_path = Path(resume_dir) / STATE_FILE if resume_dir else None
        self.progress = Progress()
        if self.state_path is not None and self.state_path.is_file():
            self.progress = load_state(
                self.state_path, self.fingerprint, self.model, self.optimizer, self.scheduler, self.rng
            )
            log.info("resuming after epoch %d from %s", self.progress.epoch, self.state_path)
        self.precision = resolve_precision(config.precision, self.device, self.model.encoder.config.hidden_size)
        self.autocast = self.precision == "bf16"
        self.show_progress = self.rank == 0 and sys.stderr.isatty()

    def _prepare_model(self) -> None:
        """The model to train on its device: started, cut to ``keep_layers``, with its strategy applied."""
        config = self.config
        schema = FeatureSchema.fit(config.feature_types, self.data.train_features, config.vector_feature)
        self.model, self.tokenizer, self.init = initial_model(config, schema)
        keep_bottom_layers(self.model, config)
        apply_strategy(self.model, config)
        self.model.to(self.device)

    def _encode_rows(self) -> None:
        """Token ids, features, targets and class weights, encoded once for the whole run."""
        config, data, device = self.config, self.data, self.device
        schema = self.model.schema  # a warm start keeps the champion's statistics and vocabularies
        self.pad_id = self.tokenizer.pad_token_id or 0
        self.train_ids = encode(self.tokenizer, data.train_texts, config.max_length)
        self.dev_ids = encode(self.tokenizer, data.dev_texts, config.max_length)
        self.train_features = schema.encode(data.train_features, len(self.train_ids))
        self.dev_features = schema.encode(data.dev_features, len(self.dev_ids))
        self.targets = torch.tensor(np.asarray(data.train_targets))
        class_weights = class_weight_tensor(config, data.train_targets)
        self.class_weights = class_weights.to(device) if class_weights is not None else None

    # --- the loop ---------------------------------------------------------------------------------

    def run(self) -> TrainResult:
        """Train epoch by epoch until the last one or the patience runs out; the best epoch's model."""
        config, progress = self.config, self.progress
        resumed_from = progress.epoch
        self.started = started = time.perf_counter()
        self.global_step = progress.epoch * self.plan.steps_per_epoch
        stopped_by = None
        self.over_budget = False
        finished = progress.epoch >= config.epochs or progress.stale > config.patience
        self.path = self._choose_path() if not finished else TrainPath("padded", self.precision, "no step ran")
        self.model.attention = self.path.attention
        log.info("training path: %s", json.dumps(self.path.as_dict()))
        for epoch in range(progress.epoch + 1, config.epochs + 1) if not finished else ():
            score = self._epoch(epoch)
            self._keep_best(epoch, score)
            progress.epoch = epoch
            if self.state_path is not None:
                self._save_state(progress.elapsed + time.perf_counter() - started)
            if self.over_budget:
                stopped_by = "budget"
                log.info(
                    "training stopped at its budget of %.0f s in epoch %d; keeping the best weights, of epoch %d",
                    config.budget_seconds,
                    epoch,
                    progress.best_epoch,
                )
                break
            if progress.stale > config.patience:
                stopped_by = "patience" if epoch < config.epochs else None
                break
        stopped_early = stopped_by is not None or (len(progress.history) < config.epochs)
        self.tensorboard.close()
        result = self._result(progress.elapsed + time.perf_counter() - started, stopped_early, resumed_from)
        result.stopped_by = stopped_by
        return result

    def _choose_path(self) -> TrainPath:
        """The attention layout, timed on the run's median-sized batch (models/paths.py)."""
        config = self.config
        lengths = [len(seq) for seq in self.train_ids]
        batches = length_bucketed_batches(lengths, config.batch_size, np.random.default_rng(config.seed))
        cells = [len(b) * max(lengths[i] for i in b) for b in batches]
        idx = batches[int(np.argsort(cells, kind="stable")[len(cells) // 2])]
        batch, feats, targets = self._rows_on_device(self.train_ids, idx)
        was_training = self.model.training
        self.model.train()
        try:
            return choose_attention(
                self.model,
                config.attention,
                self.precision,
                lambda: self._losses(batch, feats, targets).sum(),
                self.device,
                config.batch_size,
                steps=self.plan.steps_per_epoch * config.epochs,
                distributed=self.distributed,
                cache=Path(config.path_cache) if config.path_cache else None,
            )
        finally:
            self.model.train(was_training)

    def _budget_spent(self) -> bool:
        """Whether the run's time (resumed runs count their earlier time) has reached the budget;
        under torchrun every rank gets rank 0's answer, so all stop on the same step."""
        budget = self.config.budget_seconds
        if budget is None:
            return False
        spent = self.progress.elapsed + time.perf_counter() - self.started >= budget
        if self.distributed:
            flag = torch.tensor([1.0 if spent else 0.0], device=self.device)
            dist.broadcast(flag, src=0)
            spent = bool(flag.item())
        return spent

    def _epoch(self, epoch: int) -> float:
        """Train one epoch, measure it on the dev rows and record it; returns its dev score."""
        config = self.config
        self.model.train()
        epoch_started, epoch_cpu = time.perf_counter(), time.process_time()
        train_ids = self._epoch_ids(epoch)
        epoch_loss = self._train_batches(epoch, train_ids)
        pruned_now = 0
        if config.prune_heads and epoch == config.prune_after_epoch:
            pruned_now = prune_by_importance(
                self.model, config, train_ids, self.train_features, self.targets, self.pad_id, self.device
            )
            self.optimizer, self.scheduler = make_optimizer(
                self.model, config, self.device, self.plan, self.global_step
            )
            # The unpruned epochs' weights do not fit the pruned model: the best is chosen from here on.
            self.progress.forget_best()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        epoch_seconds = time.perf_counter() - epoch_started
        epoch_cpu = time.process_time() - epoch_cpu  # all threads of this process: robust on a shared machine
        self.progress.train_seconds += epoch_seconds
        if self.distributed:  # each rank summed the loss of its own rows
            total = epoch_loss.to(self.device)
            dist.all_reduce(total)
            epoch_loss = total.cpu()
        dev_pred = predict_ids(
            self.model, self.dev_ids, config.task, self.pad_id, self.device, features=self.dev_features
        )
        metrics = task_metrics(config.task, self.data.dev_targets, dev_pred, config.n_outputs)
        record = {
            "epoch": epoch,
            "train_loss": float(epoch_loss) / len(train_ids),
            "learning_rate": self.scheduler.get_last_lr()[0],
            "train_seconds": round(epoch_seconds, 3),
            "train_cpu_seconds": round(epoch_cpu, 3),
            **({"stopped_at_budget": True} if self.over_budget else {}),
            **{f"dev_{k}": v for k, v in metrics.items()},
            **({"pruned_heads": pruned_now} if pruned_now else {}),
        }
        self.progress.history.append(record)
        self.tensorboard.epoch(record["train_loss"], metrics, epoch)
        if self.hooks.on_epoch and self.rank == 0:
            self.hooks.on_epoch(record)
        log.info("epoch %d: %s", epoch, json.dumps(record))
        return metrics[config.metric]

    def _epoch_ids(self, epoch: int) -> list[list[int]]:
        """This epoch's training token ids: the encoded rows, or their augmented texts re-encoded."""
        config, data, hooks = self.config, self.data, self.hooks
        augmentation = config.augmentation
        if augmentation.active:  # training rows only; the dev ids stay as the data is
            texts = augment_texts(data.train_texts, augmentation, config.seed, epoch, hooks.paraphrase)
            train_ids = encode(self.tokenizer, texts, config.max_length)
            if hooks.on_epoch_texts:
                hooks.on_epoch_texts(epoch, texts)
            return train_ids
        if hooks.on_epoch_texts:
            hooks.on_epoch_texts(epoch, list(data.train_texts))
        return self.train_ids

    def _train_batches(self, epoch: int, train_ids: list[list[int]]) -> torch.Tensor:
        """One pass over the length-bucketed batches, one optimizer step per ``grad_accum_steps``
        of them; returns the summed loss of this rank's rows."""
        config = self.config
        epoch_loss = torch.zeros((), dtype=torch.float64)
        batches = length_bucketed_batches([len(seq) for seq in train_ids], config.batch_size, self.rng)
        bar = _progress_bar(len(batches), epoch) if self.show_progress else None
        for group_start in range(0, len(batches), config.grad_accum_steps):
            group = batches[group_start : group_start + config.grad_accum_steps]
            group_rows = sum(len(b) for b in group)
            group_loss = 0.0
            for micro, batch_idx in enumerate(group):
                batch_loss = self._backward(train_ids, batch_idx, group_rows, last=micro == len(group) - 1)
                epoch_loss += batch_loss
                group_loss += batch_loss
                if bar is not None:
                    bar.update(1)
            self._optimizer_step(group_loss / max(1, group_rows))
            self.progress.seen += group_rows
            if self.hooks.on_step:
                self.hooks.on_step(epoch, group_start // config.grad_accum_steps + 1)
            if self._budget_spent():
                self.over_budget = True
                break
        if bar is not None:
            bar.close()
        return epoch_loss

    def _backward(self, train_ids: list[list[int]], batch_idx: np.ndarray, group_rows: int, last: bool) -> float:
        """Forward and backward this rank's share of one batch (and its adversarial loss); returns
        the summed loss of its rows. Gradients are synchronized on the group's last batch only."""
        local = batch_idx[self.rank :: self.world]
        weight = self.world / group_rows  # DDP averages over ranks: this makes it the group's mean
        if len(local) == 0:  # a batch smaller than the world: this rank joins with a zero loss
            local, weight = batch_idx[:1], 0.0
        batch, feats, targets = self._rows_on_device(train_ids, local)
        sync = self.runner.no_sync() if self.distributed and not last else nullcontext()
        with sync:
            losses = self._losses(batch, feats, targets)
            (losses.sum() * weight).backward()
            if self.attack is not None and weight:
                self.attack.backward_adversarial(lambda: self._losses(batch, feats, targets).sum() * weight)
        return float(losses.detach().sum()) if weight else 0.0

    def _rows_on_device(
        self, train_ids: list[list[int]], rows
    ) -> tuple[dict[str, torch.Tensor], dict | None, torch.Tensor]:
        """The collated token ids, the features and the targets of training ``rows``, on the device."""
        batch = {k: v.to(self.device) for k, v in collate([train_ids[i] for i in rows], self.pad_id).items()}
        feats = take(self.train_features, rows, self.device) if self.train_features else None
        return batch, feats, self.targets[rows].to(self.device)

    def _losses(self, batch: dict[str, torch.Tensor], feats, targets: torch.Tensor) -> torch.Tensor:
        """The per-row loss of one batch, the forward pass in bf16 where the GPU has it."""
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            logits = self.runner(**batch, features=feats)
        return per_sample_loss(self.config, logits, targets, self.class_weights)

    def _optimizer_step(self, mean_loss: float) -> None:
        """Clip, step, log the step, advance the schedule, and clear the gradients."""
        if self.config.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.max_grad_norm)
        self.optimizer.step()
        self.global_step += 1
        self.tensorboard.step(mean_loss, self.scheduler.get_last_lr()[0], self.global_step)
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def _keep_best(self, epoch: int, score: float) -> None:
        """Keep this epoch's weights when its score beats the best by ``min_delta``; else count it stale."""
        config, progress = self.config, self.progress
        higher_better = DIRECTION[config.metric]
        best = progress.best_score
        improved = best is None or (
            score > best + config.min_delta if higher_better else score < best - config.min_delta
        )
        if improved:
            progress.best_score, progress.best_epoch, progress.stale = score, epoch, 0
            progress.best_state = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
        else:
            progress.stale += 1

    def _save_state(self, elapsed: float) -> None:
        """Rank 0 writes the resumable state; the other ranks wait for it."""
        if self.rank == 0:
            save_state(
                self.state_path,
                self.fingerprint,
                self.model,
                self.optimizer,
                self.scheduler,
                self.rng,
                self.progress,
                elapsed,
            )
        if self.distributed:
            dist.barrier()

    def _result(self, elapsed: float, stopped_early: bool, resumed_from: int) -> TrainResult:
        """The best epoch's model (LoRA merged, on the CPU) and how the run went; the state file goes."""
        config, progress, model = self.config, self.progress, self.model
        model.load_state_dict(progress.best_state)
        merge_adapters(model)
        model.eval()
        if self.state_path is not None and self.rank == 0:
            self.state_path.unlink(missing_ok=True)
        best = progress.history[progress.best_epoch - 1]
        dev_metrics = {k.removeprefix("dev_"): v for k, v in best.items() if k.startswith("dev_")}
        train_seconds = progress.train_seconds
        return TrainResult(
            model=model.to("cpu"),
            tokenizer=self.tokenizer,
            config=copy.deepcopy(config),
            history=progress.history,
            best_epoch=progress.best_epoch,
            dev_metrics=dev_metrics,
            stopped_early=stopped_early,
            train_seconds=elapsed,
            samples_per_second=progress.seen / train_seconds if train_seconds > 0 else 0.0,
            device=str(self.device),
            init=self.init,
            architecture=architecture(model, config.n_outputs, config.fusion_width),
            world_size=self.world,
            resumed_from_epoch=resumed_from,
            path=self.path.as_dict(),
        )


def _progress_bar(total: int, epoch: int):
    from tqdm.auto import tqdm  # only on a terminal: a run in a flow or a test never loads it

    return tqdm(total=total, desc=f"epoch {epoch}", unit="batch", leave=False)
