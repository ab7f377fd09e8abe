"""The registry on the real Postgres and the moto S3 server: one champion always, promotion by
compare-and-swap across processes, an append-only log, verified rollback."""

import json
import os
import subprocess
import sys
import time

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError, IntegrityError

from refit.core.errors import CheckpointError, RefitError
from refit.registry.layout import POINTER, model_prefix
from refit.registry.pointer import read_pointer
from refit.registry.promotion import rollback
from refit.registry.store import open_store
from refit.registry.table import champion, get_version, lineage

from helpers import checkpoint, gate_decision, publish_and_record, refit_cli

pytestmark = pytest.mark.integration


@pytest.fixture
def registry(db_url, s3_bucket, tmp_path):
    engine = create_engine(db_url)
    store = open_store(f"s3://{s3_bucket}/refit")

    def publish(version: str, promote: bool, expected: str | None, actor: str = "test") -> str:
        return publish_and_record(engine, store, tmp_path, version, gate_decision(promote), expected, actor=actor)

    yield engine, store, publish
    engine.dispose()


def log_lines(engine) -> list[tuple]:
    with engine.connect() as conn:
        return [
            tuple(r)
            for r in conn.execute(
                text("SELECT decision, challenger_version, champion_version FROM promotion_log ORDER BY id")
            )
        ]


def champions(engine) -> list[str]:
    with engine.connect() as conn:
        return conn.execute(text("SELECT version FROM model_versions WHERE is_champion")).scalars().all()


def test_promotions_rejections_and_lineage(registry):
    engine, store, publish = registry
    assert publish("v1", True, None) == "promoted"
    assert publish("v2", False, "v1") == "rejected"
    assert publish("v3", True, "v1") == "promoted"
    assert champions(engine) == ["v3"]
    assert read_pointer(store)["version"] == "v3"
    statuses = {v: get_version(engine, v)["status"] for v in ("v1", "v2", "v3")}
    assert statuses == {"v1": "retired", "v2": "rejected", "v3": "champion"}
    assert [row["version"] for row in lineage(engine, "v3")] == ["v3", "v1"]
    assert log_lines(engine) == [("promoted", "v1", None), ("rejected", "v2", "v1"), ("promoted", "v3", "v1")]


def test_a_promotion_against_a_stale_champion_is_superseded(registry):
    engine, store, publish = registry
    publish("v1", True, None)
    publish("v2", True, "v1")
    # v3's gate ran against v1, but v2 was promoted meanwhile
    assert publish("v3", True, "v1") == "superseded"
    assert champions(engine) == ["v2"]
    assert read_pointer(store)["version"] == "v2"
    assert get_version(engine, "v3")["status"] == "rejected"
    assert log_lines(engine)[-1] == ("superseded", "v3", "v1")


def test_the_database_refuses_two_champions(registry):
    engine, _, publish = registry
    publish("v1", True, None)
    publish("v2", False, "v1")
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(text("UPDATE model_versions SET is_champion = TRUE, status = 'champion' WHERE version = 'v2'"))
    # and status and flag cannot disagree
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(text("UPDATE model_versions SET status = 'champion' WHERE version = 'v2'"))
    assert champions(engine) == ["v1"]


@pytest.mark.parametrize(
    "statement",
    ["UPDATE promotion_log SET reason = 'rewritten'", "DELETE FROM promotion_log", "TRUNCATE promotion_log"],
)
def test_the_promotion_log_is_append_only(registry, statement):
    engine, _, publish = registry
    publish("v1", True, None)
    with pytest.raises(DBAPIError, match="append-only"), engine.begin() as conn:
        conn.execute(text(statement))
    assert log_lines(engine) == [("promoted", "v1", None)]


WORKER = """
import sys
from pathlib import Path
from sqlalchemy import create_engine
from refit.gate.rule import GateDecision
from refit.registry.promotion import record_decision
from refit.registry.versions import publish_checkpoint
from refit.registry.store import open_store

url, store_url, folder, version = sys.argv[1:]
store = open_store(store_url)
published = publish_checkpoint(store, Path(folder), version)
print("published", flush=True)
decision = GateDecision(True, "mse", 0.01, 0.02, 0.01, 0.0, "champion", "passed", reasons=["passed"])
print(record_decision(create_engine(url), store, published, snapshot_id=None, task="regression", metrics={},
                      decision=decision, champion_version="v1", actor=version))
"""


