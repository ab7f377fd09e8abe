"""The promotion gate, as a pure function of two metric sets scored on the same dev rows."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from models.metrics import improvement


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    metric: str
    challenger_score: float
    champion_score: float
    improvement: float
    min_improvement: float
    against: str  # "champion" or "baseline" (no champion yet)
    reason: str
    dev_set: int | None = None  # the dev set version both were scored on
    slices: dict | None = None  # per-slice metrics of each model, reported (not yet gated on)

    def as_dict(self) -> dict:
        return asdict(self)


def gate(
    metric: str,
    challenger: dict[str, float],
    champion: dict[str, float],
    min_improvement: float,
    against: str = "champion",
) -> GateDecision:
    """Promote only if the challenger beats the champion (or baseline) by more than the margin.

    Args:
        metric: the primary metric, e.g. ``mse`` or ``macro_f1``.
        challenger: the challenger's metrics on the dev rows.
        champion: the champion's (or the trivial baseline's) metrics on the same rows.
        min_improvement: the margin the challenger must exceed.
        against: what ``champion`` is, for the record.
    """
    new, old = challenger[metric], champion[metric]
    if not (math.isfinite(new) and math.isfinite(old)):
        return GateDecision(False, metric, new, old, float("nan"), min_improvement, against,
                            f"{metric} is not finite; refusing to promote")  # fmt: skip
    delta = improvement(metric, new, old)
    promote = delta > min_improvement
    verdict = "beats" if promote else "does not beat"
    reason = (
        f"challenger {metric}={new:.4f} {verdict} {against} {metric}={old:.4f} "
        f"(improvement {delta:+.4f}, required > {min_improvement:g})"
    )
    return GateDecision(promote, metric, new, old, delta, min_improvement, against, reason)
