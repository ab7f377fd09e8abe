"""An estimate of the champion's performance on a window whose labels are not in yet.

The gate's frozen dev set is the one labelled sample no training or selection touched: the
champion's predictions on it, beside its targets, say how far the champion's confidence can be
trusted. A window (unlabelled feedback, the answers ``refit serve`` logged, or both) brings the
champion's predictions and, where the caller has them, its embeddings. From those:

- **Classification** (macro-F1, accuracy): the dev probabilities are calibrated per class
  (isotonic, one class against the rest), and the window's calibrated probabilities give an
  expected confusion matrix, as NannyML's CBPE does; macro-F1 and accuracy follow from it.
- **Regression** (MSE, MAE, Spearman): a model of the squared and the absolute error, fitted on
  the dev rows (cross-fitted) from the prediction and the embeddings, as NannyML's DLE does; its
  mean over the window is the expected loss. Spearman comes from simulated targets: the
  prediction plus a dev residual drawn from dev rows with a similar prediction, scaled to the
  modelled error.
- **Under a shift of population**: a domain classifier (logistic regression on the embeddings'
  principal components and the prediction) tells dev rows from window rows; its cross-fitted odds
  are density-ratio weights ``w(x) = p_window(x) / p_dev(x)`` for the dev rows. The default
  method is doubly robust: the calibrated estimate, plus how much the weights move the mean of
  the dev rows' out-of-fold residuals (truth minus calibrated expectation), per predicted class.
  It is right when either the calibration or the weights are; confidence alone (CBPE, DLE) is
  right only when the champion's confidence means on the window what it meant on dev. The
  correction is kept in proportion to how well it stands out of its own bootstrap noise, times
  the share of window rows dev covers (density ratio within ``MAX_WEIGHT``), and only where
  enough dev rows carry the weights (``MIN_EFFECTIVE_SHARE``): on real reviews of product
  categories the champion never saw (domain AUC 0.93-0.95, 8-11% effective dev rows) the full
  correction moved the macro-F1 the wrong way, while on a shift into a region dev holds (the unit
  tests' confidently wrong region) it recovers most of the loss confidence misses. Where it is
  off, the estimate is confidence alone, CBPE's and DLE's.

The interval is a bootstrap: each round resamples the dev rows (and refits the calibration on
them) and the window rows, then draws the window's targets from the corrected expectations, so
the interval is where the window's realized value should fall, label noise included. The loss
interval (dev metric minus estimate) comes from the same rounds, with the dev metric on the same
dev resample.

It assumes what NannyML's estimators assume, with the shift relaxed: the dev set covers the
window's population (the weights can only move mass between regions dev has), and no concept
drift (the same input means the same target). A window far outside dev shows as a high domain
AUC and a small effective sample size, both reported.

Pure functions of arrays: no Prefect, no database. :func:`estimated_performance_signal` wraps an
estimate as a drift signal of the ``estimated_performance`` group.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from refit.core.errors import InputError
from refit.models.metrics import DIRECTION, classification_metrics, regression_metrics

GROUP = "estimated_performance"
METRICS = {"classification": ("macro_f1", "accuracy"), "regression": ("mse", "mae", "spearman")}
# confidence: calibrated confidence alone (CBPE, DLE). importance: the dev rows' realized metric
# under density-ratio weights. weighted_calibration: the calibration fitted on weighted dev rows.
# doubly_robust: confidence plus the weighted dev residuals (the default; see the module doc).
METHODS = ("doubly_robust", "confidence", "importance", "weighted_calibration")
DEFAULT_METHOD = "doubly_robust"
FOLDS = 5
MAX_WEIGHT = 20.0  # a dev row stands for at most this many average dev rows
DOMAIN_COMPONENTS = 32  # principal components of the embeddings the domain classifier reads
PREDICTION_BINS = 10  # dev prediction quantile bins the regression residuals are drawn within
SHRINKAGE_ROUNDS = 50  # bootstrap rounds that measure the shift correction's noise
# The correction is off when fewer than this share of dev rows carry the weights (effective rows),
# whole from the second share up, in between in proportion. On real reviews of categories the
# champion never saw (8-11% effective) it moved macro-F1 the wrong way; in time (53-75%) and on a
# shift into a region dev holds (40%, the unit tests') it helped.
MIN_EFFECTIVE_SHARE, FULL_EFFECTIVE_SHARE = 0.15, 0.30
# The loss model's ridge penalty (on standardized features), chosen by measurement on real
# reviews. At 30 it read less of the small differences between a window of every year and a dev
# set of one period as a loss (+4.4% estimated MSE against +2.8% realized over ten 5,000-row null
# windows, +6.6% at 1), but the TF-IDF estimate bench's MSE fell within 15% of the realized value
# on 7 of 14 windows instead of 10, and the two label-shift windows (MSE +75% and +103%) no longer
# drifted. Seeing real losses without labels is what the estimate is for.
LOSS_PENALTY = 1.0


@dataclass(frozen=True)
class MetricEstimate:
    """One metric's estimate on the window, beside its dev value and, where labels are in, the
    realized value.

    ``low``/``high`` bound where the window's realized value should fall (label noise included);
    ``loss_low``/``loss_high`` bound the loss against dev (positive is worse); ``without_shift``
    is the calibrated-confidence estimate without the shift correction.
    """

    metric: str
    value: float
    low: float
    high: float
    dev: float
    loss: float
    relative_loss: float
    loss_low: float
    loss_high: float
    without_shift: float
    realized: float | None = None
    gap: float | None = None  # estimate minus realized


@dataclass(frozen=True)
class ShiftCorrection:
    """How different the window looks from dev, and how much the weights moved the estimate.

    ``auc`` is the domain classifier's cross-fitted ROC AUC (0.5: no shift it can see);
    ``effective_rows`` is the weighted dev set's effective sample size, ``(sum w)^2 / sum w^2``;
    each metric's ``without_shift`` beside its value is the correction's size.
    """

    auc: float
    effective_rows: float
    effective_share: float
    max_weight: float
    features: str
    covered: float = 1.0  # the share of window rows dev covers (see :func:`shift_weights`)
    kept: float = 1.0  # the share of the doubly robust correction kept (see :func:`shrinkage`)


@dataclass(frozen=True)
class PerformanceEstimate:
    """The champion's estimated metrics on a window."""

    task: str
    method: str
    window_rows: int
    dev_rows: int
    labelled_rows: int
    confidence: float
    metrics: dict[str, MetricEstimate]
    shift: ShiftCorrection
    resamples: int = field(default=0)

    def as_dict(self) -> dict:
        """The estimate as plain values (for JSON)."""
        return asdict(self)

    def line(self, metric: str) -> str:
        """One metric's estimate as one line an operator reads."""
        m = self.metrics[metric]
        text = (
            f"{metric} estimated {m.value:.3f} [{m.low:.3f}, {m.high:.3f}] on {self.window_rows} rows"
            f" (dev {m.dev:.3f}; without the shift correction {m.without_shift:.3f};"
            f" domain AUC {self.shift.auc:.2f}, effective dev rows {self.shift.effective_rows:.0f},"
            f" {self.shift.covered:.0%} of the window covered by dev, {self.shift.kept:.0%} of the correction kept)"
        )
        if m.realized is not None:
            text += f"; realized {m.realized:.3f} on {self.labelled_rows} labelled rows, gap {m.gap:+.3f}"
        return text


