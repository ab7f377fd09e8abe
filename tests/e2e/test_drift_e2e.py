"""Every drift scenario once through the real services: feedback ingested into Postgres, the
champion published to and fetched from the S3 store, the check recorded in ``drift_reports``
with its HTML and JSON in the store, Slack told of each retrain, N-of-M and cooldown read back
from the recorded history."""

import json
from datetime import timedelta

import pytest
from sqlalchemy import text

from refit.core.settings import load_settings
from refit.data.db import get_engine
from refit.data.devset import refresh_devset
from refit.data.snapshots import SplitConfig, take_snapshot
from refit.registry.store import open_store
from refit.registry.versions import publish_checkpoint
from refit.sim.scenarios import EXPECTED_SIGNALS, START, base_rows, draw_rows, label_noise_fraction
from refit.tasks.drift import run_and_announce as run_drift_check

from helpers import dev_split_rows
from helpers import ingest_rows as _ingest

pytestmark = pytest.mark.integration
PERIOD = timedelta(days=30)


@pytest.fixture
def drift_world(refit_env, drift_champion, tmp_path, monkeypatch):
    """A database holding the champion's training data and a large dev set, the champion
    published to the store, and settings whose current window is the last 30 days."""
    monkeypatch.setenv("REFIT_DRIFT_MIN_ROWS", "100")
    monkeypatch.setenv("REFIT_DRIFT_SAMPLE_CAP", "2000")
    monkeypatch.setenv("REFIT_DRIFT_EMBEDDING_ROWS", "150")  # EmbeddingsDrift's t-SNE picture stays small
    monkeypatch.setenv("REFIT_DRIFT_WINDOW_DAYS", str(PERIOD.days))
    settings = load_settings()
    engine = get_engine(settings.database_url)
    split = SplitConfig.from_settings(settings)
    _ingest(settings, base_rows(1000, 5, id_prefix="train", start=START), tmp_path / "reference.csv")
    _ingest(settings, dev_split_rows(5000, split, start=START - PERIOD), tmp_path / "dev.csv")
    snapshot = take_snapshot(engine, split)
    refresh_devset(engine, split, "drift calibration")
    publish_checkpoint(open_store(settings.store_url), drift_champion.folder, "v-calibration")
    return settings, engine, {"version": "v-calibration", "snapshot_id": snapshot.id}


KINDS = ["null", "new_category", "satisfaction_mix", "text_length", "feature_shift", "label_noise", "identical", "tiny"]


def test_every_scenario_through_postgres_and_the_store(drift_world, drift_champion, slack, tmp_path):
    settings, engine, champion = drift_world
    store = open_store(settings.store_url)
    noise = label_noise_fraction(drift_champion, rise=0.3)
    outcomes = {}
    for k, kind in enumerate(KINDS):
        start = START + (k + 2) * PERIOD
        size = 5000 if kind == "label_noise" else 1000
        _, rows = draw_rows(kind, size, k, noise, start=start)
        if kind == "identical":  # the reference rows again, as new feedback
            rows = [{**r, "feedback_id": f"again-{r['feedback_id']}"} for r in base_rows(1000, 5, id_prefix="train",
                                                                                          start=start)]  # fmt: skip
        _ingest(settings, rows, tmp_path / f"{kind}.csv")
        slack.messages.clear()
        # EmbeddingsDrift's t-SNE picture costs ~10 s: draw it for one scenario only
        picture = kind == "new_category"
        summary = run_drift_check(load_settings(drift_embeddings_picture=picture), champion, now=start + PERIOD)
        outcomes[kind] = summary
        assert summary["current_rows"] == len(rows), kind  # only this period's rows are the window
        if kind in EXPECTED_SIGNALS:
            assert summary["decision"] == "retrain", (kind, summary["reasons"])
            assert EXPECTED_SIGNALS[kind] & set(summary["drifted_columns"]), (kind, summary["drifted_columns"])
            assert slack.kinds() == ["drift"]
            assert all(reason in slack.messages[0]["text"] for reason in summary["reasons"])
        else:
            expected = "insufficient_data" if kind == "tiny" else "no_drift"
            assert summary["decision"] == expected, (kind, summary["reasons"], summary["drifted_columns"])
            assert slack.messages == []
        if kind != "tiny":
            key = summary["html_uri"].split(f"{store.bucket}/{store.prefix}/", 1)[1]
            assert b"<html" in store.get(key).lower()
            assert store.exists(key.replace("report.html", "embeddings.html")) == picture
            stored = json.loads(store.get(key.replace("report.html", "report.json")))
            assert stored["decision"] == summary["decision"] and stored["evidently"]["metrics"]

    with engine.connect() as conn:
        rows = conn.execute(text("SELECT * FROM drift_reports ORDER BY id")).mappings().all()
    assert [r["decision"] for r in rows] == [outcomes[k]["decision"] for k in KINDS]
    recorded = rows[KINDS.index("satisfaction_mix")]
    target = next(s for s in recorded["signals"] if s["column"] == "target")
    assert target["drifted"] and target["method"] == "wasserstein" and target["score"] > target["threshold"]
    assert {"performance", "embeddings", "text", "descriptors"} <= {s["group"] for s in recorded["signals"]}
    assert recorded["policy"]["window_days"] == PERIOD.days and recorded["drift_detected"] is True
    assert rows[KINDS.index("tiny")]["drift_detected"] is None


def test_confirmation_and_cooldown_read_the_recorded_history(drift_world, slack, tmp_path, monkeypatch):
    settings, engine, champion = drift_world
    monkeypatch.setenv("REFIT_DRIFT_CONFIRM_N", "2")
    monkeypatch.setenv("REFIT_DRIFT_CONFIRM_M", "3")
    monkeypatch.setenv("REFIT_DRIFT_COOLDOWN_HOURS", "48")
    monkeypatch.setenv("REFIT_DRIFT_EMBEDDINGS_PICTURE", "false")
    monkeypatch.delenv("REFIT_DRIFT_WINDOW_DAYS")  # the current window: everything since the champion
    settings = load_settings()
    _, rows = draw_rows("satisfaction_mix", 1000, 0, start=START + 2 * PERIOD)
    _ingest(settings, rows, tmp_path / "shift.csv")
    now = None  # the cooldown compares the real time with the recorded retrain
    first = run_drift_check(settings, champion, now=now)
    assert (first["decision"], first["drift_detected"]) == ("unconfirmed", True)
    second = run_drift_check(settings, champion, now=now)
    assert second["decision"] == "retrain" and "2 of the last 2" in second["reasons"][-1]
    third = run_drift_check(settings, champion, now=now)  # the recorded retrain starts the cooldown
    assert third["decision"] == "unconfirmed"  # confirmation starts again after a retrain
    fourth = run_drift_check(settings, champion, now=now)
    assert fourth["decision"] == "cooldown"
    forced = run_drift_check(settings, champion, now=now, force=True)
    assert forced["decision"] == "retrain" and forced["forced"] and forced["reasons"][0] == "forced by the operator"
    assert slack.kinds() == ["drift"]  # only the confirmed, signal-driven retrain was announced, not the forced one
