"""Moving the champion: a gate decision recorded (and, when promoted, the champion moved), and a
rollback to an earlier champion.

The registry (``registry_head``, ``model_versions``) moves by compare-and-swap inside one
transaction with its ``promotion_log`` line, and the store pointer moves last inside it; a commit
lost after the pointer moved puts the pointer back.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path

from sqlalchemy import Engine, text

from refit.core.errors import CheckpointError, RefitError
from refit.gate.rule import GateDecision
from refit.models.checkpoint import MANIFEST, manifest_digest
from refit.registry.layout import DEFAULT_MODEL, pointer_key
from refit.registry.pointer import write_pointer
from refit.registry.store import ObjectStore
from refit.registry.table import get_version, require_champion
from refit.registry.versions import Published, fetch_checkpoint

log = logging.getLogger("refit.registry")


ACTOR = "refit"


def promote_if_current(conn, version: str, expected: str | None) -> bool:
    """Make a version champion if the champion is still the one expected (compare-and-swap).

    Concurrent callers serialize on the ``registry_head`` row; the loser sees the changed
    champion and gets False. Runs inside the caller's transaction.

    Args:
        conn: a connection inside the caller's transaction.
        version: the version to promote.
        expected: the champion the caller saw (None: no champion yet).

    Returns:
        Whether ``version`` became champion.
    """
    won = conn.execute(
        text(
            "UPDATE registry_head SET champion = :v, changed_at = now()"
            " WHERE id = 1 AND champion IS NOT DISTINCT FROM :expected RETURNING id"
        ),
        {"v": version, "expected": expected},
    ).first()
    if won is None:
        return False
    conn.execute(text("UPDATE model_versions SET is_champion = FALSE, status = 'retired' WHERE is_champion"))
    conn.execute(
        text(
            "UPDATE model_versions SET is_champion = TRUE, status = 'champion', promoted_at = now() WHERE version = :v"
        ),
        {"v": version},
    )
    return True


def log_entry(
    conn,
    *,
    version: str,
    champion_version: str | None,
    decision: str,
    reason: str,
    actor: str,
    flow_run_id: str | None = None,
    gate: dict | None = None,
) -> None:
    """Append one line to the promotion log (the database refuses edits of old lines).

    Args:
        conn: a connection inside the caller's transaction.
        version: the challenger (or the version acted on).
        champion_version: the champion at the time, or None.
        decision: what happened (``promoted``, ``rejected``, ``rolled_back``, ``canary``, ...).
        reason: why, in words.
        actor: who decided (``refit``, or the operator).
        flow_run_id: the Prefect flow run that decided, if any.
        gate: the gate's decision record; its metric and scores get columns of their own.
    """
    gate = gate or {}
    conn.execute(
        text(
            "INSERT INTO promotion_log (challenger_version, champion_version, decision, metric, challenger_score,"
            " champion_score, reason, details, actor, flow_run_id)"
            " VALUES (:c, :ch, :d, :m, :cs, :chs, :r, CAST(:details AS JSONB), :actor, :run)"
        ),
        {
            "c": version,
            "ch": champion_version,
            "d": decision,
            "m": gate.get("metric"),
            "cs": _finite(gate.get("challenger_score")),
            "chs": _finite(gate.get("champion_score")),
            "r": reason,
            "details": json.dumps(gate, default=str, allow_nan=False) if gate else "{}",
            "actor": actor,
            "run": flow_run_id,
        },
    )


def _finite(value) -> float | None:
    return value if isinstance(value, (int, float)) and math.isfinite(value) else None


def json_safe(value):
    """NaN and infinities become null, so a decision always stores as JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def record_decision(
    engine: Engine,
    store: ObjectStore,
    published: Published,
    *,
    snapshot_id: int,
    task: str,
    metrics: dict,
    decision: GateDecision,
    champion_version: str | None,
    config_hash: str | None = None,
    flow_run_id: str | None = None,
    actor: str = ACTOR,
    model_name: str = DEFAULT_MODEL,
) -> str:
    """Record the challenger and the gate decision; when promoted, move the champion.

    The registry change and the promotion log line are one transaction, and the store pointer
    is written last inside it: if the pointer write fails, the transaction rolls back and the old
    champion stays the champion everywhere. Promotion is a compare-and-swap on
    ``champion_version``: if another run promoted meanwhile, this one is recorded as superseded.

    Returns:
        ``promoted``, ``rejected`` or ``superseded``.
    """
    gate = json_safe(decision.as_dict())
    moved: dict = {}
    try:
        return _record(engine, store, published, snapshot_id, task, metrics, decision, champion_version,
                       config_hash, flow_run_id, actor, model_name, gate, moved)  # fmt: skip
    except Exception:
        if moved:
            restore_pointer(engine, store, published, moved["previous"], model_name)
        raise


