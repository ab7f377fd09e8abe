"""The unlabelled feedback a run may learn from, its checks, and self-training's pseudo-labels.

Which rows: unlabelled rows (text, no target) whose id falls in the training split, and outside
the validation fold, both by a stable hash of the id (:func:`refit.data.snapshots.split_of`,
:func:`in_fold`). A row's split and fold never change, labelled or not, so a row that is
unlabelled today and labelled tomorrow can never reach the gate's dev set, a test split or a
validation fold after adaptation or self-training saw it.

Checks: a pool that is mostly one repeated text, or written in another language than the labelled
rows, is left out whole, with a one-line reason (:func:`check_pool`). Exact repeats are kept once.

Self-training: a teacher (the champion, or the run's own first model) scores the pool; the rows it
is surest of become training rows with their predicted label (or score), at most
``REFIT_PSEUDO_SHARE`` times the labelled training rows and, in classification, no class above its
share of the labelled rows (:func:`pseudo_rows`).
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from refit.core.hashing import stable_fraction
from refit.data.snapshots import SplitConfig, features_frame, labelled, split_of

# A pool whose most frequent text is more than this share of it is "one repeated text".
MAX_REPEAT_SHARE = 0.5
# The pool's words are checked against the labelled rows' most frequent words: a pool in the same
# language uses them about as often as the labelled rows do; another language hardly at all.
COMMON_WORDS = 200
MIN_WORD_SHARE_RATIO = 0.5
# Too small a pool to learn from: fewer rows than this are left out (with their count).
MIN_POOL_ROWS = 20
_WORD = re.compile(r"[^\W\d_]+", re.UNICODE)


def in_fold(feedback_id: str, fraction: float) -> bool:
    """Whether a row is in the validation fold, by a stable hash of its id (salted apart from the
    split's hash, so the fold is a share of every split's rows, not a slice of one)."""
    return stable_fraction(f"fold:{feedback_id}") < fraction


def fold_by_id(train: pd.DataFrame, fraction: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Training rows split into the rows to train on and the validation fold, by :func:`in_fold`.

    Used when a run learns from unlabelled rows: the fold must be the same rows in every run, so
    that no row adaptation or self-training ever saw is later held out to choose by.

    Raises:
        ValueError: fewer than two training rows.
    """
    if len(train) < 2:
        raise ValueError(f"{len(train)} training row(s): too few to hold out a validation fold")
    mask = train["feedback_id"].map(lambda fid: in_fold(str(fid), fraction)).to_numpy(dtype=bool)
    if not mask.any():  # at least one row, and never all
        mask[0] = True
    if mask.all():
        mask[0] = False
    return train[~mask], train[mask]


@dataclass
class Pool:
    """The unlabelled rows a run may learn from.

    Attributes:
        rows: the rows (text, features, ids), repeats dropped; empty when left out.
        seen: unlabelled rows in the snapshot, before any were set aside.
        outside_train: of those, rows whose id falls in the dev or test split, or the validation fold.
        repeats: rows dropped as exact repeats of another pool row's text.
        left_out: why the whole pool is not used (one line), or None.
    """

    rows: pd.DataFrame
    seen: int = 0
    outside_train: int = 0
    repeats: int = 0
    left_out: str | None = None
    checks: dict = field(default_factory=dict)

    @property
    def usable(self) -> bool:
        return self.left_out is None and len(self.rows) > 0

    @property
    def texts(self) -> list[str]:
        return self.rows["text"].tolist()

    def summary(self) -> dict:
        """What the model card and the run's summary say about the pool."""
        return {
            "unlabelled_rows": self.seen,
            "outside_training_split_or_fold": self.outside_train,
            "repeats_dropped": self.repeats,
            "pool_rows": len(self.rows) if self.usable else 0,
            "left_out": self.left_out,
            **({"checks": self.checks} if self.checks else {}),
        }


def unlabelled_pool(rows: pd.DataFrame, split: SplitConfig, val_fraction: float, labelled_texts: list[str]) -> Pool:
    """The snapshot's unlabelled rows a run may learn from, checked against its labelled texts.

    Args:
        rows: the snapshot's rows (labelled and not), with ``feedback_id`` and ``text``.
        split: the split config: a row whose id falls in dev or test is never used.
        val_fraction: the validation fold's share: a row whose id falls in the fold is never used.
        labelled_texts: the labelled training texts, for the language check.

    Returns:
        The pool; its ``left_out`` says why when it must not be used.
    """
    unlabelled = rows[~labelled(rows)]
    unlabelled = unlabelled[unlabelled["text"].fillna("").str.strip() != ""]
    keep = [
        split_of(str(fid), split) == "train" and not in_fold(str(fid), val_fraction)
        for fid in unlabelled["feedback_id"]
    ]
    inside = unlabelled[np.asarray(keep, dtype=bool)] if len(unlabelled) else unlabelled
    pool = Pool(rows=inside.iloc[:0], seen=len(unlabelled), outside_train=len(unlabelled) - len(inside))
    if inside.empty:
        return pool
    reason, checks = check_pool(inside["text"].tolist(), labelled_texts)
    pool.checks = checks
    if reason:
        pool.left_out = reason
        return pool
    unique = inside.drop_duplicates(subset="text", keep="last")
    pool.repeats = len(inside) - len(unique)
    pool.rows = unique.reset_index(drop=True)
    if len(pool.rows) < MIN_POOL_ROWS:
        pool.left_out = f"{len(pool.rows)} unlabelled training rows: too few to learn from (at least {MIN_POOL_ROWS})"
    return pool


