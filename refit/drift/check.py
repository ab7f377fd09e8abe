"""One drift check, wired: read the windows, measure the signals, decide, render and record.

``check_drift`` is a plain function: the reference and current feedback frames, the champion, its
dev rows and the history of earlier checks in; a :class:`~refit.drift.policy.DriftResult` out
(every signal with its score, floor, method, p-values and verdict, the decision with its reasons,
and Evidently's HTML and JSON). ``run_drift_check`` reads its inputs from Postgres and the store and
records the result; announcing a retrain is the caller's (``refit.tasks.drift``).

Two paths give the same signals: with ``render`` they are read from Evidently's report (which the
recorded check needs for its HTML); without it the same stat tests and embeddings drift method are
called directly, which costs a fraction (calibration runs and ``refit simulate``). Either way each
distribution signal is then judged against its own null at the window's sizes, corrected over the
family (``refit.drift.significance``): the report shows Evidently's view, the decision reads the
tests.
``tests/model/test_drift.py`` holds them to the same scores; both stay, because the report is still
needed for the HTML and the plain path is what keeps many checks cheap.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd

from refit.core.drift_groups import GROUPS
from refit.core.errors import InputError
from refit.core.quality import quality_lines
from refit.data.db import engine_for
from refit.data.devset import current_devset, dev_rows
from refit.data.schema import schema_types
from refit.data.snapshots import SplitConfig
from refit.drift.descriptors import describe_texts, dominant_words, tokenizer_words
from refit.drift.estimate import champion_estimate
from refit.drift.history import drift_history, save_drift_report
from refit.drift.performance import champion_performance
from refit.drift.policy import INSUFFICIENT, RETRAIN, DriftPolicy, DriftResult, decide, detect
from refit.drift.report import render_html, run_embeddings_report, run_evidently, signals_from_report
from refit.drift.signals import (
    champion_output,
    champion_predict,
    column_kinds,
    drift_frame,
    embeddings_signal,
    prediction_column,
    stattest_signals,
    typed_columns,
)
from refit.drift.significance import attach_p_values, judge
from refit.drift.windows import read_served, reference_and_current, time_stratified_sample
from refit.models.predict import Predictor
from refit.registry.store import store_for
from refit.registry.versions import checkout


def check_drift(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    policy: DriftPolicy,
    task: str,
    champion=None,
    dev: pd.DataFrame | None = None,
    history: list[dict] | None = None,
    last_retrain: datetime | None = None,
    now: datetime | None = None,
    force: bool = False,
    render: bool = True,
    labels: list[str] | None = None,
    feature_types: dict[str, str] | None = None,
    served: np.ndarray | None = None,
) -> DriftResult:
    """Compare current feedback with the reference and decide whether to retrain.

    Args:
        reference: feedback the champion was trained on.
        current: the current window of feedback.
        policy: sizes, thresholds, triggers, confirmation and cooldown.
        task: ``regression`` or ``classification`` (which target column is compared).
        champion: the champion (a :class:`models.predict.Predictor`): its predictions, embeddings,
            tokenizer and performance are measured when given.
        dev: the champion's dev rows, the baseline of the performance signal.
        history: earlier checks against this champion (see :func:`decide`).
        last_retrain: when a retrain was last decided, for the cooldown.
        now: the time of the check (default: now).
        force: the operator's override: the decision is ``retrain``.
        render: build the HTML report (with ``EmbeddingsDrift``'s t-SNE picture unless the policy
            turns it off); without it every signal comes from the same Evidently stat tests and
            drift method called directly, and no HTML is made.
        labels: class names, for classification.
        feature_types: the feature schema's types (numeric features are compared as numbers,
            categorical ones as categories); features it lacks are typed from their values.
        served: the champion's answers ``refit serve`` logged since it became champion
            (probabilities or scores): their quality is estimated too.

    Raises:
        InputError: a frame lacks the columns a feedback frame has.
    """
    for name, frame in (("reference", reference), ("current", current)):
        missing = {"text", "satisfaction" if task == "regression" else "label"} - set(frame.columns)
        if missing:
            raise InputError(f"the {name} feedback has no {', '.join(sorted(missing))} column")
    base = {"reference_rows": len(reference), "current_rows": len(current), "forced": force,
            "policy": policy.as_dict()}  # fmt: skip
    if len(reference) < policy.min_rows or len(current) < policy.min_rows:
        why = f"need {policy.min_rows} rows per side, have {len(reference)} reference and {len(current)} current"
        if force:
            return DriftResult(RETRAIN, ["forced by the operator", why], **base)
        return DriftResult(INSUFFICIENT, [why], **base)

    # The performance sample (labelled rows, up to performance_rows) is the larger one; the
    # sample every distribution is compared on is drawn from it, so each row is scored once.
    perf_rows = time_stratified_sample(current, max(policy.performance_rows, policy.sample_cap))
    perf_rows = perf_rows.reset_index(drop=True)
    cur_rows = time_stratified_sample(perf_rows, policy.sample_cap)
    ref_rows = time_stratified_sample(reference, policy.sample_cap).reset_index(drop=True)
    ref_texts = ref_rows["text"].astype(str)
    dominant = dominant_words(ref_texts.tolist())
    vocab = tokenizer_words(champion) if champion is not None else None
    ref_desc = describe_texts(ref_texts, vocab, dominant, policy.short_text_chars)
    cur_desc = describe_texts(cur_rows["text"].astype(str), vocab, dominant, policy.short_text_chars)
    labels = labels or getattr(champion, "labels", None)
    ref_pred = cur_pred = perf_pred = embeddings = None
    if champion is not None:
        ref_pred = champion_output(champion, "predict", ref_rows)
        perf_pred = champion_predict(champion, perf_rows)
        cur_pred = perf_pred[cur_rows.index.to_numpy()]
        ref_emb = time_stratified_sample(ref_rows, policy.embedding_rows)
        cur_emb = time_stratified_sample(cur_rows, policy.embedding_rows)
        embeddings = (champion_output(champion, "embed", ref_emb), champion.embed(cur_emb["text"].astype(str).tolist()))
    cur_rows = cur_rows.reset_index(drop=True)
    ref = drift_frame(ref_rows, task, ref_desc, _maybe(prediction_column, ref_pred, task, labels))
    cur = drift_frame(cur_rows, task, cur_desc, _maybe(prediction_column, cur_pred, task, labels))
    kinds = column_kinds(ref, cur, task, feature_types)

    value_report = embed_report = report_dict = embed_dict = None
    if render:
        value_report = run_evidently(ref, cur, kinds, policy)
        report_dict = value_report.dict()
        signals = signals_from_report(report_dict, policy)
        if embeddings is not None and policy.embeddings_picture:
            embed_report = run_embeddings_report(embeddings[0], embeddings[1], policy)
            embed_dict = embed_report.dict()
            signals += signals_from_report(embed_dict, policy)
        elif embeddings is not None:
            signals.append(embeddings_signal(embeddings[0], embeddings[1], policy))
    else:
        signals = stattest_signals(ref, cur, kinds, policy)
        if embeddings is not None:
            signals.append(embeddings_signal(embeddings[0], embeddings[1], policy))

    # Both paths judge alike: each distribution signal against its own null at these sizes, the
    # family corrected as a whole, and the effect against its floor.
    sizes = None if embeddings is None else (len(embeddings[0]), len(embeddings[1]))
    attach_p_values(signals, typed_columns(ref, kinds), typed_columns(cur, kinds), kinds, sizes)
    judge(signals, policy.alpha, policy.correction)
    if champion is not None and dev is not None and len(dev) > 0:
        embedded = None if embeddings is None else (cur_emb.index.to_numpy(), embeddings[1])
        signals += measure_quality(champion, dev, perf_rows, perf_pred, task, labels, policy, embedded, served)
    signals.sort(key=lambda s: (GROUPS.index(s["group"]), s["column"]))

    detected, share, reasons = detect(signals, policy)
    decision, reasons = decide(detected, reasons, policy, history, now, last_retrain, force)
    result = DriftResult(
        decision=decision,
        reasons=reasons,
        signals=signals,
        drift_share=share,
        drift_detected=detected,
        sampled_rows={
            "reference": len(ref_rows),
            "current": len(cur_rows),
            "performance": len(perf_rows) if perf_pred is not None else 0,
            "embeddings": 0 if embeddings is None else len(embeddings[1]),
        },
        **base,
    )
    if render:
        result.html = render_html(value_report, quality_lines(signals))
        result.embeddings_html = render_html(embed_report) if embed_report is not None else None
        result.report_json = json.dumps(
            {**result.summary(), "evidently": report_dict, "evidently_embeddings": embed_dict}, default=str
        )
    return result


def measure_quality(
    champion,
    dev: pd.DataFrame,
    rows: pd.DataFrame,
    prediction: np.ndarray,
    task: str,
    labels: list[str] | None,
    policy: DriftPolicy,
    embedded: tuple[np.ndarray, np.ndarray] | None = None,
    served: np.ndarray | None = None,
) -> list[dict]:
    """The champion's quality on the window against its dev metric: realized on the window's
    labelled rows (``performance``), estimated on all of them, labelled and unlabelled
    (``estimated_performance``), and estimated on its served answers (``estimated_performance_served``).

    Args:
        champion: the champion.
        dev: the gate's dev rows.
        rows: the window's performance sample, labelled and unlabelled rows alike.
        prediction: the champion's raw predictions of ``rows``.
        task: ``regression`` or ``classification``.
        labels: class names, for classification.
        policy: the drift policy.
        embedded: the positions in ``rows`` of the rows the embeddings signal embedded, and their
            embeddings; the estimate's shift correction reads them (no second embedding pass).
        served: the served answers' probabilities or scores, if any were logged.
    """
    signals = [champion_performance(champion, dev, rows, prediction, task, labels, policy)]
    positions, vectors = embedded if embedded is not None else (None, None)
    signals.append(champion_estimate(champion, dev, rows, prediction, task, labels, policy, vectors, positions))
    if served is not None and len(served):
        signals.append(
            champion_estimate(champion, dev, None, served, task, labels, policy, column="estimated_performance_served")
        )
    return signals


def _maybe(function, value, *args):
    return None if value is None else function(value, *args)


def load_champion(settings, champion: dict):
    """The champion's checkpoint, downloaded once into the work dir and verified, loaded for inference."""
    return Predictor(checkout(settings, champion["version"]))


