"""The versioned dev set, retention, and forgetting a user."""

from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import text

from refit.data.devset import current_devset, dev_rows, refresh_devset
from refit.data.ingest import ingest_file
from refit.data.privacy import forget_user
from refit.data.snapshots import SplitConfig, read_feedback, snapshot_rows, take_snapshot
from refit.data.validate import IngestRules
from refit.ops.synth import generate_feedback, write_feedback
from refit.training.modeling import training_data

from helpers import count

RULES = IngestRules(labels=("negative", "neutral", "positive"))
SPLIT = SplitConfig()


def load(engine, tmp_path, n, seed, **kwargs):
    rows = generate_feedback(n, seed=seed, id_prefix=f"s{seed}", **kwargs)
    ingest_file(engine, write_feedback(rows, tmp_path / f"{seed}.csv"), RULES)
    return rows


def test_dev_set_grows_only_when_refreshed(engine, tmp_path):
    load(engine, tmp_path, 300, 1)
    first = refresh_devset(engine, SPLIT, "initial")
    frozen = dev_rows(engine, first, SPLIT)
    assert first.version == 1 and first.rows == len(frozen) > 0

    load(engine, tmp_path, 300, 2)
    assert current_devset(engine) == first  # new feedback does not move the gate's rows
    assert dev_rows(engine, first, SPLIT)["feedback_id"].tolist() == frozen["feedback_id"].tolist()

    second = refresh_devset(engine, SPLIT, "quarterly refresh")
    assert second.version == 2 and second.rows > first.rows and second.reason == "quarterly refresh"
    assert second.content_hash != first.content_hash
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM dev_sets")).scalar() == 2


def test_empty_dev_set_is_refused(engine):
    with pytest.raises(ValueError, match="no dev-split feedback"):
        refresh_devset(engine, SPLIT, "initial")


def test_retention_drops_old_rows_from_training_but_keeps_them(engine, tmp_path):
    now = datetime.now(timezone.utc)
    load(engine, tmp_path, 200, 1, start=now - timedelta(days=400))
    load(engine, tmp_path, 200, 2, start=now - timedelta(days=10))
    snapshot = take_snapshot(engine, SPLIT)
    rows = snapshot_rows(engine, snapshot, SPLIT)
    everything = training_data(rows, "regression", list(RULES.labels))
    recent = training_data(rows, "regression", list(RULES.labels), retention_days=90)
    recent_train = rows[(rows["split"] == "train") & (rows["created_at"] > now - timedelta(days=90))]
    assert len(recent.train_texts) == len(recent_train) < len(everything.train_texts)
    assert count(engine, "feedback") == 400


def test_forget_deletes_a_users_rows_and_names_affected_models(engine, tmp_path):
    rows = load(engine, tmp_path, 300, 1)
    user = rows[0]["user_id"]
    theirs = sum(r["user_id"] == user for r in rows)
    snapshot = take_snapshot(engine, SPLIT)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO model_versions (version, snapshot_id, task, uri, manifest_sha256, metrics, status,"
                " is_champion) VALUES ('v1', :s, 'regression', 's3://b/models/v1', 'x', '{}', 'champion', TRUE)"
            ),
            {"s": snapshot.id},
        )
    result = forget_user(engine, user)
    assert result == {"rows_deleted": theirs, "affected_versions": ["v1"]}
    assert user not in set(read_feedback(engine)["user_id"])
    with engine.connect() as conn:
        log = conn.execute(text("SELECT user_hash, rows_deleted, affected_versions FROM forget_log")).one()
    assert user not in log.user_hash and log.rows_deleted == theirs and log.affected_versions == ["v1"]
