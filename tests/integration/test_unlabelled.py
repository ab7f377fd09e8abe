"""Unlabelled feedback on the real Postgres: a row with text and no target is stored and enters no
split (training, validation fold, dev set, test); snapshots count it; a label that arrives later,
by a file with the same feedback_id or by a sync that sees the source row edited, turns it
labelled as an edit; a row with neither text nor target stays quarantined; and rows an earlier
release quarantined as missing_target come back unlabelled with `refit quarantine --requeue`."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import text

from refit.data.devset import dev_rows, refresh_devset
from refit.data.ingest import ingest_file
from refit.data.snapshots import SplitConfig, snapshot_rows, split_of, superseded_rows, take_snapshot
from refit.data.source import SourceSpec, sync_source
from refit.data.validate import IngestRules
from refit.training.modeling import training_data

from helpers import count, quarantine_reasons, refit_cli, source_database, write_csv

pytestmark = pytest.mark.integration
LABELS = ("negative", "neutral", "positive")
RULES = IngestRules(labels=LABELS)
SPLIT = SplitConfig(dev_fraction=0.15, test_fraction=0.15)
WHEN = (datetime.now(timezone.utc) - timedelta(days=1)).isoformat()
FIELDS = ["feedback_id", "text", "created_at", "rating"]


def row(feedback_id: str, rating: int | str = "", text_: str | None = None) -> dict:
    return {"feedback_id": feedback_id, "text": text_ or f"review {feedback_id}", "created_at": WHEN, "rating": rating}


def ids_in(split: str, n: int, prefix: str) -> list[str]:
    """``n`` feedback ids whose stable split is ``split``."""
    found, i = [], 0
    while len(found) < n:
        candidate = f"{prefix}{i}"
        if split_of(candidate, SPLIT) == split:
            found.append(candidate)
        i += 1
    return found


def stored(engine, feedback_id: str):
    with engine.connect() as conn:
        return conn.execute(
            text("SELECT id, satisfaction, label FROM feedback WHERE feedback_id = :f"), {"f": feedback_id}
        ).one()


def test_an_unlabelled_row_is_stored_counted_and_in_no_split(engine, tmp_path):
    # Unlabelled rows whose ids would fall in each split, among labelled ones in every split.
    unlabelled = [fid for split in ("train", "dev", "test") for fid in ids_in(split, 4, f"u-{split}-")]
    labelled = [fid for split in ("train", "dev", "test") for fid in ids_in(split, 12, f"l-{split}-")]
    rows = [row(fid) for fid in unlabelled] + [row(fid, rating=1 + i % 5) for i, fid in enumerate(labelled)]
    summary = ingest_file(engine, write_csv(tmp_path / "f.csv", rows, FIELDS), RULES)
    assert (summary.accepted, summary.unlabelled, summary.quarantined) == (48, 12, 0)
    assert tuple(stored(engine, unlabelled[0]))[1:] == (None, None)

    snapshot = take_snapshot(engine, SPLIT)
    assert (snapshot.total_rows, snapshot.unlabelled_rows, snapshot.new_unlabelled_rows) == (48, 12, 12)
    assert snapshot.labelled_rows == 36
    assert sum(snapshot.split_counts[s] for s in ("train", "dev", "test")) == 36
    assert sum(snapshot.label_counts.values()) == 36 and set(snapshot.label_counts) <= set(LABELS)

    rows = snapshot_rows(engine, snapshot, SPLIT)
    assert len(rows) == 48  # the snapshot covers them...
    by_id = dict(zip(rows["feedback_id"], rows["split"], strict=True))
    assert all(by_id[fid] is None for fid in unlabelled)  # ...in no split
    assert {by_id[fid] for fid in labelled} == {"train", "dev", "test"}
    assert not set(rows.loc[rows["split"] == "test", "feedback_id"]) & set(unlabelled)

    texts = {f"review {fid}" for fid in unlabelled}
    for task in ("classification", "regression"):
        data = training_data(rows, task, list(LABELS))  # the snapshot's dev split
        assert not texts & set(data.train_texts) and not texts & set(data.dev_texts)
        assert len(data.train_texts) == 12 and len(data.dev_texts) == 12
        folded = training_data(rows, task, list(LABELS), val_fraction=0.25)  # the validation fold
        assert not texts & set(folded.train_texts) and not texts & set(folded.dev_texts)
        assert len(folded.train_texts) + len(folded.dev_texts) == 12
    # A caller that gives an unlabelled row a split still cannot train or select on it.
    forced = rows.assign(split=[split_of(fid, SPLIT) for fid in rows["feedback_id"]])
    data = training_data(forced, "regression", list(LABELS))
    assert not texts & set(data.train_texts) and not texts & set(data.dev_texts)

    devset = refresh_devset(engine, SPLIT, "test")  # the gate's frozen dev set
    dev = dev_rows(engine, devset, SPLIT)
    assert devset.rows == 12 and not set(dev["feedback_id"]) & set(unlabelled)


def test_an_unlabelled_row_is_redacted_and_checked_against_the_feature_schema_as_any_row(engine, tmp_path):
    rows = [{**row(f"s{i}", rating=4), "sessions": str(i)} for i in range(3)]  # the schema: sessions is numeric
    ingest_file(engine, write_csv(tmp_path / "a.csv", rows), RULES)
    unlabelled = [
        {**row("p1", text_="write me at jane@example.com"), "sessions": "2"},
        {**row("p2"), "sessions": "lots"},
    ]
    summary = ingest_file(engine, write_csv(tmp_path / "b.csv", unlabelled), RULES)
    assert (summary.accepted, summary.unlabelled, summary.reasons) == (1, 1, {"bad_feature": 1})
    with engine.connect() as conn:
        stored_text = conn.execute(text("SELECT text FROM feedback WHERE feedback_id = 'p1'")).scalar_one()
    assert stored_text == "write me at [EMAIL]"


def test_a_label_arriving_in_a_file_with_the_same_id_turns_the_row_labelled_as_an_edit(engine, tmp_path):
    [fid] = ids_in("train", 1, "late-")
    first = ingest_file(engine, write_csv(tmp_path / "a.csv", [row(fid), row("other", rating=4)], FIELDS), RULES)
    assert (first.accepted, first.unlabelled) == (2, 1)
    before = take_snapshot(engine, SPLIT)
    assert before.unlabelled_rows == 1
    old_pk, *_ = stored(engine, fid)

    # The ratings export: the same rows, now with the rating; the labelled row is unchanged.
    rated = [row(fid, rating=5), row("other", rating=4)]
    second = ingest_file(engine, write_csv(tmp_path / "b.csv", rated, FIELDS), RULES)
    assert (second.accepted, second.labelled_later, second.duplicates, second.quarantined) == (1, 1, 1, 0)
    new_pk, satisfaction, label = stored(engine, fid)
    assert (satisfaction, label) == (1.0, "positive") and new_pk > old_pk
    assert count(engine, "feedback") == 2

    # Recorded as an edit: the unlabelled version is kept, and the snapshot that covered it names it.
    [old] = superseded_rows(engine, before)
    assert (old["feedback_pk"], old["feedback_id"], old["satisfaction"], old["label"]) == (old_pk, fid, None, None)
    after = take_snapshot(engine, SPLIT)
    assert (after.new_rows, after.new_unlabelled_rows, after.split_counts["new"]["train"]) == (1, 0, 1)
    trained = training_data(snapshot_rows(engine, after, SPLIT), "regression", list(LABELS))
    assert f"review {fid}" in trained.train_texts

    # Once labelled, a file cannot take the label back, nor a label change the text.
    third = ingest_file(
        engine, write_csv(tmp_path / "c.csv", [row(fid), row("other", text_="another text", rating=2)], FIELDS), RULES
    )
    assert (third.accepted, third.labelled_later, third.reasons) == (0, 0, {"duplicate_conflict": 2})
    assert tuple(stored(engine, fid)) == (new_pk, 1.0, "positive")


def test_a_label_for_other_text_is_a_conflict_and_the_unlabelled_row_stays(engine, tmp_path):
    ingest_file(engine, write_csv(tmp_path / "a.csv", [row("x1")], FIELDS), RULES)
    summary = ingest_file(
        engine, write_csv(tmp_path / "b.csv", [row("x1", rating=2, text_="not the same")], FIELDS), RULES
    )
    assert (summary.accepted, summary.labelled_later, summary.reasons) == (0, 0, {"duplicate_conflict": 1})
    assert tuple(stored(engine, "x1"))[1:] == (None, None)
    assert count(engine, "feedback_history") == 0


@pytest.fixture
def source(pg_admin):
    """The team's database with its app_reviews table, read by refit through a read-only role."""
    with source_database(pg_admin) as db:
        yield db


