"""Both models' quality estimated on a live rollout's paired shadow items, while too few labels
have joined to measure it: what ``refit rollout status`` shows beside the live evidence.

Evidence for the operator only. The rollout's steps read the joined labels alone
(:mod:`refit.rollout.decision`); an estimate never advances a stage.
"""

from __future__ import annotations

from refit.core.errors import InputError
from refit.data.devset import current_devset, dev_rows
from refit.data.snapshots import SplitConfig
from refit.drift.check import load_champion
from refit.drift.estimate import dev_calibration, estimate_performance
from refit.drift.policy import DriftPolicy
from refit.models.metrics import DEFAULT_METRIC
from refit.rollout.evidence import ROLES, paired_answers

NOTE = "estimated without labels on the paired shadow items: evidence only, a stage advances on joined labels"


def shadow_estimates(settings, engine, rollout: dict, joined_labels: int) -> dict | None:
    """Each model's estimated metric on the request items both scored, or None once
    ``REFIT_ROLLOUT_MIN_LABELS`` labels have joined (the live metric then speaks).

    Args:
        settings: refit's settings (the task, the gate's metric, the drift policy's sizes).
        engine: refit's database.
        rollout: the live rollout's row.
        joined_labels: the paired request items joined to a label so far.

    Returns:
        ``items`` (the paired items), ``note``, and per role the version and either the estimate
        (``metric``, ``value``, ``low``, ``high``, ``dev``) or a one-line ``note`` saying why not.
    """
    if joined_labels >= settings.rollout_min_labels:
        return None
    task, labels = settings.task, list(settings.labels)
    answers = paired_answers(engine, rollout, task, labels)
    result = {"items": len(answers["champion"]), "note": NOTE}
    devset = current_devset(engine)
    policy = DriftPolicy.from_settings(settings)
    metric = policy.metric or DEFAULT_METRIC[task]
    dev = dev_rows(engine, devset, SplitConfig.from_settings(settings)) if devset else None
    for role in ROLES:
        version = rollout["champion_version"] if role == "champion" else rollout["version"]
        if dev is None:
            result[role] = {"version": version, "note": "no dev set yet to calibrate on (refit devset refresh)"}
            continue
        try:
            model = load_champion(settings, {"version": version})
            dev_true, dev_pred, _ = dev_calibration(model, dev, task, labels, policy, embed=False)
            estimate = estimate_performance(
                task, dev_true, dev_pred, answers[role], labels=labels, min_rows=policy.min_rows,
                resamples=policy.bootstrap_rounds, loss_confidence=policy.performance_confidence,
            )  # fmt: skip
        except InputError as exc:
            result[role] = {"version": version, "note": str(exc)}
            continue
        m = estimate.metrics.get(metric) or next(iter(estimate.metrics.values()))
        result[role] = {"version": version, "metric": m.metric, "value": m.value, "low": m.low, "high": m.high,
                        "dev": m.dev}  # fmt: skip
    return result


def shadow_lines(estimates: dict) -> list[str]:
    """The estimates as lines for a terminal."""
    lines = [f"shadow estimates on {estimates['items']} paired items ({estimates['note']}):"]
    for role in ROLES:
        e = estimates[role]
        if "value" in e:
            lines.append(
                f"  {role} {e['version']}: {e['metric']} {e['value']:.3f} [{e['low']:.3f}, {e['high']:.3f}]"
                f" (dev {e['dev']:.3f})"
            )
        else:
            lines.append(f"  {role} {e['version']}: {e['note']}")
    return lines