def run_drift_check(
    settings,
    champion: dict | None,
    upto: int | None = None,
    snapshot_id: int | None = None,
    force: bool = False,
    now: datetime | None = None,
    result: DriftResult | None = None,
    render: bool = True,
) -> dict:
    """Check drift against the champion with the settings' policy and record it: what ``refit drift``
    and the flow's task both run (they announce a retrain: ``refit.tasks.drift.run_and_announce``).

    Args:
        settings: refit's settings (the policy, the database, the store).
        champion: the champion's registry row.
        upto: the newest feedback id to include (the snapshot's watermark).
        snapshot_id: the snapshot the check belongs to, if any.
        force: the operator's override.
        now: the time of the check (default: now).
        result: an already decided result to record instead (no champion yet).
        render: build and store the HTML report; without it the same signals and decision are
            recorded with no report (``refit simulate`` replays many checks).

    Returns:
        The result's summary with the ``drift_reports`` id and the report's URIs.
    """
    engine = engine_for(settings)
    store = store_for(settings)
    now = now or datetime.now(timezone.utc)
    version = champion["version"] if champion else None
    if result is None:
        policy = DriftPolicy.from_settings(settings)
        split = SplitConfig.from_settings(settings)
        reference, current = reference_and_current(
            engine, split, champion, upto, policy.window_days, now, settings.max_train_rows
        )
        devset = current_devset(engine)
        dev = dev_rows(engine, devset, split) if devset else None
        history, last_retrain = drift_history(engine, version, max(policy.confirm_m - 1, 0))
        enough = len(reference) >= policy.min_rows and len(current) >= policy.min_rows
        predictor = load_champion(settings, champion) if enough else None
        labels, served = list(settings.labels), None
        if predictor is not None:
            since = None if policy.window_days is None else now - timedelta(days=policy.window_days)
            served = read_served(engine, version, settings.task, labels, since, now, policy.performance_rows)
        result = check_drift(
            reference, current, policy, settings.task, champion=predictor, dev=dev, history=history,
            last_retrain=last_retrain, now=now, force=force, labels=labels, render=render,
            feature_types=schema_types(engine), served=served,
        )  # fmt: skip
    saved = save_drift_report(engine, store, result, snapshot_id, version, created_at=now)
    summary = {**result.summary(), "report_id": saved["id"]}
    summary.update(html_uri=saved["html_uri"], json_uri=saved["json_uri"])
    return summary
