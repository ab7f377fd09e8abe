"""What a drift check measures, column by column: the frame of text, descriptors, target,
prediction and features; each column's kind; and each signal, from the same Evidently stat tests
and embeddings drift method its report runs (without the report, for checks that render none).

The signals, by group:

- ``text``: Evidently's text content drift (a domain classifier's ROC AUC) on the redacted text.
- ``descriptors``: text length, out-of-vocabulary rate under the champion's tokenizer, share of
  text not in the reference's dominant language, share of empty or very short texts.
- ``features``: each behaviour feature.
- ``labels``: the satisfaction score or label.
- ``predictions``: the champion's predictions.
- ``embeddings``: the champion's own sentence embeddings, with ``EmbeddingsDrift``.
- ``performance``: the champion's metric on the current window against its dev-set metric, with a
  bootstrap interval (``refit.drift.performance``).
"""

from __future__ import annotations

import hashlib
import re
import warnings

import numpy as np
import pandas as pd

from refit.data.pii import redact
from refit.data.snapshots import features_frame
from refit.drift.descriptors import DESCRIPTORS
from refit.drift.policy import DriftPolicy

EMBEDDINGS = "champion_embeddings"


def targets_of(feedback: pd.DataFrame, task: str) -> pd.Series:
    """The target of each row: the satisfaction score (float, NaN when missing) for regression,
    the label (None when missing) for classification."""
    if task == "regression":
        return pd.to_numeric(feedback["satisfaction"], errors="coerce").astype(float)
    return feedback["label"].astype(object).where(feedback["label"].notna(), None)


def champion_predict(champion, frame: pd.DataFrame) -> np.ndarray:
    """The champion's raw predictions of ``frame``'s texts, with its features when it uses them."""
    texts = frame["text"].astype(str).tolist()
    if getattr(champion, "feature_names", None):
        return champion.predict(texts, features=features_frame(frame).reset_index(drop=True))
    return champion.predict(texts)


def prediction_column(prediction: np.ndarray, task: str, labels: list[str] | None):
    """Raw predictions as one comparable column: the score for regression, the most likely class
    name (``labels``, else the class index) for classification."""
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
    frame["target"] = targets_of(feedback, task).to_numpy()
    if prediction is not None:
        frame["prediction"] = prediction
    features = features_frame(feedback).reset_index(drop=True)
    for column in features.columns:
        frame[f"f_{column}"] = report_safe(column, features[column]).to_numpy()
    return frame


ID_NAME = re.compile(r"(^|_)(id|ids|uuid|key|email|handle|username|user|session|phone)$", re.IGNORECASE)
MIN_ID_VALUES = 20  # fewer present values than this never look like an identifier by their spread


def report_safe(name: str, values: pd.Series) -> pd.Series:
    """A feature column as drift reports may show it: text values redacted of PII (as the text
    is at ingest, for rows stored before feature values were), and identifiers hashed.

    A feature is an identifier when its name says so (``session_id``, ``email``, ...) or when its
    text values mostly occur once. A hash keeps the distribution the drift tests compare (equal
    values stay equal) without putting the values themselves in the HTML.

    Args:
        name: the feature's name.
        values: its values (numbers, text, vectors or missing).
    """
    text_values = values.map(lambda v: isinstance(v, str))
    if not text_values.any():
        return values
    present = values[text_values]
    repeated = present.map(present.value_counts()) >= 2
    identifier = bool(ID_NAME.search(name)) or (len(present) >= MIN_ID_VALUES and repeated.mean() < 0.5)
    safe = {v: (_hashed(v) if identifier else redact(v)) for v in present.unique()}
    return values.map(lambda v: safe[v] if isinstance(v, str) else v)


def _hashed(value: str) -> str:
    return "id:" + hashlib.sha256(value.encode("utf-8")).hexdigest()[:12]