def restore_pointer(engine: Engine, store: ObjectStore, published: Published, previous, model_name: str) -> None:
    """Move the champion pointer back after the registry transaction failed behind it.

    The pointer moved to ``published`` and then the transaction failed (a dropped connection at
    commit): unless the commit did land, the pointer goes back, so the store never names a
    champion the registry does not have, and a rolled-back upload is not pointed at once
    withdrawn. A failure to restore is logged, never raised: the caller's error is what matters.

    Args:
        engine: the registry's database.
        store: the object store.
        published: the version the pointer was moved to.
        previous: the ``Published`` it named before, or None (no pointer before: it is deleted).
        model_name: the model the pointer belongs to.
    """
    try:
        with engine.connect() as conn:
            head = conn.execute(text("SELECT champion FROM registry_head WHERE id = 1")).scalar()
        if head == published.version:
            return  # the commit landed before the connection went
        if previous is None:
            store.delete(pointer_key(model_name))
        else:
            write_pointer(store, previous, published.version, model_name)
    except Exception as exc:  # the original error is what the caller must see
        log.error(
            "the champion pointer names %s but the registry did not record it, and restoring it failed: %s",
            published.version,
            exc,
        )


def insert_version(
    conn,
    published: Published,
    *,
    snapshot_id: int | None,
    parent_version: str | None,
    task: str,
    metrics: dict,
    status: str,
    config_hash: str | None = None,
    flow_run_id: str | None = None,
) -> None:
    """Add a published version to ``model_versions`` (inside the caller's transaction).

    Args:
        conn: a connection inside the caller's transaction.
        published: the version, its URI and its manifest's digest.
        snapshot_id: the snapshot it trained on, if any.
        parent_version: the champion it warm-started from, if any.
        task: ``regression`` or ``classification``.
        metrics: its metrics (NaN and infinities are stored as null).
        status: its registry status (``candidate`` or ``rejected`` when the gate has spoken).
        config_hash: the hash of the settings it trained under.
        flow_run_id: the Prefect flow run that made it.
    """
    conn.execute(
        text(
            "INSERT INTO model_versions (version, snapshot_id, parent_version, task, uri, manifest_sha256,"
            " metrics, status, config_hash, flow_run_id)"
            " VALUES (:v, :s, :p, :t, :u, :m, CAST(:metrics AS JSONB), :status, :config, :run)"
        ),
        {
            "v": published.version,
            "s": snapshot_id,
            "p": parent_version,
            "t": task,
            "u": published.uri,
            "m": published.manifest_sha256,
            "metrics": json.dumps(json_safe(metrics), default=str),
            "status": status,
            "config": config_hash,
            "run": flow_run_id,
        },
    )


