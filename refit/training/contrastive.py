"""SetFit's first stage for few labels: the encoder tuned contrastively on pairs of labelled rows.

SetFit (Tunstall et al. 2022) fine-tunes a sentence-transformer on pairs of labelled texts, the
cosine similarity of their mean-pooled embeddings pulled to 1 for two rows of one class and to 0
for two of different classes (its ``CosineSimilarityLoss``), then fits a head on the tuned
embeddings. A few hundred labels give tens of thousands of pairs, so the encoder sees many more
training signals than the rows alone give. :func:`contrastive_encoder` runs that first stage on
the packaged MiniLM (itself a sentence-transformer, mean-pooled as refit's model pools it) and
saves the encoder as a base-model folder; the run's usual fine-tune then trains the head (and the
encoder) from it, as it does from an adapted encoder.

Pairs are drawn as SetFit draws them: for each row, ``PAIRS_PER_ROW // 2`` rounds of one row of its
own class and one of another. They are trained in a seeded random order until the pairs end or the
wall-time budget (``REFIT_SETFIT_BUDGET_MINUTES``) does, the learning rate warming up and then
decaying linearly to zero at whichever end comes first. Only the training rows it is given are
used: the caller passes the training split, never the validation fold, the gate's dev rows or a
test split.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from refit.core.settings import Settings
from refit.models.train import pick_device, seed_everything
from refit.training.modeling import resolve_base_model
from refit.training.progress import duration

log = logging.getLogger("refit.contrastive")

PAIRS_PER_ROW = 20  # SetFit's default: 10 rounds of one positive and one negative pair per row
LEARNING_RATE = 2e-5  # SetFit's body learning rate
WARMUP_SHARE = 0.1  # of the pairs that fit the budget (estimated after the first steps)
MAX_GRAD_NORM = 1.0
SAVE_SECONDS = 5.0  # kept from the budget for saving the encoder
PROGRESS_SECONDS = 30.0  # a progress line at most this often


@dataclass(frozen=True)
class Contrastive:
    """An encoder tuned on pairs of labelled rows, ready for fine-tuning to start from.

    Attributes:
        folder: an encoder folder that ``AutoModel`` and ``AutoTokenizer`` load (config.json,
            weights, tokenizer files), and refit's trainer as its base model.
        record: how the tuning ran (see :func:`contrastive_encoder`).
    """

    folder: Path
    record: dict

    def lineage(self) -> dict:
        """What a checkpoint fine-tuned from this encoder records of it."""
        keys = ("base_model", "rows", "rows_digest", "pairs_trained", "pairs_planned", "stopped_by")
        return {"method": "setfit contrastive pairs", **{key: self.record[key] for key in keys}}


def contrastive_encoder(
    settings: Settings,
    base_model: str,
    texts: list[str],
    labels: np.ndarray,
    folder: Path,
    logger: logging.Logger | None = None,
    *,
    learning_rate: float = LEARNING_RATE,
    clock: Callable[[], float] = time.monotonic,
) -> Contrastive:
    """``base_model`` tuned on sentence pairs of ``texts`` by their ``labels``, saved in ``folder``.

    Args:
        settings: refit's settings: ``setfit_budget_minutes``, ``max_length``, ``batch_size`` (pairs
            per step), ``seed``, ``num_threads``, ``device``.
        base_model: the encoder to start from: the packaged model's name, a folder, or a model id.
        texts: the training rows' texts (already redacted at ingest).
        labels: their class indices.
        folder: where the encoder and its tokenizer are written (created).
        logger: where the progress lines go (default: ``refit.contrastive``).
        learning_rate: the peak rate (SetFit's 2e-5 for a pretrained encoder).
        clock: the time source of the budget, in seconds.

    Returns:
        The tuned encoder. Its ``record`` holds ``base_model``, ``rows``, ``rows_digest`` (of the
        texts and labels it trained on), ``classes``, ``pairs_planned``, ``pairs_trained``,
        ``steps``, ``loss_first`` and ``loss_last`` (the mean loss of the first and last tenth of the
        steps), ``learning_rate``, ``seconds``, ``pairs_per_second`` and ``stopped_by`` (``budget``
        or ``pairs``).

    Raises:
        ValueError: fewer than two classes, or texts and labels of different lengths.
    """
    from transformers import AutoModel, AutoTokenizer

    logger = logger or log
    labels = np.asarray(labels, dtype=int)
    if len(texts) != len(labels):
        raise ValueError(f"{len(texts)} texts but {len(labels)} labels")
    if len(np.unique(labels)) < 2:
        raise ValueError("contrastive pairs need rows of at least two classes")
    started = clock()
    budget = settings.setfit_budget_minutes * 60
    deadline = started + budget - min(SAVE_SECONDS, 0.1 * budget)
    previous_threads = torch.get_num_threads()
    if settings.num_threads:
        torch.set_num_threads(settings.num_threads)
    try:
        seed_everything(settings.seed)
        source = resolve_base_model(base_model)
        device = pick_device(settings.device)
        tokenizer = AutoTokenizer.from_pretrained(source)
        encoder = AutoModel.from_pretrained(source).float().to(device).train()
        tokens = tokenizer(list(texts), truncation=True, max_length=settings.max_length)["input_ids"]
        rng = np.random.default_rng(settings.seed)
        pairs = sentence_pairs(labels, rng)
        optimizer = torch.optim.AdamW(encoder.parameters(), lr=learning_rate, weight_decay=0.01)
        size = settings.batch_size
        planned_steps = math.ceil(len(pairs) / size)
        losses: list[float] = []
        trained, stopped_by, next_line = 0, "pairs", started + PROGRESS_SECONDS
        for step in range(planned_steps):
            now = clock()
            if now >= deadline:
                stopped_by = "budget"
                break
            # Steps the budget allows at the rate so far (all of them before the first is timed).
            rate = step / max(now - started, 1e-9) if step >= 3 else math.inf
            steps_total = min(planned_steps, step + (deadline - now) * rate) if rate < math.inf else planned_steps
            warmup = max(1.0, WARMUP_SHARE * steps_total)
            factor = min((step + 1) / warmup, max(0.0, (steps_total - step) / max(1.0, steps_total - warmup)))
            for group in optimizer.param_groups:
                group["lr"] = learning_rate * factor
            batch = pairs[step * size : (step + 1) * size]
            loss = _pair_loss(encoder, tokenizer, tokens, batch, device)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(encoder.parameters(), MAX_GRAD_NORM)
            optimizer.step()
            losses.append(float(loss.detach()))
            trained += len(batch)
            if clock() >= next_line:
                next_line = clock() + PROGRESS_SECONDS
                logger.info(
                    "setfit pairs: %d of %d trained, loss %.4f, %s of the %s budget left",
                    trained, len(pairs), float(np.mean(losses[-10:])), duration(deadline - clock()), duration(budget),
                )  # fmt: skip
        folder.mkdir(parents=True, exist_ok=True)
        encoder.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    finally:
        torch.set_num_threads(previous_threads)
    seconds = clock() - started
    tenth = max(1, len(losses) // 10)
    record = {
        "base_model": base_model,
        "rows": len(texts),
        "rows_digest": rows_digest(texts, labels),
        "classes": int(len(np.unique(labels))),
        "pairs_planned": len(pairs),
        "pairs_trained": trained,
        "steps": len(losses),
        "loss_first": round(float(np.mean(losses[:tenth])), 4) if losses else None,
        "loss_last": round(float(np.mean(losses[-tenth:])), 4) if losses else None,
        "learning_rate": learning_rate,
        "seconds": round(seconds, 1),
        "pairs_per_second": round(trained / seconds, 2) if seconds > 0 else None,
        "stopped_by": stopped_by,
    }
    logger.info(
        "setfit pairs: %d of %d trained in %s (%s); loss %s -> %s",
        trained, len(pairs), duration(seconds), stopped_by, record["loss_first"], record["loss_last"],
    )  # fmt: skip
    return Contrastive(folder=folder, record=record)


def sentence_pairs(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """SetFit's pairs: for each row, ``PAIRS_PER_ROW // 2`` rounds of a positive and a negative partner.

    Returns:
        An array of ``(i, j, same)`` rows in a random order: ``same`` is 1 when rows ``i`` and ``j``
        share a class (``j`` is another row of it where the class has one), else 0.
    """
    labels = np.asarray(labels, dtype=int)
    members = {c: np.flatnonzero(labels == c) for c in np.unique(labels)}
    others = {c: np.flatnonzero(labels != c) for c in members}
    pairs = []
    for _ in range(PAIRS_PER_ROW // 2):
        for i, c in enumerate(labels):
            same = members[c][members[c] != i]
            pairs.append((i, int(rng.choice(same)) if len(same) else i, 1))
            pairs.append((i, int(rng.choice(others[c])), 0))
    pairs = np.asarray(pairs, dtype=int)
    return pairs[rng.permutation(len(pairs))]


def rows_digest(texts: list[str], labels: np.ndarray) -> str:
    """A digest of the rows and labels a tuning saw, in their order (what lineage names)."""
    digest = hashlib.sha256()
    for text, label in zip(texts, np.asarray(labels, dtype=int), strict=True):
        digest.update(f"{label}\t{text}\n".encode())
    return digest.hexdigest()[:16]


def _pair_loss(encoder, tokenizer, tokens: list[list[int]], batch: np.ndarray, device: torch.device) -> torch.Tensor:
    """SetFit's CosineSimilarityLoss on a batch of pairs: the mean squared gap between the cosine of
    the two mean-pooled embeddings and the pair's 1 (same class) or 0."""
    rows = [{"input_ids": tokens[i]} for i in batch[:, 0]] + [{"input_ids": tokens[j]} for j in batch[:, 1]]
    padded = tokenizer.pad(rows, return_tensors="pt")
    ids, mask = padded["input_ids"].to(device), padded["attention_mask"].to(device)
    hidden = encoder(input_ids=ids, attention_mask=mask).last_hidden_state
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)
    left, right = pooled[: len(batch)], pooled[len(batch) :]
    target = torch.as_tensor(batch[:, 2], dtype=pooled.dtype, device=device)
    return F.mse_loss(F.cosine_similarity(left, right), target)
