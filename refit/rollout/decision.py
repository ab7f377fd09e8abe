"""What a rollout does next: a pure function of the stage's evidence, the stage, the time spent in
it, and the policy (``REFIT_ROLLOUT_*``).

At every step the guards come first, each as soon as it has its minimum rows:

- ``error_rate``: the candidate's live error rate above the champion's by more than
  ``max_error_increase`` (both models with at least ``guard_min_items`` request items);
- ``latency``: the candidate's p99 model latency per item above ``max_p99_ratio`` times the
  champion's (a p99 under ``LATENCY_FLOOR_MS`` counts as that floor), like with like: on the calls
  of the sizes both models made, once both have ``guard_min_items`` rows there; until then, when
  they share too few call sizes, per item over calls of every size (the same minimum of items);
- ``live_metric``: the candidate worse than the champion on the joined live labels by the gate's
  paired-bootstrap rule: the whole interval of its improvement is below zero (at least
  ``guard_min_labels`` paired labels);
- ``disagreement``: the two models' answers on the same request items further apart than
  ``max_disagreement`` (at least ``guard_min_paired`` paired items).

Any failed guard stops the rollout. Otherwise the stage ends (advance: shadow to canary, canary to
champion) once both models scored ``min_requests`` requests, ``min_labels`` paired labels joined,
and every guard had its minimum rows (the live-metric guard only when ``min_labels`` is above 0).
The guards' minimums never exceed what a stage needs to end, so no stage ends before its guards
were checked. A stage still short of that after ``stage_max_hours`` stops the rollout
(``timeout``); before that, the rollout waits, and the reason says for what. A rollout whose
champion changed meanwhile (a rollback, a promotion with rollout off) stops before anything else,
as superseded (``champion_changed``): its evidence compares against a model no longer serving.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

from refit.rollout.evidence import Evidence

# The fewest rows a guard judges on (each is also capped by what the stage needs to end).
GUARD_MIN_ITEMS = 50  # request items per model, for the error-rate and latency guards
GUARD_MIN_PAIRED = 50  # request items both models scored, for the disagreement guard
GUARD_MIN_LABELS = 30  # paired request items joined to a label, for the live-metric guard
LATENCY_FLOOR_MS = 1.0  # a champion p99 below this counts as this (a ratio to ~0 ms means nothing)

STAGES = ("shadow", "canary")
NEXT_STAGE = {"shadow": "canary", "canary": "champion"}
GUARDS = ("error_rate", "latency", "live_metric", "disagreement")
CHAMPION_CHANGED = "champion_changed"  # not a guard: the rollout is superseded, not rolled back


@dataclass(frozen=True)
class RolloutPolicy:
    """The rollout's exit conditions and guards, from the settings (``REFIT_ROLLOUT_*``)."""

    min_requests: int = 500
    min_labels: int = 100
    stage_max_hours: float = 72.0
    max_error_increase: float = 0.01
    max_p99_ratio: float = 1.5
    max_disagreement: float = 0.35
    guard_min_items: int = GUARD_MIN_ITEMS
    guard_min_paired: int = GUARD_MIN_PAIRED
    guard_min_labels: int = GUARD_MIN_LABELS

    @classmethod
    def from_settings(cls, settings) -> RolloutPolicy:
        return cls(
            min_requests=settings.rollout_min_requests,
            min_labels=settings.rollout_min_labels,
            stage_max_hours=settings.rollout_stage_max_hours,
            max_error_increase=settings.rollout_max_error_increase,
            max_p99_ratio=settings.rollout_max_p99_ratio,
            max_disagreement=settings.rollout_max_disagreement,
        )

    @property
    def items_needed(self) -> int:
        """Request items per model before the error-rate and latency guards judge."""
        return max(1, min(self.guard_min_items, self.min_requests))

    @property
    def paired_needed(self) -> int:
        """Paired request items before the disagreement guard judges."""
        return max(1, min(self.guard_min_paired, self.min_requests))

    @property
    def labels_needed(self) -> int:
        """Paired joined labels before the live-metric guard judges."""
        return max(1, min(self.guard_min_labels, self.min_labels) if self.min_labels else self.guard_min_labels)


@dataclass(frozen=True)
class Check:
    """One guard or exit condition: ``passed``, ``failed`` (a guard only) or ``waiting`` (not
    enough rows yet), with the value, the limit and a sentence."""

    name: str
    kind: Literal["guard", "exit"]
    status: Literal["passed", "failed", "waiting"]
    detail: str
    value: float | None = None
    limit: float | None = None


