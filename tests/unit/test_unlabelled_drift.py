"""Unlabelled rows in a drift window: the input signals measure every row, the label signal only
the labelled ones (an unlabelled row's missing target is not a category of its own), and a window
without any label has no label signal rather than a crash."""

import json

import numpy as np
import pandas as pd

from refit.drift.policy import DriftPolicy
from refit.drift.signals import column_kinds, drift_frame, stattest_signals, typed_columns

LABELS = ["negative", "neutral", "positive"]


def feedback(n: int, seed: int, labelled: bool = True) -> pd.DataFrame:
    """Feedback rows as a snapshot reads them; unlabelled rows have neither satisfaction nor label."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(LABELS, n)
    return pd.DataFrame(
        {
            "text": [f"review {i} of {seed}" for i in range(n)],
            "satisfaction": [LABELS.index(v) / 2 for v in labels] if labelled else [np.nan] * n,
            "label": list(labels) if labelled else [None] * n,
            "features": [json.dumps({"device": d}) for d in rng.choice(["ios", "web", "android"], n)],
        }
    )


def signals_of(reference: pd.DataFrame, current: pd.DataFrame, task: str) -> dict[str, dict]:
    ref, cur = drift_frame(reference, task), drift_frame(current, task)
    kinds = column_kinds(ref, cur, task)
    return {s["column"]: s for s in stattest_signals(ref, cur, kinds, DriftPolicy())}


def test_the_label_signal_reads_the_labelled_rows_and_the_feature_signal_every_row():
    reference, labelled = feedback(400, seed=1), feedback(400, seed=2)
    current = pd.concat([labelled, feedback(600, seed=3, labelled=False)], ignore_index=True)
    for task in ("classification", "regression"):
        mixed, only_labelled = signals_of(reference, current, task), signals_of(reference, labelled, task)
        assert mixed["target"]["score"] == only_labelled["target"]["score"]
        assert not mixed["target"]["drifted"]  # 60% unlabelled rows are not a shift of the labels
        assert mixed["f_device"]["score"] != only_labelled["f_device"]["score"]  # every row is measured

    cur = drift_frame(current, "classification")
    typed = typed_columns(cur, column_kinds(drift_frame(reference, "classification"), cur, "classification"))
    assert typed["target"].isna().sum() == 600 and "None" not in set(typed["target"].dropna())


def test_a_window_without_any_label_has_no_label_signal():
    reference, current = feedback(300, seed=4), feedback(300, seed=5, labelled=False)
    for task in ("classification", "regression"):
        signals = signals_of(reference, current, task)
        assert "target" not in signals
        assert {"text", "f_device"} <= set(signals)