# --- the density ratio between the window and dev -----------------------------------------------


def _standardized(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=float)
    scale = values.std(axis=0)
    return (values - values.mean(axis=0)) / np.where(scale > 0, scale, 1.0)


def domain_features(
    dev_prediction: np.ndarray,
    window_prediction: np.ndarray,
    dev_embeddings: np.ndarray | None = None,
    window_embeddings: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, str]:
    """What the domain classifier reads for each dev and window row: the prediction (each class's
    probability, or the score) and, when given, the embeddings' leading principal components.

    Returns:
        The dev rows' features, the window rows' features, and what they are in words.
    """
    dev_p, win_p = np.asarray(dev_prediction, dtype=float), np.asarray(window_prediction, dtype=float)
    dev_p = dev_p.reshape(len(dev_p), -1)
    win_p = win_p.reshape(len(win_p), -1)
    blocks, words = [np.vstack([dev_p, win_p])], "prediction"
    if dev_embeddings is not None and window_embeddings is not None:
        both = _standardized(np.vstack([np.asarray(dev_embeddings), np.asarray(window_embeddings)]))
        components = min(DOMAIN_COMPONENTS, both.shape[1], len(both) - 1)
        # The leading eigenvectors of the pooled rows' covariance: the principal components, from a
        # features-by-features matrix (an SVD of the rows costs 10x more).
        _, vectors = np.linalg.eigh(both.T @ both)
        blocks.append(both @ vectors[:, ::-1][:, :components])
        words = f"prediction + {components} embedding components"
    pooled = _standardized(np.hstack(blocks))
    return pooled[: len(dev_p)], pooled[len(dev_p) :], words


def shift_weights(
    dev_features: np.ndarray, window_features: np.ndarray, seed: int = 0, strength: float = 0.1
) -> tuple[np.ndarray, float]:
    """Density-ratio weights of the dev rows, ``p_window(x) / p_dev(x)``, from a cross-fitted
    logistic-regression domain classifier.

    Args:
        dev_features: the dev rows' features (:func:`domain_features`).
        window_features: the window rows' features.
        seed: the fold assignment's seed.
        strength: the classifier's inverse regularization (scikit-learn's ``C``).

    Returns:
        The weights (mean 1 over the dev rows, each at most ``MAX_WEIGHT``), the classifier's
        out-of-fold ROC AUC, and the share of window rows dev covers (density ratio within
        ``MAX_WEIGHT``): past it, no weighting of dev rows can stand for the window.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    x = np.vstack([dev_features, window_features])
    is_window = np.r_[np.zeros(len(dev_features)), np.ones(len(window_features))]
    folds = np.random.default_rng(seed).permutation(len(x)) % FOLDS
    out_of_fold = np.empty(len(x))
    for fold in range(FOLDS):
        train = folds != fold
        model = LogisticRegression(C=strength, max_iter=500).fit(x[train], is_window[train])
        out_of_fold[~train] = model.predict_proba(x[~train])[:, 1]
    auc = float(roc_auc_score(is_window, out_of_fold))
    odds = np.clip(out_of_fold, 1e-6, 1 - 1e-6)
    ratio = odds / (1 - odds) * (len(dev_features) / len(window_features))
    scale = ratio[: len(dev_features)].mean()
    weights = np.minimum(ratio[: len(dev_features)] / scale, MAX_WEIGHT)
    # A window row whose density ratio is past the cap lies where dev has (next to) no rows.
    covered = float(np.mean(ratio[len(dev_features) :] / scale <= MAX_WEIGHT))
    return weights / weights.mean(), auc, covered


def effective_rows(weights: np.ndarray) -> float:
    """Kish's effective sample size of weighted rows."""
    return float(weights.sum() ** 2 / np.sum(weights**2))


