"""One step of a backtest for one policy: online quality, delivery, the real ``retrain`` flow on
the sandbox's settings and the simulated clock, and the invariants.

The flow is the one ``refit run`` and the deployments run (approval, notifications, artifacts and
its failure hook included). It loads the sandbox's settings through
:func:`refit.core.settings.use_settings` and dates its drift check at the step's end (``as_of``).
``never`` and ``schedule`` policies decide outside the flow and call it with ``force=True`` when
they retrain; ``drift`` policies call it with ``force=False`` and the flow's drift check decides.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

from sqlalchemy import text

from refit.core.errors import one_line
from refit.core.settings import use_settings
from refit.sim.invariants import FAILED, check_invariants
from refit.sim.sandbox import Sandbox, deliver, online_quality
from refit.sim.stream import Step

DECIDED = ("promoted", "rejected", "superseded")


class NoFaults:
    """The hooks a replay calls; :class:`refit.sim.faults.Chaos` injects faults through them.

    Faults act on the real flow from outside it: the network to the store, the database
    connections, the training process. None of these hooks sees inside a run.
    """

    def sandbox_overrides(self) -> dict:
        """Settings every sandbox gets (e.g. training in a child process, so that it can be killed)."""
        return {}

    def deliveries(self, box: Sandbox, step: Step) -> int:
        """How many times the step's feedback file is delivered."""
        return 1

    def triggers(self, box: Sandbox, step: Step) -> int:
        """How many times the loop is triggered in the step."""
        return 1

    def cycle(self, box: Sandbox, step: Step):
        """A context around one run of the flow, in which faults are armed."""
        return nullcontext()

    def after_step(self, box: Sandbox, step: Step) -> None:
        pass

    def injected(self, box: Sandbox, step: Step) -> list[str]:
        """The faults that fired in the step."""
        return []


def scheduled(box: Sandbox, step: Step, trigger: int) -> bool:
    """Whether a ``never`` or ``schedule`` policy retrains now (the first model always is)."""
    from refit.registry.table import champion

    if champion(box.engine) is None:
        return True
    return box.policy.kind == "schedule" and trigger == 0 and step.index % box.policy.every == 0


class _Undelivered(logging.Handler):
    """Counts the failure notices :mod:`refit.notify` could not deliver during a run."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("notification failure not"):
            self.count += 1


@contextmanager
def _watch_alerts():
    handler = _Undelivered()
    logger = logging.getLogger("refit.notify")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


def _latest_report_id(box: Sandbox) -> int:
    with box.engine.connect() as conn:
        return conn.execute(text("SELECT coalesce(max(id), 0) FROM drift_reports")).scalar()


def _checkpoints(box: Sandbox) -> set[str]:
    folder = Path(box.settings.work_dir) / "checkpoints"
    return {p.name for p in folder.iterdir() if not p.name.endswith("-members")} if folder.is_dir() else set()


def _drift(summary: dict | None) -> dict | None:
    """The part of a drift check's summary a step records."""
    if not summary:
        return None
    return {
        "decision": summary["decision"],
        "drift_share": summary.get("drift_share"),
        "drifted": summary.get("drifted_columns"),
        "report_id": summary.get("report_id"),
    }


def run_cycle(box: Sandbox, step: Step, faults: NoFaults, trigger: int = 0) -> dict:
    """One run of the ``retrain`` flow for the sandbox's policy, on the simulated clock.

    Returns:
        The cycle's record: ``outcome`` is ``no_new_data``, ``no_retrain``, ``promoted``,
        ``rejected``, ``superseded`` or ``failed`` (with the error, and whether the flow's
        failure hook delivered the alert).
    """
    from refit.flows.retrain import retrain

    settings, policy = box.settings, box.policy
    cycle: dict = {"trigger": trigger}
    if policy.kind != "drift" and not scheduled(box, step, trigger):
        return {**cycle, "outcome": "no_retrain"}
    reports, checkpoints = _latest_report_id(box), _checkpoints(box)
    started = time.perf_counter()
    with use_settings(settings), _watch_alerts() as undelivered, faults.cycle(box, step):
        state = retrain(force=policy.kind != "drift", as_of=step.end, return_state=True)
    seconds = round(time.perf_counter() - started, 2)
    if state.is_completed():
        return _completed(box, step, trigger, state.result(), cycle, seconds)
    return _failed(box, step, trigger, state, cycle, undelivered.count, reports, checkpoints)