@dataclass(frozen=True)
class RolloutDecision:
    """What the step does: ``wait``, ``advance`` (to ``next_stage``: canary or champion) or
    ``stop`` (``stopped_by`` names the failed guards, ``timeout``, or ``operator``)."""

    action: Literal["wait", "advance", "stop"]
    stage: str
    reason: str
    next_stage: str | None = None
    stopped_by: list[str] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    approval: dict = field(default_factory=dict)  # the operator's verdict, when approval is on

    def as_dict(self) -> dict:
        return asdict(self)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def guard_checks(evidence: Evidence, policy: RolloutPolicy) -> list[Check]:
    """Every guard, judged on the evidence when it has its minimum rows, else ``waiting``."""
    champion, candidate = evidence.champion, evidence.candidate
    checks = []
    fewest = min(champion.items, candidate.items)
    enough = fewest >= policy.items_needed
    if enough and champion.error_rate is not None and candidate.error_rate is not None:
        increase = candidate.error_rate - champion.error_rate
        failed = increase > policy.max_error_increase
        detail = (
            f"candidate error rate {_pct(candidate.error_rate)} vs champion {_pct(champion.error_rate)} "
            f"({increase * 100:+.1f} points; {'more than' if failed else 'within'} "
            f"+{policy.max_error_increase * 100:g} allowed)"
        )
        checks.append(
            Check("error_rate", "guard", "failed" if failed else "passed", detail, increase, policy.max_error_increase)
        )
    else:
        detail = f"error rate: {fewest} of {policy.items_needed} request items per model"
        checks.append(Check("error_rate", "guard", "waiting", detail, None, policy.max_error_increase))

    checks.append(latency_check(evidence, policy, enough, fewest))

    comparison = evidence.comparison
    if evidence.labels >= policy.labels_needed and comparison is not None:
        failed = comparison["high"] < 0
        detail = (
            f"{evidence.metric} on {evidence.labels} joined live labels: candidate {comparison['candidate']:.4f} "
            f"vs champion {comparison['champion']:.4f}, improvement {comparison['point']:+.4f} "
            f"({comparison['confidence']:.0%} interval {comparison['low']:+.4f} to {comparison['high']:+.4f}"
            f"{': worse' if failed else ''})"
        )
        checks.append(Check("live_metric", "guard", "failed" if failed else "passed", detail, comparison["high"], 0.0))
    else:
        detail = f"live {evidence.metric}: {evidence.labels} of {policy.labels_needed} joined labels"
        checks.append(Check("live_metric", "guard", "waiting", detail, None, 0.0))

    what = "mean |difference| of satisfaction" if evidence.task == "regression" else "share of differing labels"
    if evidence.paired >= policy.paired_needed and evidence.disagreement is not None:
        failed = evidence.disagreement > policy.max_disagreement
        detail = (
            f"{what} on {evidence.paired} paired items: {evidence.disagreement:.3f} "
            f"({'above' if failed else 'within'} {policy.max_disagreement:g})"
        )
        checks.append(
            Check(
                "disagreement",
                "guard",
                "failed" if failed else "passed",
                detail,
                evidence.disagreement,
                policy.max_disagreement,
            )
        )
    else:
        detail = f"disagreement: {evidence.paired} of {policy.paired_needed} paired items"
        checks.append(Check("disagreement", "guard", "waiting", detail, None, policy.max_disagreement))
    return checks


def _sizes(sizes: list[int]) -> str:
    if not sizes:
        return ""
    if len(sizes) == 1:
        return f"{sizes[0]} item{'s' if sizes[0] != 1 else ''}"
    if sizes == list(range(sizes[0], sizes[-1] + 1)):
        return f"{sizes[0]}-{sizes[-1]} items"
    return ", ".join(str(n) for n in sizes) + " items"


def _timed(model, timed: int | None) -> int:
    return model.items if timed is None else timed