# --- classification: calibrated confidence and the expected confusion matrix ------------------


class _Calibration:
    """Per-class isotonic maps of the champion's probabilities (one class against the rest),
    fitted on weighted dev rows; calibrated rows are renormalized to sum to one."""

    def __init__(self, probs: np.ndarray, truth: np.ndarray, weights: np.ndarray | None = None):
        from sklearn.isotonic import IsotonicRegression

        self.maps = []
        for k in range(probs.shape[1]):
            iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip", increasing=True)
            iso.fit(probs[:, k], (truth == k).astype(float), sample_weight=weights)
            self.maps.append((iso.X_thresholds_, iso.y_thresholds_))

    def __call__(self, probs: np.ndarray) -> np.ndarray:
        out = np.column_stack([np.interp(probs[:, k], x, y) for k, (x, y) in enumerate(self.maps)])
        total = out.sum(axis=1, keepdims=True)
        return np.where(total > 0, out / np.where(total > 0, total, 1.0), probs)


def expected_confusion(probs: np.ndarray, predicted: np.ndarray, n_labels: int) -> np.ndarray:
    """The expected confusion matrix (true class by predicted class, as shares of the rows) of
    rows with these true-class probabilities and these predicted classes: CBPE's matrix."""
    return probs.T @ np.eye(n_labels)[predicted] / len(predicted)


def confusion_metrics(confusion: np.ndarray) -> dict[str, float]:
    """Macro-F1 (over every class, zero where a class has no support nor prediction) and accuracy
    of a confusion matrix of shares or counts (true class by predicted class)."""
    tp = np.diag(confusion)
    denominator = confusion.sum(axis=0) + confusion.sum(axis=1)
    f1 = np.divide(2 * tp, denominator, out=np.zeros_like(tp, dtype=float), where=denominator > 0)
    return {"macro_f1": float(f1.mean()), "accuracy": float(tp.sum() / confusion.sum())}


def _dev_out_of_fold(probs: np.ndarray, truth: np.ndarray, seed: int) -> np.ndarray:
    """Each dev row's calibrated probabilities from a calibration fitted without it."""
    folds = np.random.default_rng(seed + 1).permutation(len(truth)) % FOLDS
    out = np.empty_like(probs)
    for fold in range(FOLDS):
        train = folds != fold
        out[~train] = _Calibration(probs[train], truth[train])(probs[~train])
    return out


def _corrected_probs(
    window_q: np.ndarray,
    window_pred: np.ndarray,
    dev_residual: np.ndarray,
    dev_pred: np.ndarray,
    w: np.ndarray,
    strength: float = 1.0,
) -> np.ndarray:
    """The window's calibrated probabilities plus, per predicted class, how much the dev rows'
    residuals (truth minus out-of-fold calibrated probability) of that class move under the
    weights: their weighted mean minus their plain mean, times ``strength``.

    Without a shift (equal weights) the correction is zero, so cross-fitting's own small bias in
    the residuals never moves the estimate."""
    out = window_q.copy()
    for k in np.unique(window_pred):
        on_dev = dev_pred == k
        if w[on_dev].sum() > 0:
            weighted = (w[on_dev, None] * dev_residual[on_dev]).sum(axis=0) / w[on_dev].sum()
            out[window_pred == k] += strength * (weighted - dev_residual[on_dev].mean(axis=0))
    out = np.clip(out, 0.0, None)
    total = out.sum(axis=1, keepdims=True)
    return np.where(total > 0, out / np.where(total > 0, total, 1.0), window_q)


def shrinkage(correction: float, rounds: np.ndarray) -> float:
    """How much of a shift correction to keep: ``c^2 / (c^2 + var)``, with ``var`` its variance
    over bootstrap rounds. A correction large against its own noise is kept whole; one that is
    mostly noise (few dev rows carry the weight) is shrunk toward none."""
    variance = float(np.var(rounds)) if len(rounds) > 1 else 0.0
    return 1.0 if correction**2 + variance == 0 else float(correction**2 / (correction**2 + variance))


def _sampled_confusion(probs: np.ndarray, predicted: np.ndarray, n_labels: int, rng) -> np.ndarray:
    """A confusion matrix of counts with each row's true class drawn from its probabilities."""
    drawn = (rng.random(len(probs))[:, None] > np.cumsum(probs, axis=1)[:, :-1]).sum(axis=1)
    return np.bincount(drawn * n_labels + predicted, minlength=n_labels * n_labels).reshape(n_labels, n_labels)


