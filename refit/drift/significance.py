"""Whether a signal's difference is more than chance at this window's sizes.

A fixed distance means one thing at 200 rows and another at 20,000: between two random halves of
one population of 400 rows, a categorical feature with 150 values has a Jensen-Shannon distance
near 0.45, so a 0.1 threshold fires on every check. Each distribution signal is therefore judged
against its own null at the sizes it was measured on, with a test whose p-value is exact or
asymptotic (no resampling, so a check costs what it did):

- numeric columns: the two-sample Kolmogorov-Smirnov test (asymptotic; ties make it conservative);
- categorical columns: the chi-square test of homogeneity of the :data:`TOP_VALUES` most common
  values plus one "other" cell, a value whose expected count on the smaller side is under
  :data:`MIN_EXPECTED` going to "other" too (the choice reads the two sides together, so it does
  not depend on which side a row is on). On Amazon's 149 product categories this held its level
  at 200, 500 and 5,000 rows and had more power on a real shift than pooling only the rare values
  (more cells spread the same shift over more degrees of freedom) or pooling none (bench/drift_bench.py);
- text and embeddings: the domain classifier's ROC AUC on its held-out half is a Mann-Whitney
  statistic of scores from a classifier that never saw those rows, so under no drift it has the
  Mann-Whitney null at the held-out half's two sizes (normal approximation, one-sided).

The family of distribution signals is corrected as a whole (Holm by default, or Benjamini-
Hochberg), at ``alpha``. A signal drifts when its corrected p-value is below ``alpha`` **and** its
effect (the Evidently distance or AUC the report shows) reaches the policy's threshold, which is now
a floor: a huge window does not alarm on a trivial difference.

The loss signals (``performance``, and any group outside :data:`DISTRIBUTION_GROUPS`) keep their
own rule, an interval of the loss at the policy's confidence, and stay outside the family.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

# The groups whose signals compare two distributions; only these are tested and corrected here.
DISTRIBUTION_GROUPS = ("embeddings", "text", "descriptors", "labels", "predictions", "features")
CORRECTIONS = ("holm", "bh")
# A chi-square cell needs this expected count on the smaller side; rarer values are pooled.
MIN_EXPECTED = 5.0
# The most common values a categorical test keeps as cells of their own; the rest are "other".
TOP_VALUES = 10
# Evidently's domain classifiers (text content drift, embeddings ModelDriftMethod) hold out this
# share of the rows, split with this seed; the AUC is measured on them.
HOLDOUT_SHARE, HOLDOUT_SEED = 0.5, 42


def ks_p_value(reference: np.ndarray, current: np.ndarray) -> float | None:
    """The two-sample Kolmogorov-Smirnov p-value (asymptotic), None with fewer than 2 values a side.

    Args:
        reference: the reference side's values.
        current: the current side's values.

    Returns:
        The p-value, or None when a side is too small to test.
    """
    from scipy.stats import ks_2samp

    if len(reference) < 2 or len(current) < 2:
        return None
    return float(ks_2samp(reference, current, method="asymp").pvalue)


def pooled_table(
    reference: pd.Series, current: pd.Series, min_expected: float = MIN_EXPECTED, top: int | None = TOP_VALUES
) -> np.ndarray:
    """The 2-row contingency table of two categorical samples: the most common values, the rest pooled.

    A value is kept as its own cell when it is one of the ``top`` most common of both sides
    together and its expected count on the smaller side (its share of both sides times that side's
    size) is at least ``min_expected``; the rest form one "other" cell, which joins the smallest
    kept cell when it is itself too small.

    Args:
        reference: the reference side's values.
        current: the current side's values.
        min_expected: the smallest expected count a cell may have.
        top: the most values kept as cells of their own (None: every value common enough).

    Returns:
        An array of shape ``(2, cells)``: reference counts, then current counts.
    """
    ref_counts = reference.value_counts()
    cur_counts = current.value_counts()
    both = ref_counts.add(cur_counts, fill_value=0).sort_values(ascending=False, kind="stable")
    table = pd.DataFrame({"ref": ref_counts, "cur": cur_counts}).reindex(both.index).fillna(0.0)
    smaller = min(len(reference), len(current))
    total = max(len(reference) + len(current), 1)
    keep = (both * smaller / total >= min_expected).to_numpy()
    if top is not None:
        keep &= np.arange(len(both)) < top
    cells = table[keep].to_numpy(dtype=float).reshape(-1, 2)
    other = table[~keep].sum().to_numpy(dtype=float)
    if other.sum() > 0:
        if other.sum() * smaller / total >= min_expected or len(cells) == 0:
            cells = np.vstack([cells, other[None, :]])
        else:
            cells[np.argmin(cells.sum(axis=1))] += other
    return cells.T


def chi_square_p_value(
    reference: pd.Series, current: pd.Series, min_expected: float = MIN_EXPECTED, top: int | None = TOP_VALUES
):
    """The chi-square test of homogeneity of two categorical samples, rare values pooled.

    Args:
        reference: the reference side's values.
        current: the current side's values.
        min_expected: see :func:`pooled_table`.
        top: see :func:`pooled_table`.

    Returns:
        ``(p_value, cells)``: the p-value (1.0 when fewer than two cells remain, None when a side
        is empty) and the number of cells tested.
    """
    from scipy.stats import chi2

    if len(reference) == 0 or len(current) == 0:
        return None, 0
    table = pooled_table(reference, current, min_expected, top)
    cells = table.shape[1]
    if cells < 2:
        return 1.0, cells
    totals = table.sum(axis=0)
    sides = table.sum(axis=1, keepdims=True)
    expected = sides * totals[None, :] / table.sum()
    statistic = float(((table - expected) ** 2 / expected).sum())
    return float(chi2.sf(statistic, cells - 1)), cells


def holdout_sizes(n_reference: int, n_current: int) -> tuple[int, int]:
    """How many reference and current rows Evidently's domain classifier scores its AUC on: the
    held-out half of its ``train_test_split`` (the reference rows come first in its frame)."""
    from sklearn.model_selection import train_test_split

    order = np.arange(n_reference + n_current)
    _, held_out = train_test_split(order, test_size=HOLDOUT_SHARE, random_state=HOLDOUT_SEED, shuffle=True)
    in_reference = int((held_out < n_reference).sum())
    return in_reference, len(held_out) - in_reference


def auc_p_value(auc: float, n_first: int, n_second: int) -> float | None:
    """The one-sided p-value of a held-out ROC AUC above 0.5 under no difference: the
    Mann-Whitney null of ``n_first`` and ``n_second`` scores, normal approximation with continuity
    correction (ties in the scores only make it conservative).

    Args:
        auc: the ROC AUC on the held-out rows.
        n_first: held-out rows of one class.
        n_second: held-out rows of the other.

    Returns:
        The p-value, or None when a class has no held-out row.
    """
    from scipy.stats import norm

    if n_first == 0 or n_second == 0 or auc is None or not math.isfinite(auc):
        return None
    pairs = n_first * n_second
    u = auc * pairs
    sd = math.sqrt(pairs * (n_first + n_second + 1) / 12.0)
    return float(norm.sf((u - pairs / 2.0 - 0.5) / sd))


def adjust(p_values: list[float], correction: str = "holm") -> list[float]:
    """Family-corrected p-values, in the input order.

    Args:
        p_values: one p-value per signal of the family.
        correction: ``holm`` (the family-wise error rate, under any dependence) or ``bh``
            (Benjamini-Hochberg's false discovery rate).

    Returns:
        The adjusted p-values, each at most 1.
    """
    if correction not in CORRECTIONS:
        raise ValueError(f"unknown correction {correction!r}; expected one of {', '.join(CORRECTIONS)}")
    p = np.asarray(p_values, dtype=float)
    m = len(p)
    if m == 0:
        return []
    order = np.argsort(p, kind="stable")
    ranked = p[order]
    if correction == "holm":
        stepped = np.maximum.accumulate(ranked * (m - np.arange(m)))
    else:
        stepped = np.minimum.accumulate((ranked * m / np.arange(1, m + 1))[::-1])[::-1]
    out = np.empty(m)
    out[order] = np.minimum(stepped, 1.0)
    return out.tolist()


def attach_p_values(
    signals: list[dict],
    reference: pd.DataFrame,
    current: pd.DataFrame,
    kinds: dict[str, str],
    embedding_sizes: tuple[int, int] | None = None,
) -> None:
    """Each distribution signal's p-value under its own null, put in its ``detail`` in place.

    Args:
        signals: the check's signals (a signal of another group is left as it is).
        reference: the reference side's measured columns, typed (see ``typed_columns``).
        current: the current side's, typed the same.
        kinds: each column's kind (``text``, ``numeric``, ``categorical``).
        embedding_sizes: the rows per side the embeddings classifier was given.
    """
    from refit.drift.signals import EMBEDDINGS

    for signal in signals:
        column = signal["column"]
        if signal["group"] not in DISTRIBUTION_GROUPS or signal["score"] is None:
            continue
        detail = signal.setdefault("detail", {})
        if column == EMBEDDINGS:
            if embedding_sizes is None:
                continue
            held = holdout_sizes(*embedding_sizes)
            detail.update(test="mann-whitney (held-out AUC)", held_out=list(held))
            detail["p_value"] = auc_p_value(signal["score"], *held)
            continue
        kind = kinds.get(column)
        if kind is None or column not in reference or column not in current:
            continue
        ref = reference[column].replace([-np.inf, np.inf], np.nan).dropna()
        cur = current[column].replace([-np.inf, np.inf], np.nan).dropna()
        if kind == "text":
            held = holdout_sizes(len(ref), len(cur))
            detail.update(test="mann-whitney (held-out AUC)", held_out=list(held))
            detail["p_value"] = auc_p_value(signal["score"], *held)
        elif kind == "numeric":
            detail.update(test="kolmogorov-smirnov", p_value=ks_p_value(ref.to_numpy(float), cur.to_numpy(float)))
        else:
            p_value, cells = chi_square_p_value(ref.astype(str), cur.astype(str))
            detail.update(test=f"chi-square ({cells} cells, top values + other)", p_value=p_value)
    for signal in signals:
        # a p-value that is not a number is no evidence (and JSONB stores no NaN)
        p_value = signal.get("detail", {}).get("p_value")
        if p_value is not None and not math.isfinite(p_value):
            signal["detail"]["p_value"] = None


def judge(signals: list[dict], alpha: float, correction: str = "holm") -> None:
    """Decide each distribution signal in place: drifted when its family-corrected p-value is
    below ``alpha`` and its effect reaches the floor (the signal's ``threshold``).

    The verdict the signal came with (its effect against the floor alone, as Evidently's report
    judges it) is kept in ``detail["above_floor"]``. A distribution signal with no p-value is
    judged by its floor alone and joins no family. Signals of other groups keep their verdict.

    Args:
        signals: the check's signals, with p-values from :func:`attach_p_values`.
        alpha: the family's level.
        correction: ``holm`` or ``bh`` (see :func:`adjust`).
    """
    family = [
        s for s in signals
        if s["group"] in DISTRIBUTION_GROUPS and s["score"] is not None
        and s.get("detail", {}).get("p_value") is not None
    ]  # fmt: skip
    adjusted = adjust([s["detail"]["p_value"] for s in family], correction)
    for signal, p_adjusted in zip(family, adjusted, strict=True):
        above = bool(signal["drifted"])
        signal["detail"].update(
            p_adjusted=p_adjusted, effect=signal["score"], floor=signal["threshold"], above_floor=above,
            alpha=alpha, correction=correction, family=len(family),
        )  # fmt: skip
        signal["drifted"] = above and p_adjusted < alpha
