"""``refit simulate``: policies, scenario streams, a short replay through the real loop on the real
services (Postgres schemas per policy, moto S3 over HTTP), and invariant checks that catch a
violation made on purpose."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from sqlalchemy import text

from refit.sim.backtest import simulate, write_outputs
from refit.sim.invariants import FAILED, check_invariants
from refit.sim.policies import Policy
from refit.sim.sandbox import deliver, drop_sandbox, open_sandbox, sandbox_url
from refit.sim.stream import scenario_stream, steps_of

from helpers import checkpoint, gate_decision


@pytest.mark.integration
def test_replay_compares_policies_on_the_real_loop(prefect_api, sim_settings, tmp_path):
    stream = scenario_stream("sudden", rows=450, steps=3, seed=1)  # the shift comes at step 2
    policies = [Policy.parse("never"), Policy.parse("drift")]
    result = simulate(sim_settings, stream, policies, 7, run_id="t1", keep=True)

    assert result["violations"] == 0, [r["violations"] for r in result["steps"]]
    by_policy = {name: [r for r in result["steps"] if r["policy"] == name] for name in ("never", "drift")}
    for records in by_policy.values():
        assert [r["step"] for r in records] == [0, 1, 2]
        assert records[0]["online"] is None and all(r["online"]["rows"] == 150 for r in records[1:])
        assert records[0]["cycles"][0]["outcome"] == "promoted"  # the first model, against the baseline
    assert result["summary"]["never"]["retrains"] == 1
    # The drift policy ran the real drift check every later step, on the simulated clock: its
    # reports are dated at the steps' ends (confirmation and cooldown read those dates).
    drift_cycles = [r["cycles"][0] for r in by_policy["drift"][1:]]
    assert all(c["drift"]["decision"] in ("retrain", "no_drift", "unconfirmed", "cooldown") for c in drift_cycles)
    from refit.data.db import get_engine

    schema_url = sandbox_url(sim_settings.database_url, "sim_t1_drift")
    with get_engine(schema_url).connect() as conn:
        dated = conn.execute(text("SELECT created_at FROM drift_reports ORDER BY id")).scalars().all()
        feedback = conn.execute(text("SELECT count(*) FROM feedback")).scalar()
    ends = [pd.Timestamp(r["end"]) for r in by_policy["drift"]]
    assert [pd.Timestamp(d) for d in dated[-2:]] == ends[1:]
    assert feedback == 450  # each policy's own schema holds the whole stream once
    # Outputs: the table, every step as JSON, the plot.
    assert "| never | 1 | 1 |" in result["table"] and "| drift |" in result["table"]
    paths = write_outputs(result, tmp_path / "out")
    assert json.loads((tmp_path / "out" / "steps.json").read_text())["summary"].keys() == {"never", "drift"}
    assert (tmp_path / "out" / "simulate.png").read_bytes()[:4] == b"\x89PNG" and paths["plot"]


@pytest.fixture
def sandbox(sim_settings, tmp_path):
    box = open_sandbox(sim_settings, Policy.parse("never"), "inv", tmp_path / "work")
    yield box
    drop_sandbox(box)


@pytest.mark.integration
def test_invariant_checks_report_violations_made_on_purpose(sandbox, tmp_path):
    from refit.registry.pointer import read_pointer, write_pointer
    from refit.registry.promotion import record_decision
    from refit.registry.store import open_store
    from refit.registry.versions import publish_checkpoint

    box, engine = sandbox, sandbox.engine
    store = open_store(box.settings.store_url)
    stream = scenario_stream("steady", rows=60, steps=1, seed=2)
    deliver(box, steps_of(stream, 7)[0])
    published = {}
    for version, promote in (("v1", True), ("v2", False)):
        published[version] = publish_checkpoint(store, checkpoint(tmp_path, version), version)
        outcome = record_decision(
            engine,
            store,
            published[version],
            snapshot_id=None,
            task="regression",
            metrics={},
            decision=gate_decision(promote),
            champion_version="v1" if version == "v2" else None,
        )
        box.attempts.append({"step": 0, "version": version, "outcome": outcome})
    assert check_invariants(box) == []

    # The store pointer moved to a version the registry did not promote.
    pointer = read_pointer(store)
    write_pointer(store, published["v2"], "v1")
    assert any("pointer names v2" in v for v in check_invariants(box))
    write_pointer(store, published["v1"], "v2")
    assert read_pointer(store)["version"] == pointer["version"] and check_invariants(box) == []

    # The champion's weights changed in the store after publishing.
    key = "models/satisfaction/versions/v1/model.safetensors"
    store.put(key, b"\x00" + store.get(key)[1:])
    assert any("model.safetensors in the store does not match" in v for v in check_invariants(box))
    store.put_file(key, tmp_path / "v1" / "model.safetensors")

    # A delivered feedback row vanished.
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM feedback WHERE id = (SELECT min(id) FROM feedback)"))
    assert any("neither stored nor quarantined" in v for v in check_invariants(box))
    box.delivered.clear()

    # A retrain that failed without an alert, and a sealed version the registry never recorded.
    box.attempts.append({"step": 1, "version": "v3", "outcome": FAILED, "alerted": False})
    publish_checkpoint(store, checkpoint(tmp_path, "v3"), "v3")
    problems = check_invariants(box)
    assert any("failed without an alert" in v for v in problems)
    assert any("v3 is sealed in the store but not in the registry" in v for v in problems)


@pytest.mark.integration
def test_drift_reference_is_what_the_champion_trained_on(engine, tmp_path):
    """With REFIT_MAX_TRAIN_ROWS the champion saw the newest rows only; drift compares with those
    (a backtest showed a drift policy retraining every week because the reference was all history)."""
    from refit.data.ingest import ingest_file
    from refit.data.snapshots import SplitConfig, take_snapshot
    from refit.data.validate import IngestRules
    from refit.drift.windows import reference_and_current
    from refit.ops.synth import generate_feedback, write_feedback

    rows = generate_feedback(300, seed=3)
    ingest_file(engine, write_feedback(rows, tmp_path / "f.csv"), IngestRules(labels=("neg", "neu", "pos")))
    snapshot = take_snapshot(engine, SplitConfig())
    everything, _ = reference_and_current(engine, SplitConfig(), {"snapshot_id": snapshot.id})
    newest, _ = reference_and_current(engine, SplitConfig(), {"snapshot_id": snapshot.id}, max_train_rows=50)
    assert len(everything) > 150 and len(newest) == 50
    assert newest["id"].tolist() == sorted(everything["id"])[-50:]
