"""The live rollout end to end on the real services: the rollout flow on the real Prefect API,
Postgres, moto's S3 server and the Slack receiver. A candidate that holds up goes shadow -> canary
-> champion (a promotion_log line per stage, the champion pointer moved by compare-and-swap at the
end); one that is worse on live labels, slower or failing is stopped on its own (the champion
pointer never moves, one alert). The prediction rows are inserted as `refit serve` writes them."""

import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.transactions import transaction
from sqlalchemy import text

from refit.core.settings import load_settings
from refit.data.db import get_engine
from refit.flows.rollout import rollout_flow
from refit.registry.layout import POINTER
from refit.registry.pointer import read_candidate, read_pointer
from refit.registry.store import open_store
from refit.registry.table import champion, get_version
from refit.rollout.evidence import live_rollout
from refit.tasks.publish import upload
from refit.tasks.rollout import start_rollout
from refit.training.challenger import Challenger

from helpers import add_feedback, checkpoint, gate_decision, log_prediction_rows, publish_and_record
from helpers import scored_request as scored

pytestmark = pytest.mark.integration


@flow(name="start-rollout-under-test")
def start_flow(version: str, folder: str) -> dict:
    """What the retrain flow does after a passing gate with REFIT_ROLLOUT on: upload, then start the
    rollout, inside the publish transaction."""
    from refit.data.snapshots import Snapshot

    settings = load_settings()
    challenger = Challenger(version, Path(folder), {"mse": 0.01}, 1, 1, 100, 1.0)
    snapshot = Snapshot(None, 0, 0, 0, 0, {}, "")
    with transaction():
        published = upload(settings, challenger)
        return start_rollout(
            settings, published, snapshot, challenger, gate_decision(True, "promote: better"), {"version": "v1"}
        )


@pytest.fixture
def live(prefect_api, monkeypatch, tmp_path, db_url, s3_bucket, slack):
    """A champion v1 and a live rollout of v2 in shadow, started as a retrain run starts it."""
    env = {
        "REFIT_DATABASE_URL": db_url,
        "REFIT_STORE_URL": f"s3://{s3_bucket}/refit",
        "REFIT_SLACK_WEBHOOK_URL": slack.url,
        "REFIT_WORK_DIR": str(tmp_path / "work"),
        "REFIT_ROLLOUT": "shadow",
        "REFIT_ROLLOUT_MIN_REQUESTS": "60",
        "REFIT_ROLLOUT_MIN_LABELS": "30",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    engine = get_engine(db_url)
    store = open_store(env["REFIT_STORE_URL"])
    publish_and_record(engine, store, tmp_path, "v1", gate_decision(True), None)
    started = start_flow("v2", str(checkpoint(tmp_path, "v2")))
    assert started["outcome"] == "rollout" and started["stage"] == "shadow"
    slack.reset()
    yield engine, store
    engine.dispose()


def traffic(
    engine,
    n: int,
    seed: int,
    candidate=lambda truth: truth + 0.01,
    latency=(10.0, 11.0),
    candidate_errors: float = 0.0,
    served: str = "champion",
    labelled: float = 1.0,
) -> None:
    """``n`` request items of the live rollout scored by both models (the champion within 0.02 of
    what the user later says), and later feedback for a share of them: half joined by the feedback
    id the request carried, half by user and item."""
    rollout = live_rollout(engine)
    rng = np.random.default_rng(seed)
    rows, feedback = [], []
    for i in range(n):
        truth = float(rng.uniform(0.1, 0.9))
        champion_says = float(np.clip(truth + rng.uniform(-0.02, 0.02), 0, 1))
        failed = rng.random() < candidate_errors
        candidate_says = (
            (None, latency[1] * 4, "RuntimeError: boom")
            if failed
            else (float(np.clip(candidate(truth), 0, 1)), latency[1] * rng.uniform(0.9, 1.1))
        )
        ids = {"user_id": f"u{seed}-{i}", "item_id": f"i{i}", "text": f"review {seed} {i}"}
        if i % 2:
            ids["feedback_id"] = f"f{seed}-{i}"
        rows += scored(
            rollout,
            f"req-{seed}-{i}",
            (champion_says, latency[0] * rng.uniform(0.9, 1.1)),
            candidate_says,
            served=served,
            **ids,
        )
        if rng.random() < labelled:
            feedback.append(
                {
                    "feedback_id": f"f{seed}-{i}",
                    "user_id": ids["user_id"],
                    "item_id": ids["item_id"],
                    "satisfaction": truth,
                }
            )
    log_prediction_rows(engine, rows)
    later = datetime.now(timezone.utc) + timedelta(seconds=1)
    add_feedback(engine, [{**f, "created_at": later} for f in feedback])


def decisions(engine) -> list[tuple]:
    with engine.connect() as conn:
        return [
            tuple(r) for r in conn.execute(text("SELECT decision, challenger_version FROM promotion_log ORDER BY id"))
        ]


def test_a_candidate_that_holds_up_goes_shadow_canary_champion(live, slack):
    engine, store = live
    traffic(engine, 70, seed=1)
    step = rollout_flow()
    assert step["outcome"] == "canary", step["reason"]
    assert step["next_stage"] == "canary" and step["reason"].startswith("shadow passed: ")
    pointer = read_candidate(store)
    assert (pointer["version"], pointer["stage"], pointer["share"]) == ("v2", "canary", 0.1)
    assert read_pointer(store)["version"] == "v1" and champion(engine)["version"] == "v1"

    # the canary stage is a new window: the shadow stage's rows do not count for it
    waiting = rollout_flow()
    assert waiting["outcome"] == "wait" and "0 of 60 requests" in waiting["reason"]

    traffic(engine, 70, seed=2, served="candidate")
    step = rollout_flow()
    assert step["outcome"] == "promoted", step["reason"]
    assert champion(engine)["version"] == "v2" and get_version(engine, "v1")["status"] == "retired"
    assert read_pointer(store)["version"] == "v2"
    assert read_candidate(store) is None
    with engine.connect() as conn:
        ended = conn.execute(text("SELECT stage, ended_at, evidence FROM rollouts")).one()
    assert ended.stage == "promoted" and ended.ended_at is not None and ended.evidence["paired"] == 70
    assert decisions(engine) == [("promoted", "v1"), ("shadow", "v2"), ("canary", "v2"), ("promoted", "v2")]
    assert slack.kinds() == ["rollout_canary", "rollout_promoted"]
    assert rollout_flow() == {"outcome": "no_rollout"}

    # each step's evidence is an artifact in the UI
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["rollout-evidence"]))
        )
    promoted = [a.data for a in artifacts if "**promoted**" in a.data]
    assert promoted and "| measure | champion v1 | candidate v2 |" in promoted[0]
    assert "| live mse, 70 paired labels |" in promoted[0]


