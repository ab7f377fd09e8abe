"""``refit simulate``: backtest retraining policies by replaying a feedback stream through the
real loop on a simulated clock.

Each policy gets its own sandbox: a Postgres schema (the same migrations, applied there through
``search_path``), its own store prefix and work folder. For every step (a day or a week of
feedback, by feedback time) and every policy:

1. the then-champion scores the step's labelled feedback before it is revealed: the **online
   quality** a user would have seen;
2. the step's feedback is ingested (a CSV through ``refit ingest``'s code path);
3. the loop runs as ``flows/retrain.py`` wires it, from the same Prefect tasks (their retries and
   the publish transaction's rollback included): pull, then the policy's decision (the real
   drift check, with its confirmation and cooldown on the simulated clock, for drift policies),
   then train, gate, upload and record;
4. the invariants are checked (:func:`check_invariants`).

Policies: ``never`` (one first model, then never again), ``schedule:K`` (every K steps),
``drift`` (whenever the drift check says retrain), ``drift:N/M[:COOLDOWN]`` (drift seen in N of
the last M checks, and no retrain within the cooldown, e.g. ``drift:2/3:14d``).

Faults are injected by :mod:`refit.chaos` through the hooks a :class:`Sandbox` exposes.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
from sqlalchemy import Engine, text

from refit.core.errors import InputError

SCENARIOS = ("steady", "gradual", "sudden", "seasonal")
DEFAULT_START = datetime(2025, 1, 6, tzinfo=timezone.utc)
# Training and drift sizes for the tiny model: a year of weekly steps in minutes on 2 cores.
# Settings an operator set explicitly (REFIT_* variables) win over these.
FAST_SETTINGS = {
    "epochs": 3,
    "batch_size": 32,
    "learning_rate": 1e-3,
    "max_length": 64,
    "patience": 1,
    "num_threads": 1,
    "max_train_rows": 3000,
    "drift_min_rows": 50,
    "drift_sample_cap": 600,
    "drift_embedding_rows": 300,
    "drift_embeddings_picture": False,
    "drift_performance_rows": 1000,
    "drift_bootstrap_rounds": 100,
    "gate_resamples": 300,
    "gate_first_baselines": ["trivial"],
}
FAILED = "failed"


# --- the stream ------------------------------------------------------------------------------


def shifted_share(scenario: str, step: int, steps: int) -> float:
    """The share of a step's feedback drawn from the shifted regime.

    ``steady``: none. ``sudden``: all of it from 40% of the way in. ``gradual``: a linear ramp
    from a quarter to three quarters of the way. ``seasonal``: a quarterly season that peaks at
    80% shifted.
    """
    if scenario not in SCENARIOS:
        raise InputError(f"unknown scenario {scenario!r}; expected one of {', '.join(SCENARIOS)}")
    position = step / max(steps, 1)
    if scenario == "steady":
        return 0.0
    if scenario == "sudden":
        return 1.0 if position >= 0.4 else 0.0
    if scenario == "gradual":
        return float(np.clip((position - 0.25) / 0.5, 0.0, 1.0))
    period = max(steps / 4, 2)  # seasonal: four seasons over the run
    return 0.4 * (1 - math.cos(2 * math.pi * step / period))


def scenario_stream(
    scenario: str,
    rows: int = 50_000,
    steps: int = 52,
    step_days: float = 7.0,
    start: datetime = DEFAULT_START,
    seed: int = 0,
    noise: float = 0.1,
) -> pd.DataFrame:
    """A timestamped feedback stream from the demo's generator (:mod:`refit.synth`).

    Args:
        scenario: one of :data:`SCENARIOS` (see :func:`shifted_share`).
        rows: rows over the whole stream, spread evenly over the steps.
        steps: how many steps of ``step_days`` the stream covers.
        start: when the first step begins.
        seed: the same seed gives the same stream.
        noise: share of ratings shuffled among themselves (real satisfaction is not fixed by the
            words, as it is in the generator).
    """
    from refit.ops.synth import generate_feedback
    from refit.sim.scenarios import _shuffle_ratings

    rng = np.random.default_rng(seed)
    frames = []
    per_step = np.full(steps, rows // steps)
    per_step[: rows % steps] += 1
    for step, n in enumerate(per_step):
        shifted = int(round(n * shifted_share(scenario, step, steps)))
        part = generate_feedback(n - shifted, seed=seed * 10_000 + step, id_prefix=f"{scenario}-b{step}")
        part += generate_feedback(shifted, seed=seed * 10_000 + step, shifted=True, id_prefix=f"{scenario}-s{step}")
        part = _shuffle_ratings(part, noise, seed * 10_000 + step) if noise and part else part
        offsets = np.sort(rng.uniform(0, step_days * 86_400, len(part)))
        begin = start + timedelta(days=step * step_days)
        for row, offset in zip(part, offsets, strict=True):
            row["created_at"] = (begin + timedelta(seconds=float(offset))).isoformat()
        frames.append(pd.DataFrame(part))
    frame = pd.concat(frames, ignore_index=True)
    frame["created_at"] = pd.to_datetime(frame["created_at"], utc=True)
    return frame.sort_values("created_at", kind="stable").reset_index(drop=True)


def load_stream(path: Path) -> pd.DataFrame:
    """A feedback file (CSV, JSONL or Parquet) with a ``created_at`` column, in feedback-time order."""
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            frame = pd.read_parquet(path)
        elif suffix in (".jsonl", ".ndjson", ".json"):
            frame = pd.read_json(path, lines=True, dtype=False)
        else:
            frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read {path}: {exc}") from None
    if "created_at" not in frame:
        raise InputError(f"{path} has no created_at column: a simulation replays feedback by its time")
    times = pd.to_datetime(frame["created_at"], utc=True, errors="coerce", format="mixed")
    if times.isna().all():
        raise InputError(f"{path}: no parseable created_at")
    frame = frame.assign(created_at=times).dropna(subset=["created_at"])
    return frame.sort_values("created_at", kind="stable").reset_index(drop=True)


@dataclass
class Step:
    index: int
    start: datetime
    end: datetime
    feedback: pd.DataFrame


def steps_of(stream: pd.DataFrame, step_days: float, start: datetime | None = None, warmup: int = 1) -> list[Step]:
    """The stream cut into consecutive windows of ``step_days`` of feedback time (empty ones kept).

    ``warmup``: the first that many windows are one step 0, the history a first champion is
    trained on before the replay (so every policy starts from the same, realistic champion).
    """
    begin = pd.Timestamp(start or stream["created_at"].min()).floor("D")
    width = pd.Timedelta(days=step_days)
    index = ((stream["created_at"] - begin) // width).astype(int)
    steps = []
    for i in range(int(index.max()) + 1 if len(stream) else 0):
        steps.append(
            Step(
                i,
                (begin + i * width).to_pydatetime(),
                (begin + (i + 1) * width).to_pydatetime(),
                stream[index == i].reset_index(drop=True),
            )
        )
    if warmup > 1 and len(steps) > warmup:
        head = steps[:warmup]
        history = pd.concat([s.feedback for s in head], ignore_index=True)
        steps = [Step(0, head[0].start, head[-1].end, history), *steps[warmup:]]
    return steps


# --- policies -----------------------------------------------------------------------------------

_POLICY = re.compile(r"^(never|schedule|drift)(?::(.*))?$")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([hdw]?)$")


@dataclass(frozen=True)
class Policy:
    """When to retrain: never, every K steps, or on drift (with N-of-M confirmation and cooldown)."""

    name: str
    kind: str  # never | schedule | drift
    every: int = 0
    confirm_n: int = 1
    confirm_m: int = 1
    cooldown_hours: float = 0.0
    window_days: float | None = None  # None: the settings' REFIT_DRIFT_WINDOW_DAYS

    @classmethod
    def parse(cls, spec: str) -> Policy:
        """``never``, ``schedule:K``, ``drift`` or ``drift:N/M[:COOLDOWN]`` (cooldown in hours, or
        with a unit: ``36h``, ``14d``, ``2w``); a drift policy may end in ``@WINDOW`` (``drift@14d``):
        its current window is the last WINDOW of feedback instead of all since the champion."""
        spec, _, window = spec.strip().partition("@")
        if window:
            days = _hours(window, spec) / 24
            if not spec.startswith("drift"):
                raise InputError(f"policy {spec}@{window}: only drift policies have a window")
            policy = cls.parse(spec)
            return replace(policy, name=f"{policy.name}-w{days:g}d", window_days=days)
        match = _POLICY.match(spec.strip())
        if not match:
            raise InputError(f"unknown policy {spec!r}: expected never, schedule:K, drift or drift:N/M[:COOLDOWN]")
        kind, arg = match.group(1), match.group(2)
        if kind == "never":
            if arg:
                raise InputError(f"policy {spec!r}: never takes no argument")
            return cls("never", "never")
        if kind == "schedule":
            every = int(arg) if arg and arg.isdigit() else 0
            if every < 1:
                raise InputError(f"policy {spec!r}: expected schedule:K with K >= 1 steps")
            return cls(f"schedule-{every}", "schedule", every=every)
        if not arg:
            return cls("drift", "drift")
        parts = arg.split(":")
        n_m = parts[0].split("/")
        if len(n_m) != 2 or not all(p.isdigit() for p in n_m) or not 1 <= int(n_m[0]) <= int(n_m[1]):
            raise InputError(f"policy {spec!r}: expected drift:N/M with 1 <= N <= M")
        cooldown = 0.0
        if len(parts) > 2:
            raise InputError(f"policy {spec!r}: expected drift:N/M[:COOLDOWN]")
        if len(parts) == 2:
            cooldown = _hours(parts[1], spec)
        n, m = int(n_m[0]), int(n_m[1])
        name = f"drift-{n}of{m}" + (f"-cd{cooldown:g}h" if cooldown else "")
        return cls(name, "drift", confirm_n=n, confirm_m=m, cooldown_hours=cooldown)

    def settings_overrides(self) -> dict:
        overrides = {
            "drift_confirm_n": self.confirm_n,
            "drift_confirm_m": self.confirm_m,
            "drift_cooldown_hours": self.cooldown_hours,
        }
        if self.window_days is not None:
            overrides["drift_window_days"] = self.window_days
        return overrides


def _hours(duration: str, spec: str) -> float:
    match = _DURATION.match(duration)
    if not match:
        raise InputError(f"policy {spec!r}: {duration!r} is not a duration like 36h, 14d or 2w")
    return float(match.group(1)) * {"": 1, "h": 1, "d": 24, "w": 168}[match.group(2)]


# --- one sandbox per policy ---------------------------------------------------------------------


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
    settings: object  # refit.settings.Settings
    schema: str
    admin: Engine  # the same database without the search path, for schema DDL and fault injection
    delivered: set[str] = field(default_factory=set)
    attempts: list[dict] = field(default_factory=list)
    verified: dict = field(default_factory=dict)
    _predictor: tuple | None = None

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


def open_sandbox(base, policy: Policy, run_id: str, work_dir: Path) -> Sandbox:
    """Create a fresh schema with refit's migrations, a store prefix and a work folder for ``policy``."""
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
        }
    )
    upgrade(get_engine(settings.database_url))
    return Sandbox(policy, settings, schema, admin)


