"""The live rollout on the real Postgres and the moto S3 server: starting one records the candidate
and its stage without touching the champion, a newer passing challenger supersedes it, and the
live evidence (per model, paired, joined to later feedback) equals what is computed by hand."""

import json
from datetime import timedelta

import numpy as np
import pytest
from sqlalchemy import create_engine, text

from refit.gate.bootstrap import paired_bootstrap
from refit.gate.rule import GatePolicy
from refit.registry.pointer import read_candidate, read_pointer
from refit.registry.store import open_store
from refit.registry.table import collect_garbage, get_version
from refit.registry.versions import publish_checkpoint
from refit.rollout.evidence import gather_evidence, live_rollout
from refit.rollout.stages import start_rollout

from helpers import add_feedback, checkpoint, gate_decision, log_prediction_rows, publish_and_record, refit_cli
from helpers import scored_request as scored

pytestmark = pytest.mark.integration

GATE = GatePolicy(metric="mse", resamples=400, confidence=0.95, seed=3)


@pytest.fixture
def registry(db_url, s3_bucket, tmp_path):
    """A champion v1, and ``start(version)`` that publishes a challenger and starts its rollout."""
    engine = create_engine(db_url)
    store = open_store(f"s3://{s3_bucket}/refit")
    publish_and_record(engine, store, tmp_path, "v1", gate_decision(True), None)

    def start(version: str, stage: str = "shadow", champion: str = "v1") -> dict:
        published = publish_checkpoint(store, checkpoint(tmp_path, version), version)
        return start_rollout(
            engine,
            store,
            published,
            snapshot_id=None,
            task="regression",
            metrics={},
            decision=gate_decision(True, "promote: better"),
            champion_version=champion,
            stage=stage,
            canary_share=0.1,
            shadow_share=0.5,
            actor="test",
        )

    yield engine, store, start
    engine.dispose()


def log_lines(engine) -> list[tuple]:
    with engine.connect() as conn:
        return [
            tuple(r) for r in conn.execute(text("SELECT decision, challenger_version FROM promotion_log ORDER BY id"))
        ]


def test_a_passing_challenger_starts_in_shadow_and_the_champion_stays(registry, tmp_path):
    engine, store, start = registry
    started = start("v2")
    assert started["outcome"] == "rollout" and started["stage"] == "shadow"
    rollout = live_rollout(engine)
    assert (rollout["id"], rollout["version"], rollout["champion_version"]) == (started["rollout_id"], "v2", "v1")
    assert get_version(engine, "v2")["status"] == "candidate"
    assert get_version(engine, "v1")["status"] == "champion"
    assert read_pointer(store)["version"] == "v1"
    pointer = read_candidate(store)
    assert (pointer["version"], pointer["rollout_id"], pointer["stage"]) == ("v2", rollout["id"], "shadow")
    assert (pointer["share"], pointer["shadow_share"]) == (0.0, 0.5)  # shadow answers nothing
    assert log_lines(engine)[-1] == ("shadow", "v2")
    with engine.connect() as conn:
        details = conn.execute(text("SELECT details FROM promotion_log ORDER BY id DESC LIMIT 1")).scalar()
    assert details["promote"] and details["rollout"] == {"id": rollout["id"], "stage": "shadow"}

    # a newer passing challenger supersedes it
    again = start("v3", stage="canary")
    assert again["superseded_rollout"] == rollout["id"]
    assert live_rollout(engine)["version"] == "v3" and live_rollout(engine)["stage"] == "canary"
    assert get_version(engine, "v2")["status"] == "rejected"
    assert log_lines(engine)[-2:] == [("superseded", "v2"), ("canary", "v3")]
    pointer = read_candidate(store)
    assert (pointer["version"], pointer["stage"], pointer["share"]) == ("v3", "canary", 0.1)
    with engine.connect() as conn:
        ended = conn.execute(text("SELECT stage, reason FROM rollouts WHERE id = :id"), {"id": rollout["id"]}).one()
    assert ended.stage == "superseded" and "superseded by v3" in ended.reason
    assert read_pointer(store)["version"] == "v1"

    # the live candidate is never garbage-collected, however many newer rejected versions there are
    for version in ("v4", "v5"):
        publish_and_record(engine, store, tmp_path, version, gate_decision(False), "v1")
    doomed = {g["version"] for g in collect_garbage(engine, store, keep=1, dry_run=True)}
    assert doomed == {"v2", "v4"}