def _classification_rounds(dev_probs, dev_true, win_probs, weights, trust, method, n_labels, resamples, seed):
    """Point estimates (with and without the shift correction) and the bootstrap rounds."""
    dev_pred, win_pred = dev_probs.argmax(axis=1), win_probs.argmax(axis=1)
    onehot = np.eye(n_labels)
    residual = onehot[dev_true] - _dev_out_of_fold(dev_probs, dev_true, seed)
    uniform = np.ones(len(dev_true))

    def expected(d_idx, w_idx):
        """The window's per-row expected true-class probabilities under ``method``, and, for
        importance weighting, the dev rows and weights that stand for the window instead."""
        dp, dt, dw = dev_probs[d_idx], dev_true[d_idx], weights[d_idx]
        wp, wpred = win_probs[w_idx], win_pred[w_idx]
        if method == "weighted_calibration":
            return _Calibration(dp, dt, dw)(wp)
        q = _Calibration(dp, dt)(wp)
        if method == "doubly_robust":
            return _corrected_probs(q, wpred, residual[d_idx], dev_pred[d_idx], dw, strength)
        return q

    def point(method_name):
        every_dev, every_win = np.arange(len(dev_true)), np.arange(len(win_pred))
        if method_name == "importance":
            confusion = (weights[:, None] * onehot[dev_true]).T @ onehot[dev_pred]
            return confusion_metrics(confusion)
        if method_name == "confidence":
            q = _Calibration(dev_probs, dev_true)(win_probs)
        else:
            q = expected(every_dev, every_win)
        return confusion_metrics(expected_confusion(q, win_pred, n_labels))

    strength = 1.0
    without = point("confidence")
    if method == "doubly_robust":
        # The correction's own noise, from a short bootstrap, sets how much of it is kept.
        full = point("doubly_robust")["macro_f1"] - without["macro_f1"]
        pre, changes = np.random.default_rng(seed + 3), []
        for _ in range(SHRINKAGE_ROUNDS):
            d_idx = pre.integers(0, len(dev_true), len(dev_true))
            w_idx = pre.integers(0, len(win_pred), len(win_pred))
            q = _Calibration(dev_probs[d_idx], dev_true[d_idx])(win_probs[w_idx])
            corrected = _corrected_probs(q, win_pred[w_idx], residual[d_idx], dev_pred[d_idx], weights[d_idx])
            changes.append(
                confusion_metrics(expected_confusion(corrected, win_pred[w_idx], n_labels))["macro_f1"]
                - confusion_metrics(expected_confusion(q, win_pred[w_idx], n_labels))["macro_f1"]
            )
        strength = shrinkage(full, np.asarray(changes)) * trust
    values = point(method)
    rng = np.random.default_rng(seed)
    rounds = {name: {"expected": [], "drawn": [], "dev": []} for name in METRICS["classification"]}
    for _ in range(resamples):
        d_idx = rng.integers(0, len(dev_true), len(dev_true))
        w_idx = rng.integers(0, len(win_pred), len(win_pred))
        dev_metric = confusion_metrics(onehot[dev_true[d_idx]].T @ onehot[dev_pred[d_idx]])
        if method == "importance":
            w = weights[d_idx] + 1e-12 * uniform[d_idx]
            confusion = (w[:, None] * onehot[dev_true[d_idx]]).T @ onehot[dev_pred[d_idx]]
            expected_metric = confusion_metrics(confusion)
            drawn_rows = rng.choice(d_idx, size=len(win_pred), p=w / w.sum())
            drawn = confusion_metrics(onehot[dev_true[drawn_rows]].T @ onehot[dev_pred[drawn_rows]])
        else:
            q = expected(d_idx, w_idx)
            expected_metric = confusion_metrics(expected_confusion(q, win_pred[w_idx], n_labels))
            drawn = confusion_metrics(_sampled_confusion(q, win_pred[w_idx], n_labels, rng))
        for name in rounds:
            rounds[name]["expected"].append(expected_metric[name])
            rounds[name]["drawn"].append(drawn[name])
            rounds[name]["dev"].append(dev_metric[name])
    dev_values = confusion_metrics(onehot[dev_true].T @ onehot[dev_pred])
    return values, without, dev_values, rounds, strength


# --- regression: a model of the loss -------------------------------------------------------------


def _loss_features(prediction: np.ndarray, embeddings: np.ndarray | None) -> np.ndarray:
    """The prediction's spline basis (hinges at its quartiles) and the embeddings' components."""
    knots = (0.25, 0.5, 0.75)
    columns = [np.ones((len(prediction), 1)), prediction[:, None]]
    columns += [np.maximum(prediction - k, 0.0)[:, None] for k in knots]
    if embeddings is not None:
        columns.append(embeddings)
    return np.hstack(columns)


def _ridge(x: np.ndarray, y: np.ndarray, weights: np.ndarray | None, penalty: float = LOSS_PENALTY) -> np.ndarray:
    """Weighted ridge coefficients (the first column, the intercept, unpenalized)."""
    w = np.ones(len(x)) if weights is None else weights
    gram = (x * w[:, None]).T @ x
    ridge = penalty * np.eye(x.shape[1])
    ridge[0, 0] = 0.0
    return np.linalg.solve(gram + ridge, (x * w[:, None]).T @ y)


def _loss_models(x_dev, losses, x_win, weights, seed):
    """Each loss's out-of-fold prediction on the dev rows and mean fold-model prediction on the
    window rows, from a ridge regression on the prediction's spline basis and the embeddings'
    components (cheap enough to refit hourly; gradient-boosted trees cost 100x on two cores)."""
    folds = np.random.default_rng(seed + 2).permutation(len(x_dev)) % FOLDS
    dev_out = np.empty((len(x_dev), losses.shape[1]))
    win_out = np.zeros((len(x_win), losses.shape[1]))
    for fold in range(FOLDS):
        train = folds != fold
        coef = _ridge(x_dev[train], losses[train], None if weights is None else weights[train])
        dev_out[~train] = x_dev[~train] @ coef
        win_out += x_win @ coef / FOLDS
    floor = 1e-6 * losses.mean(axis=0)
    return np.maximum(dev_out, floor), np.maximum(win_out, floor)