def drop_sandbox(box: Sandbox) -> None:
    """Drop the sandbox's schema (its store objects stay, for inspection)."""
    box.engine.dispose()
    with box.admin.begin() as conn:
        conn.execute(text(f'DROP SCHEMA IF EXISTS "{box.schema}" CASCADE'))


# --- fault hooks ---------------------------------------------------------------------------------


class NoFaults:
    """The hooks a replay calls; :class:`refit.chaos.Chaos` injects faults through them."""

    def deliveries(self, box: Sandbox, step: Step) -> int:
        return 1

    def triggers(self, box: Sandbox, step: Step) -> int:
        return 1

    def phase(self, box: Sandbox, step: Step, name: str):
        return nullcontext()

    def train(self, box: Sandbox, step: Step, snapshot, champion):
        return None  # no fault: train in this process

    def after_step(self, box: Sandbox, step: Step) -> None:
        pass

    def injected(self, box: Sandbox, step: Step) -> list[str]:
        return []


# --- the replay ----------------------------------------------------------------------------------


def online_quality(box: Sandbox, feedback: pd.DataFrame) -> dict | None:
    """The champion's metric on a step's labelled feedback, before the loop sees it (None before
    the first champion, or with no labelled rows)."""
    from refit.models.metrics import DEFAULT_METRIC, task_metrics
    from refit.models.predict import Predictor
    from refit.registry import champion, checkout

    settings = box.settings
    row = champion(box.engine)
    if row is None or feedback.empty:
        return None
    y = _targets(feedback, settings)
    keep = ~pd.isna(y)
    if keep.sum() == 0:
        return None
    if box._predictor is None or box._predictor[0] != row["version"]:
        box._predictor = (row["version"], Predictor(checkout(settings, row["version"])))
    predictor = box._predictor[1]
    rows = feedback[keep].reset_index(drop=True)
    names = [name for name in predictor.feature_names if name in rows]  # behaviour features, when the model reads them
    prediction = predictor.predict(rows["text"].astype(str).tolist(), rows[names] if names else None)
    metric = settings.gate_metric or DEFAULT_METRIC[settings.task]
    n_labels = 1 if settings.task == "regression" else len(settings.labels)
    truth = y[keep].astype(float if settings.task == "regression" else int)
    value = task_metrics(settings.task, truth, prediction, n_labels)[metric]
    return {"metric": metric, "value": value, "rows": int(keep.sum()), "champion": row["version"]}


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
    from refit.data.ingest import IngestRules, ingest_file

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


