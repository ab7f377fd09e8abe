"""Adversarial training on the word embeddings: FGM (Miyato et al.) and PGD (Madry et al.).

After the clean backward pass, the word-embedding matrix is pushed a small step ``epsilon`` along
its loss gradient (the direction that hurts most), the batch is run again, the adversarial loss's
gradients are added to the clean ones, and the embeddings are put back. PGD takes ``steps``
smaller steps, each projected back into the ``epsilon`` ball, before that last pass.

The embeddings need a gradient even when the strategy freezes them (``freeze``, ``lora``): they
are then made to require one here, but they are not in the optimizer, so they stay unchanged; their
gradient is cleared after every attack.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

METHODS = ("none", "fgm", "pgd")


def word_embeddings(model) -> torch.nn.Embedding:
    """The word-embedding table of a SatisfactionModel's encoder (through a peft wrapper)."""
    return model.encoder.get_input_embeddings()


class EmbeddingAttack:
    """FGM or PGD on a model's word embeddings.

    Args:
        model: the model being trained.
        method: ``fgm`` or ``pgd``.
        epsilon: the L2 norm of the perturbation of the embedding matrix.
        steps: PGD's number of steps (FGM takes one).
    """

    def __init__(self, model, method: str = "fgm", epsilon: float = 1.0, steps: int = 3):
        if method not in ("fgm", "pgd"):
            raise ValueError(f"adversarial method must be fgm or pgd, not {method!r}")
        if epsilon <= 0 or steps < 1:
            raise ValueError("adversarial epsilon must be positive and steps at least 1")
        self.weight = word_embeddings(model).weight
        self.method, self.epsilon, self.steps = method, epsilon, steps
        self.trained = self.weight.requires_grad  # frozen embeddings get a gradient but no update
        self.weight.requires_grad_(True)

    def _direction(self, grad: torch.Tensor | None) -> torch.Tensor | None:
        if grad is None:
            return None
        norm = torch.linalg.vector_norm(grad)
        if not torch.isfinite(norm) or norm == 0:
            return None
        return grad / norm

    def perturb(self, loss_fn: Callable[[], torch.Tensor], clean_grad: torch.Tensor | None) -> torch.Tensor | None:
        """The perturbation to add to the embedding matrix (None when the gradient is zero).

        Args:
            loss_fn: runs the batch forward and returns its (scaled) loss.
            clean_grad: the embedding gradient of the clean pass (FGM's direction, PGD's first step).
        """
        direction = self._direction(clean_grad)
        if direction is None:
            return None
        if self.method == "fgm":
            return self.epsilon * direction
        alpha = self.epsilon / self.steps * 2  # Madry's step: big enough to reach the boundary
        delta = alpha * direction
        for _ in range(self.steps - 1):
            delta = _project(delta, self.epsilon)
            with _added(self.weight, delta):
                (grad,) = torch.autograd.grad(loss_fn(), self.weight)
            step = self._direction(grad)
            if step is None:
                break
            delta = delta + alpha * step
        return _project(delta, self.epsilon)

    def backward_adversarial(self, loss_fn: Callable[[], torch.Tensor]) -> float | None:
        """After the clean ``backward()``: add the adversarial loss's gradients; returns that loss.

        The embedding matrix is restored exactly afterwards.
        """
        clean_grad = None if self.weight.grad is None else self.weight.grad.detach().clone()
        delta = self.perturb(loss_fn, clean_grad)
        if delta is None:
            return None
        with _added(self.weight, delta):
            loss = loss_fn()
            loss.backward()
        if not self.trained:
            self.weight.grad = None
        return float(loss.detach())


def _project(delta: torch.Tensor, epsilon: float) -> torch.Tensor:
    norm = torch.linalg.vector_norm(delta)
    return delta * (epsilon / norm) if norm > epsilon else delta


class _added:
    """Add ``delta`` to a parameter in place for the block, then subtract it back."""

    def __init__(self, weight: torch.Tensor, delta: torch.Tensor):
        self.weight, self.delta = weight, delta
        self.backup: torch.Tensor | None = None

    def __enter__(self):
        with torch.no_grad():
            self.backup = self.weight.detach().clone()
            self.weight.add_(self.delta)

    def __exit__(self, *exc):
        with torch.no_grad():
            self.weight.copy_(self.backup)  # exact restore: no float drift from add then subtract
        return False
