"""Evidently's report of a drift check: one ``ValueDrift`` per column and ``EmbeddingsDrift`` on
the champion's embeddings, the signals read back from it, its HTML and JSON put in the object
store, and the markdown table of the signals for the Prefect UI."""

from __future__ import annotations

import html
import os
import tempfile
import warnings

import numpy as np
import pandas as pd

from refit.core.quality import quality_lines
from refit.drift.policy import DriftPolicy, DriftResult
from refit.drift.signals import EMBEDDINGS, METHODS, embedding_method, make_signal, typed_columns


def run_evidently(reference: pd.DataFrame, current: pd.DataFrame, kinds: dict[str, str], policy: DriftPolicy):
    """One Evidently report of ``ValueDrift`` per column, with the policy's method and threshold."""
    # Evidently takes ~9 s to import: only a drift check pays for it, not every process that
    # imports the flows (the CLI, workers waiting for a run, the serving process).
    from evidently import DataDefinition, Report
    from evidently.metrics import ValueDrift

    metrics = [
        ValueDrift(column=c, method=METHODS[k](policy)[0], threshold=METHODS[k](policy)[1]) for c, k in kinds.items()
    ]
    definition = DataDefinition(
        text_columns=[c for c, k in kinds.items() if k == "text"],
        numerical_columns=[c for c, k in kinds.items() if k == "numeric"],
        categorical_columns=[c for c, k in kinds.items() if k == "categorical"],
    )
    report = Report(metrics, include_tests=True)
    return _run(report, typed_columns(reference, kinds), typed_columns(current, kinds), definition)


def run_embeddings_report(reference: np.ndarray, current: np.ndarray, policy: DriftPolicy):
    """Evidently's ``EmbeddingsDrift`` on the champion's embeddings (its report draws a t-SNE
    picture of both sides, which costs seconds per thousand rows)."""
    from evidently import DataDefinition, Report  # lazy: see run_evidently
    from evidently.metrics import EmbeddingsDrift

    names = [f"emb_{i}" for i in range(reference.shape[1])]
    definition = DataDefinition(numerical_columns=names, embeddings={EMBEDDINGS: names})
    report = Report([EmbeddingsDrift(embeddings_name=EMBEDDINGS, drift_method=embedding_method(policy))])
    return _run(report, pd.DataFrame(reference, columns=names), pd.DataFrame(current, columns=names), definition)


def _run(report, reference: pd.DataFrame, current: pd.DataFrame, definition):
    from evidently import Dataset  # lazy: see run_evidently

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return report.run(
            current_data=Dataset.from_pandas(current, data_definition=definition),
            reference_data=Dataset.from_pandas(reference, data_definition=definition),
        )


def signals_from_report(report_dict: dict, policy: DriftPolicy) -> list[dict]:
    """Per-column drift signals (score, method, threshold, verdict) from an Evidently report.

    The verdict is Evidently's (the effect against its threshold alone); the check then judges each
    signal against its own null (``refit.drift.significance.judge``), as the plain path does."""
    metrics = {m["id"]: m for m in report_dict.get("metrics", [])}
    signals = []
    for test in report_dict.get("tests", []):
        params = test.get("metric_config", {}).get("params", {})
        if not params.get("type", "").endswith("ValueDrift"):
            continue
        metric = metrics.get(test["metric_config"]["metric_id"], {})
        signals.append(
            make_signal(
                params["column"],
                params.get("method"),
                metric.get("value"),
                params.get("threshold"),
                test["status"] == "FAIL",
            )  # fmt: skip
        )
    for metric in metrics.values():
        if metric["config"].get("type", "").endswith("EmbeddingsDrift"):
            score, threshold = float(metric["value"]), policy.embeddings_auc
            signals.append(make_signal(EMBEDDINGS, "model", score, threshold, score > threshold))
    return signals


def render_html(snapshot, preface: list[str] | None = None) -> str:
    """An Evidently report's HTML as a string (it saves only to a file), with ``preface`` lines
    (the check's quality, estimated or realized, which Evidently's report does not show) on top."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "report.html")
        snapshot.save_html(path)
        with open(path, encoding="utf-8") as handle:
            page = handle.read()
    if not preface:
        return page
    items = "".join(f"<li>{html.escape(line)}</li>" for line in preface)
    style = "font-family:sans-serif;padding:8px 16px"
    block = f'<section id="refit-quality" style="{style}"><h3>Quality</h3><ul>{items}</ul></section>'
    head, body, rest = page.partition("<body>")
    return f"{head}{body}{block}{rest}" if body else block + page


def store_report(store, result: DriftResult, report_id: int) -> tuple[str | None, str | None]:
    """Put a rendered report's HTML and JSON (and the embeddings picture) under ``reports/drift/``.

    Args:
        store: the object store.
        result: the check; a result with no HTML puts nothing.
        report_id: the check's ``drift_reports`` id, which names the report's folder.

    Returns:
        The URIs of the HTML and the JSON, or ``(None, None)`` when there was no report.
    """
    if result.html is None:
        return None, None
    prefix = f"reports/drift/{report_id:06d}"
    store.put(f"{prefix}/report.html", result.html.encode("utf-8"))
    store.put(f"{prefix}/report.json", (result.report_json or "{}").encode("utf-8"))
    if result.embeddings_html is not None:
        store.put(f"{prefix}/embeddings.html", result.embeddings_html.encode("utf-8"))
    return store.uri(f"{prefix}/report.html"), store.uri(f"{prefix}/report.json")


def signals_markdown(result: DriftResult, html_uri: str | None = None) -> str:
    """The drift signals as a markdown table, for the Prefect UI."""
    lines = [
        f"**Decision: {result.decision}** ({result.current_rows} current vs {result.reference_rows} reference rows)",
        "",
        *[f"- {reason}" for reason in result.reasons],
    ]
    quality = quality_lines(result.signals)
    if quality:
        lines += ["", "**Quality** (estimated needs no labels; realized is on labelled rows):", ""]
        lines += [f"- {line}" for line in quality]
    if result.signals:
        lines += [
            "",
            "| signal | group | method | effect | floor | test | p-value | adjusted p | drifted |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for s in result.signals:
            detail = s.get("detail") or {}
            lines.append(
                f"| {s['column']} | {s['group']} | {s['method']} | {_num(s['score'])} | {_num(s['threshold'])} |"
                f" {detail.get('test', '-')} | {_num(detail.get('p_value'))} | {_num(detail.get('p_adjusted'))} |"
                f" {'**yes**' if s['drifted'] else 'no'} |"
            )
    if html_uri:
        lines += ["", f"[Full report (HTML)]({html_uri})"]
    return "\n".join(lines)


def _num(value) -> str:
    return "-" if value is None else f"{value:.4g}"