def run_cycle(box: Sandbox, step: Step, faults: NoFaults, trigger: int = 0) -> dict:
    """One cycle of the loop for the sandbox's policy, as ``flows/retrain.py`` wires it.

    Returns the cycle's summary: ``outcome`` is ``no_new_data``, ``no_retrain``, ``promoted``,
    ``rejected``, ``superseded`` or ``failed`` (with the error and whether the alert went out).
    """
    from prefect.transactions import transaction

    from refit.data.snapshots import latest_snapshot
    from refit.registry import champion as current_champion
    from refit.tasks.data import preflight, pull_snapshot
    from refit.tasks.gate import gate_challenger, write_model_card
    from refit.tasks.publish import record, upload
    from refit.tasks.training import train_challenger

    settings, policy = box.settings, box.policy
    cycle: dict = {"trigger": trigger}
    attempt = None
    try:
        with faults.phase(box, step, "pull"):
            preflight(settings)
            snapshot = pull_snapshot(settings)
        if snapshot is None and trigger > 0:
            snapshot = latest_snapshot(box.engine)  # a repeated trigger re-checks the latest snapshot
        if snapshot is None:
            return {**cycle, "outcome": "no_new_data"}
        champion = current_champion(box.engine)
        retrain, drift = decide(box, step, snapshot, champion, trigger)
        cycle.update(snapshot=snapshot.id, drift=drift)
        if not retrain:
            return {**cycle, "outcome": "no_retrain"}

        attempt = {"step": step.index, "trigger": trigger, "version": None, "outcome": None}
        box.attempts.append(attempt)
        cycle["retrain"] = True
        started = time.perf_counter()
        with faults.phase(box, step, "train"):
            challenger = faults.train(box, step, snapshot, champion)
            if challenger is None:
                challenger = train_challenger(settings, snapshot, champion)
        attempt["version"] = challenger.version
        cycle.update(
            version=challenger.version,
            train_seconds=round(time.perf_counter() - started, 2),
            train_samples=challenger.train_rows * challenger.epochs_run,
        )
        decision = gate_challenger(settings, snapshot, challenger, champion)
        write_model_card(challenger, decision, snapshot)
        with faults.phase(box, step, "publish"), transaction():
            published = upload(settings, challenger)
            with faults.phase(box, step, "promote"):
                outcome = record(settings, published, snapshot, challenger, decision, champion)
        attempt["outcome"] = outcome
        cycle.update(outcome=outcome, gate=decision.reason, improvement=decision.improvement)
        return cycle
    except Exception as exc:  # a failed cycle is an outcome of the replay, reported and alerted
        from refit import notify
        from refit.cli import one_line

        error = one_line(exc)
        url = settings.slack_webhook_url.get_secret_value() if settings.slack_webhook_url else None
        alerted = notify.post(url, notify.failure_message("simulate", f"{policy.name} step {step.index}", error))
        if attempt is not None:
            attempt.update(outcome=FAILED, error=error, alerted=alerted or url is None)
        return {**cycle, "outcome": FAILED, "error": error, "alerted": alerted}


