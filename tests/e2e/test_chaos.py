"""Faults on the real parts: an HTTP proxy in front of moto's S3 server that refuses, fails or
corrupts; Postgres connections terminated mid-query; and a short seeded chaos replay of the loop
with every fault type, after which every invariant must still hold."""

from __future__ import annotations

import time

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, EndpointConnectionError
from pydantic import SecretStr
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from refit.sim import faults as chaos
from refit.sim.backtest import simulate
from refit.sim.invariants import FAILED
from refit.sim.policies import Policy
from refit.sim.sandbox import sandbox_url
from refit.sim.stream import scenario_stream

pytestmark = pytest.mark.integration


@pytest.fixture
def proxy(s3_endpoint):
    proxy = chaos.FaultProxy(s3_endpoint).start()
    yield proxy
    proxy.stop()


def eventually(call, within_s: float = 15.0):
    """``call()`` once it stops raising (the fault's time is up), failing after ``within_s``."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            return call()
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_proxy_refuses_fails_and_corrupts_then_recovers(proxy, s3_bucket):
    # As refit's client: no checksums on the wire (many S3-compatible stores refuse them).
    config = Config(
        retries={"max_attempts": 1},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    client = boto3.client("s3", endpoint_url=proxy.url, config=config)
    client.put_object(Bucket=s3_bucket, Key="a", Body=b"hello world" * 10)
    proxy.fail_for(1.0)
    with pytest.raises(ClientError, match=r"\(500\)"):
        client.head_bucket(Bucket=s3_bucket)
    eventually(lambda: client.head_bucket(Bucket=s3_bucket))
    proxy.down_for(1.0)
    with pytest.raises(EndpointConnectionError):
        client.head_bucket(Bucket=s3_bucket)
    eventually(lambda: client.head_bucket(Bucket=s3_bucket))
    proxy.corrupt_next("/b")
    client.put_object(Bucket=s3_bucket, Key="b", Body=b"hello world" * 10)
    assert client.get_object(Bucket=s3_bucket, Key="b")["Body"].read() != b"hello world" * 10
    assert client.get_object(Bucket=s3_bucket, Key="a")["Body"].read() == b"hello world" * 10


def test_a_query_waiting_on_the_lock_loses_its_connection(pg_admin, db_url):
    from refit.data.db import get_engine

    url = sandbox_url(db_url, "public")
    engine = get_engine(url)
    admin = get_engine(db_url)
    with (
        chaos.drop_when_blocked(admin, "public", "feedback", "refit-public") as state,
        pytest.raises(OperationalError),
        engine.connect() as conn,
    ):
        conn.execute(text("SELECT count(*) FROM feedback")).scalar()
    assert state["dropped"] == 1
    with engine.connect() as conn:  # the pool recovers: the next query gets a live connection
        assert conn.execute(text("SELECT count(*) FROM feedback")).scalar() == 0


def test_seeded_chaos_run_keeps_every_invariant(prefect_api, sim_settings, proxy, monkeypatch, slack):
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.url)  # boto3 reaches the store through the proxy
    settings = sim_settings.model_copy(update={"slack_webhook_url": SecretStr(slack.url)})
    injector = chaos.Chaos(chaos.plan(seed=5, steps=3), proxy=proxy)
    stream = scenario_stream("steady", rows=1200, steps=4, seed=4)
    result = simulate(settings, stream, [Policy.parse("schedule:1")], 7, run_id="chaos", faults=injector)

    report = injector.report(["schedule-1"])
    assert {fault for fault, row in report.items() if row["fired"]["schedule-1"] is None} == set()
    assert result["violations"] == 0, [(r["step"], r["violations"]) for r in result["steps"] if r["violations"]]
    cycles = [c for r in result["steps"] for c in r["cycles"]]
    failed = [c for c in cycles if c["outcome"] == FAILED]
    # The killed training fails its cycle cleanly, with an alert on Slack; nothing else is lost.
    assert any("killed (SIGKILL)" in c["error"] for c in failed)
    assert all(c["alerted"] for c in failed)
    assert slack.kinds().count("failure") == len(failed)
    storm = next(r for r in result["steps"] if "drift_storm" in r["faults"])
    assert len(storm["cycles"]) == injector.storm_triggers
    duplicate = next(r for r in result["steps"] if "duplicate_delivery" in r["faults"])
    assert [d["accepted"] for d in duplicate["deliveries"]] == [300, 0]


def test_a_checkpoint_damaged_in_transit_is_uploaded_again_not_sealed(proxy, s3_bucket, monkeypatch, tmp_path):
    from refit.core.errors import CheckpointError
    from refit.registry.layout import model_prefix
    from refit.registry.store import open_store
    from refit.registry.versions import publish_checkpoint

    from helpers import checkpoint

    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.url)
    store = open_store(f"s3://{s3_bucket}/refit")
    folder = checkpoint(tmp_path, "v1")
    key = f"{model_prefix('v1')}/model.safetensors"
    proxy.corrupt_next("model.safetensors")
    with pytest.raises(CheckpointError, match="did not arrive intact") as refused:
        publish_checkpoint(store, folder, "v1")
    assert proxy.corrupted and not refused.value.permanent  # the upload task retries it
    assert not store.exists(f"{model_prefix('v1')}/manifest.json")
    publish_checkpoint(store, folder, "v1")  # the retry uploads the damaged file again, then seals
    assert store.get(key) == (folder / "model.safetensors").read_bytes()


def test_a_promotion_whose_commit_is_lost_moves_the_pointer_back(proxy, s3_bucket, db_url, monkeypatch, tmp_path):
    from refit.data.db import get_engine
    from refit.registry.pointer import read_pointer
    from refit.registry.promotion import record_decision
    from refit.registry.store import open_store
    from refit.registry.table import champion
    from refit.registry.versions import publish_checkpoint

    from helpers import checkpoint, gate_decision, publish_and_record

    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.url)
    store = open_store(f"s3://{s3_bucket}/refit")
    engine = get_engine(sandbox_url(db_url, "public"))  # its connections are named refit-public
    assert publish_and_record(engine, store, tmp_path, "v1", gate_decision(True)) == "promoted"
    v2 = publish_checkpoint(store, checkpoint(tmp_path, "v2"), "v2")
    # The registry transaction is open while the pointer is written: the database drops it then.
    proxy.on_request("PUT", "champion.json", lambda: chaos.terminate_connections(get_engine(db_url), "refit-public"))
    promote = dict(snapshot_id=None, task="regression", metrics={}, decision=gate_decision(True), champion_version="v1")
    with pytest.raises(OperationalError):
        record_decision(engine, store, v2, **promote)
    assert champion(engine)["version"] == "v1"
    assert read_pointer(store)["version"] == "v1"  # not v2, which the registry never recorded
    assert record_decision(engine, store, v2, **promote) == "promoted"  # the task's retry
    assert champion(engine)["version"] == read_pointer(store)["version"] == "v2"


def test_a_rollback_whose_commit_is_lost_moves_the_pointer_back(proxy, s3_bucket, db_url, monkeypatch, tmp_path):
    from refit.data.db import get_engine
    from refit.registry.pointer import read_pointer
    from refit.registry.promotion import rollback
    from refit.registry.store import open_store
    from refit.registry.table import champion

    from helpers import gate_decision, publish_and_record

    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.url)
    store = open_store(f"s3://{s3_bucket}/refit")
    engine = get_engine(sandbox_url(db_url, "public"))  # its connections are named refit-public
    assert publish_and_record(engine, store, tmp_path, "v1", gate_decision(True)) == "promoted"
    assert publish_and_record(engine, store, tmp_path, "v2", gate_decision(True), champion_version="v1") == "promoted"
    proxy.on_request("PUT", "champion.json", lambda: chaos.terminate_connections(get_engine(db_url), "refit-public"))
    with pytest.raises(OperationalError):
        rollback(engine, store, "v1", "bad release", "ops", tmp_path / "work")
    assert champion(engine)["version"] == "v2"
    assert read_pointer(store)["version"] == "v2"  # not v1, which the registry never recorded
    assert rollback(engine, store, "v1", "bad release", "ops", tmp_path / "work") == {"from": "v2", "to": "v1"}
    assert champion(engine)["version"] == read_pointer(store)["version"] == "v1"
