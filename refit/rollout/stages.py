"""Moving a live rollout: start it when the gate passes, advance it from shadow to canary, promote
the candidate at the end, or stop it.

Each move is one database transaction (the ``rollouts`` row by compare-and-swap on its stage, the
``promotion_log`` line, the registry) with the store pointer written last inside it, as a
promotion does: a failed pointer write rolls the transaction back, and a commit lost after the
pointer moved puts the pointer back. The champion pointer moves only in :func:`promote`, by the
same compare-and-swap as a promotion (:func:`refit.registry.promotion.promote_if_current`).
"""

from __future__ import annotations

import json
import logging

from sqlalchemy import Engine, text

from refit.gate.rule import GateDecision
from refit.registry.layout import DEFAULT_MODEL
from refit.registry.pointer import clear_candidate, read_candidate, write_candidate, write_pointer
from refit.registry.promotion import ACTOR, insert_version, json_safe, log_entry, promote_if_current, restore_pointer
from refit.registry.store import ObjectStore
from refit.registry.versions import Published
from refit.rollout.decision import CHAMPION_CHANGED, RolloutDecision
from refit.rollout.evidence import Evidence

log = logging.getLogger("refit.rollout")


def _published(conn, version: str) -> Published:
    row = conn.execute(
        text("SELECT version, uri, manifest_sha256 FROM model_versions WHERE version = :v"), {"v": version}
    ).one()
    return Published(row.version, row.uri, row.manifest_sha256)


def _details(rollout: dict, evidence: Evidence | None, decision: RolloutDecision | None) -> dict:
    """A promotion-log line's details: the rollout, the decision and the evidence behind it, and the
    live metric as the log's score columns."""
    comparison = (evidence.comparison if evidence else None) or {}
    return json_safe(
        {
            "rollout_id": rollout["id"],
            "stage": rollout["stage"],
            "metric": evidence.metric if evidence else None,
            "challenger_score": comparison.get("candidate"),
            "champion_score": comparison.get("champion"),
            "decision": decision.as_dict() if decision else None,
            "evidence": evidence.as_dict() if evidence else None,
        }
    )


def _evidence_json(evidence: Evidence | None) -> str | None:
    return json.dumps(json_safe(evidence.as_dict()), default=str) if evidence else None


def _put_back_candidate(engine: Engine, store: ObjectStore, previous: dict | None, landed, model_name: str) -> None:
    """The transaction failed after the candidate pointer was written: unless ``landed()`` says the
    commit did land, put the candidate pointer back as it was (``previous``; None: none)."""
    try:
        if landed():
            return
        if previous is None:
            clear_candidate(store, model_name)
        else:
            write_candidate(
                store,
                Published(previous["version"], previous["uri"], previous["manifest_sha256"]),
                rollout_id=previous["rollout_id"],
                stage=previous["stage"],
                share=previous.get("share") or 0.0,
                shadow_share=previous.get("shadow_share", 1.0),
                model_name=model_name,
            )
    except Exception as exc:  # the original error is what the caller must see
        log.error("the candidate pointer could not be put back after a failed rollout step: %s", exc)


def _live_stage(engine: Engine, rollout_id: int) -> str | None:
    with engine.connect() as conn:
        return conn.execute(
            text("SELECT stage FROM rollouts WHERE id = :id AND ended_at IS NULL"), {"id": rollout_id}
        ).scalar()


