"""Why the model scored a review the way it did: integrated gradients.

Token attributions integrate the gradient of the output along a straight path from a baseline
input to the real one, in the space of the input embeddings: the baseline replaces every word
piece by ``[PAD]`` (keeping ``[CLS]`` and ``[SEP]``), and a fixed number of midpoint steps
approximates the integral. Behaviour features are integrated along the same path, from "every
feature missing" (numeric features at their training mean, categories unknown, no vector) to their
real values, so the token and feature attributions together add up to the change of the output
between the baseline and the input (``delta`` reports how far the approximation is from that).
The output explained is the satisfaction score (regression) or one class's probability.

An ensemble (:mod:`models.ensemble`) predicts the mean of its members, so its attributions are the
mean of theirs: each member is explained for the same target (the ensemble's predicted class), and
the tokens, features and outputs are averaged. The mean of the members' outputs is the ensemble's
output, so completeness holds for the ensemble as it does for each member.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

import pandas as pd
import torch

from refit.models.ensemble import EnsembleModel
from refit.models.fusion import take
from refit.models.inference import predict_texts
from refit.models.predict import Predictor


@dataclass
class Explanation:
    """Attributions of one prediction. ``words`` merges the word pieces of each word."""

    text: str
    target: str
    output: float
    baseline_output: float
    tokens: list[tuple[str, float]]
    words: list[tuple[str, float]]
    features: dict[str, float] = field(default_factory=dict)

    @property
    def delta(self) -> float:
        """Completeness error: attributions' sum minus (output - baseline output)."""
        total = sum(score for _, score in self.tokens) + sum(self.features.values())
        return total - (self.output - self.baseline_output)

    def top_words(self, k: int = 5, by: str = "abs") -> list[str]:
        """The ``k`` words with the largest attribution (``by="abs"``, ``"positive"`` or ``"negative"``)."""
        keys = {"abs": lambda w: -abs(w[1]), "positive": lambda w: -w[1], "negative": lambda w: w[1]}
        return [word for word, _ in sorted(self.words, key=keys[by])[:k]]


def _feature_slices(predictor: Predictor) -> list[tuple[str, slice]]:
    """Where each behaviour feature sits in the fusion head's joined feature vector."""
    schema, head = predictor.model.schema, predictor.model.head
    slices, start = [], 0
    for name in schema.numeric:
        slices.append((name, slice(start, start + 1)))
        start += 1
    for name, emb in zip(schema.categorical, head.embeddings, strict=True):
        slices.append((name, slice(start, start + emb.embedding_dim)))
        start += emb.embedding_dim
    if schema.vector:
        width = head.vector.out_features + 1  # the projection and the presence flag
        slices.append((schema.vector, slice(start, start + width)))
    return slices


def explain(
    predictor: Predictor,
    text: str,
    features: dict | None = None,
    steps: int = 32,
    label: str | None = None,
) -> Explanation:
    """Integrated-gradients attributions of one review's prediction.

    Args:
        predictor: a loaded checkpoint.
        text: the review.
        features: its behaviour features (name -> value); missing ones read as missing.
        steps: integration steps (fixed, so the same input gives the same attributions).
        label: the class whose probability is explained (default: the predicted one); regression
            explains the score.

    Returns:
        Per-token and per-word attributions, per-feature attributions, and the outputs.
    """
    if steps < 1:
        raise ValueError("steps must be at least 1")
    if isinstance(predictor.model, EnsembleModel):
        return _explain_ensemble(predictor, text, features, steps, label)
    model, tokenizer = predictor.model, predictor.tokenizer
    device = next(model.parameters()).device
    encoding = tokenizer(str(text), truncation=True, max_length=predictor.max_length, return_offsets_mapping=True)
    ids = torch.tensor([encoding["input_ids"]], device=device)
    mask = torch.ones_like(ids)
    alphas = ((torch.arange(steps, dtype=torch.float32, device=device) + 0.5) / steps).view(-1, 1, 1)
    real, base, path = _text_path(model, tokenizer, ids, alphas)
    feature_real = feature_base = feature_path = None
    if model.fused:
        feature_real, feature_base, feature_path = _feature_path(model, features, alphas, device)

    model.eval()
    with torch.no_grad():
        full_logits = model(inputs_embeds=real, attention_mask=mask, feature_input=feature_real)
        target_index = _target_index(predictor, full_logits, label)
        base_logits = model(inputs_embeds=base, attention_mask=mask, feature_input=feature_base)
        out_real = float(_output(full_logits, predictor.task, target_index))
        out_base = float(_output(base_logits, predictor.task, target_index))
    with torch.enable_grad():
        logits = model(inputs_embeds=path, attention_mask=mask.expand(steps, -1), feature_input=feature_path)
        _output(logits, predictor.task, target_index).sum().backward()
    token_scores = ((real - base) * path.grad.mean(0, keepdim=True)).sum(-1)[0].tolist()
    feature_scores = {}
    if feature_path is not None:
        feature_scores = _feature_scores(predictor, feature_real, feature_base, feature_path)
    pieces = tokenizer.convert_ids_to_tokens(encoding["input_ids"])
    target = "score" if predictor.task == "regression" else predictor.labels[target_index]
    return Explanation(
        text=str(text),
        target=target,
        output=out_real,
        baseline_output=out_base,
        tokens=list(zip(pieces, token_scores, strict=True)),
        words=_word_scores(str(text), encoding, token_scores),
        features=feature_scores,
    )


