"""The invariants the loop must keep whatever fails, checked against a sandbox's database and store."""

from __future__ import annotations

import json

from sqlalchemy import Engine, text

from refit.sim.sandbox import Sandbox

FAILED = "failed"  # the outcome of a cycle that raised


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
    from refit.registry.pointer import read_pointer

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
    matches the manifest (size and SHA-256 of the stored bytes).

    Args:
        engine: the registry's database.
        store: the object store.
        model_name: the model checked.
        verified: the ETags of files already hashed, kept between calls, so unchanged objects are
            not downloaded again.

    Returns:
        What is broken, one line each (empty: the invariant holds).
    """
    import hashlib

    from refit.models.checkpoint import MANIFEST, manifest_digest
    from refit.registry.layout import model_prefix

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
    from refit.registry.layout import model_prefix

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
    from refit.registry.layout import model_prefix

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
