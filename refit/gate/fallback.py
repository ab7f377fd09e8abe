"""No dead end for a first model: when the challenger does not beat TF-IDF, the better of the two
still becomes the champion, as long as it beats the trivial predictor.

The first gate asks a challenger to beat every baseline by the paired bootstrap. On a few hundred
reviews a BERT rarely beats TF-IDF with confidence, and a run that ends with no champion leaves the
user with no serving, no predictions and no drift checks. So when the challenger fails against
TF-IDF, the candidate is the better of the two by their dev-set scores: the challenger as trained
(a blend's weight was fitted on the validation fold, never on these rows), or its TF-IDF model on
its own (the checkpoint with a BERT weight of 0). That candidate must still beat the trivial
predictor by the same bootstrap rule, at the first-model level. For regression it may show it by
its ranking instead: better than the trivial predictor's error on the dev rows, and a Spearman
correlation with the scores whose interval lies above 0 at the gate's own level (see
``_by_ranks``). If neither shows it, the run ends without a champion, as before.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd

from refit.gate.bootstrap import paired_bootstrap
from refit.gate.rule import GateDecision, GatePolicy, gate
from refit.models.metrics import DIRECTION, task_metrics


def first_model_decision(
    policy: GatePolicy,
    task: str,
    y_true: np.ndarray,
    challenger: np.ndarray,
    references: dict[str, np.ndarray],
    n_labels: int,
    slices: pd.DataFrame | None,
    challenger_kind: str,
) -> tuple[GateDecision, str]:
    """The first gate, with the TF-IDF fallback; returns the decision and the champion's kind
    (``challenger_kind`` as trained, or ``tfidf`` when its TF-IDF model alone is the better one).

    Args:
        references: the baselines' predictions by name; the fallback needs ``tfidf`` and ``trivial``.
        challenger_kind: ``bert`` or ``blend``: what the challenger checkpoint predicts with.
    """
    decision = gate(policy, task, y_true, challenger, references, n_labels, slices)
    if decision.promote or "tfidf" not in references or "trivial" not in references:
        return decision, challenger_kind
    if not np.isfinite(decision.challenger_score):  # refused predictions: no fallback from a broken model
        return decision, challenger_kind
    metric = policy.metric
    higher = DIRECTION[metric]
    ours = task_metrics(task, y_true, challenger, n_labels)[metric]
    theirs = task_metrics(task, y_true, references["tfidf"], n_labels)[metric]
    keep = ours >= theirs if higher else ours <= theirs
    kind = challenger_kind if keep else "tfidf"
    candidate = challenger if keep else references["tfidf"]
    # Nothing is in production yet: the question is whether the model learned anything at all,
    # and the alternative to shipping it is no model. It needs the first-model level against the
    # trivial predictor (REFIT_GATE_FIRST_CONFIDENCE), with the same bootstrap.
    first = replace(policy, confidence=policy.first_confidence)
    fallback = gate(first, task, y_true, candidate, {"trivial": references["trivial"]}, n_labels, slices)
    if not fallback.promote and task == "regression" and metric != "spearman":
        fallback = _by_ranks(policy, y_true, candidate, references["trivial"], fallback)
    lost = decision.reason.removeprefix("reject: ")
    why = (
        f"the {challenger_kind} challenger did not beat every baseline with confidence ({lost})"
        f"; the better of the two on the dev set ({kind}: {metric} {ours if keep else theirs:.4f} vs "
        f"{theirs if keep else ours:.4f}) is judged against the trivial predictor"
    )
    if not fallback.promote:
        reasons = [*decision.reasons, why, *fallback.reasons]
        if fallback.improvement > 0:  # better than the trivial predictor, but not with confidence
            hint = (
                f"the {len(y_true)} dev rows are too few to show it with {first.confidence:.0%} confidence:"
                " ingest more feedback, or freeze a larger dev set (REFIT_DEV_FRACTION, then `refit devset refresh`)"
            )
            return replace(decision, reason=f"{decision.reason}; {hint}", reasons=[*reasons, hint]), challenger_kind
        return replace(decision, reasons=reasons), challenger_kind
    reason = f"promote {kind} as the first champion: {why}: {fallback.reason.removeprefix('promote: ')}"
    comparisons = {**decision.comparisons, **{f"{k} (fallback)": v for k, v in fallback.comparisons.items()}}
    return (
        replace(
            fallback,
            reason=reason,
            reasons=[*decision.reasons, why, *fallback.reasons],
            comparisons=comparisons,
            metrics={**decision.metrics, "champion candidate": fallback.metrics["challenger"]},
            fallback=kind,
        ),
        kind,
    )


def _by_ranks(
    policy: GatePolicy, y_true: np.ndarray, candidate: np.ndarray, trivial: np.ndarray, fallback: GateDecision
) -> GateDecision:
    """A regression first model that beats the trivial predictor's error on the dev rows, but not
    with confidence, still shows that it learned something when its predictions rank the scores:
    the interval of its Spearman correlation (the trivial predictor's is 0) lies above 0 at the
    gate's own level (REFIT_GATE_CONFIDENCE), not the first-model one. Errors on a few dozen rows
    vary too much to show a gain over the mean (on 34 real reviews: MSE 0.0897 vs 0.1124, 80%
    interval -0.0003 to +0.0488), while the ranking is plain (Spearman 0.58). A model worse than the
    mean on these rows is never promoted this way."""
    if not fallback.improvement > policy.min_improvement:
        return fallback
    ranks = paired_bootstrap(
        "spearman", y_true, candidate, trivial, 1, policy.resamples, policy.confidence, policy.seed
    )
    if not (np.isfinite(ranks.low) and ranks.low > 0):
        return fallback
    line = (
        f"spearman vs trivial: {ranks.point:.4f} vs 0.0000 ({policy.confidence:.0%} interval {ranks.low:+.4f}"
        f" to {ranks.high:+.4f}) > 0: it ranks the scores, and its {fallback.metric} is better than the"
        " trivial predictor's on these rows"
    )
    comparisons = {
        **fallback.comparisons,
        "trivial, ranks": {"challenger": ranks.point, "reference": 0.0, **ranks.as_dict(), "passed": True},
    }
    return replace(
        fallback, promote=True, reason=f"promote: {line}", reasons=[*fallback.reasons, line], comparisons=comparisons
    )
