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
RULES = ("recent", "pooled", "whole")


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
    # "recent": one-sided, on the dev rows newer than the champion; "pooled": one-sided, on every dev
    # row; "whole": two-sided, on every dev row (the rule before)
    rule: str = "recent"
    recent_min_rows: int = 100  # fewer newer dev rows than this: every dev row decides

    def __post_init__(self) -> None:
        if self.metric not in DIRECTION:
            raise ValueError(f"unknown gate metric {self.metric!r}; expected one of {', '.join(DIRECTION)}")
        if self.rule not in RULES:
            raise ValueError(f"unknown gate rule {self.rule!r}; expected one of {', '.join(RULES)}")

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
            rule=settings.gate_rule,
            recent_min_rows=settings.gate_recent_min_rows,
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
    confidence: float = 0.95  # level of ``interval``
    resamples: int = 0
    rule: str | None = None  # the rule that decided against the champion, or "baseline"
    power: dict = field(default_factory=dict)  # minimum detectable effect and dev rows by period

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
    periods: np.ndarray | None = None,
    recent: np.ndarray | None = None,
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
        periods: the period each dev row came in (the snapshot that first held it), one label
            per row; each period is a slice the challenger must not be worse on, and the verdict
            counts the dev rows by period.
        recent: which dev rows are newer than the champion's training data. Under the ``recent``
            rule, with at least ``policy.recent_min_rows`` of them, they decide.

    Returns:
        The decision with every reason, both sides' metrics overall and per slice, and intervals.
    """
    if not references:
        raise ValueError("the gate needs the champion's or the baselines' predictions")
    y_true = np.asarray(y_true)
    against = "champion" if "champion" in references else "baseline"
    problem = invalid_predictions(challenger, task)
    models = {"challenger": challenger, **references}
    valid = {name: p for name, p in models.items() if name == "challenger" or invalid_predictions(p, task) is None}
    scored = {name: p for name, p in valid.items() if problem is None or name != "challenger"}
    metrics = {name: task_metrics(task, y_true, p, n_labels) for name, p in scored.items()}
    slices = _slice_frame(slices, periods, len(y_true))
    if problem is not None:
        return _refused(policy, problem, against, metrics, len(y_true))
    per_slice = _slice_report(slices, valid, task, y_true, n_labels)
    deciding = _deciding_rows(policy, against, recent, len(y_true))
    comparisons, reasons = _compare(policy, task, y_true, challenger, references, n_labels, metrics, deciding)
    checks = {"slice_checks": {}, "failed_slices": [], "calibration": {}}
    if against == "champion":
        checks = _champion_checks(policy, task, y_true, challenger, references["champion"], slices, n_labels)
        reasons += checks.pop("reasons")
    hardest = min(comparisons.values(), key=lambda c: c["point"])
    power = _power(policy, hardest, deciding, periods, recent)
    return _decision(
        policy, against, comparisons, reasons, checks, power, metrics=metrics, slices=per_slice, dev_rows=len(y_true)
    )


def _slice_frame(slices: pd.DataFrame | None, periods: np.ndarray | None, rows: int) -> pd.DataFrame | None:
    """The slice families, indexed from 0, with ``period`` among them when the periods are known."""
    if slices is not None:
        slices = slices.reset_index(drop=True)
    return slices if periods is None else _with_periods(slices, periods, rows)


def _slice_report(slices, valid: dict, task: str, y_true, n_labels: int) -> dict | None:
    """Every scored model's metrics on every slice of at least ``REPORT_SLICE_ROWS`` rows."""
    if slices is None:
        return None
    return {
        name: slice_metrics(
            slices, lambda mask, p=p: task_metrics(task, y_true[mask], p[mask], n_labels), REPORT_SLICE_ROWS
        )
        for name, p in valid.items()
    }


def _champion_checks(policy, task, y_true, challenger, champion, slices, n_labels) -> dict:
    """The checks only a champion faces: no slice (period included) clearly worse, and calibration."""
    checks = {"slice_checks": {}, "failed_slices": [], "reasons": []}
    if slices is not None:
        checks["slice_checks"], failed = _check_slices(policy, task, y_true, challenger, champion, slices, n_labels)
        checks["failed_slices"] = failed
        if failed:
            worst = ", ".join(f"{s} ({checks['slice_checks'][s]['improvement']:+.4f})" for s in failed)
            checks["reasons"].append(
                f"worse than the champion by more than {policy.tolerance:g} {policy.metric} on: {worst}"
            )
        else:
            checks["reasons"].append(
                f"no slice of >= {policy.slice_min_rows} rows is worse by more than {policy.tolerance:g}"
            )
    checks["calibration"] = _check_calibration(policy, task, y_true, challenger, champion)
    checks["reasons"].append(checks["calibration"]["reason"])
    return checks


