"""The champion's quality estimated without labels, through the real services: the scheduled
``drift-check`` flow on a real Prefect API reads unlabelled feedback from Postgres and the champion
from the S3 store; a window on which the champion is worse retrains on its estimate alone, a null
window does nothing; the answers a real ``refit serve`` logged are estimated too, by the drift check
and by ``refit estimate --served``."""

import json
import time
from datetime import datetime, timedelta, timezone

import httpx
import pytest
from sqlalchemy import text

from refit.core.settings import load_settings
from refit.data.db import get_engine
from refit.data.devset import refresh_devset
from refit.data.snapshots import SplitConfig, take_snapshot
from refit.flows.drift_check import drift_check_flow
from refit.registry.promotion import record_decision
from refit.registry.store import open_store
from refit.registry.versions import publish_checkpoint
from refit.rollout.evidence import live_rollout
from refit.rollout.stages import start_rollout
from refit.serving.app import create_app
from refit.serving.follower import Champion
from refit.sim.scenarios import START, base_rows

from helpers import dev_split_rows, gate_decision, ingest_rows, log_prediction_rows, refit_cli, scored_request, serving

pytestmark = pytest.mark.e2e
NOW = datetime.now(timezone.utc)
TOKEN = "estimate-token"


def unlabelled(rows: list[dict], start: datetime) -> list[dict]:
    """The rows as feedback that arrived from ``start`` on, an hour apart, with no rating."""
    return [{**r, "rating": "", "created_at": (start + timedelta(hours=i)).isoformat()} for i, r in enumerate(rows)]


def negative(n: int, seed: int) -> list[dict]:
    """Base-regime reviews of one and two stars: the champion's squared error on them is about
    three times its dev error (it rates them 0.27-0.30 on a 0-1 scale, where they are 0 and 0.25)."""
    found = [r for r in base_rows(8 * n, seed, id_prefix=f"neg{seed}") if int(r["rating"]) <= 2]
    assert len(found) >= n
    return found[:n]


@pytest.fixture
def estimate_world(prefect_api, refit_env, drift_champion, tmp_path, monkeypatch):
    """The champion's training rows and a dev set in Postgres, the champion published and recorded
    in the registry; the drift check's window is the feedback of the last ``REFIT_DRIFT_WINDOW_DAYS``."""
    for key, value in {
        "REFIT_DRIFT_MIN_ROWS": "100",
        "REFIT_DRIFT_EMBEDDING_ROWS": "150",
        "REFIT_DRIFT_EMBEDDINGS_PICTURE": "false",
        "REFIT_DRIFT_BOOTSTRAP_ROUNDS": "200",
    }.items():
        monkeypatch.setenv(key, value)
    settings = load_settings()
    engine = get_engine(settings.database_url)
    split = SplitConfig.from_settings(settings)
    ingest_rows(settings, base_rows(600, 5, id_prefix="train", start=START), tmp_path / "train.csv")
    ingest_rows(settings, dev_split_rows(2000, split, start=START), tmp_path / "dev.csv")
    snapshot = take_snapshot(engine, split)
    refresh_devset(engine, split, "estimate calibration")
    store = open_store(settings.store_url)
    published = publish_checkpoint(store, drift_champion.folder, "v-estimate")
    outcome = record_decision(engine, store, published, snapshot_id=snapshot.id, task="regression",
                              metrics={}, decision=gate_decision(True), champion_version=None)  # fmt: skip
    assert outcome == "promoted"
    return settings, engine, store


def quality(summary: dict) -> dict:
    return {s["column"]: s for s in summary["signals"] if s["group"] in ("performance", "estimated_performance")}


def test_an_unlabelled_window_the_champion_is_worse_on_retrains_by_its_estimate_alone(
    estimate_world, slack, tmp_path, monkeypatch
):
    settings, engine, store = estimate_world
    # A null window: 300 reviews of the champion's own population, no labels, 60 to 48 days ago.
    ingest_rows(settings, unlabelled(base_rows(300, 77, id_prefix="null"), NOW - timedelta(days=60)),
                tmp_path / "null.csv")  # fmt: skip
    monkeypatch.setenv("REFIT_DRIFT_WINDOW_DAYS", "90")
    null = drift_check_flow()
    assert null["decision"] == "no_drift", null["reasons"]
    signals = quality(null)
    assert signals["performance"]["score"] is None  # no labels: nothing realized
    estimated = signals["estimated_performance"]
    assert estimated["score"] is not None and not estimated["drifted"]
    assert estimated["detail"]["estimated"] and estimated["detail"]["labelled_rows"] == 0
    assert estimated["detail"]["current_rows"] == 300
    assert slack.kinds() == []

    # A worse window: 300 one- and two-star reviews, no labels, in the last 12 days. Only the
    # estimate may trigger, so the retrain can be nobody else's doing.
    ingest_rows(settings, unlabelled(negative(300, 78), NOW - timedelta(days=12)), tmp_path / "worse.csv")
    monkeypatch.setenv("REFIT_DRIFT_WINDOW_DAYS", "30")
    monkeypatch.setenv("REFIT_DRIFT_TRIGGERS", "estimated_performance")
    monkeypatch.setenv("REFIT_DRIFT_SHARE", "1.0")
    worse = drift_check_flow()
    assert worse["decision"] == "retrain" and worse["announced"], worse["reasons"]
    assert len(worse["reasons"]) == 1 and worse["reasons"][0].startswith("estimated_performance drifted")
    estimated = quality(worse)["estimated_performance"]
    assert estimated["drifted"] and estimated["detail"]["labelled_rows"] == 0
    assert estimated["detail"]["current"] > 1.5 * estimated["detail"]["dev"]  # the estimated MSE
    assert estimated["detail"]["loss_interval"][0] > 0

    # Slack and the stored report say the figure was estimated, not realized.
    [notice] = slack.messages
    assert "estimated without labels" in notice["text"] and "realized on the window's labelled rows" in notice["text"]
    # the champion's quality over time, as a PNG in the store
    assert worse["quality_plot_uri"].endswith("reports/quality/v-estimate.png")
    assert store.get("reports/quality/v-estimate.png").startswith(b"\x89PNG")
    with engine.connect() as conn:
        recorded = conn.execute(text("SELECT signals FROM drift_reports ORDER BY id")).scalars().all()
    assert [any(s["column"] == "estimated_performance" and s["drifted"] for s in r) for r in recorded] == [False, True]