def test_a_candidate_worse_on_live_labels_is_stopped_and_the_champion_never_moves(live, slack):
    engine, store = live
    champion_pointer = store.get(POINTER)
    # a quarter off on every item: within the disagreement guard, clearly worse on the labels
    traffic(engine, 60, seed=3, candidate=lambda truth: truth + 0.25 if truth < 0.6 else truth - 0.25)
    step = rollout_flow()
    assert step["outcome"] == "rolled_back"
    assert step["stopped_by"] == ["live_metric"], step["reason"]
    assert "joined live labels" in step["reason"] and ": worse" in step["reason"]
    assert store.get(POINTER) == champion_pointer  # byte for byte: never rewritten
    assert champion(engine)["version"] == "v1"
    assert read_candidate(store) is None
    assert get_version(engine, "v2")["status"] == "rejected"
    with engine.connect() as conn:
        line = conn.execute(text("SELECT reason, details FROM promotion_log ORDER BY id DESC LIMIT 1")).one()
        rollout = conn.execute(text("SELECT stage, reason FROM rollouts")).one()
    assert decisions(engine)[-1] == ("rollout_stopped", "v2")
    assert line.reason == step["reason"] == rollout.reason and rollout.stage == "rolled_back"
    assert line.details["evidence"]["labels"] == 60 and line.details["decision"]["stopped_by"] == ["live_metric"]
    assert slack.kinds() == ["rollout_stopped"]  # exactly one alert
    assert "STOPPED" in slack.messages[0]["text"] and "live mse" in slack.messages[0]["blocks"][2]["text"]["text"]
    assert rollout_flow() == {"outcome": "no_rollout"}
    assert slack.kinds() == ["rollout_stopped"]


