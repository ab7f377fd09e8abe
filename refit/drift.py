"""Drift between the champion's training data and the feedback that arrived since, with Evidently.

``check_drift`` is a plain function: two frames of feedback in, a :class:`DriftResult` out (the
signals, the decision with its reasons, and Evidently's HTML and JSON). The policy that turns the
signals into "retrain or not" lives in the settings.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from refit.snapshots import features_frame

log = logging.getLogger("refit.drift")

RETRAIN, NO_DRIFT, INSUFFICIENT = "retrain", "no_drift", "insufficient_data"


@dataclass(frozen=True)
class DriftPolicy:
    min_rows: int = 100
    sample_cap: int = 2000
    drift_share: float = 0.5
    trigger_columns: tuple[str, ...] = ("text", "target")

    @classmethod
    def from_settings(cls, settings) -> DriftPolicy:
        return cls(
            min_rows=settings.drift_min_rows,
            sample_cap=settings.drift_sample_cap,
            drift_share=settings.drift_share,
            trigger_columns=tuple(settings.drift_trigger_columns),
        )


@dataclass
class DriftResult:
    decision: str
    reasons: list[str]
    signals: list[dict] = field(default_factory=list)
    drift_share: float | None = None
    reference_rows: int = 0
    current_rows: int = 0
    html: str | None = None
    report_json: str | None = None

    @property
    def should_retrain(self) -> bool:
        return self.decision == RETRAIN

    @property
    def drifted(self) -> list[str]:
        return [s["column"] for s in self.signals if s["drifted"]]

    def summary(self) -> dict:
        data = asdict(self)
        data.pop("html")
        data.pop("report_json")
        data["drifted_columns"] = self.drifted
        return data


def reference_and_current(engine, split, champion: dict, upto: int | None = None):
    """The champion's training rows, and every row that arrived after the champion's snapshot."""
    from refit.snapshots import get_snapshot, read_feedback, snapshot_rows

    trained_on = get_snapshot(engine, champion["snapshot_id"])
    reference = snapshot_rows(engine, trained_on, split)
    reference = reference[reference["split"] == "train"]
    current = read_feedback(engine, after=trained_on.watermark_to, upto=upto)
    return reference, current


def time_stratified_sample(frame: pd.DataFrame, cap: int) -> pd.DataFrame:
    """At most ``cap`` rows, evenly spaced in ingest order, so every part of the window is seen."""
    if len(frame) <= cap:
        return frame
    frame = frame.sort_values("id") if "id" in frame else frame
    positions = np.linspace(0, len(frame) - 1, cap).round().astype(int)
    return frame.iloc[np.unique(positions)]


def drift_frame(feedback: pd.DataFrame, task: str) -> pd.DataFrame:
    """The columns drift is measured on: text, target, and each behaviour feature."""
    frame = pd.DataFrame(
        {
            "text": feedback["text"].astype(str).to_numpy(),
            "target": (
                feedback["satisfaction"].astype(float) if task == "regression" else feedback["label"].astype(str)
            ).to_numpy(),
        }
    )
    features = features_frame(feedback).reset_index(drop=True)
    for column in features.columns:
        frame[f"f_{column}"] = features[column]
    return frame


def _column_kinds(reference: pd.DataFrame, current: pd.DataFrame, task: str) -> tuple[list[str], list[str]]:
    numeric, categorical = [], []
    if task == "regression":
        numeric.append("target")
    else:
        categorical.append("target")
    for column in reference.columns:
        if not column.startswith("f_") or column not in current:
            continue
        both = pd.concat([reference[column], current[column]], ignore_index=True).dropna()
        if both.empty:
            continue
        if pd.to_numeric(both, errors="coerce").notna().all() and both.nunique() > 10:
            numeric.append(column)
        else:
            categorical.append(column)
    return numeric, categorical


def run_evidently(reference: pd.DataFrame, current: pd.DataFrame, task: str, drift_share: float):
    """An Evidently ``DataDriftPreset`` report over text, target and features."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    numeric, categorical = _column_kinds(reference, current, task)
    columns = ["text", *numeric, *categorical]
    reference, current = reference[columns].copy(), current[columns].copy()
    for column in numeric:
        reference[column] = pd.to_numeric(reference[column], errors="coerce")
        current[column] = pd.to_numeric(current[column], errors="coerce")
    for column in categorical:
        reference[column] = reference[column].astype(str)
        current[column] = current[column].astype(str)
    definition = DataDefinition(text_columns=["text"], numerical_columns=numeric, categorical_columns=categorical)
    report = Report([DataDriftPreset(drift_share=drift_share)], include_tests=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return report.run(
            current_data=Dataset.from_pandas(current, data_definition=definition),
            reference_data=Dataset.from_pandas(reference, data_definition=definition),
        )


def signals_from_report(report_dict: dict) -> tuple[list[dict], float | None]:
    """Per-column drift signals (score, method, threshold, verdict) and the drifted share."""
    metrics = {m["id"]: m for m in report_dict.get("metrics", [])}
    signals, share = [], None
    for metric in metrics.values():
        if metric["config"]["type"].endswith("DriftedColumnsCount"):
            share = float(metric["value"]["share"])
    for test in report_dict.get("tests", []):
        params = test.get("metric_config", {}).get("params", {})
        if not params.get("type", "").endswith("ValueDrift"):
            continue
        metric = metrics.get(test["metric_config"]["metric_id"], {})
        signals.append(
            {
                "column": params["column"],
                "method": params.get("method"),
                "threshold": params.get("threshold"),
                "score": metric.get("value"),
                "drifted": test["status"] == "FAIL",
            }
        )
    return sorted(signals, key=lambda s: s["column"]), share


def decide(signals: list[dict], share: float | None, policy: DriftPolicy) -> tuple[str, list[str]]:
    """The policy: any trigger column drifted, or the drifted share at or over the threshold."""
    reasons = [
        f"{s['column']} drifted ({s['method']}: {s['score']:.3g}, threshold {s['threshold']})"
        for s in signals
        if s["drifted"] and s["column"] in policy.trigger_columns
    ]
    if share is not None and share >= policy.drift_share:
        reasons.append(f"{share:.0%} of columns drifted (threshold {policy.drift_share:.0%})")
    if reasons:
        return RETRAIN, reasons
    return NO_DRIFT, [f"no trigger column drifted and {share or 0:.0%} of columns drifted"]


def check_drift(reference: pd.DataFrame, current: pd.DataFrame, policy: DriftPolicy, task: str) -> DriftResult:
    """Compare current feedback with the reference and decide whether to retrain.

    Args:
        reference: feedback the champion was trained on.
        current: feedback that arrived since the champion's watermark.
        policy: minimum sizes, sample cap and trigger rules.
        task: ``regression`` or ``classification`` (which target column is compared).
    """
    if len(reference) < policy.min_rows or len(current) < policy.min_rows:
        return DriftResult(
            INSUFFICIENT,
            [f"need {policy.min_rows} rows per side, have {len(reference)} reference and {len(current)} current"],
            reference_rows=len(reference),
            current_rows=len(current),
        )
    ref = drift_frame(time_stratified_sample(reference, policy.sample_cap), task)
    cur = drift_frame(time_stratified_sample(current, policy.sample_cap), task)
    snapshot = run_evidently(ref, cur, task, policy.drift_share)
    report_dict = snapshot.dict()
    signals, share = signals_from_report(report_dict)
    decision, reasons = decide(signals, share, policy)
    return DriftResult(
        decision=decision,
        reasons=reasons,
        signals=signals,
        drift_share=share,
        reference_rows=len(ref),
        current_rows=len(cur),
        html=_html(snapshot),
        report_json=json.dumps(report_dict, default=str),
    )


def _html(snapshot) -> str:
    import os
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "report.html")
        snapshot.save_html(path)
        with open(path, encoding="utf-8") as handle:
            return handle.read()