def latency_check(evidence: Evidence, policy: RolloutPolicy, enough: bool, fewest: int) -> Check:
    """The latency guard: the two models' p99 per item, on calls of the sizes both made when each
    has its minimum rows there, else over calls of every size (``waiting`` before either)."""
    champion, candidate = evidence.champion, evidence.candidate
    same = min(_timed(champion, champion.timed), _timed(candidate, candidate.timed))
    if enough and same >= policy.items_needed and champion.p99_ms is not None and candidate.p99_ms is not None:
        ours, theirs = candidate.p99_ms, champion.p99_ms
        sizes = _sizes(sorted(set(champion.call_sizes) & set(candidate.call_sizes)))
        basis = f", per item on calls of {sizes}" if sizes else ""
    elif enough and champion.any_size_p99_ms is not None and candidate.any_size_p99_ms is not None:
        ours, theirs = candidate.any_size_p99_ms, champion.any_size_p99_ms
        basis = (
            f", per item over calls of every size: only {same} of {policy.items_needed} items on calls of a size"
            f" both made (champion {_sizes(champion.any_call_sizes)}, candidate {_sizes(candidate.any_call_sizes)})"
        )
    else:
        missing = "" if enough else f"{fewest} of {policy.items_needed} request items per model"
        detail = f"latency: {missing or 'no latency logged'}"
        return Check("latency", "guard", "waiting", detail, None, policy.max_p99_ratio)
    ratio = ours / max(theirs, LATENCY_FLOOR_MS)
    failed = ratio > policy.max_p99_ratio
    detail = (
        f"candidate p99 {_ms(ours)} vs champion {_ms(theirs)} "
        f"({ratio:.2f}x; {'above' if failed else 'within'} {policy.max_p99_ratio:g}x){basis}"
    )
    return Check("latency", "guard", "failed" if failed else "passed", detail, ratio, policy.max_p99_ratio)


def exit_checks(evidence: Evidence, policy: RolloutPolicy, guards: list[Check]) -> list[Check]:
    """The stage's exit conditions: requests, labels, and every required guard judged."""
    fewest = min(evidence.champion.requests, evidence.candidate.requests)
    checks = [
        Check(
            "requests",
            "exit",
            "passed" if fewest >= policy.min_requests else "waiting",
            f"{fewest} of {policy.min_requests} requests scored by both models (champion "
            f"{evidence.champion.requests}, candidate {evidence.candidate.requests})",
            fewest,
            policy.min_requests,
        ),
        Check(
            "labels",
            "exit",
            "passed" if evidence.labels >= policy.min_labels else "waiting",
            f"{evidence.labels} of {policy.min_labels} joined live labels on paired items",
            evidence.labels,
            policy.min_labels,
        ),
    ]
    required = [g for g in guards if g.name != "live_metric" or policy.min_labels > 0]
    unjudged = [g for g in required if g.status == "waiting"]
    checks.append(
        Check(
            "guards",
            "exit",
            "waiting" if unjudged else "passed",
            "not yet judged: " + "; ".join(g.detail for g in unjudged) if unjudged else "every guard judged",
            len(required) - len(unjudged),
            len(required),
        )
    )
    return checks


def decide(evidence: Evidence, stage: str, hours_in_stage: float, policy: RolloutPolicy) -> RolloutDecision:
    """The next step of a live rollout.

    Args:
        evidence: the stage's live evidence (:func:`refit.rollout.evidence.gather_evidence`).
        stage: ``shadow`` or ``canary``.
        hours_in_stage: how long the stage has run.
        policy: the guards and exit conditions.

    Returns:
        ``stop`` when a guard fails (every failed guard named) or the stage timed out without its
        evidence; ``advance`` when its exit conditions hold; else ``wait``, with what is missing.
    """
    if stage not in STAGES:
        raise ValueError(f"a live rollout is in shadow or canary, not {stage!r}")
    expected = evidence.champion.version
    if evidence.champion_now is not None and evidence.champion_now != expected:
        reason = (
            f"superseded in {stage}: the champion changed during the rollout ({evidence.champion_now}, not "
            f"{expected}, which the gate and the live evidence compared against)"
        )
        return RolloutDecision("stop", stage, reason, stopped_by=[CHAMPION_CHANGED])
    guards = guard_checks(evidence, policy)
    exits = exit_checks(evidence, policy, guards)
    checks = guards + exits
    failed = [g for g in guards if g.status == "failed"]
    if failed:
        reason = f"stopped in {stage}: " + "; ".join(g.detail for g in failed)
        return RolloutDecision("stop", stage, reason, stopped_by=[g.name for g in failed], checks=checks)
    missing = [c.detail for c in exits if c.status != "passed"]
    if not missing:
        nxt = NEXT_STAGE[stage]
        judged = "; ".join(g.detail for g in guards if g.status == "passed")
        reason = f"{stage} passed: {judged}; {nxt} next"
        return RolloutDecision("advance", stage, reason, next_stage=nxt, checks=checks)
    if hours_in_stage >= policy.stage_max_hours:
        reason = (
            f"stopped in {stage}: no evidence after {hours_in_stage:.1f} h (REFIT_ROLLOUT_STAGE_MAX_HOURS="
            f"{policy.stage_max_hours:g}): " + "; ".join(missing)
        )
        return RolloutDecision("stop", stage, reason, stopped_by=["timeout"], checks=checks)
    reason = f"waiting in {stage} ({hours_in_stage:.1f} of {policy.stage_max_hours:g} h): " + "; ".join(missing)
    return RolloutDecision("wait", stage, reason, checks=checks)
