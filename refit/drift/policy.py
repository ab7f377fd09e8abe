"""The drift decision: the policy built from the settings, one check's result, and the rule that
turns the signals and the earlier checks into "retrain or not".

A distribution signal drifts when its p-value under its own null, corrected over the family of
signals at ``alpha``, says the difference is more than chance at this window's sizes, and its
effect (normed Wasserstein, Jensen-Shannon, classifier AUC) reaches its threshold, a floor
(``refit.drift.significance``); the performance signal drifts by its own interval of the relative
metric loss. A check retrains when a trigger group's signal drifted or the drifted share of all
signals is large enough, confirmed in N of the last M checks and outside the cooldown.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone

from refit.core.drift_groups import DEFAULT_TRIGGERS, GROUPS
from refit.core.errors import InputError

RETRAIN, NO_DRIFT, INSUFFICIENT = "retrain", "no_drift", "insufficient_data"
UNCONFIRMED, COOLDOWN = "unconfirmed", "cooldown"
DECISIONS = (RETRAIN, NO_DRIFT, INSUFFICIENT, UNCONFIRMED, COOLDOWN)


@dataclass(frozen=True)
class DriftPolicy:
    """How signals become a decision; every field comes from a ``REFIT_DRIFT_*`` setting."""

    min_rows: int = 100
    sample_cap: int = 2000
    embedding_rows: int = 1000
    embeddings_picture: bool = True
    triggers: tuple[str, ...] = DEFAULT_TRIGGERS
    drift_share: float = 0.5
    alpha: float = 0.01
    correction: str = "holm"
    numeric_threshold: float = 0.2
    categorical_threshold: float = 0.1
    text_auc: float = 0.56
    embeddings_auc: float = 0.56
    performance_min_degradation: float = 0.1
    performance_confidence: float = 0.99
    performance_rows: int = 10_000
    bootstrap_rounds: int = 300
    confirm_n: int = 1
    confirm_m: int = 1
    cooldown_hours: float = 0.0
    short_text_chars: int = 10
    window_days: float | None = None
    metric: str | None = None

    def __post_init__(self) -> None:
        unknown = sorted(set(self.triggers) - set(GROUPS))
        if unknown:
            raise InputError(f"unknown drift trigger group(s): {', '.join(unknown)}")
        if self.correction not in ("holm", "bh"):
            raise InputError(f"unknown drift correction {self.correction!r}; expected holm or bh")
        if not 0 < self.alpha < 1:
            raise InputError(f"the drift tests' alpha must be between 0 and 1, got {self.alpha}")
        if not 1 <= self.confirm_n <= self.confirm_m:
            raise InputError(f"drift confirmation needs 1 <= N <= M, got {self.confirm_n} of {self.confirm_m}")

    @classmethod
    def from_settings(cls, settings) -> DriftPolicy:
        """The policy of refit's settings (the ``REFIT_DRIFT_*`` values and the gate's metric)."""
        return cls(
            min_rows=settings.drift_min_rows,
            sample_cap=settings.drift_sample_cap,
            embedding_rows=settings.drift_embedding_rows,
            embeddings_picture=settings.drift_embeddings_picture,
            triggers=tuple(settings.drift_triggers),
            drift_share=settings.drift_share,
            alpha=settings.drift_alpha,
            correction=settings.drift_correction,
            numeric_threshold=settings.drift_numeric_threshold,
            categorical_threshold=settings.drift_categorical_threshold,
            text_auc=settings.drift_text_auc,
            embeddings_auc=settings.drift_embeddings_auc,
            performance_min_degradation=settings.drift_performance_min_degradation,
            performance_confidence=settings.drift_performance_confidence,
            performance_rows=settings.drift_performance_rows,
            bootstrap_rounds=settings.drift_bootstrap_rounds,
            confirm_n=settings.drift_confirm_n,
            confirm_m=settings.drift_confirm_m,
            cooldown_hours=settings.drift_cooldown_hours,
            short_text_chars=settings.drift_short_text_chars,
            window_days=settings.drift_window_days,
            metric=settings.gate_metric,
        )

    def as_dict(self) -> dict:
        """The policy as a plain dict, as recorded with each check."""
        return asdict(self)


@dataclass
class DriftResult:
    """One drift check: what was measured, what was decided, and why."""

    decision: str
    reasons: list[str]
    signals: list[dict] = field(default_factory=list)
    drift_share: float | None = None
    drift_detected: bool | None = None
    reference_rows: int = 0
    current_rows: int = 0
    sampled_rows: dict = field(default_factory=dict)
    forced: bool = False
    policy: dict = field(default_factory=dict)
    html: str | None = None
    embeddings_html: str | None = None
    report_json: str | None = None

    @property
    def should_retrain(self) -> bool:
        return self.decision == RETRAIN

    @property
    def drifted(self) -> list[str]:
        return [s["column"] for s in self.signals if s["drifted"]]

    def summary(self) -> dict:
        """Everything but the rendered report (HTML and JSON), with the drifted columns."""
        data = asdict(self)
        for heavy in ("html", "embeddings_html", "report_json"):
            data.pop(heavy)
        data["drifted_columns"] = self.drifted
        return data


def detect(signals: list[dict], policy: DriftPolicy) -> tuple[bool, float | None, list[str]]:
    """Whether this check saw drift: a trigger group's signal drifted, or the drifted share of all
    signals reached ``policy.drift_share``. Returns the verdict, the share and the reasons."""
    measured = [s for s in signals if s["score"] is not None]
    share = sum(s["drifted"] for s in measured) / len(measured) if measured else None
    reasons = [reason_of(s) for s in measured if s["drifted"] and s["group"] in policy.triggers]
    if share is not None and share >= policy.drift_share:
        reasons.append(f"{share:.0%} of signals drifted (threshold {policy.drift_share:.0%})")
    return bool(reasons), share, reasons


def reason_of(signal: dict) -> str:
    """Why a drifted signal drifted, in one line: its effect against the floor and, for a tested
    distribution signal, its p-value before and after the family correction."""
    detail = signal.get("detail", {})
    text = f"{signal['column']} drifted ({signal['method']}: {signal['score']:.3g}, floor {signal['threshold']:.3g}"
    if detail.get("p_adjusted") is not None:
        text += (
            f"; p {detail['p_value']:.2g}, {detail['correction']}-adjusted over {detail['family']} signals"
            f" {detail['p_adjusted']:.2g}, alpha {detail['alpha']:g}"
        )
    elif detail.get("p_value") is not None:
        text += f"; p {detail['p_value']:.2g}"
    return text + ")"


def decide(
    detected: bool,
    reasons: list[str],
    policy: DriftPolicy,
    history: list[dict] | None = None,
    now: datetime | None = None,
    last_retrain: datetime | None = None,
    force: bool = False,
) -> tuple[str, list[str]]:
    """The decision from this check's verdict and the earlier checks.

    Args:
        detected: whether this check saw drift.
        reasons: why (or why not).
        policy: confirmation (N of the last M checks) and cooldown.
        history: earlier checks against the same champion since its last retrain, newest first,
            each with ``drift_detected`` (insufficient-data checks left out).
        now: the time of this check.
        last_retrain: when the last retrain was decided (any champion), for the cooldown.
        force: retrain whatever the signals say.
    """
    reasons = list(reasons)
    if force:
        return RETRAIN, ["forced by the operator", *reasons]
    if not detected:
        return NO_DRIFT, reasons or ["no trigger signal drifted"]
    window = [True] + [bool(h.get("drift_detected")) for h in (history or [])[: policy.confirm_m - 1]]
    seen = sum(window)
    if seen < policy.confirm_n:
        return UNCONFIRMED, [
            *reasons,
            f"drift seen in {seen} of the last {len(window)} checks; {policy.confirm_n} of {policy.confirm_m} needed",
        ]
    if policy.confirm_m > 1:
        reasons.append(f"confirmed: drift seen in {seen} of the last {len(window)} checks")
    if last_retrain is not None and policy.cooldown_hours > 0:
        now = now or datetime.now(timezone.utc)
        until = last_retrain + timedelta(hours=policy.cooldown_hours)
        if now < until:
            return COOLDOWN, [
                *reasons,
                f"cooldown: last retrain at {last_retrain:%Y-%m-%d %H:%M} UTC, none before {until:%Y-%m-%d %H:%M} UTC",
            ]
    return RETRAIN, reasons
