"""The promotion gate: a pure function of the dev rows' targets and each model's predictions.

A challenger is promoted only if, on the same rows of the frozen dev set, scored in this run:

1. its predictions are finite and in range on every row;
2. the paired bootstrap interval of its improvement on the primary metric lies above the minimum
   improvement, against the champion, or, for a first model, against every configured baseline;
3. no slice with enough rows is worse than the champion's by more than the slice tolerance;
4. its calibration (expected calibration error, or the mean residual for regression) is not
   worse than the champion's by more than the calibration tolerance.

Every check leaves a reason, so a decision can be read and audited later.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from refit.gate.bootstrap import paired_bootstrap
from refit.gate.slices import slice_metrics
from refit.models.metrics import DEFAULT_METRIC, DIRECTION, improvement, task_metrics

# How much worse (in the metric's own units) a slice may be before the gate refuses.
SLICE_TOLERANCE = {"mse": 0.01, "mae": 0.03, "spearman": 0.05, "accuracy": 0.03, "macro_f1": 0.05}
REPORT_SLICE_ROWS = 20  # slices this big are reported; gating needs ``slice_min_rows``
CALIBRATION_BINS = 10


@dataclass(frozen=True)
class GatePolicy:
    """The gate's rule, from the settings (``REFIT_GATE_*``)."""

    metric: str
    min_improvement: float = 0.0
    resamples: int = 1000
    confidence: float = 0.95
    first_confidence: float = 0.8  # the first model against the trivial predictor (refit.gate.fallback)
    seed: int = 0
    slice_min_rows: int = 50
    slice_tolerance: float | None = None  # None: SLICE_TOLERANCE[metric]
    calibration_tolerance: float = 0.03

    def __post_init__(self) -> None:
        if self.metric not in DIRECTION:
            raise ValueError(f"unknown gate metric {self.metric!r}; expected one of {', '.join(DIRECTION)}")

    @property
    def tolerance(self) -> float:
        return SLICE_TOLERANCE[self.metric] if self.slice_tolerance is None else self.slice_tolerance

    @classmethod
    def from_settings(cls, settings) -> GatePolicy:
        return cls(
            metric=settings.gate_metric or DEFAULT_METRIC[settings.task],
            min_improvement=settings.gate_min_improvement,
            resamples=settings.gate_resamples,
            confidence=settings.gate_confidence,
            first_confidence=settings.gate_first_confidence,
            seed=settings.seed,
            slice_min_rows=settings.gate_slice_min_rows,
            slice_tolerance=settings.gate_slice_tolerance,
            calibration_tolerance=settings.gate_calibration_tolerance,
        )


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    metric: str
    challenger_score: float
    champion_score: float  # the champion's, or the strongest baseline's, score
    improvement: float  # point estimate against that model; positive is better
    min_improvement: float
    against: str  # "champion", or "baseline" when there is no champion yet
    reason: str  # one line
    reasons: list[str] = field(default_factory=list)  # every check, passed or not
    interval: tuple[float, float] | None = None  # bootstrap interval of ``improvement``
    comparisons: dict = field(default_factory=dict)  # per reference model: scores and interval
    failed_slices: list[str] = field(default_factory=list)
    slice_checks: dict = field(default_factory=dict)
    calibration: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)  # every model's metrics overall
    slices: dict | None = None  # every model's metrics per slice
    approval: dict = field(default_factory=dict)  # an operator's verdict, when approval is required
    dev_set: int | None = None
    dev_rows: int = 0
    fallback: str | None = None  # a first model promoted in the challenger's place: "tfidf" or its kind
    kind: str | None = None  # what the promoted checkpoint predicts with: bert, blend or tfidf
    confidence: float = 0.95
    resamples: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