def test_a_sync_that_sees_the_row_edited_turns_it_labelled(engine, source):
    rules = IngestRules(
        labels=LABELS,
        column_map=(
            ("feedback_id", "id"),
            ("text", "review_body"),
            ("rating", "stars"),
            ("user_id", "user_ref"),
            ("created_at", "created"),
        ),
    )
    with source["owner"].begin() as conn:
        conn.execute(
            text("INSERT INTO app_reviews (review_body, stars, user_ref) VALUES (:t, :s, 'u1')"),
            [{"t": "no stars yet", "s": None}, {"t": "five stars", "s": 5}, {"t": "", "s": None}],
        )
    spec = SourceSpec(url=source["url"], table="app_reviews", key="id", cursor="updated_at")
    first = sync_source(engine, spec, rules)
    assert (first.accepted, first.unlabelled, first.reasons) == (2, 1, {"missing_text": 1})
    before = take_snapshot(engine, SPLIT)
    assert (before.total_rows, before.unlabelled_rows) == (2, 1)
    old_pk, *_ = stored(engine, "1")

    with source["owner"].begin() as conn:  # the rating arrives days later, in place
        conn.execute(text("UPDATE app_reviews SET stars = 1, updated_at = clock_timestamp() WHERE id = 1"))
    second = sync_source(engine, spec, rules)
    assert (second.rows_read, second.edited, second.accepted, second.unlabelled) == (1, 1, 1, 0)
    new_pk, satisfaction, label = stored(engine, "1")
    assert (satisfaction, label) == (0.0, "negative") and new_pk > old_pk
    [old] = superseded_rows(engine, before)
    assert (old["feedback_pk"], old["text"], old["satisfaction"], old["label"]) == (old_pk, "no stars yet", None, None)
    after = take_snapshot(engine, SPLIT)
    assert (after.new_rows, after.new_unlabelled_rows) == (1, 0)
    assert snapshot_rows(engine, after, SPLIT).set_index("feedback_id").loc["1", "split"] == split_of("1", SPLIT)