def _record(engine, store, published, snapshot_id, task, metrics, decision, champion_version, config_hash,
            flow_run_id, actor, model_name, gate, moved) -> str:  # fmt: skip
    with engine.begin() as conn:
        insert_version(conn, published, snapshot_id=snapshot_id, parent_version=champion_version, task=task,
                       metrics=metrics, status="candidate" if decision.promote else "rejected",
                       config_hash=config_hash, flow_run_id=flow_run_id)  # fmt: skip
        outcome, reason = ("rejected", decision.reason)
        if decision.promote:
            if promote_if_current(conn, published.version, champion_version):
                outcome = "promoted"
            else:
                current = conn.execute(text("SELECT champion FROM registry_head WHERE id = 1")).scalar()
                outcome = "superseded"
                reason = (
                    f"superseded: the gate passed against {champion_version or 'no champion'}, but {current} "
                    f"was promoted meanwhile; {decision.reason}"
                )
                conn.execute(
                    text("UPDATE model_versions SET status = 'rejected' WHERE version = :v"), {"v": published.version}
                )
        log_entry(
            conn,
            version=published.version,
            champion_version=champion_version,
            decision=outcome,
            reason=reason,
            actor=actor,
            flow_run_id=flow_run_id,
            gate=gate,
        )
        if outcome == "promoted":
            row = conn.execute(
                text("SELECT version, uri, manifest_sha256 FROM model_versions WHERE version = :v"),
                {"v": champion_version},
            ).first()
            previous = Published(row.version, row.uri, row.manifest_sha256) if row else None
            write_pointer(store, published, champion_version, model_name)
            moved["previous"] = previous  # from here a failed commit must move the pointer back
    return outcome


def previous_champion(engine: Engine) -> str | None:
    """The version that was champion before the current one (what a bare rollback restores)."""
    with engine.connect() as conn:
        return conn.execute(
            text(
                "SELECT champion_version FROM promotion_log"
                " WHERE decision IN ('promoted', 'rolled_back')"
                " AND challenger_version = (SELECT champion FROM registry_head WHERE id = 1)"
                " ORDER BY id DESC LIMIT 1"
            )
        ).scalar()


def rollback(
    engine: Engine,
    store: ObjectStore,
    version: str | None,
    reason: str,
    actor: str,
    work_dir: Path,
    model_name: str = DEFAULT_MODEL,
) -> dict:
    """Make an earlier champion the champion again.

    The target's files are downloaded and checked against its manifest, and the manifest against
    the registry's checksum, before anything changes; then the registry moves by
    compare-and-swap, the log records who and why, and the store pointer moves last.

    Args:
        version: the version to restore; default, the champion before the current one.
        reason: why, for the log.
        actor: who (an operator's name, or ``refit``).
        work_dir: where the verification download goes.

    Returns:
        ``{"from": old champion, "to": restored version}``.
    """
    current = require_champion(engine)["version"]
    target = version or previous_champion(engine)
    if target is None:
        raise RefitError(f"{current} has no earlier champion to roll back to; name a version")
    row = get_version(engine, target)
    if target == current:
        raise RefitError(f"{target} is already the champion")
    if row["promoted_at"] is None or row["status"] != "retired":
        raise RefitError(f"{target} was never a champion (status {row['status']}); only earlier champions come back")
    folder = Path(work_dir) / "rollback" / target
    fetch_checkpoint(store, target, folder, model_name)  # raises CheckpointError on any checksum mismatch
    manifest = json.loads((folder / MANIFEST).read_text())
    if manifest_digest(manifest) != row["manifest_sha256"]:
        raise CheckpointError(f"the manifest of {target} in the store does not match the registry's checksum")
    shutil.rmtree(folder, ignore_errors=True)
    restored, moved = Published(target, row["uri"], row["manifest_sha256"]), False
    try:
        with engine.begin() as conn:
            if not promote_if_current(conn, target, current):
                raise RefitError("the champion changed while rolling back; check `refit models` and try again")
            log_entry(conn, version=target, champion_version=current, decision="rolled_back", reason=reason,
                      actor=actor)  # fmt: skip
            write_pointer(store, restored, current, model_name)
            moved = True
    except Exception:
        if moved:  # the commit was lost after the pointer moved: as for a promotion, move it back
            was = get_version(engine, current)
            restore_pointer(engine, store, restored, Published(current, was["uri"], was["manifest_sha256"]),
                            model_name)  # fmt: skip
        raise
    return {"from": current, "to": target}