def _decision(policy, against, comparisons, reasons, checks, power, **measured) -> GateDecision:
    """The verdict and its one-line summary from every comparison and check."""
    # The reference reported as "the champion's score": the champion, or the hardest baseline.
    hardest = min(comparisons, key=lambda name: comparisons[name]["point"])
    best = comparisons[hardest]
    failed_slices, calibration = checks["failed_slices"], checks["calibration"]
    promote = all(c["passed"] for c in comparisons.values()) and not failed_slices and calibration.get("passed", True)
    failing = [c["reason"] for c in comparisons.values() if not c["passed"]]
    if promote:
        summary = f"promote: {best['reason']}"
    elif failing:
        summary = f"reject: {failing[0]}"
    elif failed_slices:
        summary = f"reject: worse on slice(s) {', '.join(failed_slices)}"
    else:
        summary = f"reject: calibration got worse ({calibration['reason']})"
    if against == "champion":
        reasons = [*reasons, power["reason"]]
        if not best["passed"]:
            summary += f"; not shown better: {power['can_show']}"
    return GateDecision(
        promote=promote,
        metric=policy.metric,
        challenger_score=best["challenger"],
        champion_score=best["reference"],
        improvement=best["point"],
        min_improvement=policy.min_improvement,
        against=against,
        reason=summary,
        reasons=reasons,
        interval=(best["low"], best["high"]),
        comparisons=comparisons,
        failed_slices=failed_slices,
        slice_checks=checks["slice_checks"],
        calibration=calibration,
        confidence=best["confidence"],
        resamples=policy.resamples,
        rule=policy.rule if against == "champion" else "baseline",
        power=power,
        **measured,
    )


def _refused(policy: GatePolicy, problem: str, against: str, metrics: dict, rows: int) -> GateDecision:
    """The decision for a challenger whose predictions cannot be scored."""
    reason = f"challenger refused: {problem}"
    nan = float("nan")
    return GateDecision(
        False,
        policy.metric,
        nan,
        nan,
        nan,
        policy.min_improvement,
        against,
        reason,
        reasons=[reason],
        metrics=metrics,
        dev_rows=rows,
        confidence=policy.confidence,
    )


def _with_periods(slices: pd.DataFrame | None, periods: np.ndarray, rows: int) -> pd.DataFrame:
    """The slice frame with a ``period`` family: each period is a slice the gate checks."""
    periods = np.asarray(periods, dtype=object)
    if len(periods) != rows:
        raise ValueError(f"{len(periods)} period labels for {rows} dev rows")
    frame = pd.DataFrame(index=range(rows)) if slices is None else slices.copy()
    frame["period"] = periods
    return frame


def _deciding_rows(policy: GatePolicy, against: str, recent: np.ndarray | None, rows: int) -> np.ndarray | None:
    """The dev rows that decide against the champion: under the ``recent`` rule, the rows newer than
    the champion's training data when there are enough of them; else every row (None)."""
    if against != "champion" or policy.rule != "recent" or recent is None:
        return None
    recent = np.asarray(recent, dtype=bool)
    if len(recent) != rows:
        raise ValueError(f"{len(recent)} recent flags for {rows} dev rows")
    if recent.all() or recent.sum() < policy.recent_min_rows:
        return None
    return recent