def start_rollout(
    engine: Engine,
    store: ObjectStore,
    published: Published,
    *,
    snapshot_id: int | None,
    task: str,
    metrics: dict,
    decision: GateDecision,
    champion_version: str,
    stage: str,
    canary_share: float,
    shadow_share: float,
    config_hash: str | None = None,
    flow_run_id: str | None = None,
    actor: str = ACTOR,
    model_name: str = DEFAULT_MODEL,
) -> dict:
    """Record a challenger that passed the gate as a candidate and start its live rollout.

    One transaction: the version (status ``candidate``), a rollout already live superseded (ended
    with stage ``superseded``, its version rejected, logged: the newer passing challenger replaces
    it), the new ``rollouts`` row in ``stage``, a ``promotion_log`` line with decision ``stage``
    and the gate's decision in its details, and the candidate pointer written last. The champion
    does not change. If another run changed the champion since the gate compared against
    ``champion_version``, the challenger is recorded as superseded instead, and nothing starts.

    Args:
        stage: ``shadow`` or ``canary`` (REFIT_ROLLOUT).
        canary_share: the share of requests the candidate answers in canary.
        shadow_share: the share of requests the other model also scores, unseen.

    Returns:
        ``{"outcome": "rollout" or "superseded", "rollout_id", "stage", "superseded_rollout"}``.
    """
    _check_start(stage, decision)
    gate = json_safe(decision.as_dict())
    who = {"actor": actor, "flow_run_id": flow_run_id}  # the log lines' actor and run
    previous = read_candidate(store, model_name)
    written: dict = {}
    try:
        with engine.begin() as conn:
            current = conn.execute(text("SELECT champion FROM registry_head WHERE id = 1 FOR UPDATE")).scalar()
            still = current == champion_version
            insert_version(
                conn,
                published,
                snapshot_id=snapshot_id,
                parent_version=champion_version,
                task=task,
                metrics=metrics,
                status="candidate" if still else "rejected",
                config_hash=config_hash,
                flow_run_id=flow_run_id,
            )
            if not still:
                _log_superseded_challenger(conn, published, champion_version, current, decision, gate, **who)
                return {"outcome": "superseded", "rollout_id": None, "stage": None, "superseded_rollout": None}
            old = _supersede_live_rollout(conn, published, **who)
            rollout_id = _open_rollout(conn, published, champion_version, stage, decision, gate, **who)
            write_candidate(
                store,
                published,
                rollout_id=rollout_id,
                stage=stage,
                share=canary_share,
                shadow_share=shadow_share,
                model_name=model_name,
            )
            written["id"] = rollout_id
    except Exception:
        if written:
            _put_back_candidate(
                engine, store, previous, lambda: _live_stage(engine, written["id"]) == stage, model_name
            )
        raise
    return {
        "outcome": "rollout",
        "rollout_id": rollout_id,
        "stage": stage,
        "superseded_rollout": old.id if old is not None else None,
    }


def _check_start(stage: str, decision: GateDecision) -> None:
    """Refuse a rollout that cannot start: another stage than shadow or canary, or a failed gate."""
    if stage not in ("shadow", "canary"):
        raise ValueError(f"a rollout starts in shadow or canary, not {stage!r}")
    if not decision.promote:
        raise ValueError("only a challenger that passed the gate starts a rollout")


def _log_superseded_challenger(
    conn,
    published: Published,
    champion_version: str,
    current: str | None,
    decision: GateDecision,
    gate: dict,
    *,
    actor: str,
    flow_run_id: str | None,
) -> None:
    """The champion changed since the gate compared against ``champion_version``: the challenger's
    ``superseded`` line (its version was recorded rejected)."""
    reason = (
        f"superseded: the gate passed against {champion_version}, but {current} became champion "
        f"meanwhile; {decision.reason}"
    )
    log_entry(
        conn,
        version=published.version,
        champion_version=champion_version,
        decision="superseded",
        reason=reason,
        actor=actor,
        flow_run_id=flow_run_id,
        gate=gate,
    )


def _supersede_live_rollout(conn, published: Published, *, actor: str, flow_run_id: str | None):
    """End the rollout already live, if any, as ``superseded`` by ``published`` (its version
    rejected, a ``superseded`` line). Returns the ended rollout's row, or None."""
    old = conn.execute(
        text(
            "UPDATE rollouts SET stage = 'superseded', ended_at = now(), reason = :r"
            " WHERE ended_at IS NULL RETURNING id, version, champion_version"
        ),
        {"r": f"superseded by {published.version}, which passed the gate later"},
    ).first()
    if old is not None:
        conn.execute(
            text("UPDATE model_versions SET status = 'rejected' WHERE version = :v AND status = 'candidate'"),
            {"v": old.version},
        )
        log_entry(
            conn,
            version=old.version,
            champion_version=old.champion_version,
            decision="superseded",
            reason=f"rollout {old.id} superseded by {published.version}, which passed the gate later",
            actor=actor,
            flow_run_id=flow_run_id,
        )
    return old