def decide(box: Sandbox, step: Step, snapshot, champion: dict | None, trigger: int) -> tuple[bool, dict | None]:
    """Whether the policy retrains now, and the drift check's summary when one ran."""
    from refit.drift import RETRAIN, DriftPolicy, DriftResult, run_drift_check

    settings, policy = box.settings, box.policy
    if champion is None:
        if policy.kind != "drift":
            return True, None
        result = DriftResult(RETRAIN, ["no champion yet: the first model is trained unconditionally"])
        result.current_rows = snapshot.total_rows
        result.policy = DriftPolicy.from_settings(settings).as_dict()
        run_drift_check(settings, None, snapshot.watermark_to, snapshot.id, now=step.end, result=result)
        return True, None
    if policy.kind == "never":
        return False, None
    if policy.kind == "schedule":
        return trigger == 0 and step.index % policy.every == 0, None
    summary = run_drift_check(settings, champion, snapshot.watermark_to, snapshot.id, now=step.end, render=False)
    drift = {
        "decision": summary["decision"],
        "drift_share": summary["drift_share"],
        "drifted": summary["drifted_columns"],
        "report_id": summary["report_id"],
    }
    return summary["decision"] == RETRAIN, drift


def run_step(box: Sandbox, step: Step, faults: NoFaults, devset_every: int | None = None) -> dict:
    """Online quality, delivery, the loop's cycles and the invariants for one step of one policy.

    ``devset_every``: refresh the gate's dev set every that many steps, as a scheduled
    ``refit devset refresh`` would (the first dev set is made by the first gate).
    """
    from refit.data.devset import current_devset, refresh_devset
    from refit.data.snapshots import SplitConfig

    started = time.perf_counter()
    record = {"policy": box.policy.name, "step": step.index, "start": step.start.isoformat(),
              "end": step.end.isoformat(), "rows": len(step.feedback)}  # fmt: skip
    record["online"] = online_quality(box, step.feedback)
    copies = faults.deliveries(box, step) if len(step.feedback) else 0  # a quiet step delivers nothing
    record["deliveries"] = [deliver(box, step, copy) for copy in range(copies)]
    if devset_every and step.index % devset_every == 0 and current_devset(box.engine) is not None:
        devset = refresh_devset(box.engine, SplitConfig.from_settings(box.settings), f"simulate: step {step.index}")
        record["devset"] = {"version": devset.version, "rows": devset.rows}
    record["cycles"] = [run_cycle(box, step, faults, trigger) for trigger in range(faults.triggers(box, step))]
    faults.after_step(box, step)
    record["faults"] = faults.injected(box, step)
    record["violations"] = check_invariants(box)
    record["seconds"] = round(time.perf_counter() - started, 2)
    return record