def _target_index(predictor: Predictor, logits: torch.Tensor, label: str | None) -> int:
    """The class explained: ``label``'s, else the predicted one (0 for regression's one output)."""
    if predictor.task != "classification":
        return 0
    return predictor.labels.index(label) if label else int(logits.argmax(-1))


def _output(logits: torch.Tensor, task: str, target_index: int) -> torch.Tensor:
    """What is explained: the score (regression), or the target class's probability."""
    if task == "regression":
        return torch.sigmoid(logits.squeeze(-1))
    return torch.softmax(logits, dim=-1)[:, target_index]


def _feature_scores(predictor: Predictor, real: torch.Tensor, base: torch.Tensor, path: torch.Tensor) -> dict:
    """The features' attributions, summed per feature over the dimensions of its encoding."""
    per_dim = ((real - base) * path.grad.mean(0, keepdim=True))[0]
    return {name: float(per_dim[where].sum()) for name, where in _feature_slices(predictor)}


def _text_path(model, tokenizer, ids: torch.Tensor, alphas: torch.Tensor):
    """The embeddings of the text (``real``), of its baseline (``base``: every token but the
    special ones made padding) and the straight path between them at ``alphas``, which
    integrated gradients differentiate along."""
    special = set(tokenizer.all_special_ids) - {tokenizer.pad_token_id}
    pad_id = tokenizer.pad_token_id or 0
    baseline_ids = torch.where(
        torch.isin(ids, torch.tensor(sorted(special), device=ids.device)), ids, torch.full_like(ids, pad_id)
    )
    embedding = model.encoder.get_input_embeddings()
    with torch.no_grad():
        real, base = embedding(ids), embedding(baseline_ids)
    path = (base + alphas * (real - base)).detach().requires_grad_(True)
    return real, base, path


def _feature_path(model, features: dict | None, alphas: torch.Tensor, device):
    """The fused model's feature vector for ``features`` (``real``), for missing features
    (``base``) and the straight path between them at ``alphas``."""
    frame = pd.DataFrame([features or {}])
    with torch.no_grad():
        real = model.head.feature_vector(take(model.schema.encode(frame, 1), [0], device))
        base = model.head.feature_vector(take(model.schema.encode(None, 1), [0], device))
    path = (base + alphas.view(-1, 1) * (real - base)).detach()
    path.requires_grad_(True)
    return real, base, path


def _word_scores(text: str, encoding, token_scores: list[float]) -> list[tuple[str, float]]:
    """The tokens' attributions summed per word of ``text`` (the tokenizer's word ids and offsets)."""
    words: dict[int, list] = {}
    for position, word in enumerate(encoding.word_ids()):
        if word is None:
            continue  # [CLS], [SEP]: their baseline is themselves, so their attribution is 0
        start, end = encoding["offset_mapping"][position]
        span = words.setdefault(word, [start, end, 0.0])
        span[1] = end
        span[2] += token_scores[position]
    return [(text[s:e], score) for s, e, score in words.values()]


def _explain_ensemble(predictor: Predictor, text: str, features: dict | None, steps: int, label: str | None):
    """The members' mean attribution, each member explained for the ensemble's target."""
    if predictor.task == "classification" and label is None:
        # The ensemble's predicted class, not each member's own: their means must explain one output.
        frame = pd.DataFrame([features or {}])
        args = (predictor.model, predictor.tokenizer, [str(text)], frame, predictor.task, predictor.max_length)
        [probabilities] = predict_texts(*args, predictor.device)
        label = predictor.labels[int(probabilities.argmax())]
    members = [
        explain(
            SimpleNamespace(
                model=member,
                tokenizer=predictor.tokenizer,
                task=predictor.task,
                labels=predictor.labels,
                max_length=predictor.max_length,
            ),
            text,
            features,
            steps,
            label,
        )
        for member in predictor.model.members
    ]
    k = len(members)
    first = members[0]
    names = sorted({name for m in members for name in m.features})
    return Explanation(
        text=first.text,
        target=first.target,
        output=sum(m.output for m in members) / k,
        baseline_output=sum(m.baseline_output for m in members) / k,
        # One tokenizer and one text: every member has the same pieces and words, in order.
        tokens=[(piece, sum(m.tokens[i][1] for m in members) / k) for i, (piece, _) in enumerate(first.tokens)],
        words=[(word, sum(m.words[i][1] for m in members) / k) for i, (word, _) in enumerate(first.words)],
        # A member that does not read a feature attributes nothing to it.
        features={name: sum(m.features.get(name, 0.0) for m in members) / k for name in names},
    )