def _open_rollout(
    conn,
    published: Published,
    champion_version: str,
    stage: str,
    decision: GateDecision,
    gate: dict,
    *,
    actor: str,
    flow_run_id: str | None,
) -> int:
    """The new ``rollouts`` row in ``stage`` and its ``promotion_log`` line (decision ``stage``, the
    gate's decision in its details). Returns the rollout's id."""
    rollout_id = conn.execute(
        text("INSERT INTO rollouts (version, champion_version, stage) VALUES (:v, :c, :s) RETURNING id"),
        {"v": published.version, "c": champion_version, "s": stage},
    ).scalar_one()
    log_entry(
        conn,
        version=published.version,
        champion_version=champion_version,
        decision=stage,
        reason=f"gate passed; live rollout {rollout_id} starts in {stage}: {decision.reason}",
        actor=actor,
        flow_run_id=flow_run_id,
        gate={**gate, "rollout": {"id": rollout_id, "stage": stage}},
    )
    return rollout_id


def advance(
    engine: Engine,
    store: ObjectStore,
    rollout: dict,
    evidence: Evidence,
    decision: RolloutDecision,
    *,
    canary_share: float,
    shadow_share: float,
    actor: str = ACTOR,
    flow_run_id: str | None = None,
    model_name: str = DEFAULT_MODEL,
) -> str:
    """Move a rollout from shadow to canary: the stage and its start (a new evidence window), a
    ``canary`` line in the promotion log, and the candidate pointer rewritten last.

    Returns:
        ``canary``, or ``raced`` when the rollout was no longer live in shadow (nothing changed).
    """
    previous = read_candidate(store, model_name)
    written = False
    try:
        with engine.begin() as conn:
            moved = conn.execute(
                text(
                    "UPDATE rollouts SET stage = 'canary', stage_started_at = now(), evidence = CAST(:e AS JSONB)"
                    " WHERE id = :id AND stage = 'shadow' AND ended_at IS NULL RETURNING id"
                ),
                {"id": rollout["id"], "e": _evidence_json(evidence)},
            ).first()
            if moved is None:
                return "raced"
            log_entry(
                conn,
                version=rollout["version"],
                champion_version=rollout["champion_version"],
                decision="canary",
                reason=decision.reason,
                actor=actor,
                flow_run_id=flow_run_id,
                gate=_details(rollout, evidence, decision),
            )
            write_candidate(
                store,
                _published(conn, rollout["version"]),
                rollout_id=rollout["id"],
                stage="canary",
                share=canary_share,
                shadow_share=shadow_share,
                model_name=model_name,
            )
            written = True
    except Exception:
        if written:
            _put_back_candidate(
                engine, store, previous, lambda: _live_stage(engine, rollout["id"]) == "canary", model_name
            )
        raise
    return "canary"


def promote(
    engine: Engine,
    store: ObjectStore,
    rollout: dict,
    evidence: Evidence,
    decision: RolloutDecision,
    *,
    actor: str = ACTOR,
    flow_run_id: str | None = None,
    model_name: str = DEFAULT_MODEL,
) -> str:
    """Make the candidate champion at the end of its canary: the same compare-and-swap as a
    promotion (the registry on the champion the rollout started against, a ``promoted`` line, the
    champion pointer written last), the rollout ended as ``promoted``, then the candidate pointer
    cleared. If the champion changed during the rollout (a rollback, another promotion), the
    rollout ends as ``superseded`` instead and the champion stays.

    Returns:
        ``promoted``, ``superseded``, or ``raced`` when the rollout was no longer live in canary.
    """
    moved: dict = {}
    published = None
    try:
        with engine.begin() as conn:
            live = conn.execute(
                text("SELECT id FROM rollouts WHERE id = :id AND stage = 'canary' AND ended_at IS NULL FOR UPDATE"),
                {"id": rollout["id"]},
            ).first()
            if live is None:
                return "raced"
            expected = rollout["champion_version"]
            details = _details(rollout, evidence, decision)
            if not promote_if_current(conn, rollout["version"], expected):
                current = conn.execute(text("SELECT champion FROM registry_head WHERE id = 1")).scalar()
                reason = f"superseded: the champion changed during the rollout ({current}, not {expected})"
                conn.execute(
                    text(
                        "UPDATE rollouts SET stage = 'superseded', ended_at = now(), reason = :r,"
                        " evidence = CAST(:e AS JSONB) WHERE id = :id"
                    ),
                    {"id": rollout["id"], "r": reason, "e": _evidence_json(evidence)},
                )
                conn.execute(
                    text("UPDATE model_versions SET status = 'rejected' WHERE version = :v AND status = 'candidate'"),
                    {"v": rollout["version"]},
                )
                log_entry(
                    conn,
                    version=rollout["version"],
                    champion_version=expected,
                    decision="superseded",
                    reason=reason,
                    actor=actor,
                    flow_run_id=flow_run_id,
                    gate=details,
                )
                outcome = "superseded"
            else:
                conn.execute(
                    text(
                        "UPDATE rollouts SET stage = 'promoted', ended_at = now(), reason = :r,"
                        " evidence = CAST(:e AS JSONB) WHERE id = :id"
                    ),
                    {"id": rollout["id"], "r": decision.reason, "e": _evidence_json(evidence)},
                )
                log_entry(
                    conn,
                    version=rollout["version"],
                    champion_version=expected,
                    decision="promoted",
                    reason=f"live rollout {rollout['id']}: {decision.reason}",
                    actor=actor,
                    flow_run_id=flow_run_id,
                    gate=details,
                )
                previous = _published(conn, expected) if expected else None
                published = _published(conn, rollout["version"])
                write_pointer(store, published, expected, model_name)
                moved["previous"] = previous  # from here a failed commit must move the pointer back
                outcome = "promoted"
    except Exception:
        if moved:
            restore_pointer(engine, store, published, moved["previous"], model_name)
        raise
    _clear_own_candidate(store, rollout["id"], model_name)
    return outcome