def simulate(
    base,
    stream: pd.DataFrame,
    policies: list[Policy],
    step_days: float = 7.0,
    *,
    run_id: str | None = None,
    work_dir: Path | None = None,
    faults: NoFaults | None = None,
    devset_every: int | None = 4,
    warmup: int = 1,
    keep: bool = False,
    on_step: Callable[[dict], None] | None = None,
) -> dict:
    """Replay ``stream`` through the loop once per policy, each in its own sandbox.

    Args:
        base: refit's settings (database, store, training); each sandbox derives its own.
        stream: timestamped feedback (:func:`scenario_stream` or :func:`load_stream`).
        policies: the policies to compare.
        step_days: the step (1 for a day, 7 for a week).
        run_id: names the schemas and store prefixes (default: from the clock).
        work_dir: where deliveries and checkpoints go (default: the settings' work dir).
        faults: the fault injector (default: none).
        devset_every: refresh the gate's dev set every that many steps (None: never, as with no
            scheduled ``refit devset refresh``).
        warmup: steps of history the first champion is trained on (see :func:`steps_of`).
        keep: keep the sandboxes' schemas after the run.
        on_step: called with every step's record.

    Returns:
        ``{"steps": [...], "summary": {policy: {...}}, "table": markdown, ...}``.
    """
    faults = faults or NoFaults()
    run_id = run_id or datetime.now(timezone.utc).strftime("%m%d%H%M%S")
    work_dir = Path(work_dir or Path(base.work_dir) / "sim" / run_id)
    steps = steps_of(stream, step_days, warmup=warmup)
    started = time.perf_counter()
    records: list[dict] = []
    for policy in policies:
        box = open_sandbox(base, policy, run_id, work_dir)
        try:
            for step in steps:
                record = run_step(box, step, faults, devset_every)
                records.append(record)
                if on_step:
                    on_step(record)
        finally:
            if not keep:
                drop_sandbox(box)
    summary = {policy.name: summarize([r for r in records if r["policy"] == policy.name]) for policy in policies}
    return {
        "run_id": run_id,
        "steps": records,
        "summary": summary,
        "table": summary_table(summary),
        "seconds": round(time.perf_counter() - started, 1),
        "rows": len(stream),
        "step_days": step_days,
        "violations": sum(len(r["violations"]) for r in records),
    }


# --- reporting ----------------------------------------------------------------------------------


def summarize(records: list[dict]) -> dict:
    """One policy's table row from its step records."""
    from refit.models.metrics import DIRECTION

    cycles = [c for r in records for c in r["cycles"]]
    scored = [r["online"] for r in records if r["online"]]
    outcomes = [c["outcome"] for c in cycles if c.get("retrain")]
    row = {
        "retrains": len(outcomes),
        "promotions": outcomes.count("promoted"),
        "rejections": outcomes.count("rejected") + outcomes.count("superseded"),
        "failures": outcomes.count(FAILED),
        "train_seconds": round(sum(c.get("train_seconds", 0) for c in cycles), 1),
        "train_samples": int(sum(c.get("train_samples", 0) for c in cycles)),
        "violations": sum(len(r["violations"]) for r in records),
        "scored_steps": len(scored),
    }
    if scored:
        metric = scored[0]["metric"]
        values = np.array([s["value"] for s in scored])
        weights = np.array([s["rows"] for s in scored])
        higher = DIRECTION[metric]
        row.update(
            metric=metric,
            mean=float(values.mean()),
            worst=float(values.min() if higher else values.max()),
            weighted=float(np.average(values, weights=weights)),
        )
    return row