def column_kinds(
    reference: pd.DataFrame, current: pd.DataFrame, task: str, feature_types: dict[str, str] | None = None
) -> dict[str, str]:
    """Each measured column's kind: ``text``, ``numeric`` or ``categorical``.

    The target is measured only when both sides hold a labelled row (unlabelled rows have none).
    A feature's kind is its type in ``feature_types`` (the feature schema's) when it has one there;
    a feature the schema lacks (or every feature, without a schema) is guessed from its values.
    """
    kinds = {"text": "text"}
    for column in ("text_length", "oov_rate"):
        if column in reference and column in current:
            kinds[column] = "numeric"
    for column in ("non_dominant_language", "short_text"):
        if column in reference and column in current:
            kinds[column] = "categorical"
    target_kind = "numeric" if task == "regression" else "categorical"
    if reference["target"].notna().any() and current["target"].notna().any():
        kinds["target"] = target_kind  # the label signal compares labelled rows: none, no signal
    if "prediction" in reference and "prediction" in current:
        kinds["prediction"] = target_kind
    for column in reference.columns:
        if not column.startswith("f_") or column not in current:
            continue
        both = pd.concat([reference[column], current[column]], ignore_index=True).dropna()
        given = (feature_types or {}).get(column[2:])
        if both.empty or given == "vector" or both.map(lambda v: isinstance(v, (list, tuple, dict))).any():
            continue  # an embedding vector (REFIT_VECTOR_FEATURE) is not one column to compare
        if given in ("numeric", "categorical"):
            kinds[column] = given
            continue
        numeric = pd.to_numeric(both, errors="coerce").notna().all() and both.nunique() > 10
        kinds[column] = "numeric" if numeric else "categorical"
    return kinds


# The estimated-quality signals: on the window's feedback, and on the answers ``refit serve`` logged.
ESTIMATED = ("estimated_performance", "estimated_performance_served")


def group_of(column: str) -> str:
    """The signal group a measured column belongs to (one of ``refit.core.drift_groups.GROUPS``)."""
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
    if column in ESTIMATED:
        return "estimated_performance"
    return "features"


def typed_columns(frame: pd.DataFrame, kinds: dict[str, str]) -> pd.DataFrame:
    """The measured columns of ``frame``, numeric ones as floats and categorical ones as strings."""
    frame = frame[list(kinds)].copy()
    for column, kind in kinds.items():
        if kind == "numeric":
            frame[column] = pd.to_numeric(frame[column], errors="coerce").astype(float)
        elif kind == "categorical":
            values = frame[column].astype(str)
            # An unlabelled row's target stays missing (not the category "None"): the label signal
            # compares the labelled rows only.
            frame[column] = values.where(frame[column].notna(), np.nan) if column == "target" else values
    return frame


def embedding_method(policy: DriftPolicy):
    """Evidently's classifier drift method for embeddings, at the policy's ROC AUC threshold."""
    # Evidently takes ~9 s to import: only a drift check pays for it (see refit.drift.report).
    from evidently.metrics.embeddings import ModelDriftMethod

    return ModelDriftMethod(threshold=policy.embeddings_auc)


# Each column kind's Evidently stat test and its threshold under a policy.
METHODS = {
    "text": lambda policy: ("abs_text_content_drift", policy.text_auc),
    "numeric": lambda policy: ("wasserstein", policy.numeric_threshold),
    "categorical": lambda policy: ("jensenshannon", policy.categorical_threshold),
}


def stattest_signals(
    reference: pd.DataFrame, current: pd.DataFrame, kinds: dict[str, str], policy: DriftPolicy
) -> list[dict]:
    """The same per-column signals as :func:`refit.drift.report.run_evidently`'s report, from the same Evidently
    stat tests called directly: no report, no plots (for calibration runs of many checks)."""
    from evidently.legacy.calculations.stattests import get_stattest  # lazy: see embedding_method
    from evidently.legacy.core import ColumnType

    types = {"text": ColumnType.Text, "numeric": ColumnType.Numerical, "categorical": ColumnType.Categorical}
    ref, cur = typed_columns(reference, kinds), typed_columns(current, kinds)
    signals = []
    for column, kind in kinds.items():
        method, threshold = METHODS[kind](policy)
        ref_col = ref[column].replace([-np.inf, np.inf], np.nan).dropna()
        cur_col = cur[column].replace([-np.inf, np.inf], np.nan).dropna()
        test = get_stattest(ref_col, cur_col, types[kind], method)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            outcome = test(ref_col, cur_col, types[kind], threshold)
        signals.append(make_signal(column, method, outcome.drift_score, threshold, outcome.drifted))
    return signals


def make_signal(column: str, method: str | None, score, threshold, drifted: bool, **detail) -> dict:
    """One signal as it is recorded: column, group, method, score, threshold, verdict and any detail."""
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
    score, drifted, method = embedding_method(policy)(
        pd.DataFrame(current, columns=names), pd.DataFrame(reference, columns=names)
    )
    return make_signal(EMBEDDINGS, method, score, policy.embeddings_auc, drifted)


# Champion outputs by (model, what, content digest); a few entries, oldest dropped first.
_MEMO: dict = {}


def champion_output(champion, what: str, rows: pd.DataFrame) -> np.ndarray:
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
        _MEMO[key] = champion_predict(champion, rows) if what == "predict" else champion.embed(texts)
    return _MEMO[key]
