"""Drift between the champion's training data and the feedback that arrived since, with Evidently.

``check_drift`` is a plain function: the reference and current feedback frames, the champion, its
dev rows and the history of earlier checks in; a :class:`DriftResult` out (every signal with its
score, threshold, method and verdict, the decision with its reasons, and Evidently's HTML and
JSON). The policy that turns signals into "retrain or not" is :class:`DriftPolicy`, built from the
settings.

The signals, by group:

- ``text``: Evidently's text content drift (a domain classifier's ROC AUC) on the redacted text.
- ``descriptors``: text length, out-of-vocabulary rate under the champion's tokenizer, share of
  text not in the reference's dominant language, share of empty or very short texts.
- ``features``: each behaviour feature.
- ``labels``: the satisfaction score or label.
- ``predictions``: the champion's predictions.
- ``embeddings``: the champion's own sentence embeddings, with ``EmbeddingsDrift``.
- ``performance``: the champion's metric on the current window against its dev-set metric, with a
  bootstrap interval.

Both windows are sampled to a fixed number of rows, evenly in time, so that the cost is bounded
and a test's sensitivity does not grow with the window; thresholds are effect sizes (normed
Wasserstein, Jensen-Shannon, classifier AUC, relative metric loss) rather than p-values.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd

from refit.core.errors import InputError
from refit.data.snapshots import features_frame

log = logging.getLogger("refit.drift")

RETRAIN, NO_DRIFT, INSUFFICIENT = "retrain", "no_drift", "insufficient_data"
UNCONFIRMED, COOLDOWN = "unconfirmed", "cooldown"
DECISIONS = (RETRAIN, NO_DRIFT, INSUFFICIENT, UNCONFIRMED, COOLDOWN)
GROUPS = ("performance", "embeddings", "text", "descriptors", "labels", "predictions", "features")
DESCRIPTORS = ("text_length", "oov_rate", "non_dominant_language", "short_text")
EMBEDDINGS = "champion_embeddings"
_WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?", re.UNICODE)


@dataclass(frozen=True)
class DriftPolicy:
    """How signals become a decision; every field comes from a ``REFIT_DRIFT_*`` setting."""

    min_rows: int = 100
    sample_cap: int = 2000
    embedding_rows: int = 1000
    embeddings_picture: bool = True
    triggers: tuple[str, ...] = GROUPS
    drift_share: float = 0.5
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
        if not 1 <= self.confirm_n <= self.confirm_m:
            raise InputError(f"drift confirmation needs 1 <= N <= M, got {self.confirm_n} of {self.confirm_m}")

    @classmethod
    def from_settings(cls, settings) -> DriftPolicy:
        return cls(
            min_rows=settings.drift_min_rows,
            sample_cap=settings.drift_sample_cap,
            embedding_rows=settings.drift_embedding_rows,
            embeddings_picture=settings.drift_embeddings_picture,
            triggers=tuple(settings.drift_triggers),
            drift_share=settings.drift_share,
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
        data = asdict(self)
        for heavy in ("html", "embeddings_html", "report_json"):
            data.pop(heavy)
        data["drifted_columns"] = self.drifted
        return data


# --- the windows ----------------------------------------------------------------------------------


def reference_and_current(
    engine,
    split,
    champion: dict,
    upto: int | None = None,
    window_days: float | None = None,
    now=None,
    max_train_rows: int | None = None,
):
    """The champion's training rows, and the current window.

    The current window is every row that arrived after the champion's snapshot or, with
    ``window_days``, every row whose feedback time is within that many days before ``now``.
    With ``max_train_rows`` (``REFIT_MAX_TRAIN_ROWS``) the champion trained on the newest that
    many training rows only, and those are the reference.
    """
    from refit.data.snapshots import get_snapshot, read_feedback, snapshot_rows

    trained_on = get_snapshot(engine, champion["snapshot_id"])
    reference = snapshot_rows(engine, trained_on, split)
    reference = reference[reference["split"] == "train"]
    if max_train_rows is not None and len(reference) > max_train_rows:
        reference = reference.sort_values("id").tail(max_train_rows)
    if window_days is None:
        return reference, read_feedback(engine, after=trained_on.watermark_to, upto=upto)
    since = (now or datetime.now(timezone.utc)) - timedelta(days=window_days)
    return reference, read_window(engine, since, upto)


def read_window(engine, since: datetime, upto: int | None = None) -> pd.DataFrame:
    """Feedback whose ``created_at`` is at or after ``since`` (late arrivals included), in id order."""
    from sqlalchemy import text

    from refit.data.snapshots import read_feedback

    with engine.connect() as conn:
        first = conn.execute(text("SELECT min(id) FROM feedback WHERE created_at >= :s"), {"s": since}).scalar()
    if first is None:
        return read_feedback(engine, after=0, upto=0)
    frame = read_feedback(engine, after=int(first) - 1, upto=upto)
    return frame[frame["created_at"] >= pd.Timestamp(since)].reset_index(drop=True)


def time_stratified_sample(frame: pd.DataFrame, cap: int) -> pd.DataFrame:
    """At most ``cap`` rows, evenly spaced in feedback time (ingest order when there is no time),
    so every part of the window is represented and the sample size does not grow with it."""
    if len(frame) <= cap:
        return frame
    order = "created_at" if "created_at" in frame else ("id" if "id" in frame else None)
    if order is not None:
        frame = frame.sort_values(order, kind="stable")
    positions = np.linspace(0, len(frame) - 1, cap).round().astype(int)
    return frame.iloc[np.unique(positions)]


# --- what is measured -------------------------------------------------------------------------


def _targets(feedback: pd.DataFrame, task: str) -> pd.Series:
    if task == "regression":
        return pd.to_numeric(feedback["satisfaction"], errors="coerce").astype(float)
    return feedback["label"].astype(object).where(feedback["label"].notna(), None)


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def dominant_words(texts: list[str], top: int = 100) -> set[str]:
    """The reference's most common words: its function words stand for its dominant language."""
    counts = Counter(word for text in texts for word in set(_words(text)))
    return {word for word, _ in counts.most_common(top)}