def summary_table(summary: dict) -> str:
    """The per-policy comparison as a markdown table."""
    metric = next((row["metric"] for row in summary.values() if "metric" in row), "metric")
    lines = [
        f"| policy | retrains | promoted | rejected | failed | mean online {metric} | worst | "
        f"volume-weighted | training (s) | training samples |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in summary.items():
        quality = [f"{row[k]:.4f}" if k in row else "-" for k in ("mean", "worst", "weighted")]
        lines.append(
            f"| {name} | {row['retrains']} | {row['promotions']} | {row['rejections']} | {row['failures']} | "
            f"{' | '.join(quality)} | {row['train_seconds']:.0f} | {row['train_samples']:,} |"
        )
    return "\n".join(lines)


def plot(result: dict, path: Path) -> Path:
    """Online quality per policy over time, with promotions marked, and the drift share of the
    drift policies' checks below it, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 6.5), sharex=True, height_ratios=[3, 1.3])
    metric = "metric"
    for i, name in enumerate(result["summary"]):
        records = [r for r in result["steps"] if r["policy"] == name]
        color = f"C{i}"
        xs = [pd.Timestamp(r["start"]) for r in records if r["online"]]  # scored as the step begins
        ys = [r["online"]["value"] for r in records if r["online"]]
        if ys:
            metric = records[-1]["online"]["metric"] if records[-1]["online"] else metric
        top.plot(xs, ys, color=color, label=name, linewidth=1.6)
        promoted = [pd.Timestamp(r["end"]) for r in records for c in r["cycles"] if c["outcome"] == "promoted"]
        rejected = [pd.Timestamp(r["end"]) for r in records for c in r["cycles"] if c["outcome"] == "rejected"]
        strip = top.get_xaxis_transform()  # x in data, y in axes units: one row of marks per policy
        top.scatter(promoted, [0.03 + 0.04 * i] * len(promoted), marker="^", color=color, s=36, transform=strip)
        top.scatter(rejected, [0.03 + 0.04 * i] * len(rejected), marker="x", color=color, s=30, transform=strip)
        drift = [(pd.Timestamp(r["end"]), c["drift"]["drift_share"]) for r in records for c in r["cycles"]
                 if c.get("drift") and c["drift"].get("drift_share") is not None and c["trigger"] == 0]  # fmt: skip
        if drift:
            bottom.plot([d[0] for d in drift], [d[1] for d in drift], color=color, marker=".", label=name)
    top.set_ylabel(f"online {metric} (champion, before the step)")
    top.set_title("refit simulate: online quality per policy (▲ promoted, × rejected)")
    top.legend(loc="upper left", fontsize=8)
    top.grid(alpha=0.3)
    bottom.set_ylabel("drift share")
    bottom.grid(alpha=0.3)
    if bottom.get_legend_handles_labels()[0]:
        bottom.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_outputs(result: dict, out_dir: Path) -> dict:
    """``steps.json`` (every step), ``summary.md`` (the table) and ``simulate.png`` in ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "steps.json").write_text(json.dumps(result, indent=1, default=str))
    (out_dir / "summary.md").write_text(result["table"] + "\n")
    png = plot(result, out_dir / "simulate.png")
    return {"json": str(out_dir / "steps.json"), "table": str(out_dir / "summary.md"), "plot": str(png)}


# --- invariants ----------------------------------------------------------------------------------


def check_invariants(box: Sandbox) -> list[str]:
    """Every invariant the loop must keep, checked against the sandbox's database and store.

    Returns:
        One line per violation (empty when all hold).
    """
    from refit.core.errors import StoreError

    engine, store, name = box.engine, box.store, box.settings.model_name
    try:
        return [
            *one_champion(engine, store, name),
            *champion_intact(engine, store, name, box.verified),
            *feedback_accounted(engine, box.delivered),
            *retrains_accounted(engine, store, name, box.attempts),
            *published_once(engine, store, name),
        ]
    except StoreError as exc:  # the store is away: the invariants cannot be read, which is itself reported
        return [f"invariants unreadable: {exc}"]


