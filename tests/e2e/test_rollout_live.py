"""The live rollout with nothing inserted by hand: a real `refit serve` (uvicorn) answers with the
champion while a candidate trained on shuffled labels scores the same requests in shadow; the
users' feedback arrives later through refit's own ingest; the rollout flow (the real Prefect API)
joins it to both models' logged predictions, finds the candidate worse by the gate's paired
bootstrap, and stops the rollout: the champion pointer never moves, and one alert is sent."""

import dataclasses
import time

import httpx
import numpy as np
import pytest

from refit.core.settings import load_settings
from refit.data.db import get_engine
from refit.data.ingest import ingest_file
from refit.data.validate import IngestRules
from refit.flows.rollout import rollout_flow
from refit.models.saving import save_checkpoint
from refit.models.train import train
from refit.ops.synth import generate_feedback, write_feedback
from refit.registry.layout import POINTER
from refit.registry.pointer import read_candidate
from refit.registry.promotion import record_decision
from refit.registry.store import open_store
from refit.registry.table import champion, get_version
from refit.registry.versions import publish_checkpoint
from refit.rollout.stages import start_rollout
from refit.serving.app import create_app
from refit.serving.follower import Champion

from helpers import gate_decision, serving
from model_helpers import review_data, tiny_config

pytestmark = pytest.mark.e2e
TOKEN = "live-t0ken"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def checkpoints(tiny_model, tmp_path_factory):
    """A champion trained on the reviews' real ratings, and a candidate trained on the same reviews
    with their ratings shuffled (what a broken label join upstream would produce)."""
    data = review_data(400)
    shuffled = dataclasses.replace(data, train_targets=np.random.default_rng(0).permutation(data.train_targets))
    folders = {}
    for version, training in (("v1", data), ("v2", shuffled)):
        result = train(tiny_config(tiny_model, epochs=3, seed=1), training)
        folders[version] = save_checkpoint(result, tmp_path_factory.mktemp(version), {"version": version})
    return folders


def test_a_candidate_trained_on_shuffled_labels_is_stopped_by_what_users_say_later(
    checkpoints, prefect_api, monkeypatch, tmp_path, db_url, s3_bucket, slack
):
    env = {
        "REFIT_DATABASE_URL": db_url,
        "REFIT_STORE_URL": f"s3://{s3_bucket}/refit",
        "REFIT_SLACK_WEBHOOK_URL": slack.url,
        "REFIT_WORK_DIR": str(tmp_path / "work"),
        "REFIT_SERVE_TOKEN": TOKEN,
        "REFIT_ROLLOUT": "shadow",
        "REFIT_ROLLOUT_MIN_REQUESTS": "60",
        "REFIT_ROLLOUT_MIN_LABELS": "40",
        # only the live labels may stop it here: not CPU noise in latency, not disagreement
        "REFIT_ROLLOUT_MAX_P99_RATIO": "1000",
        "REFIT_ROLLOUT_MAX_DISAGREEMENT": "1.0",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = load_settings()
    engine, store = get_engine(db_url), open_store(settings.store_url)
    v1 = publish_checkpoint(store, checkpoints["v1"], "v1")
    record_decision(engine, store, v1, snapshot_id=None, task="regression", metrics={}, decision=gate_decision(True),
                    champion_version=None)  # fmt: skip
    v2 = publish_checkpoint(store, checkpoints["v2"], "v2")
    started = start_rollout(engine, store, v2, snapshot_id=None, task="regression", metrics={},
                            decision=gate_decision(True, "promote: a loosened gate let it through"),
                            champion_version="v1", stage="shadow", canary_share=0.1, shadow_share=1.0)  # fmt: skip
    assert started["stage"] == "shadow"
    champion_pointer = store.get(POINTER)

    later = generate_feedback(80, seed=7, id_prefix="live")
    follower = Champion(settings)
    follower.refresh()
    app = create_app(settings, follower)
    with serving(app) as url, httpx.Client(timeout=60) as http:
        assert http.post(f"{url}/reload", headers=AUTH).json()["candidate"]["version"] == "v2"
        for start in range(0, len(later), 4):
            items = [{"text": r["text"], "feedback_id": r["feedback_id"], "user_id": r["user_id"]}
                     for r in later[start : start + 4]]  # fmt: skip
            answer = http.post(f"{url}/predict", json={"items": items}, headers=AUTH).json()
            assert {p["model_version"] for p in answer["predictions"]} == {"v1"}  # shadow never answers
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            shadow = http.get(f"{url}/version").json()["shadow"]
            if shadow["queued"] == 0 and shadow["scored"] >= len(later):
                break
            time.sleep(0.1)
        assert shadow["scored"] == len(later), shadow
        app.state.prediction_log.flush()

    # the users rate what they were shown, later, through refit's own ingest
    ingested = ingest_file(engine, write_feedback(later, tmp_path / "later.csv"), IngestRules.from_settings(settings))
    assert ingested.accepted == len(later)

    step = rollout_flow()
    assert step["outcome"] == "rolled_back", step["reason"]
    assert step["stopped_by"] == ["live_metric"], step["reason"]
    evidence = step["evidence"]
    assert evidence["labels"] == len(later) and evidence["paired"] == len(later)
    assert store.get(POINTER) == champion_pointer  # byte for byte: never rewritten
    assert champion(engine)["version"] == "v1" and get_version(engine, "v2")["status"] == "rejected"
    assert read_candidate(store) is None
    assert slack.kinds() == ["rollout_stopped"]  # exactly one alert