def test_a_gate_passed_against_an_old_champion_does_not_start(registry, tmp_path):
    engine, store, start = registry
    publish_and_record(engine, store, tmp_path, "v2", gate_decision(True), "v1")  # promoted meanwhile
    assert start("v3", champion="v1")["outcome"] == "superseded"
    assert live_rollout(engine) is None and read_candidate(store) is None
    assert get_version(engine, "v3")["status"] == "rejected"
    assert log_lines(engine)[-1] == ("superseded", "v3")


def test_live_evidence_per_model_and_paired_equals_the_hand_computed_numbers(registry):
    engine, _, start = registry
    start("v2")
    with engine.begin() as conn:  # the stage began two hours ago
        t0 = conn.execute(
            text("UPDATE rollouts SET stage_started_at = now() - interval '2 hours' RETURNING stage_started_at")
        ).scalar()
    rollout = live_rollout(engine)
    at = lambda minutes: t0 + timedelta(minutes=minutes)  # noqa: E731

    rows = [
        # joined by user and item: feedback after it
        *scored(rollout, "r1", (0.8, 10.0), (0.6, 12.0), user_id="u1", item_id="i1", logged_at=at(1)),
        # the request carried the feedback id: joined by it, whenever the feedback is dated
        *scored(
            rollout, "r2", (0.3, 11.0), (0.5, 13.0), feedback_id="fb2", user_id="u2", item_id="i2", logged_at=at(2)
        ),
        # its feedback came before the prediction: not joined
        *scored(rollout, "r3", (0.5, 12.0), (0.5, 14.0), user_id="u3", item_id="i3", logged_at=at(3)),
        # scored twice before the feedback: the latest one is joined
        *scored(rollout, "r4a", (0.1, 13.0), (0.2, 15.0), user_id="u4", item_id="i4", logged_at=at(10)),
        *scored(rollout, "r4b", (0.4, 14.0), (0.7, 16.0), user_id="u4", item_id="i4", logged_at=at(20)),
        # the candidate's call failed: the champion's own metric has it, the paired comparison not
        *scored(
            rollout,
            "r5",
            (0.6, 15.0),
            (None, 50.0, "TimeoutError: model call"),
            user_id="u5",
            item_id="i5",
            logged_at=at(4),
        ),
        # two items of one request, and one request that holds the same text twice: no ids
        *scored(rollout, "r6", (0.9, 16.0), (0.8, 17.0), text="first item", logged_at=at(5)),
        *scored(rollout, "r6", (0.1, 16.0), (0.3, 17.0), text="second item", logged_at=at(5)),
        *scored(rollout, "r8", (0.5, 17.0), (0.6, 18.0), text="same", logged_at=at(6)),
        *scored(rollout, "r8", (0.5, 17.0), (0.6, 18.0), text="same", logged_at=at(6)),
        # before the stage began, and another rollout's rows: outside the window
        *scored(rollout, "r7", (0.0, 99.0), (1.0, 99.0), user_id="u7", item_id="i7", logged_at=at(-60)),
        *scored(
            {**rollout, "id": rollout["id"] + 100},
            "r9",
            (0.0, 99.0),
            (1.0, 99.0),
            user_id="u1",
            item_id="i1",
            logged_at=at(7),
        ),
    ]
    log_prediction_rows(engine, rows)
    add_feedback(
        engine,
        [
            {"feedback_id": "f1", "user_id": "u1", "item_id": "i1", "satisfaction": 0.9, "created_at": at(30)},
            {"feedback_id": "fb2", "user_id": "u2", "item_id": "i2", "satisfaction": 0.2, "created_at": at(-5)},
            {"feedback_id": "f3", "user_id": "u3", "item_id": "i3", "satisfaction": 0.1, "created_at": at(2)},
            {"feedback_id": "f4", "user_id": "u4", "item_id": "i4", "satisfaction": 0.5, "created_at": at(30)},
            {"feedback_id": "f5", "user_id": "u5", "item_id": "i5", "satisfaction": 0.7, "created_at": at(30)},
            {"feedback_id": "f7", "user_id": "u7", "item_id": "i7", "satisfaction": 0.5, "created_at": at(30)},
        ],
    )

    evidence = gather_evidence(engine, rollout, GATE, "regression", [])
    champion, candidate = evidence.champion, evidence.candidate
    # r1 r2 r3 r4a r4b r5 and the four items of r6 and r8; the candidate failed once
    assert (champion.items, champion.requests, champion.errors) == (10, 8, 0)
    assert (candidate.items, candidate.requests, candidate.errors, candidate.error_rate) == (10, 8, 1, 0.1)
    champion_ms = [10, 11, 12, 13, 14, 15, 16, 16, 17, 17]
    candidate_ms = [12, 13, 14, 15, 16, 50, 17, 17, 18, 18]
    assert champion.p50_ms == pytest.approx(np.percentile(champion_ms, 50))
    assert candidate.p99_ms == pytest.approx(np.percentile(candidate_ms, 99))
    # each model's live metric on its own joined labels: f1, fb2, f4 (the latest of r4), f5
    assert champion.labels == 4
    assert champion.live["mse"] == pytest.approx(np.mean(np.square([0.8 - 0.9, 0.3 - 0.2, 0.4 - 0.5, 0.6 - 0.7])))
    assert candidate.labels == 3  # its call for f5's item failed
    assert candidate.live["mse"] == pytest.approx(np.mean(np.square([0.6 - 0.9, 0.5 - 0.2, 0.7 - 0.5])))
    # paired items: every item both scored (r8's two copies pair one to one, not four ways)
    assert evidence.paired == 9
    assert evidence.disagreement == pytest.approx(np.mean([0.2, 0.2, 0.0, 0.1, 0.3, 0.1, 0.2, 0.1, 0.1]))
    # the paired comparison: the gate's bootstrap on the joined paired rows, candidate minus champion
    truth, champ, cand = [0.9, 0.2, 0.5], [0.8, 0.3, 0.4], [0.6, 0.5, 0.7]
    expected = paired_bootstrap("mse", np.array(truth), np.array(cand), np.array(champ), 1, 400, 0.95, 3)
    assert evidence.labels == 3
    comparison = evidence.comparison
    assert (comparison["point"], comparison["low"], comparison["high"]) == pytest.approx(
        (expected.point, expected.low, expected.high)
    )
    assert comparison["champion"] == pytest.approx(0.01) and comparison["candidate"] == pytest.approx(0.22 / 3)
    assert 1.9 < evidence.hours_in_stage < 2.2