def test_concurrent_promotions_from_two_processes_end_with_one_champion(registry, db_url, s3_bucket, tmp_path):
    engine, store, publish = registry
    publish("v1", True, None)
    # Hold the registry head so that both publishers are inside their promotion at the same time.
    gate_keeper = engine.connect()
    holding = gate_keeper.begin()
    gate_keeper.execute(text("SELECT * FROM registry_head FOR UPDATE"))
    workers = {
        version: subprocess.Popen(
            [
                sys.executable,
                "-c",
                WORKER,
                db_url,
                f"s3://{s3_bucket}/refit",
                str(checkpoint(tmp_path, version)),
                version,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=os.environ.copy(),
        )
        for version in ("v2a", "v2b")
    }
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with engine.connect() as conn:
            waiting = conn.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE wait_event_type = 'Lock' AND datname = current_database()"
                )
            ).scalar()
        if waiting == 2:
            break
        time.sleep(0.2)
    assert waiting == 2, "both publishers should be waiting on the registry head"
    holding.commit()
    gate_keeper.close()
    outcomes = {}
    for version, process in workers.items():
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, err
        outcomes[version] = out.split()[-1]

    assert sorted(outcomes.values()) == ["promoted", "superseded"]
    winner = next(v for v, outcome in outcomes.items() if outcome == "promoted")
    loser = next(v for v in outcomes if v != winner)
    assert champions(engine) == [winner]
    assert read_pointer(store)["version"] == winner
    with engine.connect() as conn:
        head = conn.execute(text("SELECT champion FROM registry_head")).scalar()
    assert head == winner
    assert sorted(log_lines(engine)[1:]) == sorted([("promoted", winner, "v1"), ("superseded", loser, "v1")])


def test_rollback_restores_the_previous_champion_and_the_pointer(registry, tmp_path):
    engine, store, publish = registry
    publish("v1", True, None)
    publish("v2", True, "v1")
    moved = rollback(engine, store, None, "v2 hurts conversions", "alice", tmp_path / "work")
    assert moved == {"from": "v2", "to": "v1"}
    assert champions(engine) == ["v1"]
    assert read_pointer(store)["version"] == "v1"
    assert read_pointer(store)["manifest_sha256"] == get_version(engine, "v1")["manifest_sha256"]
    assert get_version(engine, "v2")["status"] == "retired"
    with engine.connect() as conn:
        last = conn.execute(text("SELECT * FROM promotion_log ORDER BY id DESC LIMIT 1")).mappings().one()
    assert (last["decision"], last["challenger_version"], last["champion_version"]) == ("rolled_back", "v1", "v2")
    assert (last["actor"], last["reason"]) == ("alice", "v2 hurts conversions")
    # a second bare rollback undoes the first
    assert rollback(engine, store, None, "undo", "alice", tmp_path / "work") == {"from": "v1", "to": "v2"}


def test_rollback_refuses_a_corrupt_version_and_changes_nothing(registry, tmp_path):
    engine, store, publish = registry
    publish("v1", True, None)
    publish("v2", True, "v1")
    pointer = store.get(POINTER)
    store.put(f"{model_prefix('v1')}/model.safetensors", b"bit rot")
    with pytest.raises(CheckpointError, match="model.safetensors"):
        rollback(engine, store, "v1", "try", "alice", tmp_path / "work")
    assert champions(engine) == ["v2"]
    assert store.get(POINTER) == pointer
    assert log_lines(engine)[-1][0] == "promoted"


def test_rollback_refuses_versions_that_were_never_champion(registry, tmp_path):
    engine, store, publish = registry
    publish("v1", True, None)
    with pytest.raises(RefitError, match="no earlier champion"):
        rollback(engine, store, None, "why", "alice", tmp_path / "work")
    publish("v2", False, "v1")
    with pytest.raises(RefitError, match="never a champion"):
        rollback(engine, store, "v2", "why", "alice", tmp_path / "work")
    with pytest.raises(RefitError, match="no model version 'v9'"):
        rollback(engine, store, "v9", "why", "alice", tmp_path / "work")
    assert champion(engine)["version"] == "v1"


def test_operators_roll_back_and_read_the_record_from_the_command_line(registry, db_url, s3_bucket, tmp_path):
    engine, store, publish = registry
    publish("v1", True, None)
    publish("v2", True, "v1")
    env = {"REFIT_DATABASE_URL": db_url, "REFIT_STORE_URL": f"s3://{s3_bucket}/refit", "REFIT_WORK_DIR": str(tmp_path)}

    refused = refit_cli("rollback", env=env)
    assert refused.returncode != 0 and "--reason" in refused.stderr
    done = refit_cli("rollback", "--reason", "complaints from the app team", "--by", "bob", "--json", env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"from": "v2", "to": "v1"}
    assert read_pointer(store)["version"] == "v1"

    shown = refit_cli("models", "show", "v2", env=env)
    assert shown.returncode == 0, shown.stderr
    assert "status retired" in shown.stdout
    assert "rolled_back by bob" in shown.stdout and "complaints from the app team" in shown.stdout
    assert "lineage: v2 (retired) <- v1 (champion)" in shown.stdout
    listed = json.loads(refit_cli("models", "--json", env=env).stdout)
    assert [(m["version"], m["status"]) for m in listed] == [("v2", "retired"), ("v1", "champion")]
    missing = refit_cli("models", "show", "v9", env=env)
    assert missing.returncode != 0 and "no model version 'v9'" in missing.stderr