def _regression_rounds(dev_pred, dev_true, win_pred, dev_emb, win_emb, weights, trust, method, resamples, seed):
    """Point estimates (with and without the shift correction) and the bootstrap rounds."""
    errors = dev_pred - dev_true
    losses = np.column_stack([errors**2, np.abs(errors)])
    x_dev, x_win = _loss_features(dev_pred, dev_emb), _loss_features(win_pred, win_emb)
    dev_loss, win_loss = _loss_models(x_dev, losses, x_win, None, seed)
    confidence_mse, confidence_mae = win_loss.mean(axis=0)
    if method == "weighted_calibration":
        dev_loss_w, win_loss_w = _loss_models(x_dev, losses, x_win, weights, seed)
    else:
        dev_loss_w, win_loss_w = dev_loss, win_loss
    residual = losses - dev_loss_w

    def correction(d_idx):
        """The weighted minus the plain mean dev residual of each loss (zero without a shift)."""
        w = weights[d_idx]
        return (w[:, None] * residual[d_idx]).sum(axis=0) / w.sum() - residual[d_idx].mean(axis=0)

    strength = 1.0
    if method == "doubly_robust":
        pre = np.random.default_rng(seed + 3)
        changes = [correction(pre.integers(0, len(dev_true), len(dev_true)))[0] for _ in range(SHRINKAGE_ROUNDS)]
        strength = shrinkage(float(correction(np.arange(len(dev_true)))[0]), np.asarray(changes)) * trust

    def loss_point(d_idx, w_idx):
        w = weights[d_idx]
        if method == "importance":
            return (w[:, None] * losses[d_idx]).sum(axis=0) / w.sum()
        # The loss model is fitted once; its level's uncertainty under a resample of the dev rows
        # is the move of their mean residual (zero on the rows as they are).
        value = win_loss_w[w_idx].mean(axis=0) + residual[d_idx].mean(axis=0) - residual.mean(axis=0)
        if method == "doubly_robust":
            value = value + strength * correction(d_idx)
        return np.clip(value, 1e-12, None)

    # Simulated targets for Spearman and the intervals: each window row's error is a dev residual
    # drawn (by weight) from the dev rows in its prediction bin, rescaled by the ratio of the two
    # rows' modelled errors; the whole draw is then scaled to the estimated MSE.
    edges = np.quantile(dev_pred, np.linspace(0, 1, PREDICTION_BINS + 1)[1:-1])
    dev_bin, win_bin = np.searchsorted(edges, dev_pred), np.searchsorted(edges, win_pred)
    dev_scale, win_scale = np.sqrt(dev_loss_w[:, 0]), np.sqrt(win_loss_w[:, 0])
    floor = max(float(np.median(dev_scale)) * 0.1, 1e-9)
    dev_scale, win_scale = np.maximum(dev_scale, floor), np.maximum(win_scale, floor)

    def simulate(d_idx, w_idx, weighted, rng):
        drawn = np.empty(len(w_idx))
        for b in np.unique(win_bin[w_idx]):
            pool = d_idx[dev_bin[d_idx] == b]
            pool = pool if len(pool) else d_idx
            at = win_bin[w_idx] == b
            pw = weights[pool] if weighted else np.ones(len(pool))
            pick = rng.choice(pool, size=int(at.sum()), p=pw / pw.sum())
            ratio = np.clip(win_scale[w_idx[at]] / dev_scale[pick], 0.25, 4.0)
            drawn[at] = (dev_pred[pick] - dev_true[pick]) * ratio
        return drawn

    def simulated_metrics(errors, w_idx, mse, base):
        errors = errors * np.sqrt(mse / base) if base > 0 else errors
        return regression_metrics(win_pred[w_idx] - errors, win_pred[w_idx])

    every_dev, every_win = np.arange(len(dev_true)), np.arange(len(win_pred))
    mse, mae = loss_point(every_dev, every_win)
    rng = np.random.default_rng(seed)
    weighted = method != "confidence"
    spearmans = {}
    for name, use_weights, target in (("shift", weighted, mse), ("plain", False, confidence_mse)):
        draws = [simulate(every_dev, every_win, use_weights, rng) for _ in range(10)]
        base = float(np.mean([np.mean(d**2) for d in draws]))
        spearmans[name] = (np.mean([simulated_metrics(d, every_win, target, base)["spearman"] for d in draws]), base)
    values = {"mse": float(mse), "mae": float(mae), "spearman": float(spearmans["shift"][0])}
    without = {"mse": float(confidence_mse), "mae": float(confidence_mae), "spearman": float(spearmans["plain"][0])}
    base = spearmans["shift"][1]
    rounds = {name: {"expected": [], "drawn": [], "dev": []} for name in METRICS["regression"]}
    for _ in range(resamples):
        d_idx = rng.integers(0, len(dev_true), len(dev_true))
        w_idx = rng.integers(0, len(win_pred), len(win_pred))
        dev_metric = regression_metrics(dev_true[d_idx], dev_pred[d_idx])
        r_mse, r_mae = loss_point(d_idx, w_idx)
        drawn = simulated_metrics(simulate(d_idx, w_idx, weighted, rng), w_idx, r_mse, base)
        expected_metric = {"mse": r_mse, "mae": r_mae, "spearman": drawn["spearman"]}
        for name in rounds:
            rounds[name]["expected"].append(float(expected_metric[name]))
            rounds[name]["drawn"].append(float(drawn[name]))
            rounds[name]["dev"].append(dev_metric[name])
    # MSE and MAE draws: each round's estimate plus the label noise of its simulated targets.
    for name in ("mse", "mae"):
        expected_rounds = np.asarray(rounds[name]["expected"])
        noise = np.asarray(rounds[name]["drawn"]) - expected_rounds
        rounds[name]["drawn"] = list(expected_rounds + noise - noise.mean())
    return values, without, regression_metrics(dev_true, dev_pred), rounds, strength