def _completed(box: Sandbox, step: Step, trigger: int, summary: dict, cycle: dict, seconds: float) -> dict:
    """The record of a cycle whose flow run completed; a decided retrain joins the box's attempts."""
    snapshot = summary.get("snapshot") or {}
    drift = _drift(summary.get("drift")) if box.policy.kind == "drift" else None
    cycle.update(snapshot=snapshot.get("id"), drift=drift)
    outcome = summary["outcome"]
    if outcome in DECIDED:
        box.attempts.append({"step": step.index, "trigger": trigger, "version": summary["version"], "outcome": outcome})
        cycle.update(
            retrain=True,
            version=summary["version"],
            train_seconds=summary.get("train_seconds", seconds),
            train_samples=summary.get("train_samples", 0),
            gate=summary["gate"]["reason"],
            improvement=summary["gate"]["improvement"],
        )
    return {**cycle, "outcome": outcome}


def _failed(
    box: Sandbox, step: Step, trigger: int, state, cycle: dict, alerts_missed: int, reports: int, checkpoints: set
) -> dict:
    """The record of a cycle whose flow run failed: Prefect ran its on_failure hook, which alerts;
    record what the replay can see: the drift report it wrote after ``reports``, the checkpoint it
    left beside ``checkpoints``."""
    from refit.notify.delivery import targets

    error = state.result(raise_on_failure=False)
    error = one_line(error) if isinstance(error, BaseException) else (state.message or "unknown error")
    alerting = bool(targets(box.settings))  # read once: a block target is a Prefect API call
    alerted = alerting and alerts_missed == 0
    with box.engine.connect() as conn:
        report = conn.execute(
            text("SELECT id, decision, drift_share FROM drift_reports WHERE id > :r ORDER BY id DESC LIMIT 1"),
            {"r": reports},
        ).first()
    if report is not None and box.policy.kind == "drift":
        cycle["drift"] = {"decision": report.decision, "drift_share": report.drift_share, "report_id": report.id}
    if report is not None and report.decision == "retrain":  # it failed after deciding to retrain
        new = sorted(_checkpoints(box) - checkpoints)
        version = new[-1] if new else None
        box.attempts.append(
            {"step": step.index, "trigger": trigger, "version": version, "outcome": FAILED, "error": error,
             "alerted": alerted or not alerting}
        )  # fmt: skip
        cycle.update(retrain=True, version=version)
    return {**cycle, "outcome": FAILED, "error": error, "alerted": alerted}


def run_step(box: Sandbox, step: Step, faults: NoFaults, devset_every: int | None = None) -> dict:
    """Online quality, delivery, the loop's cycles and the invariants for one step of one policy.

    Args:
        box: the policy's sandbox.
        step: the step: its window and its feedback.
        faults: the fault injector.
        devset_every: refresh the gate's dev set every that many steps, as a scheduled
            ``refit devset refresh`` would (the first dev set is made by the first gate).

    Returns:
        The step's record.
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
    if copies:
        record["cycles"] = [run_cycle(box, step, faults, trigger) for trigger in range(faults.triggers(box, step))]
    else:  # nothing new: a forced run would retrain on the old snapshot, which the old replay never did
        record["cycles"] = [{"trigger": 0, "outcome": "no_new_data"}]
    faults.after_step(box, step)
    record["faults"] = faults.injected(box, step)
    record["violations"] = check_invariants(box)
    record["seconds"] = round(time.perf_counter() - started, 2)
    return record