def _compare(policy, task, y_true, challenger, references, n_labels, metrics, deciding) -> tuple[dict, list[str]]:
    """Each reference's comparison with the challenger, by the paired bootstrap, and its reason.

    Against a champion under the ``recent`` and ``pooled`` rules the test is one-sided: the challenger passes when
    the lower end of the two-sided interval at ``2 * confidence - 1`` (the one-sided bound at
    ``confidence``) is above the minimum improvement, on the deciding rows. Against the baselines
    (a first model) and under the ``whole`` rule, the two-sided interval at ``confidence`` decides.
    """
    metric = policy.metric
    reasons: list[str] = []
    comparisons: dict[str, dict] = {}
    for name, reference in references.items():
        one_sided = name == "champion" and policy.rule in ("recent", "pooled")
        level = 2 * policy.confidence - 1 if one_sided else policy.confidence
        rows = np.ones(len(y_true), dtype=bool) if deciding is None or name != "champion" else deciding
        y, new, old = y_true[rows], np.asarray(challenger)[rows], np.asarray(reference)[rows]
        interval = paired_bootstrap(metric, y, new, old, n_labels, policy.resamples, level, policy.seed)
        passed = math.isfinite(interval.low) and interval.low > policy.min_improvement
        if rows.all():
            ours, theirs = metrics["challenger"][metric], metrics[name][metric] if name in metrics else float("nan")
            where = ""
        else:
            ours = task_metrics(task, y, new, n_labels)[metric]
            theirs = task_metrics(task, y, old, n_labels)[metric]
            where = f" on the {int(rows.sum())} dev rows newer than its training data"
        reason = (
            f"{metric} vs {name}{where}: {ours:.4f} vs {theirs:.4f}, improvement {interval.point:+.4f} "
            f"({level:.0%} interval {interval.low:+.4f} to {interval.high:+.4f}) "
            f"{'>' if passed else 'is not >'} {policy.min_improvement:g}"
        )
        comparisons[name] = {"challenger": ours, "reference": theirs, "rows": int(rows.sum()), **interval.as_dict()}
        comparisons[name].update(passed=passed, reason=reason)
        reasons.append(reason)
        if where:
            whole = paired_bootstrap(
                metric, y_true, challenger, reference, n_labels, policy.resamples, level, policy.seed
            )
            reasons.append(
                f"{metric} vs {name} on all {len(y_true)} dev rows (for reference): "
                f"{metrics['challenger'][metric]:.4f} vs {metrics[name][metric]:.4f}, improvement {whole.point:+.4f} "
                f"({level:.0%} interval {whole.low:+.4f} to {whole.high:+.4f})"
            )
    return comparisons, reasons


def _check_calibration(policy: GatePolicy, task: str, y_true, challenger, champion) -> dict:
    """The challenger's calibration against the champion's, within the tolerance."""
    new = calibration_error(task, y_true, challenger)
    old = calibration_error(task, y_true, champion)
    passed = new <= old + policy.calibration_tolerance
    what = "mean residual" if task == "regression" else "expected calibration error"
    tolerance = policy.calibration_tolerance
    reason = f"{what}: {new:.4f} vs champion {old:.4f} ({'within' if passed else 'beyond'} +{tolerance:g})"
    return {
        "measure": what,
        "challenger": new,
        "champion": old,
        "tolerance": tolerance,
        "passed": passed,
        "reason": reason,
    }


# One-sided normal quantile at 80% power: a true gain of the minimum detectable effect passes four
# times in five.
_Z_POWER = 0.8416


def _power(policy: GatePolicy, deciding: dict, rows: np.ndarray | None, periods, recent) -> dict:
    """What this dev set can show: the minimum detectable effect of the deciding comparison (the
    true gain that passes with 80% probability at the gate's level), the rows a gain of the size
    seen would need, and the dev rows by period."""
    from statistics import NormalDist

    level = 0.5 + deciding["confidence"] / 2  # the one-sided level of the interval's lower end
    z = NormalDist().inv_cdf(level) + _Z_POWER
    spread = deciding.get("spread", float("nan"))
    mde = policy.min_improvement + z * spread if math.isfinite(spread) else float("nan")
    n = deciding.get("rows", 0)
    point = deciding["point"]
    needed = None
    if math.isfinite(spread) and point > policy.min_improvement and spread > 0:
        needed = int(math.ceil(n * (z * spread / (point - policy.min_improvement)) ** 2))
    which = "dev rows newer than the champion's data" if rows is not None else "dev rows"
    can_show = f"{n} {which} can show gains of {mde:.3g} {policy.metric} or more (80% power)"
    if needed is not None and needed > n:
        can_show += f"; a gain of {point:+.3g} would need about {needed:,} such rows"
    by_period = {}
    if periods is not None:
        labels = pd.Series(np.asarray(periods, dtype=object))
        newer = (
            pd.Series(np.asarray(recent, dtype=bool)) if recent is not None else pd.Series(False, index=labels.index)
        )
        for label, count in labels.value_counts(sort=False).items():
            by_period[str(label)] = {"rows": int(count), "newer_than_champion": bool(newer[labels == label].all())}
    periods_text = ", ".join(
        f"{label} {v['rows']}{' (new)' if v['newer_than_champion'] else ''}" for label, v in by_period.items()
    )
    reason = f"power: {can_show}" + (f"; dev rows by period: {periods_text}" if periods_text else "")
    return {
        "mde": mde,
        "rows": n,
        "needed_rows": needed,
        "by_period": by_period,
        "can_show": can_show,
        "reason": reason,
    }


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
