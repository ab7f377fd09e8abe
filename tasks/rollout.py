"""The live rollout as tasks: start it from a retrain run, and one step of the rollout flow (read
the live rollout, gather its evidence, decide, act, show it in the UI)."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE
from prefect.runtime import flow_run

from refit.core.settings import Settings
from refit.data.db import engine_for
from refit.data.snapshots import Snapshot
from refit.gate.rule import GateDecision, GatePolicy
from refit.registry.store import store_for
from refit.registry.versions import Published
from refit.rollout import stages
from refit.rollout.decision import RolloutDecision, RolloutPolicy, decide
from refit.rollout.evidence import Evidence, gather_evidence, live_rollout
from refit.rollout.report import evidence_markdown, step_summary
from refit.tasks.data import IO_RETRIES
from refit.tasks.publish import config_hash, recorded_metrics, retried_in_task, run_actor
from refit.training.challenger import Challenger

ARTIFACT_KEY = "rollout-evidence"


# Like record-decision: inside the publish transaction a failed Prefect attempt would withdraw the
# upload even when a retry then succeeds, so a lost connection is retried inside the task.
@task(name="start-rollout", cache_policy=NONE, timeout_seconds=300)
def start_rollout(
    settings: Settings,
    published: Published,
    snapshot: Snapshot,
    challenger: Challenger,
    decision: GateDecision,
    champion: dict,
) -> dict:
    """Record a challenger that passed the gate as the candidate and start its live rollout in
    REFIT_ROLLOUT's stage (a rollout already live is superseded). The champion does not change.

    Returns:
        ``{"outcome": "rollout" or "superseded", "rollout_id", "stage", "superseded_rollout"}``.
    """
    started = retried_in_task(
        lambda: stages.start_rollout(
            engine_for(settings),
            store_for(settings),
            published,
            snapshot_id=snapshot.id,
            task=settings.task,
            metrics=recorded_metrics(challenger, decision),
            decision=decision,
            champion_version=champion["version"],
            stage=settings.rollout,
            canary_share=settings.rollout_canary_share,
            shadow_share=settings.rollout_shadow_share,
            config_hash=config_hash(challenger.folder),
            flow_run_id=flow_run.get_id(),
            actor=run_actor(),
            model_name=settings.model_name,
        ),
        f"starting the rollout of {published.version}",
    )
    get_run_logger().info(
        "%s: %s (rollout %s, %s)", published.version, started["outcome"], started["rollout_id"], started["stage"]
    )
    return started


@task(name="read-live-rollout", cache_policy=NONE, timeout_seconds=120, **IO_RETRIES)
def read_live_rollout(settings: Settings) -> dict | None:
    """The live rollout, or None; without one, a candidate pointer left behind is removed."""
    engine = engine_for(settings)
    rollout = live_rollout(engine)
    if rollout is None:
        stages.tidy_candidate(engine, store_for(settings), settings.model_name)
        get_run_logger().info("no live rollout")
    return rollout


@task(name="gather-live-evidence", cache_policy=NONE, timeout_seconds=600, **IO_RETRIES)
def gather_live_evidence(settings: Settings, rollout: dict) -> Evidence:
    """The stage's evidence: per model, the paired agreement, the joined live labels."""
    evidence = gather_evidence(
        engine_for(settings), rollout, GatePolicy.from_settings(settings), settings.task, settings.labels
    )
    get_run_logger().info(
        "rollout %s (%s): %d/%d request items, %d paired, %d joined labels",
        rollout["id"],
        rollout["stage"],
        evidence.champion.items,
        evidence.candidate.items,
        evidence.paired,
        evidence.labels,
    )
    return evidence


@task(name="decide-rollout-step", cache_policy=NONE, timeout_seconds=60)
def decide_step(settings: Settings, rollout: dict, evidence: Evidence) -> RolloutDecision:
    """Wait, advance or stop, by the guards and exit conditions of REFIT_ROLLOUT_*."""
    decision = decide(evidence, rollout["stage"], evidence.hours_in_stage, RolloutPolicy.from_settings(settings))
    get_run_logger().info("rollout %s: %s: %s", rollout["id"], decision.action, decision.reason)
    return decision


@task(name="advance-rollout", cache_policy=NONE, timeout_seconds=300, **IO_RETRIES)
def advance_rollout(settings: Settings, rollout: dict, evidence: Evidence, decision: RolloutDecision) -> str:
    """Shadow to canary (a compare-and-swap on the stage; ``raced`` when another step moved it)."""
    return stages.advance(
        engine_for(settings),
        store_for(settings),
        rollout,
        evidence,
        decision,
        canary_share=settings.rollout_canary_share,
        shadow_share=settings.rollout_shadow_share,
        actor=run_actor(),
        flow_run_id=flow_run.get_id(),
        model_name=settings.model_name,
    )


@task(name="promote-rollout", cache_policy=NONE, timeout_seconds=300, **IO_RETRIES)
def promote_rollout(settings: Settings, rollout: dict, evidence: Evidence, decision: RolloutDecision) -> str:
    """The candidate becomes champion by compare-and-swap; the champion pointer moves last."""
    return stages.promote(
        engine_for(settings),
        store_for(settings),
        rollout,
        evidence,
        decision,
        actor=run_actor(),
        flow_run_id=flow_run.get_id(),
        model_name=settings.model_name,
    )


@task(name="stop-rollout", cache_policy=NONE, timeout_seconds=300, **IO_RETRIES)
def stop_rollout(settings: Settings, rollout: dict, evidence: Evidence, decision: RolloutDecision) -> str:
    """End the rollout with the reason; the candidate pointer goes, the champion's stays."""
    outcome = stages.stop(
        engine_for(settings),
        store_for(settings),
        rollout,
        evidence,
        decision,
        actor=run_actor(),
        flow_run_id=flow_run.get_id(),
        model_name=settings.model_name,
    )
    if outcome == "rolled_back":
        get_run_logger().warning("rollout %s stopped: %s", rollout["id"], decision.reason)
    return outcome


@task(name="rollout-artifact", cache_policy=NONE, timeout_seconds=60)
def rollout_artifact(rollout: dict, evidence: Evidence, decision: RolloutDecision, outcome: str) -> dict:
    """The step's evidence table, checks and outcome as a markdown artifact (key
    ``rollout-evidence``: its history in the UI is the list of steps). Returns the step's summary."""
    summary = step_summary(rollout, evidence, decision, outcome)
    create_markdown_artifact(
        key=ARTIFACT_KEY,
        markdown=evidence_markdown(summary),
        description=f"rollout {rollout['id']} ({rollout['stage']}): {outcome}",
    )
    return summary