# --- the estimate --------------------------------------------------------------------------------


def _check_inputs(task, dev_true, dev_prediction, window_prediction, n_labels, labels, min_rows):
    """The one-line reason an estimate cannot be made, raised as an :class:`InputError`."""
    if task not in METRICS:
        raise InputError(f"unknown task {task!r}; expected classification or regression")
    if len(window_prediction) < min_rows:
        raise InputError(
            f"insufficient data: {len(window_prediction)} window rows, fewer than the {min_rows} an estimate needs"
        )
    if len(dev_true) < min_rows:
        raise InputError(f"insufficient data: {len(dev_true)} labelled dev rows, fewer than the {min_rows} needed")
    if len(dev_true) != len(dev_prediction):
        raise InputError(f"{len(dev_true)} dev targets for {len(dev_prediction)} dev predictions")
    for side, values in (("dev", dev_prediction), ("window", window_prediction)):
        if not np.all(np.isfinite(values)):
            raise InputError(f"the champion's {side} predictions hold missing or infinite values")
    if task == "regression":
        if np.ptp(dev_prediction) == 0:
            raise InputError(
                f"cannot model the champion's loss: its dev predictions are constant"
                f" ({float(dev_prediction[0]):.4g} on all {len(dev_prediction)} rows)"
            )
        return
    name = (lambda k: labels[k]) if labels else str
    if dev_prediction.ndim != 2 or window_prediction.ndim != 2 or window_prediction.shape[1] != n_labels:
        raise InputError(f"classification estimates need class probabilities ({n_labels} columns) on both sides")
    predicted = np.bincount(dev_prediction.argmax(axis=1), minlength=n_labels)
    present = np.bincount(dev_true, minlength=n_labels)
    for k in range(n_labels):
        if predicted[k] == 0:
            raise InputError(
                f"cannot calibrate the champion's confidence: it never predicts class {name(k)!r}"
                f" on its {len(dev_true)} dev rows"
            )
        if present[k] == 0:
            raise InputError(f"cannot calibrate the champion's confidence: no dev row is of class {name(k)!r}")


def estimate_performance(
    task: str,
    dev_true: np.ndarray,
    dev_prediction: np.ndarray,
    window_prediction: np.ndarray,
    dev_embeddings: np.ndarray | None = None,
    window_embeddings: np.ndarray | None = None,
    window_true: np.ndarray | None = None,
    labels: list[str] | None = None,
    window_embedded: np.ndarray | None = None,
    method: str = DEFAULT_METHOD,
    min_rows: int = 100,
    resamples: int = 300,
    confidence: float = 0.95,
    loss_confidence: float = 0.99,
    seed: int = 0,
) -> PerformanceEstimate:
    """The champion's metrics on a window, estimated from its dev-set behaviour, with intervals.

    Args:
        task: ``classification`` or ``regression``.
        dev_true: the dev rows' targets: class indices, or scores in [0, 1].
        dev_prediction: the champion's dev predictions: class probabilities (rows by classes),
            or scores.
        window_prediction: the champion's predictions on the window's rows, as above (served
            answers' logged probabilities or satisfaction are these).
        dev_embeddings: the champion's embeddings (or any fixed features: a TF-IDF SVD, the
            behaviour features) of the dev rows; without them the shift is seen through the
            predictions alone.
        window_embeddings: the same for the window's rows.
        window_true: the window's targets where they are in (NaN, or a negative class index,
            where not): the realized values stand beside the estimates.
        labels: class names, for the messages.
        window_embedded: which window rows ``window_embeddings`` belong to (indices), when only a
            sample of the window was embedded (the drift check embeds ``embedding_rows``); the
            weights need no more, and a regression estimate is then made on those rows.
        method: one of ``METHODS``.
        min_rows: below this many window (or dev) rows there is no estimate.
        resamples: bootstrap rounds.
        confidence: the two-sided level of the interval of the realized value.
        loss_confidence: the level of the one-sided lower bound of the loss (the drift rule's).
        seed: the same seed gives the same estimate.

    Returns:
        The estimate of every metric of the task.

    Raises:
        InputError: in one line, when the window or the dev set is too small, or the champion's
            dev predictions cannot be calibrated (a class never predicted, a constant score).
    """
    if method not in METHODS:
        raise InputError(f"unknown estimation method {method!r}; expected one of {', '.join(METHODS)}")
    from threadpoolctl import threadpool_limits

    # The matrices are small: one BLAS thread is as fast alone, and 10x faster beside other work.
    with threadpool_limits(limits=1):
        return _estimate(
            task, dev_true, dev_prediction, window_prediction, dev_embeddings, window_embeddings, window_true,
            labels, window_embedded, method, min_rows, resamples, confidence, loss_confidence, seed,
        )  # fmt: skip