def describe_texts(texts: pd.Series, vocab: set[str] | None, dominant: set[str], short_chars: int) -> pd.DataFrame:
    """The text descriptors, one row per text.

    Args:
        texts: the (redacted) review texts.
        vocab: whole-word entries of the champion's tokenizer; a word that is not one of them is
            out of vocabulary (split into pieces or unknown). None leaves the rate out.
        dominant: the reference's most common words; a text of letters none of which are mostly
            ASCII, or of three or more words none of which is one of them, is not in the dominant
            language.
        short_chars: texts shorter than this (after stripping) are very short.
    """
    stripped = texts.astype(str).str.strip()
    lengths = stripped.str.len().astype(float)
    oov, foreign = [], []
    for text in stripped:
        words = _words(text)
        if vocab is not None:
            oov.append(sum(w not in vocab for w in words) / len(words) if words else 0.0)
        letters = [c for c in text if c.isalpha()]
        non_ascii = sum(not c.isascii() for c in letters) / len(letters) if letters else 0.0
        foreign.append(non_ascii > 0.5 or (len(words) >= 3 and not dominant.intersection(words)))
    frame = pd.DataFrame(
        {
            "text_length": lengths.to_numpy(),
            "non_dominant_language": np.where(foreign, "yes", "no"),
            "short_text": np.where(lengths.to_numpy() < short_chars, "yes", "no"),
        }
    )
    if vocab is not None:
        frame["oov_rate"] = oov
    return frame


def tokenizer_words(champion) -> set[str] | None:
    """The whole-word entries of the champion's tokenizer vocabulary (lower-cased)."""
    tokenizer = getattr(champion, "tokenizer", None)
    vocab = tokenizer.get_vocab() if tokenizer is not None and hasattr(tokenizer, "get_vocab") else None
    if not vocab:
        return None
    return {token.lower() for token in vocab if not token.startswith("##") and not token.startswith("[")}


def _champion_predict(champion, frame: pd.DataFrame) -> np.ndarray:
    texts = frame["text"].astype(str).tolist()
    if getattr(champion, "feature_names", None):
        return champion.predict(texts, features=features_frame(frame).reset_index(drop=True))
    return champion.predict(texts)


def _prediction_column(prediction: np.ndarray, task: str, labels: list[str] | None):
    if task == "regression":
        return np.asarray(prediction, dtype=float).reshape(-1)
    names = np.asarray(labels or [str(i) for i in range(np.asarray(prediction).shape[1])], dtype=object)
    return names[np.asarray(prediction).argmax(axis=1)]