def one_champion(engine: Engine, store, model_name: str) -> list[str]:
    """Exactly one champion in the registry (none before a first promotion), the registry head
    agrees, and the store pointer names it with its manifest checksum."""
    from refit.registry import read_pointer

    with engine.connect() as conn:
        champions = conn.execute(
            text("SELECT version, manifest_sha256 FROM model_versions WHERE is_champion")
        ).all()  # fmt: skip
        head = conn.execute(text("SELECT champion FROM registry_head WHERE id = 1")).scalar()
        promoted = conn.execute(text("SELECT count(*) FROM promotion_log WHERE decision = 'promoted'")).scalar()
    problems = []
    if len(champions) > 1:
        problems.append(f"{len(champions)} champions in the registry: {', '.join(c.version for c in champions)}")
    if promoted and not champions:
        problems.append("versions were promoted but the registry has no champion")
    version = champions[0].version if champions else None
    if head != version:
        problems.append(f"registry_head names {head}, model_versions names {version}")
    try:
        pointer = read_pointer(store, model_name)
    except Exception as exc:
        return [*problems, f"the store pointer is unreadable: {exc}"]
    pointed = pointer.get("version") if pointer else None
    if pointed != version:
        problems.append(f"the store pointer names {pointed}, the registry's champion is {version}")
    elif pointer and pointer.get("manifest_sha256") != champions[0].manifest_sha256:
        problems.append(f"the store pointer's manifest checksum for {version} differs from the registry's")
    return problems


def champion_intact(engine: Engine, store, model_name: str, verified: dict | None = None) -> list[str]:
    """The champion's manifest in the store matches the registry's checksum, and every file
    matches the manifest (size and SHA-256 of the stored bytes). ``verified`` caches the ETags of
    files already hashed, so unchanged objects are not downloaded again."""
    import hashlib

    from refit.models.checkpoint import MANIFEST, manifest_digest
    from refit.registry import model_prefix

    with engine.connect() as conn:
        row = conn.execute(text("SELECT version, manifest_sha256 FROM model_versions WHERE is_champion")).first()
    if row is None:
        return []
    prefix = model_prefix(row.version, model_name)
    try:
        manifest = json.loads(store.get(f"{prefix}/{MANIFEST}"))
    except Exception as exc:
        return [f"champion {row.version}: manifest unreadable: {exc}"]
    if manifest_digest(manifest) != row.manifest_sha256:
        return [f"champion {row.version}: the stored manifest does not match the registry's checksum"]
    verified = {} if verified is None else verified
    problems = []
    for rel, entry in manifest["files"].items():
        key = f"{prefix}/{rel}"
        head = store.head(key)
        if head is None:
            problems.append(f"champion {row.version}: {rel} is missing from the store")
            continue
        if verified.get(key) == head.etag:
            continue
        if head.size != entry["bytes"] or hashlib.sha256(store.get(key)).hexdigest() != entry["sha256"]:
            problems.append(f"champion {row.version}: {rel} in the store does not match its manifest")
            continue
        verified[key] = head.etag
    return problems


def feedback_accounted(engine: Engine, delivered: set[str]) -> list[str]:
    """Every delivered feedback id is in the feedback table exactly once, or in quarantine."""
    with engine.connect() as conn:
        counts = dict(conn.execute(text("SELECT feedback_id, count(*) FROM feedback GROUP BY feedback_id")).all())
        quarantined = set(
            conn.execute(text("SELECT DISTINCT feedback_id FROM quarantine WHERE feedback_id IS NOT NULL")).scalars()
        )
    problems = []
    twice = [fid for fid, n in counts.items() if n > 1]
    if twice:
        problems.append(f"{len(twice)} feedback id(s) stored more than once, e.g. {twice[0]}")
    lost = [fid for fid in delivered if fid not in counts and fid not in quarantined]
    if lost:
        problems.append(f"{len(lost)} delivered feedback row(s) neither stored nor quarantined, e.g. {sorted(lost)[0]}")
    return problems


def retrains_accounted(engine: Engine, store, model_name: str, attempts: list[dict]) -> list[str]:
    """Every retrain was promoted, rejected (or superseded) with one registry row and one log
    line, or failed cleanly: an alert went out and no trace of it is published or registered."""
    from refit.models.checkpoint import MANIFEST
    from refit.registry import model_prefix

    with engine.connect() as conn:
        status = dict(conn.execute(text("SELECT version, status FROM model_versions")).all())
        logged = dict(
            conn.execute(
                text(
                    "SELECT challenger_version, count(*) FROM promotion_log"
                    " WHERE decision IN ('promoted', 'rejected', 'superseded') GROUP BY challenger_version"
                )
            ).all()
        )
    problems = []
    for attempt in attempts:
        version, outcome = attempt.get("version"), attempt.get("outcome")
        where = f"retrain at step {attempt['step']}" + (f" ({version})" if version else "")
        if outcome in ("promoted", "rejected", "superseded"):
            if version not in status:
                problems.append(f"{where}: {outcome} but not in the registry")
            elif logged.get(version) != 1:
                problems.append(f"{where}: {logged.get(version, 0)} promotion log lines, expected 1")
        elif outcome == FAILED:
            if not attempt.get("alerted"):
                problems.append(f"{where}: failed without an alert")
            if version and version in status:
                problems.append(f"{where}: failed, yet registered as {status[version]}")
            if version and store.exists(f"{model_prefix(version, model_name)}/{MANIFEST}"):
                problems.append(f"{where}: failed, yet its version is sealed in the store")
        else:
            problems.append(f"{where}: no outcome (still running?)")
    return problems


