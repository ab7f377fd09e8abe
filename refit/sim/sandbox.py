"""One policy's sandbox: its own Postgres schema (refit's migrations applied there through
``search_path``), store prefix and work folder, the feedback delivered into it, and the champion's
online quality on a step before the loop sees it."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from sqlalchemy import Engine, text

from refit.sim.policies import Policy
from refit.sim.stream import Step


def sandbox_url(database_url: str, schema: str) -> str:
    """The database URL with every connection's ``search_path`` set to ``schema`` (refit's
    migrations and queries name no schema, so they all land there) and an application name that
    identifies the sandbox's connections."""
    from sqlalchemy.engine import make_url

    url = make_url(database_url)
    query = dict(url.query)
    query["options"] = f"-csearch_path={schema}"
    query["application_name"] = f"refit-{schema}"[:63]
    return url.set(query=query).render_as_string(hide_password=False)


def _identifier(value: str) -> str:
    return re.sub(r"[^a-z0-9_]", "_", value.lower())[:40]


@dataclass
class Sandbox:
    """One policy's database schema, store prefix and work folder, and what it has seen."""

    policy: Policy
    settings: object  # refit.core.settings.Settings
    schema: str
    admin: Engine  # the same database without the search path, for schema DDL and fault injection
    delivered: set[str] = field(default_factory=set)
    attempts: list[dict] = field(default_factory=list)
    verified: dict = field(default_factory=dict)
    _predictors: dict = field(default_factory=dict)  # loaded models by version

    @property
    def engine(self) -> Engine:
        from refit.data.db import engine_for

        return engine_for(self.settings)

    @property
    def store(self):
        from refit.registry.store import store_for

        return store_for(self.settings)

    @property
    def application_name(self) -> str:
        return f"refit-{self.schema}"[:63]


def open_sandbox(base, policy: Policy, run_id: str, work_dir: Path, overrides: dict | None = None) -> Sandbox:
    """Create a fresh schema with refit's migrations, a store prefix and a work folder for ``policy``.

    Args:
        base: refit's settings, which the sandbox's derive from.
        policy: the policy replayed in the sandbox (its drift settings apply there).
        run_id: names the schema and the store prefix.
        work_dir: the folder under which the sandbox's own work folder goes.
        overrides: further settings for the sandbox (a fault injector's, e.g. training in a child process).

    Returns:
        The open sandbox.
    """
    from refit.data.db import get_engine, upgrade

    schema = _identifier(f"sim_{run_id}_{policy.name}")
    admin = get_engine(base.require_database())
    with admin.begin() as conn:
        conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    store_url = base.store_url.rstrip("/") + f"/sim/{run_id}/{policy.name}"
    settings = base.model_copy(
        update={
            "database_url": sandbox_url(base.require_database(), schema),
            "store_url": store_url,
            "work_dir": Path(work_dir) / policy.name,
            **policy.settings_overrides(),
            **(overrides or {}),
        }
    )
    upgrade(get_engine(settings.database_url))
    return Sandbox(policy, settings, schema, admin)


def drop_sandbox(box: Sandbox) -> None:
    """Drop the sandbox's schema (its store objects stay, for inspection)."""
    box.engine.dispose()
    with box.admin.begin() as conn:
        conn.execute(text(f'DROP SCHEMA IF EXISTS "{box.schema}" CASCADE'))


def online_quality(box: Sandbox, feedback: pd.DataFrame) -> dict | None:
    """The champion's metric on a step's labelled feedback, before the loop sees it (None before
    the first champion, or with no labelled rows), and every model trained so far on the same rows
    (``scores`` by version; ``best``: the best of them), so a replay shows what the champion a user
    holds costs against the best model the loop made."""
    from refit.models.metrics import DEFAULT_METRIC, DIRECTION, task_metrics
    from refit.models.predict import Predictor
    from refit.registry.table import champion
    from refit.registry.versions import checkout

    settings = box.settings
    row = champion(box.engine)
    if row is None or feedback.empty:
        return None
    y = _targets(feedback, settings)
    keep = ~pd.isna(y)
    if keep.sum() == 0:
        return None
    rows = feedback[keep].reset_index(drop=True)
    metric = settings.gate_metric or DEFAULT_METRIC[settings.task]
    n_labels = 1 if settings.task == "regression" else len(settings.labels)
    truth = y[keep].astype(float if settings.task == "regression" else int)
    trained = [a["version"] for a in box.attempts if a.get("version") and a["outcome"] != "failed"]
    scores = {}
    for version in dict.fromkeys([row["version"], *trained]):
        if version not in box._predictors:
            try:
                box._predictors[version] = Predictor(checkout(settings, version))
            except Exception:  # a challenger's files the store lost (a chaos fault): the champion's must load
                if version == row["version"]:
                    raise
                continue
        predictor = box._predictors[version]
        names = [name for name in predictor.feature_names if name in rows]  # behaviour features, when it reads them
        prediction = predictor.predict(rows["text"].astype(str).tolist(), rows[names] if names else None)
        scores[version] = task_metrics(settings.task, truth, prediction, n_labels)[metric]
    best = max(scores, key=lambda v: scores[v] if DIRECTION[metric] else -scores[v])
    return {
        "metric": metric,
        "value": scores[row["version"]],
        "rows": int(keep.sum()),
        "champion": row["version"],
        "scores": scores,
        "best": scores[best],
        "best_version": best,
    }


def _targets(feedback: pd.DataFrame, settings) -> np.ndarray:
    if settings.task == "regression":
        if "satisfaction" in feedback:
            return pd.to_numeric(feedback["satisfaction"], errors="coerce").to_numpy()
        if "rating" in feedback:
            rating = pd.to_numeric(feedback["rating"], errors="coerce").to_numpy()
            return (rating - settings.rating_min) / (settings.rating_max - settings.rating_min)
    elif "label" in feedback:
        index = {name: i for i, name in enumerate(settings.labels)}
        return feedback["label"].map(index).to_numpy(dtype=float)
    return np.full(len(feedback), np.nan)


def deliver(box: Sandbox, step: Step, copy: int = 0) -> dict:
    """Ingest a step's feedback through refit's ingest (a CSV file, as a team would deliver it)."""
    from refit.data.ingest import ingest_file
    from refit.data.validate import IngestRules

    folder = Path(box.settings.work_dir) / "deliveries"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step-{step.index:04d}.csv"
    if copy == 0 or not path.exists():
        frame = step.feedback.copy()
        frame["created_at"] = frame["created_at"].map(lambda t: t.isoformat())
        frame.to_csv(path, index=False)
    summary = ingest_file(box.engine, path, IngestRules.from_settings(box.settings), now=step.end)
    if "feedback_id" in step.feedback:
        box.delivered.update(str(v) for v in step.feedback["feedback_id"] if str(v))
    return summary.as_dict()