def invalid_predictions(prediction: np.ndarray, task: str) -> str | None:
    """Why a prediction array is unusable on some dev row, or None when every row is valid."""
    prediction = np.asarray(prediction, dtype=float)
    bad = ~np.isfinite(prediction)
    if bad.any():
        rows = np.unique(np.nonzero(bad)[0])
        return f"non-finite predictions on {len(rows)} dev row(s)"
    if task == "regression":
        outside = (prediction < 0) | (prediction > 1)
        if outside.any():
            return f"predictions outside [0, 1] on {int(outside.sum())} dev row(s)"
    elif not np.allclose(prediction.sum(axis=1), 1.0, atol=1e-4) or (prediction < 0).any():
        return "class probabilities that are not a distribution on some dev rows"
    return None


def calibration_error(task: str, y_true: np.ndarray, prediction: np.ndarray) -> float:
    """Expected calibration error over confidence bins (classification), or the absolute mean
    residual (regression: a model that is right on average has 0)."""
    prediction = np.asarray(prediction, dtype=float)
    if task == "regression":
        return float(abs(np.mean(prediction - np.asarray(y_true, dtype=float))))
    confidence = prediction.max(axis=1)
    correct = prediction.argmax(axis=1) == np.asarray(y_true)
    bins = np.minimum((confidence * CALIBRATION_BINS).astype(int), CALIBRATION_BINS - 1)
    error = 0.0
    for b in np.unique(bins):
        in_bin = bins == b
        error += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(error)