def save_drift_report(
    engine, store, result: DriftResult, snapshot_id: int | None, champion_version: str | None
) -> dict:
    """Store the report (HTML and JSON) and a ``drift_reports`` row; return the row's id and URIs."""
    from sqlalchemy import text

    with engine.begin() as conn:
        report_id = conn.execute(
            text(
                "INSERT INTO drift_reports (snapshot_id, champion_version, reference_rows, current_rows,"
                " drift_share, signals, decision, reasons)"
                " VALUES (:s, :c, :r, :n, :share, CAST(:signals AS JSONB), :d, CAST(:reasons AS JSONB))"
                " RETURNING id"
            ),
            {
                "s": snapshot_id,
                "c": champion_version,
                "r": result.reference_rows,
                "n": result.current_rows,
                "share": result.drift_share,
                "signals": json.dumps(result.signals, default=str),
                "d": result.decision,
                "reasons": json.dumps(result.reasons),
            },
        ).scalar_one()
        html_uri = json_uri = None
        if result.html is not None:
            prefix = f"reports/drift/{report_id:06d}"
            store.put(f"{prefix}/report.html", result.html.encode("utf-8"))
            store.put(f"{prefix}/report.json", (result.report_json or "{}").encode("utf-8"))
            html_uri, json_uri = store.uri(f"{prefix}/report.html"), store.uri(f"{prefix}/report.json")
            conn.execute(
                text("UPDATE drift_reports SET html_uri = :h, json_uri = :j WHERE id = :i"),
                {"h": html_uri, "j": json_uri, "i": report_id},
            )
    return {"id": report_id, "html_uri": html_uri, "json_uri": json_uri}


def signals_markdown(result: DriftResult, html_uri: str | None = None) -> str:
    """The drift signals as a markdown table, for the Prefect UI."""
    lines = [
        f"**Decision: {result.decision}** ({result.current_rows} current vs {result.reference_rows} reference rows)",
        "",
        *[f"- {reason}" for reason in result.reasons],
    ]
    if result.signals:
        lines += ["", "| column | method | score | threshold | drifted |", "|---|---|---|---|---|"]
        lines += [
            f"| {s['column']} | {s['method']} | {s['score']:.4g} | {s['threshold']} | {_yes(s['drifted'])} |"
            for s in result.signals
        ]
    if html_uri:
        lines += ["", f"Report: {html_uri}"]
    return "\n".join(lines)


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"