def drift_frame(
    feedback: pd.DataFrame,
    task: str,
    descriptors: pd.DataFrame | None = None,
    prediction: np.ndarray | None = None,
) -> pd.DataFrame:
    """The columns drift is measured on: text, its descriptors, target, prediction, features."""
    frame = pd.DataFrame({"text": feedback["text"].astype(str).to_numpy()})
    if descriptors is not None:
        for column in descriptors.columns:
            frame[column] = descriptors[column].to_numpy()
    frame["target"] = _targets(feedback, task).to_numpy()
    if prediction is not None:
        frame["prediction"] = prediction
    features = features_frame(feedback).reset_index(drop=True)
    for column in features.columns:
        frame[f"f_{column}"] = features[column].to_numpy()
    return frame


def column_kinds(reference: pd.DataFrame, current: pd.DataFrame, task: str) -> dict[str, str]:
    """Each measured column's kind: ``text``, ``numeric`` or ``categorical``."""
    kinds = {"text": "text"}
    for column in ("text_length", "oov_rate"):
        if column in reference and column in current:
            kinds[column] = "numeric"
    for column in ("non_dominant_language", "short_text"):
        if column in reference and column in current:
            kinds[column] = "categorical"
    target_kind = "numeric" if task == "regression" else "categorical"
    kinds["target"] = target_kind
    if "prediction" in reference and "prediction" in current:
        kinds["prediction"] = target_kind
    for column in reference.columns:
        if not column.startswith("f_") or column not in current:
            continue
        both = pd.concat([reference[column], current[column]], ignore_index=True).dropna()
        if both.empty:
            continue
        numeric = pd.to_numeric(both, errors="coerce").notna().all() and both.nunique() > 10
        kinds[column] = "numeric" if numeric else "categorical"
    return kinds


def group_of(column: str) -> str:
    if column == "text":
        return "text"
    if column in DESCRIPTORS:
        return "descriptors"
    if column == "target":
        return "labels"
    if column == "prediction":
        return "predictions"
    if column == EMBEDDINGS:
        return "embeddings"
    if column == "performance":
        return "performance"
    return "features"


def _typed(frame: pd.DataFrame, kinds: dict[str, str]) -> pd.DataFrame:
    frame = frame[list(kinds)].copy()
    for column, kind in kinds.items():
        if kind == "numeric":
            frame[column] = pd.to_numeric(frame[column], errors="coerce").astype(float)
        elif kind == "categorical":
            frame[column] = frame[column].astype(str)
    return frame


def _embedding_method(policy: DriftPolicy):
    from evidently.metrics.embeddings import ModelDriftMethod

    return ModelDriftMethod(threshold=policy.embeddings_auc)


_METHODS = {
    "text": lambda policy: ("abs_text_content_drift", policy.text_auc),
    "numeric": lambda policy: ("wasserstein", policy.numeric_threshold),
    "categorical": lambda policy: ("jensenshannon", policy.categorical_threshold),
}


def run_evidently(reference: pd.DataFrame, current: pd.DataFrame, kinds: dict[str, str], policy: DriftPolicy):
    """One Evidently report of ``ValueDrift`` per column, with the policy's method and threshold."""
    from evidently import DataDefinition, Report
    from evidently.metrics import ValueDrift

    metrics = [
        ValueDrift(column=c, method=_METHODS[k](policy)[0], threshold=_METHODS[k](policy)[1]) for c, k in kinds.items()
    ]
    definition = DataDefinition(
        text_columns=[c for c, k in kinds.items() if k == "text"],
        numerical_columns=[c for c, k in kinds.items() if k == "numeric"],
        categorical_columns=[c for c, k in kinds.items() if k == "categorical"],
    )
    return _run(Report(metrics, include_tests=True), _typed(reference, kinds), _typed(current, kinds), definition)


def run_embeddings_report(reference: np.ndarray, current: np.ndarray, policy: DriftPolicy):
    """Evidently's ``EmbeddingsDrift`` on the champion's embeddings (its report draws a t-SNE
    picture of both sides, which costs seconds per thousand rows)."""
    from evidently import DataDefinition, Dataset, Report  # noqa: F401 - Dataset used in _run
    from evidently.metrics import EmbeddingsDrift

    names = [f"emb_{i}" for i in range(reference.shape[1])]
    definition = DataDefinition(numerical_columns=names, embeddings={EMBEDDINGS: names})
    report = Report([EmbeddingsDrift(embeddings_name=EMBEDDINGS, drift_method=_embedding_method(policy))])
    return _run(report, pd.DataFrame(reference, columns=names), pd.DataFrame(current, columns=names), definition)