def gate(
    policy: GatePolicy,
    task: str,
    y_true: np.ndarray,
    challenger: np.ndarray,
    references: dict[str, np.ndarray],
    n_labels: int = 1,
    slices: pd.DataFrame | None = None,
) -> GateDecision:
    """Decide whether the challenger replaces the champion.

    Args:
        policy: the rule.
        task: ``regression`` or ``classification``.
        y_true: the dev rows' targets (scores, or label indices).
        challenger: the challenger's predictions on those rows.
        references: ``{"champion": predictions}``, or with no champion the baselines'
            predictions by name (``trivial``, ``tfidf``); every one must be beaten.
        n_labels: number of classes (classification).
        slices: one column per slice family, one row per dev row (see ``refit.slices``).

    Returns:
        The decision with every reason, both sides' metrics overall and per slice, and intervals.
    """
    if not references:
        raise ValueError("the gate needs the champion's or the baselines' predictions")
    y_true = np.asarray(y_true)
    metric = policy.metric
    against = "champion" if "champion" in references else "baseline"
    models = {"challenger": challenger, **references}
    problem = invalid_predictions(challenger, task)
    valid = {name: p for name, p in models.items() if name == "challenger" or invalid_predictions(p, task) is None}
    scored = {name: p for name, p in valid.items() if problem is None or name != "challenger"}
    metrics = {name: task_metrics(task, y_true, p, n_labels) for name, p in scored.items()}
    per_slice = None
    if slices is not None:
        slices = slices.reset_index(drop=True)
    if slices is not None and problem is None:
        per_slice = {
            name: slice_metrics(
                slices, lambda mask, p=p: task_metrics(task, y_true[mask], p[mask], n_labels), REPORT_SLICE_ROWS
            )
            for name, p in valid.items()
        }
    if problem is not None:
        reason = f"challenger refused: {problem}"
        nan = float("nan")
        return GateDecision(
            False,
            metric,
            nan,
            nan,
            nan,
            policy.min_improvement,
            against,
            reason,
            reasons=[reason],
            metrics=metrics,
            dev_rows=len(y_true),
            confidence=policy.confidence,
        )

    reasons: list[str] = []
    comparisons: dict[str, dict] = {}
    for name, reference in references.items():
        interval = paired_bootstrap(
            metric, y_true, challenger, reference, n_labels, policy.resamples, policy.confidence, policy.seed
        )
        passed = math.isfinite(interval.low) and interval.low > policy.min_improvement
        comparisons[name] = {
            "challenger": metrics["challenger"][metric],
            "reference": metrics[name][metric] if name in metrics else float("nan"),
            **interval.as_dict(),
            "passed": passed,
        }
        reasons.append(
            f"{metric} vs {name}: {metrics['challenger'][metric]:.4f} vs {comparisons[name]['reference']:.4f}, "
            f"improvement {interval.point:+.4f} ({policy.confidence:.0%} interval {interval.low:+.4f} to "
            f"{interval.high:+.4f}) {'>' if passed else 'is not >'} {policy.min_improvement:g}"
        )

    slice_checks, failed_slices = {}, []
    if against == "champion" and slices is not None:
        champion = references["champion"]
        slice_checks, failed_slices = _check_slices(policy, task, y_true, challenger, champion, slices, n_labels)
        if failed_slices:
            worst = ", ".join(f"{s} ({slice_checks[s]['improvement']:+.4f})" for s in failed_slices)
            reasons.append(f"worse than the champion by more than {policy.tolerance:g} {metric} on: {worst}")
        else:
            reasons.append(f"no slice of >= {policy.slice_min_rows} rows is worse by more than {policy.tolerance:g}")

    calibration = {}
    if against == "champion":
        new = calibration_error(task, y_true, challenger)
        old = calibration_error(task, y_true, references["champion"])
        passed = new <= old + policy.calibration_tolerance
        what = "mean residual" if task == "regression" else "expected calibration error"
        tolerance = policy.calibration_tolerance
        calibration = {"measure": what, "challenger": new, "champion": old, "tolerance": tolerance, "passed": passed}
        reasons.append(f"{what}: {new:.4f} vs champion {old:.4f} ({'within' if passed else 'beyond'} +{tolerance:g})")

    # The reference reported as "the champion's score": the champion, or the hardest baseline.
    hardest = min(comparisons, key=lambda name: comparisons[name]["point"])
    promote = all(c["passed"] for c in comparisons.values()) and not failed_slices and calibration.get("passed", True)
    failing = [r for name, r in zip(comparisons, reasons, strict=False) if not comparisons[name]["passed"]]
    if promote:
        summary = f"promote: {reasons[list(comparisons).index(hardest)]}"
    elif failing:
        summary = f"reject: {failing[0]}"
    elif failed_slices:
        summary = f"reject: worse on slice(s) {', '.join(failed_slices)}"
    else:
        summary = f"reject: calibration got worse ({reasons[-1]})"
    best = comparisons[hardest]
    return GateDecision(
        promote=promote,
        metric=metric,
        challenger_score=metrics["challenger"][metric],
        champion_score=best["reference"],
        improvement=best["point"],
        min_improvement=policy.min_improvement,
        against=against,
        reason=summary,
        reasons=reasons,
        interval=(best["low"], best["high"]),
        comparisons=comparisons,
        failed_slices=failed_slices,
        slice_checks=slice_checks,
        calibration=calibration,
        metrics=metrics,
        slices=per_slice,
        dev_rows=len(y_true),
        confidence=policy.confidence,
        resamples=policy.resamples,
    )


def _check_slices(policy, task, y_true, challenger, champion, slices, n_labels) -> tuple[dict, list[str]]:
    checks, failed = {}, []
    for family in slices.columns:
        for value, index in slices.groupby(family).groups.items():
            if len(index) < policy.slice_min_rows:
                continue
            mask = slices.index.isin(index)
            new = task_metrics(task, y_true[mask], challenger[mask], n_labels)[policy.metric]
            old = task_metrics(task, y_true[mask], champion[mask], n_labels)[policy.metric]
            delta = improvement(policy.metric, new, old)
            name = f"{family}={value}"
            checks[name] = {
                "rows": int(len(index)),
                "challenger": new,
                "champion": old,
                "improvement": delta,
                "passed": delta >= -policy.tolerance,
            }
            if delta < -policy.tolerance:
                failed.append(name)
    return checks, failed
