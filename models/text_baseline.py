"""TF-IDF plus a linear model: the text baseline a first model must beat, and the second half of a
blended checkpoint.

One definition serves both: the gate fits it on the challenger's training rows to score the
baseline, and the trainer fits the same one on the same rows, saves it beside the BERT weights
(``text_model/`` in the checkpoint) and blends its probabilities with the BERT's, with a weight
fitted on the validation fold. A checkpoint whose weight is 0 is the TF-IDF model itself: the
champion a first run promotes when no BERT beats it.

Saved without pickle: the vocabulary as JSON and the arrays in an ``.npz``, so that loading a
checkpoint never runs code from it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from refit.models.checkpoint import read_metadata, write_metadata

FOLDER = "text_model"
_PARAMS = {"ngram_range": (1, 2), "sublinear_tf": True, "min_df": 1, "max_features": 200_000}


@dataclass
class TextBaseline:
    """A fitted TF-IDF vectorizer and ridge (regression, clipped to [0, 1]) or class-balanced
    logistic regression (classification) over ``n_labels`` labels."""

    task: str
    n_labels: int
    vectorizer: object
    coef: np.ndarray  # (n_classes_seen, n_terms), or (n_terms,) for regression
    intercept: np.ndarray
    classes: np.ndarray  # label indices the model saw (a constant model has one and no terms)

    @classmethod
    def fit(cls, task: str, texts: list[str], targets: np.ndarray, n_labels: int) -> TextBaseline:
        """Fit on the training rows. A single class in training becomes a constant answer."""
        # scikit-learn is imported here: it takes seconds to import, and serving a BERT never needs it.
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression, Ridge

        vectorizer = TfidfVectorizer(**_PARAMS)
        features = vectorizer.fit_transform([str(t) for t in texts])
        targets = np.asarray(targets)
        if task == "regression":
            model = Ridge(alpha=1.0).fit(features, targets.astype(float))
            return cls(task, 1, vectorizer, model.coef_, np.atleast_1d(model.intercept_), np.array([0]))
        classes = np.unique(targets.astype(int))
        if len(classes) == 1:
            empty = np.zeros((1, features.shape[1]))
            return cls(task, n_labels, vectorizer, empty, np.zeros(1), classes)
        model = LogisticRegression(max_iter=2000, class_weight="balanced").fit(features, targets.astype(int))
        coef, intercept = model.coef_, model.intercept_
        if len(classes) == 2:  # binary: one row of coefficients for the second class
            coef, intercept = np.vstack([-coef / 2, coef / 2]), np.array([-intercept[0] / 2, intercept[0] / 2])
        return cls(task, n_labels, vectorizer, coef, intercept, model.classes_.astype(int))

    def predict(self, texts: list[str]) -> np.ndarray:
        """Scores in [0, 1] (regression) or probabilities over all ``n_labels`` labels."""
        features = self.vectorizer.transform([str(t) for t in texts])
        if self.task == "regression":
            return np.clip(features @ self.coef + self.intercept[0], 0.0, 1.0)
        out = np.zeros((len(texts), self.n_labels))
        if len(self.classes) == 1:
            out[:, int(self.classes[0])] = 1.0
            return out
        logits = np.asarray(features @ self.coef.T) + self.intercept
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        out[:, self.classes] = probs / probs.sum(axis=1, keepdims=True)
        return out

    def save(self, folder: Path) -> Path:
        """Write into ``folder/text_model`` (vocabulary JSON and arrays, no pickle); returns it."""
        target = Path(folder) / FOLDER
        target.mkdir(parents=True, exist_ok=True)
        vocabulary = self.vectorizer.vocabulary_
        terms = [""] * len(vocabulary)
        for term, index in vocabulary.items():
            terms[index] = term
        meta = {"task": self.task, "n_labels": self.n_labels, "params": _PARAMS, "terms": terms}
        (target / "tfidf.json").write_text(json.dumps(meta))
        np.savez(
            target / "tfidf.npz",
            idf=self.vectorizer.idf_,
            coef=self.coef,
            intercept=self.intercept,
            classes=self.classes,
        )
        return target

    @classmethod
    def load(cls, folder: Path) -> TextBaseline:
        """Read what :meth:`save` wrote under ``folder/text_model``."""
        from sklearn.feature_extraction.text import TfidfVectorizer

        source = Path(folder) / FOLDER
        meta = json.loads((source / "tfidf.json").read_text())
        params = {**meta["params"], "ngram_range": tuple(meta["params"]["ngram_range"])}
        params.pop("max_features", None)
        params.pop("min_df", None)
        arrays = np.load(source / "tfidf.npz", allow_pickle=False)
        vectorizer = TfidfVectorizer(vocabulary={term: i for i, term in enumerate(meta["terms"])}, **params)
        vectorizer.idf_ = arrays["idf"]
        return cls(meta["task"], meta["n_labels"], vectorizer, arrays["coef"], arrays["intercept"], arrays["classes"])


def has_text_model(folder: Path) -> bool:
    return (Path(folder) / FOLDER / "tfidf.json").is_file()


def fit_blend_weight(
    metric, y_true: np.ndarray, bert: np.ndarray, text: np.ndarray, step: float = 0.05, low: float = 0.0
) -> float:
    """The BERT share of a blend with the text model that scores best on held-out rows.

    Args:
        metric: a callable of (y_true, prediction), higher is better.
        y_true: the held-out rows' targets.
        bert: the BERT's predictions on them.
        text: the text model's predictions on them.
        step: the spacing of the weights tried, from ``low`` to 1.
        low: the smallest BERT share allowed.

    Returns:
        The weight ``w`` in ``[low, 1]`` of ``w * bert + (1 - w) * text``; ties go to the weight
        nearest an even blend, which averages out the noise of a small fold.
    """
    weights = np.round(np.arange(low, 1.0 + step / 2, step), 4)
    scores = np.array([metric(y_true, w * bert + (1 - w) * text) for w in weights])
    best = np.flatnonzero(np.isclose(scores, scores.max(), rtol=0, atol=1e-12))
    return float(weights[best[np.argmin(np.abs(weights[best] - 0.5))]])


def blend_of(meta: dict) -> dict:
    """A checkpoint's blend record: ``{"bert_weight": w, "kind": "bert" | "blend" | "tfidf", ...}``;
    a checkpoint without one is a plain BERT."""
    return meta.get("blend") or {"bert_weight": 1.0, "kind": "bert"}


def kind_of(weight: float) -> str:
    return "bert" if weight >= 1.0 else "tfidf" if weight <= 0.0 else "blend"


def write_blend(folder: Path, weight: float, **record) -> dict:
    """Record the checkpoint's BERT share (and why) in its metadata.

    Args:
        folder: the checkpoint folder.
        weight: the BERT share of the blend.
        **record: what else the record keeps (what the weight was fitted on, its scores).

    Returns:
        The blend record, as written.
    """
    meta = read_metadata(folder)
    blend = {**record, "bert_weight": float(weight), "kind": kind_of(weight)}
    meta["blend"] = blend
    meta["kind"] = blend["kind"]
    write_metadata(folder, meta)
    return blend