def _estimate(
    task, dev_true, dev_prediction, window_prediction, dev_embeddings, window_embeddings, window_true,
    labels, window_embedded, method, min_rows, resamples, confidence, loss_confidence, seed,
) -> PerformanceEstimate:  # fmt: skip
    """:func:`estimate_performance`, its arguments checked for the method."""
    dev_prediction = np.asarray(dev_prediction, dtype=float)
    window_prediction = np.asarray(window_prediction, dtype=float)
    n_labels = dev_prediction.shape[1] if task == "classification" and dev_prediction.ndim == 2 else 1
    if task == "regression":
        dev_true = np.asarray(dev_true, dtype=float)
        dev_prediction, window_prediction = dev_prediction.reshape(-1), window_prediction.reshape(-1)
    else:
        dev_true = np.asarray(dev_true).astype(int)
    _check_inputs(task, dev_true, dev_prediction, window_prediction, n_labels, labels, min_rows)
    embedded = np.arange(len(window_prediction)) if window_embedded is None else np.asarray(window_embedded)
    if window_embeddings is not None and len(window_embeddings) != len(embedded):
        raise InputError(f"{len(window_embeddings)} window embeddings for {len(embedded)} embedded window rows")
    if (dev_embeddings is None) != (window_embeddings is None):
        dev_embeddings = window_embeddings = None  # one side alone cannot tell the two apart
    dev_x, win_x, words = domain_features(
        dev_prediction, window_prediction[embedded], dev_embeddings, window_embeddings
    )
    weights, auc, covered = shift_weights(dev_x, win_x, seed)
    share = effective_rows(weights) / len(weights)
    trust = covered * float(np.clip((share - MIN_EFFECTIVE_SHARE) / (FULL_EFFECTIVE_SHARE - MIN_EFFECTIVE_SHARE), 0, 1))
    if task == "classification":
        values, without, dev_values, rounds, kept = _classification_rounds(
            dev_prediction, dev_true, window_prediction, weights, trust, method, n_labels, resamples, seed
        )
    else:
        with_embeddings = dev_embeddings is not None
        values, without, dev_values, rounds, kept = _regression_rounds(
            dev_prediction,
            dev_true,
            window_prediction[embedded] if with_embeddings else window_prediction,
            dev_x[:, 1:] if with_embeddings else None,  # the embeddings' components, not the prediction
            win_x[:, 1:] if with_embeddings else None,
            weights,
            trust,
            method,
            resamples,
            seed,
        )
    realized, labelled = _realized(task, window_true, window_prediction, n_labels)
    alpha = (1 - confidence) / 2
    metrics = {}
    for name in METRICS[task]:
        sign = -1.0 if DIRECTION[name] else 1.0  # loss is positive when the window is worse
        drawn = np.asarray(rounds[name]["drawn"])
        loss_rounds = sign * (np.asarray(rounds[name]["expected"]) - np.asarray(rounds[name]["dev"]))
        loss = sign * (values[name] - dev_values[name])
        dev_value = dev_values[name]
        metrics[name] = MetricEstimate(
            metric=name,
            value=float(values[name]),
            low=float(np.quantile(drawn, alpha)),
            high=float(np.quantile(drawn, 1 - alpha)),
            dev=float(dev_value),
            loss=float(loss),
            relative_loss=float(loss / abs(dev_value)) if dev_value else (float("inf") if loss > 0 else 0.0),
            loss_low=float(np.quantile(loss_rounds, 1 - loss_confidence)),
            loss_high=float(np.quantile(loss_rounds, loss_confidence)),
            without_shift=float(without[name]),
            realized=None if realized is None else realized[name],
            gap=None if realized is None else float(values[name] - realized[name]),
        )
    shift = ShiftCorrection(
        auc=auc,
        effective_rows=effective_rows(weights),
        effective_share=effective_rows(weights) / len(weights),
        max_weight=float(weights.max()),
        features=words,
        covered=covered,
        kept=kept if method == "doubly_robust" else (0.0 if method == "confidence" else 1.0),
    )
    return PerformanceEstimate(
        task, method, len(window_prediction), len(dev_true), labelled, confidence, metrics, shift, resamples
    )


def _realized(task, window_true, window_prediction, n_labels) -> tuple[dict | None, int]:
    """The window's realized metrics on its labelled rows (none below two), and their count."""
    if window_true is None:
        return None, 0
    truth = np.asarray(window_true, dtype=float)
    known = np.isfinite(truth) & (truth >= 0)
    if known.sum() < 2:
        return None, int(known.sum())
    if task == "regression":
        return regression_metrics(truth[known], window_prediction[known]), int(known.sum())
    predicted = window_prediction[known].argmax(axis=1)
    return classification_metrics(truth[known].astype(int), predicted, n_labels), int(known.sum())


# --- the drift signal ------------------------------------------------------------------------------