def _run(report, reference: pd.DataFrame, current: pd.DataFrame, definition):
    from evidently import Dataset

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return report.run(
            current_data=Dataset.from_pandas(current, data_definition=definition),
            reference_data=Dataset.from_pandas(reference, data_definition=definition),
        )


def signals_from_report(report_dict: dict, policy: DriftPolicy) -> list[dict]:
    """Per-column drift signals (score, method, threshold, verdict) from an Evidently report."""
    metrics = {m["id"]: m for m in report_dict.get("metrics", [])}
    signals = []
    for test in report_dict.get("tests", []):
        params = test.get("metric_config", {}).get("params", {})
        if not params.get("type", "").endswith("ValueDrift"):
            continue
        metric = metrics.get(test["metric_config"]["metric_id"], {})
        signals.append(
            _signal(
                params["column"],
                params.get("method"),
                metric.get("value"),
                params.get("threshold"),
                test["status"] == "FAIL",
            )  # fmt: skip
        )
    for metric in metrics.values():
        if metric["config"].get("type", "").endswith("EmbeddingsDrift"):
            score = float(metric["value"])
            signals.append(_signal(EMBEDDINGS, "model", score, policy.embeddings_auc, score > policy.embeddings_auc))
    return signals


def stattest_signals(
    reference: pd.DataFrame, current: pd.DataFrame, kinds: dict[str, str], policy: DriftPolicy
) -> list[dict]:
    """The same per-column signals as :func:`run_evidently`'s report, from the same Evidently
    stat tests called directly: no report, no plots (for calibration runs of many checks)."""
    from evidently.legacy.calculations.stattests import get_stattest
    from evidently.legacy.core import ColumnType

    types = {"text": ColumnType.Text, "numeric": ColumnType.Numerical, "categorical": ColumnType.Categorical}
    ref, cur = _typed(reference, kinds), _typed(current, kinds)
    signals = []
    for column, kind in kinds.items():
        method, threshold = _METHODS[kind](policy)
        ref_col = ref[column].replace([-np.inf, np.inf], np.nan).dropna()
        cur_col = cur[column].replace([-np.inf, np.inf], np.nan).dropna()
        test = get_stattest(ref_col, cur_col, types[kind], method)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            outcome = test(ref_col, cur_col, types[kind], threshold)
        signals.append(_signal(column, method, outcome.drift_score, threshold, outcome.drifted))
    return signals


def _signal(column: str, method: str | None, score, threshold, drifted: bool, **detail) -> dict:
    return {
        "column": column,
        "group": group_of(column),
        "method": method,
        "score": None if score is None else float(score),
        "threshold": threshold,
        "drifted": bool(drifted),
        **({"detail": detail} if detail else {}),
    }


def embeddings_signal(reference: np.ndarray, current: np.ndarray, policy: DriftPolicy) -> dict:
    """The embeddings signal computed by the same Evidently drift method ``EmbeddingsDrift`` runs,
    without its t-SNE picture (for checks that render no report, such as calibration runs)."""
    names = [f"emb_{i}" for i in range(reference.shape[1])]
    score, drifted, method = _embedding_method(policy)(
        pd.DataFrame(current, columns=names), pd.DataFrame(reference, columns=names)
    )
    return _signal(EMBEDDINGS, method, score, policy.embeddings_auc, drifted)


# --- performance ---------------------------------------------------------------------------------


def _metric_value(metric: str, y_true: np.ndarray, prediction: np.ndarray, n_labels: int) -> float:
    from refit.models.metrics import task_metrics

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
    from refit.gate.bootstrap import resampled_metric
    from refit.models.metrics import DIRECTION

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
    return _signal(
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
        dev_rows=len(dev_true),
        current_rows=len(current_true),
    )


# --- the decision --------------------------------------------------------------------------------


def detect(signals: list[dict], policy: DriftPolicy) -> tuple[bool, float | None, list[str]]:
    """Whether this check saw drift: a trigger group's signal drifted, or the drifted share of all
    signals reached ``policy.drift_share``. Returns the verdict, the share and the reasons."""
    measured = [s for s in signals if s["score"] is not None]
    share = sum(s["drifted"] for s in measured) / len(measured) if measured else None
    reasons = [
        f"{s['column']} drifted ({s['method']}: {s['score']:.3g}, threshold {s['threshold']:.3g})"
        for s in measured
        if s["drifted"] and s["group"] in policy.triggers
    ]
    if share is not None and share >= policy.drift_share:
        reasons.append(f"{share:.0%} of signals drifted (threshold {policy.drift_share:.0%})")
    return bool(reasons), share, reasons


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


