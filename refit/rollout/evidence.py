"""Live evidence of a rollout: what the two models did on the same live requests, and how their
answers compare with what users said later.

``refit serve`` logs one ``prediction_log`` row per (request item, model) while a rollout is live:
both rows of a request item share the ``request_id`` and carry the rollout's id, the model's role
(``champion`` or ``candidate``), whether it was the answer returned (``served``), the model call's
``latency_ms`` and its size (``call_items``), an ``error`` when the call failed (the prediction
columns are then NULL), and the ``feedback_id``, ``user_id`` and ``item_id`` when the request
carried them. This module reads those rows for the live stage's window (from ``stage_started_at``)
and gives, per model, the request items scored, the error rate and the p50/p99 latency; over the
request items both models scored, how far their answers are apart; and the live metric on feedback
joined to the predictions.

**Latency, like with like.** A call's ``latency_ms`` is the time of the whole call, and the two
models' calls need not hold as many items (a live call may batch several requests). Each row's
latency is therefore taken per item (``latency_ms / call_items``; a row logged without a size
counts as a call of one), and the p50/p99 compare the calls of the sizes both models made
(``call_sizes``). The per-item p99 over calls of every size is kept beside it (``any_size_p99_ms``),
for a stage whose two models share too few call sizes.

**Joining.** A feedback row joins a logged prediction by its ``feedback_id``, or, for a prediction
logged without one, by the same ``user_id`` and ``item_id`` with the feedback created at or after
the prediction. Each feedback row counts once per model: with the latest of its predictions (the
answer the user saw last). The paired comparison takes only request items that both models
scored, joined the same way, and is judged by the gate's own paired bootstrap
(:func:`refit.gate.bootstrap.paired_bootstrap`) at the gate's metric, resamples, confidence and
seed.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime

import numpy as np
from sqlalchemy import Engine, text

from refit.gate.bootstrap import paired_bootstrap
from refit.gate.rule import GatePolicy
from refit.models.metrics import classification_metrics, regression_metrics

ROLES = ("champion", "candidate")

# The live rollout's row.
_LIVE = text("SELECT *, now() AS as_of FROM rollouts WHERE ended_at IS NULL")
_LATEST = text("SELECT *, now() AS as_of FROM rollouts ORDER BY id DESC LIMIT 1")

# Per model over the stage's window: request items (rows), requests, failed calls.
_PER_MODEL = text(
    "SELECT role, count(*) AS items, count(DISTINCT request_id) AS requests,"
    " count(*) FILTER (WHERE error IS NOT NULL) AS errors"
    " FROM prediction_log WHERE rollout_id = :rollout AND logged_at >= :since GROUP BY role"
)

# Per model and per item: the latency of each row's call over its size, on the calls of the sizes
# both models made (basis 'same_size') and on every call (basis 'any_size').
_LATENCY = text(
    "WITH t AS ("
    " SELECT role, coalesce(call_items, 1) AS size, latency_ms / coalesce(call_items, 1) AS item_ms"
    " FROM prediction_log WHERE rollout_id = :rollout AND logged_at >= :since AND latency_ms IS NOT NULL),"
    " common AS (SELECT size FROM t GROUP BY size HAVING count(DISTINCT role) = 2)"
    " SELECT role, 'same_size' AS basis, count(*) AS timed, array_agg(DISTINCT size) AS sizes,"
    " percentile_cont(0.5) WITHIN GROUP (ORDER BY item_ms) AS p50_ms,"
    " percentile_cont(0.99) WITHIN GROUP (ORDER BY item_ms) AS p99_ms"
    " FROM t WHERE size IN (SELECT size FROM common) GROUP BY role"
    " UNION ALL"
    " SELECT role, 'any_size' AS basis, count(*) AS timed, array_agg(DISTINCT size) AS sizes,"
    " percentile_cont(0.5) WITHIN GROUP (ORDER BY item_ms) AS p50_ms,"
    " percentile_cont(0.99) WITHIN GROUP (ORDER BY item_ms) AS p99_ms"
    " FROM t GROUP BY role"
)

# The window's successful calls, numbered within each (request, text, ids) so that a request that
# holds the same text twice pairs its first copy with the other model's first copy, and so on.
_WINDOW = (
    "WITH w AS ("
    " SELECT id, role, request_id, text_sha256, feedback_id, user_id, item_id, logged_at, satisfaction, label,"
    " probabilities,"
    " row_number() OVER (PARTITION BY role, request_id, text_sha256, feedback_id, user_id, item_id ORDER BY id) AS k"
    " FROM prediction_log"
    " WHERE rollout_id = :rollout AND logged_at >= :since AND error IS NULL AND request_id IS NOT NULL),"
    # request items that both models scored; coalesce keeps the join hashable (NULL ids are common)
    " pairs AS ("
    " SELECT c.id, c.feedback_id, c.user_id, c.item_id, least(c.logged_at, d.logged_at) AS logged_at,"
    " c.satisfaction AS champion_s, c.label AS champion_l, d.satisfaction AS candidate_s, d.label AS candidate_l,"
    " c.probabilities AS champion_p, d.probabilities AS candidate_p"
    " FROM w c JOIN w d ON c.role = 'champion' AND d.role = 'candidate' AND d.request_id = c.request_id"
    " AND d.k = c.k AND coalesce(d.text_sha256, '') = coalesce(c.text_sha256, '')"
    " AND coalesce(d.feedback_id, '') = coalesce(c.feedback_id, '')"
    " AND coalesce(d.user_id, '') = coalesce(c.user_id, '') AND coalesce(d.item_id, '') = coalesce(c.item_id, ''))"
)

_AGREEMENT = text(
    _WINDOW + " SELECT count(*) AS paired, avg(abs(champion_s - candidate_s)) AS mean_abs_diff,"
    " avg(CASE WHEN champion_l = candidate_l THEN 0.0 ELSE 1.0 END) AS label_disagreement FROM pairs"
)

# Both models' answers on the paired request items, in the order they were logged.
_PAIRED_ANSWERS = text(_WINDOW + " SELECT champion_s, candidate_s, champion_p, candidate_p FROM pairs ORDER BY id")

# Feedback joined to the paired request items: by feedback_id, else by (user, item) with the
# feedback at or after the prediction; one row per feedback, its latest pair.
_PAIRED_LABELS = text(
    _WINDOW + ", matched AS ("
    " SELECT f.id AS fid, p.*, 0 AS how FROM pairs p JOIN feedback f ON f.feedback_id = p.feedback_id"
    " UNION ALL"
    " SELECT f.id AS fid, p.*, 1 AS how FROM pairs p JOIN feedback f ON p.feedback_id IS NULL"
    " AND f.user_id = p.user_id AND f.item_id = p.item_id AND f.created_at >= p.logged_at)"
    " SELECT DISTINCT ON (m.fid) m.fid, m.champion_s, m.champion_l, m.candidate_s, m.candidate_l,"
    " f.satisfaction AS true_s, f.label AS true_l"
    " FROM matched m JOIN feedback f ON f.id = m.fid ORDER BY m.fid, m.how, m.logged_at DESC, m.id DESC"
)

# The same join per model, on each model's own predictions (paired or not).
_MODEL_LABELS = text(
    _WINDOW + ", matched AS ("
    " SELECT f.id AS fid, w.*, 0 AS how FROM w JOIN feedback f ON f.feedback_id = w.feedback_id"
    " UNION ALL"
    " SELECT f.id AS fid, w.*, 1 AS how FROM w JOIN feedback f ON w.feedback_id IS NULL"
    " AND f.user_id = w.user_id AND f.item_id = w.item_id AND f.created_at >= w.logged_at)"
    " SELECT DISTINCT ON (m.fid, m.role) m.role, m.satisfaction, m.label,"
    " f.satisfaction AS true_s, f.label AS true_l"
    " FROM matched m JOIN feedback f ON f.id = m.fid ORDER BY m.fid, m.role, m.how, m.logged_at DESC, m.id DESC"
)


@dataclass(frozen=True)
class ModelEvidence:
    """One model's live numbers over the stage's window.

    Attributes:
        role: ``champion`` or ``candidate``.
        version: the model version in that role.
        items: request items it scored (successfully or not).
        requests: distinct requests among them.
        errors: calls that failed.
        error_rate: ``errors / items`` (None before any item).
        p50_ms, p99_ms: the latency percentiles per item (a call's latency over its items), on the
            calls of the sizes both models made.
        labels: feedback rows joined to its predictions.
        live: its metrics on those joined labels (empty before any).
        timed: the rows behind ``p50_ms`` and ``p99_ms`` (None: all ``items``).
        call_sizes: the call sizes they cover (empty: not known).
        any_size_p99_ms: the per-item p99 over its calls of every size.
        any_size_timed: the rows behind it (None: all ``items``).
        any_call_sizes: the sizes of all its calls.
    """

    role: str
    version: str | None
    items: int = 0
    requests: int = 0
    errors: int = 0
    error_rate: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    labels: int = 0
    live: dict = field(default_factory=dict)
    timed: int | None = None
    call_sizes: list[int] = field(default_factory=list)
    any_size_p99_ms: float | None = None
    any_size_timed: int | None = None
    any_call_sizes: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class Evidence:
    """What the stage has shown so far, as :func:`gather_evidence` reads it.

    Attributes:
        rollout_id, stage: the rollout and the stage the window belongs to.
        window_start: the stage's start (rows logged before it belong to the previous stage).
        as_of: the database's clock when read.
        hours_in_stage: from ``window_start`` to ``as_of``.
        task, metric: what the live metric is (the gate's metric).
        champion, candidate: each model's numbers.
        paired: request items both models scored.
        disagreement: over those, the share of differing labels (classification) or the mean
            absolute difference of satisfaction (regression); None before any pair.
        labels: paired request items joined to a label: the rows of the paired comparison.
        comparison: the paired bootstrap on them, candidate minus champion, signed so that
            positive is better: ``metric``, ``candidate`` and ``champion`` scores, ``point``, ``low``,
            ``high``, ``confidence``, ``resamples``, ``rows``; None before any label.
        champion_now: the registry's champion as read (the rollout compares against
            ``champion.version``; a rollback or another promotion meanwhile changes this).
    """

    rollout_id: int
    stage: str
    window_start: datetime
    as_of: datetime
    hours_in_stage: float
    task: str
    metric: str
    champion: ModelEvidence
    candidate: ModelEvidence
    paired: int = 0
    disagreement: float | None = None
    labels: int = 0
    comparison: dict | None = None
    champion_now: str | None = None

    def model(self, role: str) -> ModelEvidence:
        return self.champion if role == "champion" else self.candidate

    def as_dict(self) -> dict:
        return asdict(self)


def live_rollout(engine: Engine) -> dict | None:
    """The live rollout's row (with the database's ``as_of`` clock), or None when none is live."""
    with engine.connect() as conn:
        row = conn.execute(_LIVE).mappings().first()
    return dict(row) if row else None


def latest_rollout(engine: Engine) -> dict | None:
    """The newest rollout's row, live or ended, or None when there was never one."""
    with engine.connect() as conn:
        row = conn.execute(_LATEST).mappings().first()
    return dict(row) if row else None


