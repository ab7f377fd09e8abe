"""Commands on the live rollout: where it stands, and why."""

from __future__ import annotations

from refit.cli._shared import JsonOpt, current_settings, emit, group, migrated_engine

# What the next step would do, as the status's outcome (it only reads).
WOULD = {"wait": "wait", "advance": "would advance", "stop": "would stop"}

rollout_app = group("The live rollout of a challenger that passed the gate: shadow, canary, champion.")


@rollout_app.command("status")
def status(as_json: JsonOpt = False) -> None:
    """Where the live rollout stands: its stage, the evidence per model, the guards, the next step.

    The evidence is read now from the prediction log and the feedback, over the stage's window; the
    decision is the one the rollout flow's next step would take (without acting). With no live
    rollout, the last one and how it ended.
    """
    from refit.gate.rule import GatePolicy
    from refit.ops.shadow import shadow_estimates, shadow_lines
    from refit.rollout.decision import RolloutPolicy, decide
    from refit.rollout.evidence import gather_evidence, latest_rollout, live_rollout
    from refit.rollout.report import evidence_text, step_summary

    settings = current_settings()
    engine = migrated_engine(settings)
    rollout = live_rollout(engine)
    if rollout is None:
        last = latest_rollout(engine)
        if last is None:
            emit({"live": False, "last": None}, as_json, "no live rollout, and none before")
            return
        text = (
            f"no live rollout; the last, rollout {last['id']} of {last['version']} against {last['champion_version']},"
            f" ended {last['ended_at']:%Y-%m-%d %H:%M:%S} as {last['stage']}: {last['reason'] or '-'}"
        )
        emit({"live": False, "last": last}, as_json, text)
        return
    evidence = gather_evidence(engine, rollout, GatePolicy.from_settings(settings), settings.task, settings.labels)
    decision = decide(evidence, rollout["stage"], evidence.hours_in_stage, RolloutPolicy.from_settings(settings))
    summary = step_summary(rollout, evidence, decision, WOULD[decision.action])
    shown = evidence_text(summary)
    # fewer labels joined than a stage needs: both models' estimates, as evidence only
    shadow = shadow_estimates(settings, engine, rollout, evidence.labels)
    if shadow is not None:
        summary["shadow_estimates"] = shadow
        shown += "\n\n" + "\n".join(shadow_lines(shadow))
    emit({"live": True, **summary}, as_json, shown)
