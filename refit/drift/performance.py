"""The performance signal: the champion's metric on the current window against its metric on the
gate's dev set, with a bootstrap interval of the loss."""

from __future__ import annotations

import numpy as np
import pandas as pd

from refit.drift.policy import DriftPolicy
from refit.drift.signals import champion_output, make_signal, targets_of
from refit.drift.windows import time_stratified_sample
from refit.gate.bootstrap import resampled_metric
from refit.models.metrics import DEFAULT_METRIC, DIRECTION, task_metrics


def _metric_value(metric: str, y_true: np.ndarray, prediction: np.ndarray, n_labels: int) -> float:
    task = "regression" if metric in ("mse", "mae", "spearman") else "classification"
    return task_metrics(task, y_true, prediction, n_labels)[metric]


def performance_signal(
    metric: str,
    dev_true: np.ndarray,
    dev_prediction: np.ndarray,
    current_true: np.ndarray,
    current_prediction: np.ndarray,
    policy: DriftPolicy,
    n_labels: int = 1,
    seed: int = 0,
) -> dict:
    """The champion's metric on the current window against its dev-set metric.

    Both sides are resampled independently (``policy.bootstrap_rounds`` times, fixed seed); the
    signal is drifted when the relative loss is at least ``performance_min_degradation`` and the
    one-sided lower bound of the loss at ``performance_confidence`` is above zero.
    """

    higher_better = DIRECTION[metric]
    dev_value = _metric_value(metric, dev_true, dev_prediction, n_labels)
    cur_value = _metric_value(metric, current_true, current_prediction, n_labels)
    rng = np.random.default_rng(seed)  # one generator: the dev side draws first, then the current side
    dev_boot = resampled_metric(metric, dev_true, dev_prediction, n_labels, policy.bootstrap_rounds, rng)
    cur_boot = resampled_metric(metric, current_true, current_prediction, n_labels, policy.bootstrap_rounds, rng)
    sign = -1.0 if higher_better else 1.0
    loss = sign * (cur_value - dev_value)  # positive: worse on the current window
    boot = sign * (cur_boot - dev_boot)
    low = float(np.quantile(boot, 1 - policy.performance_confidence))
    high = float(np.quantile(boot, policy.performance_confidence))
    relative = loss / abs(dev_value) if dev_value else float("inf") if loss > 0 else 0.0
    drifted = relative >= policy.performance_min_degradation and low > 0
    # The bootstrap's one-sided p-value of "no loss": recorded beside the interval that decides.
    p_value = (1 + int(np.sum(boot <= 0))) / (len(boot) + 1)
    return make_signal(
        "performance",
        f"bootstrap {metric}",
        relative,
        policy.performance_min_degradation,
        drifted,
        metric=metric,
        dev=dev_value,
        current=cur_value,
        loss=loss,
        interval=[low, high],
        confidence=policy.performance_confidence,
        p_value=p_value,
        effect=relative,
        floor=policy.performance_min_degradation,
        dev_rows=len(dev_true),
        current_rows=len(current_true),
    )


def champion_performance(
    champion, dev: pd.DataFrame, cur_rows: pd.DataFrame, cur_pred, task: str, labels: list[str] | None, policy
) -> dict:
    """The performance signal of a check: the champion's metric on the current window's labelled
    rows against its metric on the dev rows.

    Args:
        champion: the champion (its dev predictions are memoized per model and content).
        dev: the gate's dev rows, sampled to ``max(performance_rows, sample_cap)``.
        cur_rows: the current window's performance sample.
        cur_pred: the champion's raw predictions of ``cur_rows``.
        task: ``regression`` or ``classification``.
        labels: class names, for classification.
        policy: the metric, the row minimum, the bootstrap rounds and the thresholds.

    Returns:
        The ``performance`` signal; unmeasured (no score) with fewer than ``policy.min_rows``
        labelled rows on a side.
    """
    metric = policy.metric or DEFAULT_METRIC[task]
    dev_rows = time_stratified_sample(dev, max(policy.performance_rows, policy.sample_cap)).reset_index(drop=True)
    dev_true, cur_true = targets_of(dev_rows, task), targets_of(cur_rows, task)
    dev_ok, cur_ok = dev_true.notna().to_numpy(), cur_true.notna().to_numpy()
    if dev_ok.sum() < policy.min_rows or cur_ok.sum() < policy.min_rows:
        return make_signal("performance", f"bootstrap {metric}", None, policy.performance_min_degradation, False,
                           note=f"fewer than {policy.min_rows} labelled rows on a side")  # fmt: skip
    dev_pred = champion_output(champion, "predict", dev_rows)
    n_labels = 1
    if task == "classification":
        index = {name: i for i, name in enumerate(labels or [])}
        dev_true, cur_true = dev_true.map(index), cur_true.map(index)
        n_labels = len(index)
    return performance_signal(
        metric,
        dev_true.to_numpy()[dev_ok].astype(float if task == "regression" else int),
        np.asarray(dev_pred)[dev_ok],
        cur_true.to_numpy()[cur_ok].astype(float if task == "regression" else int),
        np.asarray(cur_pred)[cur_ok],
        policy,
        n_labels,
    )