def estimated_performance_signal(
    task: str,
    dev_true: np.ndarray,
    dev_prediction: np.ndarray,
    window_prediction: np.ndarray,
    policy,
    dev_embeddings: np.ndarray | None = None,
    window_embeddings: np.ndarray | None = None,
    window_true: np.ndarray | None = None,
    labels: list[str] | None = None,
    window_embedded: np.ndarray | None = None,
    seed: int = 0,
    column: str = GROUP,
) -> dict:
    """The ``estimated_performance`` signal: the estimated metric on the window against the dev
    metric, drifted by the realized performance signal's rule.

    It drifts when the estimated relative loss is at least ``policy.performance_min_degradation``
    and the one-sided lower bound of the loss at ``policy.performance_confidence`` is above zero.

    Args:
        task: ``classification`` or ``regression``.
        dev_true: the dev rows' targets (class indices, or scores).
        dev_prediction: the champion's dev predictions.
        window_prediction: the champion's predictions on the window.
        policy: a :class:`refit.drift.policy.DriftPolicy` (its metric, row minimum, bootstrap
            rounds, degradation and confidence).
        dev_embeddings: the champion's embeddings of the dev rows, when it has them.
        window_embeddings: the same of the window's rows.
        window_true: the window's targets where they are in (NaN or negative where not).
        labels: class names.
        window_embedded: which window rows ``window_embeddings`` belong to, when a sample was embedded.
        seed: the bootstrap's seed.
        column: the signal's name: ``estimated_performance`` for feedback,
            ``estimated_performance_served`` for the answers ``refit serve`` logged.

    Returns:
        A signal (:func:`refit.drift.signals.make_signal`); unmeasured (no score, a one-line
        ``note``) when the window is too small or the champion cannot be calibrated.
    """
    from refit.drift.signals import make_signal
    from refit.models.metrics import DEFAULT_METRIC

    metric = policy.metric or DEFAULT_METRIC[task]
    method = f"estimated {metric}"
    try:
        estimate = estimate_performance(
            task,
            dev_true,
            dev_prediction,
            window_prediction,
            dev_embeddings,
            window_embeddings,
            window_true,
            labels,
            window_embedded,
            min_rows=policy.min_rows,
            resamples=policy.bootstrap_rounds,
            loss_confidence=policy.performance_confidence,
            seed=seed,
        )
    except InputError as exc:
        return make_signal(column, method, None, policy.performance_min_degradation, False, note=str(exc))
    m = estimate.metrics[metric]
    drifted = m.relative_loss >= policy.performance_min_degradation and m.loss_low > 0
    return make_signal(
        column,
        method,
        m.relative_loss,
        policy.performance_min_degradation,
        drifted,
        metric=metric,
        estimated=True,
        dev=m.dev,
        current=m.value,
        interval=[m.low, m.high],
        loss=m.loss,
        loss_interval=[m.loss_low, m.loss_high],
        confidence=policy.performance_confidence,
        without_shift=m.without_shift,
        realized=m.realized,
        gap=m.gap,
        domain_auc=estimate.shift.auc,
        shift_features=estimate.shift.features,
        correction_kept=estimate.shift.kept,
        effective_dev_rows=estimate.shift.effective_rows,
        dev_rows=estimate.dev_rows,
        current_rows=estimate.window_rows,
        labelled_rows=estimate.labelled_rows,
        note=estimate.line(metric),
    )


def champion_estimate(
    champion,
    dev: pd.DataFrame,
    window: pd.DataFrame | None,
    window_prediction: np.ndarray,
    task: str,
    labels: list[str] | None,
    policy,
    window_embeddings: np.ndarray | None = None,
    window_embedded: np.ndarray | None = None,
    column: str = GROUP,
) -> dict:
    """The ``estimated_performance`` signal of a check, from feedback frames: what the drift check
    calls beside :func:`refit.drift.performance.champion_performance`.

    Args:
        champion: the champion (a :class:`models.predict.Predictor`); its dev predictions and
            embeddings are memoized per model and content.
        dev: the gate's dev rows; a time-stratified ``policy.sample_cap`` of them calibrate.
        window: the window's rows, labelled and unlabelled alike; None for served answers, which
            carry no text and no target.
        window_prediction: the champion's raw predictions of ``window``'s rows.
        task: ``regression`` or ``classification``.
        labels: class names, for classification.
        policy: the drift policy.
        window_embeddings: the champion's embeddings of (a sample of) the window's rows, as the
            embeddings signal computed them; without them, the shift is seen through the
            predictions alone.
        window_embedded: the positions in ``window`` of the embedded rows (default: every row).
        column: the signal's name (see :func:`estimated_performance_signal`).

    Returns:
        The signal.
    """
    embed = window_embeddings is not None
    dev_true, dev_prediction, dev_embeddings = dev_calibration(champion, dev, task, labels, policy, embed=embed)
    window_true = None
    if window is not None:
        window_true = numeric_targets(window.reset_index(drop=True), task, labels).to_numpy(dtype=float)
    return estimated_performance_signal(
        task,
        dev_true,
        dev_prediction,
        window_prediction,
        policy,
        dev_embeddings,
        window_embeddings if dev_embeddings is not None else None,
        window_true,
        labels,
        window_embedded,
        column=column,
    )


def numeric_targets(rows: pd.DataFrame, task: str, labels: list[str] | None) -> pd.Series:
    """The rows' targets as numbers: scores, or class indices (NaN where missing or not a known label)."""
    from refit.drift.signals import targets_of

    truth = targets_of(rows, task)
    if task == "classification":
        truth = truth.map({name: i for i, name in enumerate(labels or [])})
    return truth


def dev_calibration(
    champion, dev: pd.DataFrame, task: str, labels: list[str] | None, policy, embed: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """What the estimate is calibrated on: a time-stratified ``policy.sample_cap`` of the dev rows
    with a target, and the champion's predictions (and, with ``embed``, embeddings) of them,
    memoized per model and content.

    Args:
        champion: the champion (a :class:`models.predict.Predictor`).
        dev: the gate's dev rows.
        task: ``regression`` or ``classification``.
        labels: class names, for classification.
        policy: the drift policy.
        embed: whether to embed the rows too (a champion that cannot embed gives None).

    Returns:
        The targets, the predictions and the embeddings (or None).
    """
    from refit.drift.signals import champion_output
    from refit.drift.windows import time_stratified_sample

    rows = time_stratified_sample(dev, policy.sample_cap).reset_index(drop=True)
    truth = numeric_targets(rows, task, labels)
    known = truth.notna().to_numpy()  # a dev row without a target (or a label unknown) says nothing
    rows, truth = rows[known].reset_index(drop=True), truth[known]
    prediction = champion_output(champion, "predict", rows) if len(rows) else np.zeros((0, 1))
    embeddings = None
    if embed and hasattr(champion, "embed") and len(rows):
        embeddings = champion_output(champion, "embed", rows)
    return truth.to_numpy(dtype=float), prediction, embeddings