def test_the_answers_a_real_refit_serve_logged_are_estimated(estimate_world, db_url, tmp_path, monkeypatch):
    settings, engine, _ = estimate_world
    served_settings = load_settings(
        serve_token=TOKEN, serve_log_predictions=True, serve_log_flush_s=0.2, serve_poll_s=0.5,
        work_dir=tmp_path / "serve-work",
    )  # fmt: skip
    champion = Champion(served_settings)
    champion.refresh()
    texts = [r["text"] for r in negative(160, 79)]
    with serving(create_app(served_settings, champion)) as url:
        for i in range(0, len(texts), 16):
            answer = httpx.post(f"{url}/predict", json={"items": [{"text": t} for t in texts[i : i + 16]]},
                                headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)  # fmt: skip
            assert answer.status_code == 200, answer.text
        deadline, logged = time.monotonic() + 30, 0
        while time.monotonic() < deadline and logged < len(texts):
            with engine.connect() as conn:
                logged = conn.execute(text("SELECT count(*) FROM prediction_log")).scalar()
            time.sleep(0.2)
    assert logged == len(texts)

    # ``refit estimate --served``, as an operator runs it
    result = refit_cli("estimate", "--served", "--json")
    assert result.returncode == 0, result.stderr
    estimate = json.loads(result.stdout)
    assert estimate["window_rows"] == len(texts) and estimate["labelled_rows"] == 0
    assert estimate["metrics"]["mse"]["value"] > estimate["metrics"]["mse"]["dev"]

    # and the hourly drift check, beside the feedback (here a null window with no labels)
    ingest_rows(settings, unlabelled(base_rows(200, 80, id_prefix="null"), NOW - timedelta(days=5)),
                tmp_path / "null.csv")  # fmt: skip
    monkeypatch.setenv("REFIT_DRIFT_WINDOW_DAYS", "30")
    summary = drift_check_flow()
    served = quality(summary)["estimated_performance_served"]
    assert served["score"] is not None and served["detail"]["current_rows"] == len(texts)
    assert served["detail"]["current"] == pytest.approx(estimate["metrics"]["mse"]["value"], rel=0.25)

    # a window too small to estimate says so, with the count, in one line
    empty = refit_cli("estimate", "--since", (NOW + timedelta(days=1)).isoformat())
    assert empty.returncode != 0 and empty.stderr.strip().count("\n") == 0
    assert "insufficient data: 0 window rows" in empty.stderr


def test_a_live_rollout_without_labels_shows_both_models_estimates_as_evidence_only(
    estimate_world, drift_champion, tmp_path
):
    settings, engine, store = estimate_world
    published = publish_checkpoint(store, drift_champion.folder, "v-candidate")
    start_rollout(engine, store, published, snapshot_id=None, task="regression", metrics={},
                            decision=gate_decision(True, "promote: better"), champion_version="v-estimate",
                            stage="shadow", canary_share=0.1, shadow_share=1.0, actor="test")  # fmt: skip
    rollout = live_rollout(engine)
    # both models' answers on 150 shadow items, as refit serve logs them; no label has joined
    texts = [r["text"] for r in negative(150, 81)]
    rows = []
    for i, (text_, score) in enumerate(zip(texts, drift_champion.predict(texts).reshape(-1), strict=True)):
        rows += scored_request(rollout, f"r{i}", (float(score), 5.0), (float(score), 5.0), text=text_)
    log_prediction_rows(engine, rows)

    env = {"REFIT_ROLLOUT_MIN_LABELS": "50", "REFIT_ROLLOUT_MIN_REQUESTS": "10"}
    result = refit_cli("rollout", "status", "--json", env=env)
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    estimates = shown["shadow_estimates"]
    assert estimates["items"] == 150 and "evidence only" in estimates["note"]
    for role, version in (("champion", "v-estimate"), ("candidate", "v-candidate")):
        mine = estimates[role]
        assert mine["version"] == version and mine["metric"] == shown["evidence"]["metric"]
        assert mine["low"] <= mine["value"] <= mine["high"] and mine["value"] != mine["dev"]
    # the step still waits for labels: an estimate never advances a stage
    assert shown["outcome"] == "wait" and shown["evidence"]["labels"] == 0
