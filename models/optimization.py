"""The optimizer and its schedule: AdamW without weight decay on biases and norms, a linear warm-up
then a linear decay to zero over the run's optimizer steps."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from refit.models.config import TrainConfig


@dataclass(frozen=True)
class StepPlan:
    """How many optimizer steps a run takes, and how many of them warm up."""

    steps_per_epoch: int
    total_steps: int
    warmup: int

    @classmethod
    def of(cls, config: TrainConfig, n_rows: int) -> StepPlan:
        """The plan for ``n_rows`` training rows: one step per ``grad_accum_steps`` batches."""
        batches_per_epoch = math.ceil(n_rows / config.batch_size)
        steps_per_epoch = math.ceil(batches_per_epoch / config.grad_accum_steps)
        total_steps = steps_per_epoch * config.epochs
        return cls(steps_per_epoch, total_steps, int(total_steps * config.warmup_ratio))

    def lr_factor(self, step: int) -> float:
        """The learning rate at ``step`` as a fraction of the configured one."""
        if step < self.warmup:
            return (step + 1) / max(1, self.warmup)
        return max(0.0, (self.total_steps - step) / max(1, self.total_steps - self.warmup))


def make_optimizer(
    model: torch.nn.Module, config: TrainConfig, device: torch.device, plan: StepPlan, steps_done: int = 0
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over the trainable parameters and its scheduler.

    Args:
        model: the model; frozen parameters are left out.
        config: the run's learning rate and weight decay.
        device: where the model runs (CPU and CUDA get the fused AdamW).
        plan: the run's steps.
        steps_done: steps already taken; a rebuilt optimizer (after head pruning) continues the
            same schedule.

    Returns:
        The optimizer and its learning-rate scheduler.
    """
    groups: dict[tuple[bool, bool], list] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            no_decay = param.ndim < 2 or "LayerNorm" in name or "norm" in name
            groups.setdefault((name.startswith("head."), no_decay), []).append(param)
    # The head starts from random weights: it may learn faster than the pretrained encoder.
    head_lr = config.learning_rate * config.head_lr_factor
    opt = torch.optim.AdamW(
        [
            {
                "params": params,
                "weight_decay": 0.0 if no_decay else config.weight_decay,
                "lr": head_lr if head else config.learning_rate,
            }
            for (head, no_decay), params in sorted(groups.items())
        ],
        lr=config.learning_rate,
        fused=device.type in ("cpu", "cuda"),  # one kernel instead of a dozen passes over every parameter
    )
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda step: plan.lr_factor(step + steps_done))