def check_pool(texts: list[str], labelled_texts: list[str]) -> tuple[str | None, dict]:
    """Why an unlabelled pool must be left out (one line), or None; and the figures checked.

    Two failures: one text repeated over most of the pool (a bot, a default message, a form's
    placeholder), and a pool in another language than the labelled rows (its words are hardly
    ever the labelled rows' common words).
    """
    normalized = [" ".join(t.lower().split()) for t in texts]
    top, count = Counter(normalized).most_common(1)[0]
    repeat_share = count / len(normalized)
    checks: dict = {"top_text_share": round(repeat_share, 4)}
    if repeat_share > MAX_REPEAT_SHARE:
        shown = top if len(top) <= 40 else top[:37] + "..."
        return (
            f"mostly one repeated text: {shown!r} is {count} of {len(normalized)} unlabelled rows",
            checks,
        )
    if labelled_texts:
        common = {w for w, _ in Counter(w for t in labelled_texts for w in _words(t)).most_common(COMMON_WORDS)}
        own = _common_word_share(labelled_texts, common)
        theirs = _common_word_share(texts, common)
        checks.update({"labelled_common_word_share": round(own, 4), "pool_common_word_share": round(theirs, 4)})
        if own > 0 and theirs < MIN_WORD_SHARE_RATIO * own:
            return (
                f"another language than the labelled rows: {theirs:.0%} of the unlabelled rows' words are the"
                f" labelled rows' {COMMON_WORDS} most common words, against {own:.0%} of their own",
                checks,
            )
    return None, checks


def _words(text: str) -> list[str]:
    return _WORD.findall(str(text).lower())


def _common_word_share(texts: list[str], common: set[str]) -> float:
    """The median, over texts, of the share of a text's words that are in ``common``."""
    shares = []
    for text in texts:
        words = _words(text)
        if words:
            shares.append(sum(w in common for w in words) / len(words))
    return float(np.median(shares)) if shares else 0.0


@dataclass
class Pseudo:
    """Pseudo-labelled rows and how they were chosen.

    Attributes:
        texts, targets, features: the rows, as training rows (targets: label indices or scores).
        record: what the lineage keeps: counts, threshold, class balance, the ids' digest.
    """

    texts: list[str]
    targets: np.ndarray
    features: pd.DataFrame | None
    record: dict


def pseudo_rows(
    pool: Pool,
    prediction: np.ndarray,
    task: str,
    labelled_targets: np.ndarray,
    confidence: float,
    share: float,
    uncertainty: np.ndarray | None = None,
    teacher: str = "",
) -> Pseudo:
    """The pool rows the teacher is surest of, with its labels (or scores), as training rows.

    Classification: rows whose top class probability is at least ``confidence``, surest first,
    each class at most its share of the labelled rows times the cap (so a teacher that favours the
    majority class cannot flood the training rows with it). Regression: the ``confidence`` share of
    rows with the least ``uncertainty`` (the teacher's two views disagreeing, e.g. BERT against
    TF-IDF), at most the cap. The cap is ``share`` times the labelled training rows.

    Args:
        pool: the unlabelled rows (usable).
        prediction: the teacher's class probabilities (n, classes) or scores (n,), row-aligned.
        task: ``classification`` or ``regression``.
        labelled_targets: the labelled training rows' targets (the cap and the class shares).
        confidence: the classification threshold, or the regression share kept.
        share: the cap, as a multiple of the labelled training rows.
        uncertainty: regression only: a per-row uncertainty, lower is surer (default: all equal).
        teacher: who labelled them, for the record.

    Returns:
        The chosen rows, and the record of the choice.
    """
    prediction = np.asarray(prediction, dtype=float)
    cap = int(share * len(labelled_targets))
    if task == "classification":
        top = prediction.max(axis=1)
        predicted = prediction.argmax(axis=1)
        n_classes = prediction.shape[1]
        shares = np.bincount(np.asarray(labelled_targets, dtype=int), minlength=n_classes) / max(
            1, len(labelled_targets)
        )
        chosen: list[int] = []
        per_class = {}
        for k in range(n_classes):
            candidates = np.flatnonzero((predicted == k) & (top >= confidence))
            candidates = candidates[np.argsort(-top[candidates], kind="stable")]
            limit = int(np.ceil(shares[k] * cap))
            chosen.extend(candidates[:limit].tolist())
            per_class[str(k)] = int(min(limit, len(candidates)))
        index = np.array(sorted(chosen), dtype=int)
        targets = predicted[index]
        balance = {"per_class": per_class, "above_threshold": int((top >= confidence).sum())}
    else:
        score = np.zeros(len(prediction)) if uncertainty is None else np.asarray(uncertainty, dtype=float)
        n = min(cap, int(confidence * len(prediction)))
        index = np.sort(np.argsort(score, kind="stable")[:n])
        targets = np.clip(prediction[index], 0.0, 1.0)
        balance = {
            "target_mean": round(float(targets.mean()), 4) if len(targets) else None,
            "uncertainty_max": round(float(score[index].max()), 4) if len(index) else None,
        }
    rows = pool.rows.iloc[index]
    digest = hashlib.sha256("\x1f".join(map(str, rows["feedback_id"])).encode()).hexdigest()[:16]
    record = {
        "teacher": teacher,
        "scored_rows": len(pool.rows),
        "pseudo_rows": int(len(index)),
        "cap": cap,
        "confidence": confidence,
        "ids_sha256": digest,
        **balance,
    }
    features = features_frame(rows).reset_index(drop=True) if len(rows) else None
    return Pseudo(texts=rows["text"].tolist(), targets=targets, features=features, record=record)