def test_requeue_brings_back_rows_quarantined_as_missing_target_unlabelled(db_url, engine):
    # What an earlier release wrote for a row with text and no target, and for one with neither.
    earlier = [
        {"feedback_id": "old-1", "text": "no stars given", "created_at": WHEN, "rating": ""},
        {"feedback_id": "old-2", "text": "", "created_at": WHEN, "rating": ""},
    ]
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO quarantine (source, line_no, feedback_id, reason, detail, raw, raw_hash)"
                " VALUES ('old.csv', :n, :f, 'missing_target', 'no satisfaction, rating or label',"
                " CAST(:raw AS JSONB), md5(:raw))"
            ),
            [{"n": i + 2, "f": r["feedback_id"], "raw": json.dumps(r)} for i, r in enumerate(earlier)],
        )
    result = refit_cli("quarantine", "--requeue", "--json", env={"REFIT_DATABASE_URL": db_url})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"requeued": 1, "accepted": 1, "still_quarantined": 1}
    _, satisfaction, label = stored(engine, "old-1")
    assert (satisfaction, label) == (None, None)
    with engine.connect() as conn:
        left = conn.execute(text("SELECT feedback_id FROM quarantine WHERE requeued_at IS NULL")).scalars().all()
    assert left == ["old-2"]  # neither text nor target: nothing to store
    assert quarantine_reasons(engine) == {"missing_target": 2}  # the record of what happened stays