def test_classification_evidence_compares_labels(db_url, s3_bucket, tmp_path):
    engine = create_engine(db_url)
    store = open_store(f"s3://{s3_bucket}/refit")
    publish_and_record(engine, store, tmp_path, "v1", gate_decision(True), None)
    published = publish_checkpoint(store, checkpoint(tmp_path, "v2"), "v2")
    start_rollout(
        engine,
        store,
        published,
        snapshot_id=None,
        task="classification",
        metrics={},
        decision=gate_decision(True),
        champion_version="v1",
        stage="canary",
        canary_share=0.1,
        shadow_share=1.0,
    )
    rollout = live_rollout(engine)
    labels = ["negative", "neutral", "positive"]
    answers = [
        ("positive", "positive", "positive"),
        ("negative", "neutral", "negative"),
        ("neutral", "neutral", "positive"),
        ("positive", "negative", "negative"),
    ]
    rows = []
    for i, (champ, cand, _) in enumerate(answers):
        rows += scored(rollout, f"r{i}", (champ, 5.0), (cand, 5.0), served="candidate", feedback_id=f"f{i}")
    log_prediction_rows(engine, rows)
    add_feedback(
        engine,
        [
            {"feedback_id": f"f{i}", "label": truth, "created_at": rollout["as_of"]}
            for i, (_, _, truth) in enumerate(answers)
        ],
    )
    evidence = gather_evidence(engine, rollout, GatePolicy(metric="accuracy", resamples=200), "classification", labels)
    assert evidence.paired == 4 and evidence.disagreement == pytest.approx(0.5)
    assert evidence.champion.live["accuracy"] == pytest.approx(0.5)
    assert evidence.candidate.live["accuracy"] == pytest.approx(0.5)
    assert evidence.comparison["point"] == pytest.approx(0.0)

    status = refit_cli(
        "rollout",
        "status",
        "--json",
        env={
            "REFIT_DATABASE_URL": db_url,
            "REFIT_TASK": "classification",
            "REFIT_ROLLOUT_MIN_REQUESTS": "4",
            "REFIT_ROLLOUT_MIN_LABELS": "4",
        },
    )
    assert status.returncode == 0, status.stderr
    shown = json.loads(status.stdout)
    assert shown["live"] and shown["stage"] == "canary" and shown["evidence"]["paired"] == 4
    # half the labels differ: beyond the 0.35 allowed, so the next step would stop it
    assert shown["outcome"] == "would stop" and shown["stopped_by"] == ["disagreement"]
    engine.dispose()