# --- the check -----------------------------------------------------------------------------------


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
        ref_pred = _memo(champion, "predict", ref_rows)
        perf_pred = _champion_predict(champion, perf_rows)
        cur_pred = perf_pred[cur_rows.index.to_numpy()]
        ref_emb = time_stratified_sample(ref_rows, policy.embedding_rows)
        cur_emb = time_stratified_sample(cur_rows, policy.embedding_rows)
        embeddings = (_memo(champion, "embed", ref_emb), champion.embed(cur_emb["text"].astype(str).tolist()))
    cur_rows = cur_rows.reset_index(drop=True)
    ref = drift_frame(ref_rows, task, ref_desc, _maybe(_prediction_column, ref_pred, task, labels))
    cur = drift_frame(cur_rows, task, cur_desc, _maybe(_prediction_column, cur_pred, task, labels))
    kinds = column_kinds(ref, cur, task)

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

    if champion is not None and dev is not None and len(dev) > 0:
        signals.append(_performance(champion, dev, perf_rows, perf_pred, task, labels, policy))
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
        result.html = _html(value_report)
        result.embeddings_html = _html(embed_report) if embed_report is not None else None
        result.report_json = json.dumps(
            {**result.summary(), "evidently": report_dict, "evidently_embeddings": embed_dict}, default=str
        )
    return result


def _maybe(function, value, *args):
    return None if value is None else function(value, *args)


def _performance(champion, dev: pd.DataFrame, cur_rows: pd.DataFrame, cur_pred, task, labels, policy) -> dict:
    from refit.models.metrics import DEFAULT_METRIC

    metric = policy.metric or DEFAULT_METRIC[task]
    dev_rows = time_stratified_sample(dev, max(policy.performance_rows, policy.sample_cap)).reset_index(drop=True)
    dev_true, cur_true = _targets(dev_rows, task), _targets(cur_rows, task)
    dev_ok, cur_ok = dev_true.notna().to_numpy(), cur_true.notna().to_numpy()
    if dev_ok.sum() < policy.min_rows or cur_ok.sum() < policy.min_rows:
        return _signal("performance", f"bootstrap {metric}", None, policy.performance_min_degradation, False,
                       note=f"fewer than {policy.min_rows} labelled rows on a side")  # fmt: skip
    dev_pred = _memo(champion, "predict", dev_rows)
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


_MEMO: dict = {}


def _memo(champion, what: str, rows: pd.DataFrame) -> np.ndarray:
    """The champion's predictions or embeddings of frames that recur between checks (its dev rows,
    its training rows), computed once per champion and content."""
    content = rows["text"].astype(str) + "\x1e" + rows.get("features", pd.Series("", index=rows.index)).astype(str)
    digest = hashlib.sha256("\x1f".join(content).encode()).hexdigest()
    # A checkpoint folder is immutable (verified against its manifest), so it names the model.
    folder = getattr(champion, "folder", None)
    key = (str(folder) if folder is not None else id(champion), what, digest)
    if key not in _MEMO:
        if len(_MEMO) >= 8:
            _MEMO.pop(next(iter(_MEMO)))
        texts = rows["text"].astype(str).tolist()
        _MEMO[key] = _champion_predict(champion, rows) if what == "predict" else champion.embed(texts)
    return _MEMO[key]


def _html(snapshot) -> str:
    import os
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "report.html")
        snapshot.save_html(path)
        with open(path, encoding="utf-8") as handle:
            return handle.read()


# --- records ---------------------------------------------------------------------------------------


def drift_history(engine, champion_version: str | None, limit: int) -> tuple[list[dict], datetime | None]:
    """The earlier checks against this champion since the last retrain (newest first, at most
    ``limit``, insufficient-data checks left out), and when the last retrain was decided."""
    from sqlalchemy import text

    with engine.connect() as conn:
        last_retrain = conn.execute(
            text("SELECT max(created_at) FROM drift_reports WHERE decision = 'retrain'")
        ).scalar()
        rows = conn.execute(
            text(
                "SELECT id, created_at, decision, drift_detected FROM drift_reports"
                " WHERE champion_version IS NOT DISTINCT FROM :c AND decision <> 'insufficient_data'"
                " AND (CAST(:since AS TIMESTAMPTZ) IS NULL OR created_at > :since)"
                " ORDER BY id DESC LIMIT :n"
            ),
            {"c": champion_version, "since": last_retrain, "n": limit},
        ).mappings()
        history = [dict(r) for r in rows]
    return history, last_retrain