def _target(task: str, labels: list[str], satisfaction, label):
    if task == "regression":
        return None if satisfaction is None else float(satisfaction)
    return labels.index(label) if label in labels else None


def _metrics(task: str, y_true: np.ndarray, prediction: np.ndarray, n_labels: int) -> dict[str, float]:
    if task == "regression":
        return regression_metrics(y_true, prediction)
    return classification_metrics(y_true, prediction.astype(int), n_labels)


def gather_evidence(
    engine: Engine, rollout: dict, gate: GatePolicy, task: str, labels: list[str] | tuple[str, ...]
) -> Evidence:
    """The live rollout's evidence over its current stage's window.

    Args:
        engine: refit's database.
        rollout: the rollout's row (:func:`live_rollout`).
        gate: the gate's policy: its metric, resamples, confidence and seed judge the live labels.
        task: ``regression`` or ``classification``.
        labels: the class names (classification), in the model's order.

    Returns:
        Per model, the paired agreement, and the paired bootstrap on the joined labels.
    """
    labels = list(labels)
    n_labels = 1 if task == "regression" else len(labels)
    params = {"rollout": rollout["id"], "since": rollout["stage_started_at"]}
    with engine.connect() as conn:
        as_of = conn.execute(text("SELECT now()")).scalar()
        champion_now = conn.execute(text("SELECT champion FROM registry_head WHERE id = 1")).scalar()
        per_model = {r["role"]: dict(r) for r in conn.execute(_PER_MODEL, params).mappings()}
        latency = {(r["role"], r["basis"]): dict(r) for r in conn.execute(_LATENCY, params).mappings()}
        agreement = conn.execute(_AGREEMENT, params).mappings().one()
        paired_rows = conn.execute(_PAIRED_LABELS, params).mappings().all()
        model_rows = conn.execute(_MODEL_LABELS, params).mappings().all()

    models = {}
    for role in ROLES:
        stats = per_model.get(role, {})
        truth, predicted = [], []
        for row in model_rows:
            if row["role"] != role:
                continue
            y = _target(task, labels, row["true_s"], row["true_l"])
            p = _target(task, labels, row["satisfaction"], row["label"])
            if y is not None and p is not None:
                truth.append(y)
                predicted.append(p)
        items = int(stats.get("items") or 0)
        errors = int(stats.get("errors") or 0)
        same, every = latency.get((role, "same_size"), {}), latency.get((role, "any_size"), {})
        models[role] = ModelEvidence(
            role=role,
            version=rollout["champion_version"] if role == "champion" else rollout["version"],
            items=items,
            requests=int(stats.get("requests") or 0),
            errors=errors,
            error_rate=errors / items if items else None,
            p50_ms=_float(same.get("p50_ms")),
            p99_ms=_float(same.get("p99_ms")),
            labels=len(truth),
            live=_metrics(task, np.asarray(truth), np.asarray(predicted), n_labels) if truth else {},
            timed=int(same.get("timed") or 0),
            call_sizes=sorted(same.get("sizes") or []),
            any_size_p99_ms=_float(every.get("p99_ms")),
            any_size_timed=int(every.get("timed") or 0),
            any_call_sizes=sorted(every.get("sizes") or []),
        )

    truth, champion, candidate = [], [], []
    for row in paired_rows:
        y = _target(task, labels, row["true_s"], row["true_l"])
        c = _target(task, labels, row["champion_s"], row["champion_l"])
        d = _target(task, labels, row["candidate_s"], row["candidate_l"])
        if y is not None and c is not None and d is not None:
            truth.append(y)
            champion.append(c)
            candidate.append(d)
    comparison = None
    if truth:
        y, c, d = np.asarray(truth), np.asarray(champion), np.asarray(candidate)
        interval = paired_bootstrap(gate.metric, y, d, c, n_labels, gate.resamples, gate.confidence, gate.seed)
        comparison = {
            **interval.as_dict(),
            "candidate": _metrics(task, y, d, n_labels)[gate.metric],
            "champion": _metrics(task, y, c, n_labels)[gate.metric],
            "rows": len(y),
        }
    paired = int(agreement["paired"] or 0)
    disagreement = agreement["mean_abs_diff"] if task == "regression" else agreement["label_disagreement"]
    since = rollout["stage_started_at"]
    return Evidence(
        rollout_id=rollout["id"],
        stage=rollout["stage"],
        window_start=since,
        as_of=as_of,
        hours_in_stage=max(0.0, (as_of - since).total_seconds() / 3600),
        task=task,
        metric=gate.metric,
        champion=models["champion"],
        candidate=models["candidate"],
        paired=paired,
        disagreement=_float(disagreement) if paired else None,
        labels=len(truth),
        comparison=comparison,
        champion_now=champion_now,
    )


def _float(value) -> float | None:
    return None if value is None else float(value)


def paired_answers(
    engine: Engine, rollout: dict, task: str, labels: list[str] | tuple[str, ...]
) -> dict[str, np.ndarray]:
    """Both models' answers on the request items both scored in the live stage's window: per
    role, the satisfaction scores (regression) or the class probabilities in ``labels``' order
    (classification; items logged without probabilities are left out of both)."""
    params = {"rollout": rollout["id"], "since": rollout["stage_started_at"]}
    with engine.connect() as conn:
        rows = conn.execute(_PAIRED_ANSWERS, params).mappings().all()
    if task == "regression":
        rows = [r for r in rows if r["champion_s"] is not None and r["candidate_s"] is not None]
        return {role: np.array([float(r[f"{role}_s"]) for r in rows]) for role in ROLES}
    names = list(labels)
    rows = [r for r in rows if r["champion_p"] and r["candidate_p"]]
    return {
        role: np.array([[float(_json(r[f"{role}_p"])[n]) for n in names] for r in rows]).reshape(-1, len(names))
        for role in ROLES
    }


def _json(value) -> dict:
    return json.loads(value) if isinstance(value, str) else value