@pytest.mark.parametrize(
    ("guard", "load"),
    [("latency", {"latency": (10.0, 30.0)}), ("error_rate", {"candidate_errors": 0.2})],
)
def test_a_candidate_slower_or_failing_beyond_the_guard_is_stopped(live, slack, guard, load):
    engine, store = live
    champion_pointer = store.get(POINTER)
    traffic(engine, 60, seed=4, labelled=0.0, **load)  # no labels needed: these guards judge on the calls
    step = rollout_flow()
    assert step["outcome"] == "rolled_back"
    assert guard in step["stopped_by"], step["reason"]
    assert store.get(POINTER) == champion_pointer and champion(engine)["version"] == "v1"
    assert read_candidate(store) is None and live_rollout(engine) is None
    assert decisions(engine)[-1] == ("rollout_stopped", "v2")
    assert slack.kinds() == ["rollout_stopped"]


def test_a_stage_without_its_evidence_in_time_is_stopped(live, slack):
    engine, store = live
    traffic(engine, 10, seed=5)  # far short of 60
    assert rollout_flow()["outcome"] == "wait"
    with engine.begin() as conn:
        conn.execute(text("UPDATE rollouts SET stage_started_at = stage_started_at - interval '73 hours'"))
    step = rollout_flow()
    assert step["outcome"] == "rolled_back" and step["stopped_by"] == ["timeout"]
    assert "REFIT_ROLLOUT_STAGE_MAX_HOURS=72" in step["reason"]
    assert read_pointer(store)["version"] == "v1" and slack.kinds() == ["rollout_stopped"]


def step_with_answer(answer: dict) -> dict:
    """Run a rollout step in a thread, wait until the API shows it paused for the operator, then
    resume it with ``answer``; returns the step."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType
    from prefect.flow_runs import resume_flow_run

    result = {}
    worker = threading.Thread(target=lambda: result.setdefault("step", rollout_flow()))
    worker.start()
    paused, deadline = [], time.monotonic() + 60
    while not paused and time.monotonic() < deadline:
        time.sleep(0.3)
        with get_client(sync_client=True) as client:
            paused = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED]))
                )
            )
    assert len(paused) == 1, "the step never paused for the operator"
    resume_flow_run(paused[0].id, run_input=answer)
    worker.join(timeout=120)
    assert not worker.is_alive()
    return result["step"]


def test_with_approval_an_operator_moves_each_stage_or_stops_it(live, slack, monkeypatch):
    engine, store = live
    monkeypatch.setenv("REFIT_ROLLOUT_APPROVAL", "true")
    monkeypatch.setenv("REFIT_GATE_APPROVAL_POLL_S", "1")
    traffic(engine, 60, seed=6)
    step = step_with_answer({"approve": True, "note": "shadow looks fine", "by": "alice"})
    assert step["outcome"] == "canary" and step["approval"]["by"] == "alice"
    assert read_candidate(store)["stage"] == "canary"

    traffic(engine, 60, seed=7, served="candidate")
    step = step_with_answer({"approve": False, "note": "wait for the sale to end", "by": "bob"})
    assert step["outcome"] == "rolled_back" and step["stopped_by"] == ["operator"]
    assert "bob rejected the move to champion: wait for the sale to end" in step["reason"]
    assert read_pointer(store)["version"] == "v1" and read_candidate(store) is None
    assert [d for d, _ in decisions(engine)][-2:] == ["canary", "rollout_stopped"]
    assert slack.kinds() == ["rollout_canary", "rollout_stopped"]


def test_a_champion_changed_during_the_rollout_supersedes_it(live, slack, tmp_path):
    engine, store = live
    traffic(engine, 20, seed=8)
    # promoted directly meanwhile (a run with REFIT_ROLLOUT=off, or `refit rollback`)
    assert publish_and_record(engine, store, tmp_path, "v3", gate_decision(True), "v1") == "promoted"
    step = rollout_flow()
    assert step["outcome"] == "superseded" and step["stopped_by"] == ["champion_changed"]
    assert read_pointer(store)["version"] == "v3" and read_candidate(store) is None
    assert decisions(engine)[-1] == ("superseded", "v2") and get_version(engine, "v2")["status"] == "rejected"
    with engine.connect() as conn:
        assert conn.execute(text("SELECT stage FROM rollouts")).scalar() == "superseded"
    assert slack.kinds() == ["rollout_superseded"]