def save_drift_report(
    engine,
    store,
    result: DriftResult,
    snapshot_id: int | None,
    champion_version: str | None,
    created_at: datetime | None = None,
) -> dict:
    """Store the report (HTML and JSON) and a ``drift_reports`` row; return the row's id and URIs.

    ``created_at`` is the check's time (default: the database's now); confirmation and cooldown
    read it, so a replay on a simulated clock (``refit simulate``) passes its own.
    """
    from sqlalchemy import text

    with engine.begin() as conn:
        report_id = conn.execute(
            text(
                "INSERT INTO drift_reports (snapshot_id, champion_version, reference_rows, current_rows,"
                " drift_share, signals, decision, reasons, drift_detected, forced, policy, sampled_rows, created_at)"
                " VALUES (:s, :c, :r, :n, :share, CAST(:signals AS JSONB), :d, CAST(:reasons AS JSONB),"
                " :detected, :forced, CAST(:policy AS JSONB), CAST(:sampled AS JSONB),"
                " coalesce(CAST(:at AS TIMESTAMPTZ), now()))"
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
                "detected": result.drift_detected,
                "forced": result.forced,
                "policy": json.dumps(result.policy, default=str),
                "sampled": json.dumps(result.sampled_rows),
                "at": created_at,
            },
        ).scalar_one()
        html_uri = json_uri = None
        if result.html is not None:
            prefix = f"reports/drift/{report_id:06d}"
            store.put(f"{prefix}/report.html", result.html.encode("utf-8"))
            store.put(f"{prefix}/report.json", (result.report_json or "{}").encode("utf-8"))
            if result.embeddings_html is not None:
                store.put(f"{prefix}/embeddings.html", result.embeddings_html.encode("utf-8"))
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
        lines += ["", "| signal | group | method | score | threshold | drifted |", "|---|---|---|---|---|---|"]
        lines += [
            f"| {s['column']} | {s['group']} | {s['method']} | {_num(s['score'])} | {_num(s['threshold'])} |"
            f" {'**yes**' if s['drifted'] else 'no'} |"
            for s in result.signals
        ]
    if html_uri:
        lines += ["", f"[Full report (HTML)]({html_uri})"]
    return "\n".join(lines)


def _num(value) -> str:
    return "-" if value is None else f"{value:.4g}"


def slack_message(result: DriftResult, champion_version: str | None, html_uri: str | None = None) -> dict:
    """A short Slack message for a ``retrain`` decision: the reasons and the report's address."""
    lines = [f"*Champion*: `{champion_version}`", *[f"• {reason}" for reason in result.reasons]]
    if html_uri:
        lines.append(f"*Report*: {html_uri}")
    title = "refit: drift detected, retraining"
    body = "\n".join(lines)
    return {
        "text": f"{title}\n{body}",
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": title}},
            {"type": "section", "text": {"type": "mrkdwn", "text": body[:2900]}},
        ],
        "refit": {"kind": "drift"},
    }


# --- one recorded check ----------------------------------------------------------------------------


def load_champion(settings, champion: dict):
    """The champion's checkpoint, downloaded once into the work dir and verified, loaded for inference."""
    from refit.models.predict import Predictor
    from refit.registry import checkout

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
    """Check drift against the champion with the settings' policy, record it, and post to Slack
    when the decision is to retrain: what ``refit drift`` and the flow's task both run.

    Args:
        settings: refit's settings (the policy, the database, the store, the Slack webhook).
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
    from refit import notify
    from refit.data.db import engine_for
    from refit.data.devset import current_devset, dev_rows
    from refit.data.snapshots import SplitConfig
    from refit.registry.store import store_for

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
        result = check_drift(
            reference, current, policy, settings.task, champion=predictor, dev=dev, history=history,
            last_retrain=last_retrain, now=now, force=force, labels=list(settings.labels), render=render,
        )  # fmt: skip
    saved = save_drift_report(engine, store, result, snapshot_id, version, created_at=now)
    summary = {**result.summary(), "report_id": saved["id"]}
    summary.update(html_uri=saved["html_uri"], json_uri=saved["json_uri"])
    if result.decision == RETRAIN and result.drift_detected and not result.forced and champion is not None:
        # issue 8: the signals table and a browser link to the report, to Slack and the JSON webhook
        report_url = notify.browser_url(settings, saved["html_uri"])
        notify.send(settings, notify.drift_notice(summary, version, report_url, notify.current_run_url(settings)))
    return summary