def stop(
    engine: Engine,
    store: ObjectStore,
    rollout: dict,
    evidence: Evidence | None,
    decision: RolloutDecision,
    *,
    actor: str = ACTOR,
    flow_run_id: str | None = None,
    model_name: str = DEFAULT_MODEL,
) -> str:
    """End a rollout: the rollout ``rolled_back`` with the reason and the evidence, a
    ``rollout_stopped`` line in the promotion log (the evidence and the decision in its details),
    the candidate's version ``rejected``, and the candidate pointer cleared last, inside the
    transaction. The champion and its pointer are not touched. A rollout stopped because the
    champion changed meanwhile ends ``superseded`` instead, with a ``superseded`` line.

    Returns:
        ``rolled_back`` (or ``superseded``), or ``raced`` when the rollout had already ended
        (nothing changed).
    """
    outcome = "superseded" if decision.stopped_by == [CHAMPION_CHANGED] else "rolled_back"
    with engine.begin() as conn:
        ended = conn.execute(
            text(
                "UPDATE rollouts SET stage = :stage, ended_at = now(), reason = :r, evidence = CAST(:e AS JSONB)"
                " WHERE id = :id AND ended_at IS NULL RETURNING id"
            ),
            {"id": rollout["id"], "stage": outcome, "r": decision.reason, "e": _evidence_json(evidence)},
        ).first()
        if ended is None:
            return "raced"
        conn.execute(
            text("UPDATE model_versions SET status = 'rejected' WHERE version = :v AND status = 'candidate'"),
            {"v": rollout["version"]},
        )
        log_entry(
            conn,
            version=rollout["version"],
            champion_version=rollout["champion_version"],
            decision="rollout_stopped" if outcome == "rolled_back" else "superseded",
            reason=decision.reason,
            actor=actor,
            flow_run_id=flow_run_id,
            gate=_details(rollout, evidence, decision),
        )
        _clear_own_candidate(store, rollout["id"], model_name, strict=True)
    return outcome


def _clear_own_candidate(store: ObjectStore, rollout_id: int, model_name: str, strict: bool = False) -> None:
    """Remove the candidate pointer if it still names ``rollout_id`` (a newer rollout's stays).

    Args:
        strict: raise when the store fails (inside a stop's transaction); else log it and leave
            the pointer to :func:`tidy_candidate` at the next step.
    """
    try:
        pointer = read_candidate(store, model_name)
        if pointer is not None and pointer.get("rollout_id") == rollout_id:
            clear_candidate(store, model_name)
    except Exception as exc:
        if strict:
            raise
        log.warning(
            "the candidate pointer of ended rollout %s is still there (%s); the next step removes it", rollout_id, exc
        )


def tidy_candidate(engine: Engine, store: ObjectStore, model_name: str = DEFAULT_MODEL) -> bool:
    """Remove a candidate pointer that names no live rollout (left by a step that ended its rollout
    but could not reach the store afterwards).

    Returns:
        Whether a pointer was removed.
    """
    pointer = read_candidate(store, model_name)
    if pointer is None:
        return False
    if _live_stage(engine, pointer.get("rollout_id") or -1) is not None:
        return False
    clear_candidate(store, model_name)
    log.warning("removed the candidate pointer of rollout %s, which is no longer live", pointer.get("rollout_id"))
    return True