def published_once(engine: Engine, store, model_name: str) -> list[str]:
    """No version is published twice: one decision per version in the log, and every sealed
    version in the store is registered with the manifest it has there."""
    from refit.models.checkpoint import MANIFEST, manifest_digest
    from refit.registry import model_prefix

    with engine.connect() as conn:
        twice = conn.execute(
            text(
                "SELECT challenger_version FROM promotion_log WHERE decision IN ('promoted', 'rejected', 'superseded')"
                " GROUP BY challenger_version HAVING count(*) > 1"
            )
        ).scalars().all()  # fmt: skip
        registered = dict(
            conn.execute(text("SELECT version, manifest_sha256 FROM model_versions WHERE status <> 'archived'")).all()
        )
    problems = [f"{version} was decided more than once" for version in twice]
    root = f"{model_prefix('', model_name)}"
    sealed = {key[len(root) :].split("/")[0] for key in store.list(root) if key.endswith(f"/{MANIFEST}")}
    for version in sorted(sealed - set(registered)):
        problems.append(f"{version} is sealed in the store but not in the registry")
    for version in sorted(set(registered) & sealed):
        manifest = json.loads(store.get(f"{model_prefix(version, model_name)}/{MANIFEST}"))
        if manifest_digest(manifest) != registered[version]:
            problems.append(f"{version}: the stored manifest differs from the one registered")
    for version in sorted(set(registered) - sealed):
        problems.append(f"{version} is registered but has no manifest in the store")
    return problems


def fast_overrides(settings) -> dict:
    """:data:`FAST_SETTINGS` less what the operator set explicitly."""
    return {k: v for k, v in FAST_SETTINGS.items() if k not in settings.model_fields_set}


def tiny_model(folder: Path) -> Path:
    """A random 2-layer BERT on the packaged model's vocabulary (as the tests use), built once
    into ``folder``: training it takes seconds, so a year of steps replays in minutes."""
    from refit.sim.scenarios import tiny_bert

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        tiny_bert(folder)
    return folder


def backtest(
    settings,
    policies: list[Policy],
    out_dir: Path,
    *,
    feedback: Path | None = None,
    scenario: str = "sudden",
    rows: int = 50_000,
    steps: int = 52,
    step_days: float = 7.0,
    seed: int = 0,
    real_model: bool = False,
    devset_every: int | None = 4,
    warmup: int = 1,
    faults_for: Callable[[int], NoFaults] | None = None,
    keep: bool = False,
    on_step: Callable[[dict], None] | None = None,
) -> dict:
    """What ``refit simulate`` runs: build the stream (a file, or a scenario of the demo's
    generator), pick the model (the tiny BERT unless ``real_model``), replay, and write the table,
    the JSON of every step and the plot into ``out_dir``.

    Args:
        faults_for: given the number of steps, the fault injector (``--chaos``).
    """
    settings = settings.model_copy(update=fast_overrides(settings))
    if not real_model:
        settings = settings.model_copy(update={"base_model": str(tiny_model(Path(settings.work_dir) / "tiny-bert"))})
    if feedback is not None:
        stream = load_stream(feedback)
    else:
        stream = scenario_stream(scenario, rows=rows, steps=steps, step_days=step_days, seed=seed)
    faults = faults_for(len(steps_of(stream, step_days, warmup=warmup))) if faults_for else None
    result = simulate(
        settings, stream, policies, step_days, faults=faults, devset_every=devset_every, warmup=warmup, keep=keep,
        on_step=on_step,
    )  # fmt: skip
    result["scenario"] = None if feedback is not None else scenario
    result["model"] = "packaged" if real_model else "tiny"
    if faults is not None and hasattr(faults, "report"):
        result["chaos"] = faults.report([p.name for p in policies])
    result["outputs"] = write_outputs(result, out_dir)
    return result
