"""Ingestion against the real Postgres: idempotent, bad rows quarantined with reasons, good rows kept."""

import json
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import text

from refit.core.errors import InputError
from refit.data.ingest import ingest_file
from refit.data.validate import IngestRules, label_for
from refit.ops.synth import generate_feedback, write_feedback

from helpers import count, quarantine_reasons, write_csv

RULES = IngestRules(labels=("negative", "neutral", "positive"), max_text_chars=200)
NOW = datetime.now(timezone.utc)


def good(i: int, **extra) -> dict:
    return {
        "feedback_id": f"g{i}",
        "text": f"review number {i} is fine",
        "created_at": (NOW - timedelta(days=1)).isoformat(),
        "rating": 4,
        **extra,
    }


def test_ingest_is_idempotent(engine, tmp_path):
    path = write_feedback(generate_feedback(300, seed=3), tmp_path / "feedback.csv")
    first = ingest_file(engine, path, RULES)
    assert (first.accepted, first.duplicates, first.quarantined) == (300, 0, 0)
    second = ingest_file(engine, path, RULES)
    assert (second.accepted, second.duplicates) == (0, 300)
    assert count(engine, "feedback") == 300


def test_jsonl_without_ids_is_idempotent_by_content(engine, tmp_path):
    rows = [{k: v for k, v in r.items() if k != "feedback_id"} for r in generate_feedback(50, seed=4)]
    path = write_feedback(rows, tmp_path / "feedback.jsonl")
    assert ingest_file(engine, path, RULES).accepted == 50
    assert ingest_file(engine, path, RULES).accepted == 0
    assert count(engine, "feedback") == 50


def test_ratings_become_satisfaction_and_features_are_kept(engine, tmp_path):
    path = write_csv(tmp_path / "f.csv", [good(1, rating=5, device="ios", sessions_7d="3")])
    ingest_file(engine, path, RULES)
    with engine.connect() as conn:
        row = conn.execute(text("SELECT satisfaction, label, features FROM feedback")).one()
    assert row.satisfaction == 1.0
    assert row.label == "positive"
    assert row.features == {"device": "ios", "sessions_7d": 3.0}


BAD_ROWS = [
    ({"text": ""}, "missing_text"),
    ({"text": "x" * 201}, "text_too_long"),
    ({"text": "nul\x00byte"}, "invalid_text"),
    ({"created_at": "yesterday-ish"}, "bad_timestamp"),
    ({"created_at": (NOW + timedelta(days=3)).isoformat()}, "future_timestamp"),
    ({"rating": "9"}, "rating_out_of_range"),
    ({"rating": "", "satisfaction": "1.5"}, "satisfaction_out_of_range"),
    ({"rating": "", "label": "ecstatic"}, "unknown_label"),
    ({"rating": "five"}, "bad_rating"),
]


@pytest.mark.parametrize(("change", "reason"), BAD_ROWS, ids=[r for _, r in BAD_ROWS])
def test_bad_row_is_quarantined_and_good_rows_land(engine, tmp_path, change, reason):
    rows = [good(1), {**good(2), **change}, good(3)]
    path = write_csv(
        tmp_path / "f.csv", rows, fields=["feedback_id", "text", "created_at", "rating", "satisfaction", "label"]
    )
    summary = ingest_file(engine, path, RULES)
    assert summary.accepted == 2
    assert summary.reasons == {reason: 1}
    assert quarantine_reasons(engine) == {reason: 1}
    with engine.connect() as conn:
        raw = conn.execute(text("SELECT raw FROM quarantine")).scalar_one()
    assert raw["feedback_id"] == "g2"  # the raw row is kept, for requeueing later
    assert count(engine, "feedback") == 2


def test_text_without_a_target_is_stored_unlabelled_and_neither_is_quarantined(engine, tmp_path):
    rows = [good(1), {**good(2), "rating": ""}, {**good(3), "rating": "", "text": ""}]
    summary = ingest_file(engine, write_csv(tmp_path / "f.csv", rows), RULES)
    assert (summary.accepted, summary.unlabelled, summary.reasons) == (2, 1, {"missing_text": 1})
    with engine.connect() as conn:
        stored = conn.execute(text("SELECT satisfaction, label FROM feedback WHERE feedback_id = 'g2'")).one()
        detail = conn.execute(text("SELECT detail FROM quarantine WHERE feedback_id = 'g3'")).scalar_one()
    assert tuple(stored) == (None, None)
    assert detail == "no text and no satisfaction, rating or label"


def test_invalid_utf8_row_is_quarantined(engine, tmp_path):
    path = tmp_path / "f.csv"
    path.write_bytes(
        b"feedback_id,text,created_at,rating\n"
        b"a,fine text,2026-01-01T00:00:00Z,4\n"
        b"b,bad \xff\xfe bytes,2026-01-01T00:00:00Z,4\n"
    )
    summary = ingest_file(engine, path, RULES)
    assert summary.accepted == 1
    assert summary.reasons == {"invalid_utf8": 1}


def test_malformed_jsonl_line_is_quarantined(engine, tmp_path):
    path = tmp_path / "f.jsonl"
    path.write_text(json.dumps(good(1)) + "\n{not json\n" + json.dumps(good(2)) + "\n[1,2]\n")
    summary = ingest_file(engine, path, RULES)
    assert summary.accepted == 2
    assert summary.reasons == {"malformed_row": 2}


def test_nested_feature_is_a_wrong_type(engine, tmp_path):
    path = tmp_path / "f.jsonl"
    path.write_text(json.dumps(good(1)) + "\n" + json.dumps(good(2, sessions={"a": 1})) + "\n")
    summary = ingest_file(engine, path, RULES)
    assert summary.accepted == 1
    assert summary.reasons == {"bad_feature": 1}


def test_duplicate_id_with_different_content_keeps_the_first(engine, tmp_path):
    ingest_file(engine, write_csv(tmp_path / "a.csv", [good(1)]), RULES)
    changed = {**good(1), "text": "an edited review"}
    summary = ingest_file(engine, write_csv(tmp_path / "b.csv", [changed, good(2)]), RULES)
    assert summary.accepted == 1
    assert summary.reasons == {"duplicate_conflict": 1}
    with engine.connect() as conn:
        assert conn.execute(text("SELECT text FROM feedback WHERE feedback_id = 'g1'")).scalar() == good(1)["text"]


def test_in_file_conflict_keeps_the_first(engine, tmp_path):
    rows = [good(1), {**good(1), "text": "different"}, good(1)]
    summary = ingest_file(engine, write_csv(tmp_path / "f.csv", rows), RULES)
    assert (summary.accepted, summary.duplicates, summary.reasons) == (1, 1, {"duplicate_conflict": 1})


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty"),
        (b"id,body\n1,hello\n", "required column"),
        (b"text,created_at\nhi,2026-01-01\n", "satisfaction, rating or label"),
        (b'text,created_at,rating\n"unterminated,2026-01-01,4\n', "not a readable csv file"),
    ],
)
def test_unreadable_file_is_one_line_error_and_changes_nothing(engine, tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_bytes(content)
    with pytest.raises(InputError, match=message) as info:
        ingest_file(engine, path, RULES)
    assert "\n" not in str(info.value)
    assert count(engine, "feedback") == 0
    assert count(engine, "quarantine") == 0
    assert count(engine, "ingest_runs") == 0


def test_label_bins_follow_the_label_order():
    labels = ("negative", "neutral", "positive")
    assert [label_for(s, labels) for s in (0.0, 0.3, 0.5, 0.7, 1.0)] == [
        "negative", "negative", "neutral", "positive", "positive",
    ]  # fmt: skip


# --- issue 16, part 5: the direct COPY when nothing can conflict ------------------------------


def _tables(engine) -> dict:
    """feedback and quarantine as a user sees them (row order by id; no times of the run)."""
    with engine.connect() as conn:
        feedback = conn.execute(
            text(
                "SELECT feedback_id, user_id, item_id, text, satisfaction, label, features::text, content_hash,"
                " created_at, origin FROM feedback ORDER BY id"
            )
        ).all()
        quarantine = conn.execute(
            text("SELECT source, line_no, feedback_id, reason, detail, raw::text, raw_hash FROM quarantine ORDER BY id")
        ).all()
    return {"feedback": feedback, "quarantine": quarantine}


def _direct_copies(monkeypatch) -> list[bool]:
    """Record each batch's path: True for the direct COPY into feedback."""
    from refit.data import load

    taken: list[bool] = []
    real = load._copy_direct

    def spy(conn, valid, origin):
        taken.append(True)
        return real(conn, valid, origin)

    monkeypatch.setattr(load, "_copy_direct", spy)
    return taken


def test_the_direct_copy_and_the_staged_path_leave_the_same_tables(new_database, tmp_path, monkeypatch):
    from refit.data import load
    from refit.data.db import get_engine
    from refit.data.ingest import ingest

    rows = generate_feedback(900, seed=3)
    for row in rows[::97]:
        row["rating"] = 42  # quarantined
    rows[10]["text"] = "write to me at jo.doe@example.com, or call +44 20 7946 0958"
    rows[20]["feedback_id"] = ""  # an id from the content hash
    rows.append({**rows[5], "text": "the same id with other content"})  # an in-file conflict
    rows.append(dict(rows[6]))  # an identical repeat
    first = write_feedback(rows, tmp_path / "first.csv")
    later = [{**r, "text": r["text"] + " (edited)"} if i % 3 == 0 else r for i, r in enumerate(rows[:300])]
    second = write_feedback(later + generate_feedback(100, seed=4, id_prefix="new"), tmp_path / "second.csv")

    direct, staged = get_engine(new_database()), get_engine(new_database())
    taken = _direct_copies(monkeypatch)
    summaries = [ingest(direct, first, RULES, batch_rows=250, now=NOW)]
    # Straight into feedback, but for the last batch: its repeats name ids the first batch stored.
    assert taken == [True] * 3
    with monkeypatch.context() as forced:
        forced.setattr(load, "_any_stored", lambda conn, ids: True)  # as if any id could conflict
        staged_first = ingest(staged, first, RULES, batch_rows=250, now=NOW)
    assert taken == [True] * 3
    assert (staged_first.accepted, staged_first.duplicates, staged_first.reasons) == (
        summaries[0].accepted,
        summaries[0].duplicates,
        summaries[0].reasons,
    )
    assert summaries[0].accepted == 900 - 10
    assert _tables(direct) == _tables(staged)

    before = _tables(direct)
    again = ingest(direct, first, RULES, batch_rows=250, now=NOW)
    assert again.accepted == 0 and again.duplicates == 890 + 1
    assert _tables(direct) == before  # a re-run after the direct path adds nothing

    # A file that overlaps what is stored takes the staged path, with the same outcome either way.
    ingest(direct, second, RULES, batch_rows=250, now=NOW)
    with monkeypatch.context() as forced:
        forced.setattr(load, "_any_stored", lambda conn, ids: True)
        ingest(staged, second, RULES, batch_rows=250, now=NOW)
    assert _tables(direct) == _tables(staged)
    assert count(direct, "feedback") == 890 + 100


def test_a_direct_copy_that_meets_a_stored_id_falls_back_to_the_staged_path(engine, tmp_path, monkeypatch):
    """Should a writer that skips the ingest lock store an id between the check and the COPY, the
    COPY's unique violation rolls back to its savepoint and the batch goes through staging."""
    from refit.data import load

    path = write_csv(tmp_path / "f.csv", [good(i) for i in range(20)])
    ingest_file(engine, path, RULES, now=NOW)
    monkeypatch.setattr(load, "_any_stored", lambda conn, ids: False)  # the check misses them
    rows = [good(i) for i in range(10)] + [good(i) for i in range(30, 40)]
    rows[0]["text"] = "the stored id with other content"
    summary = ingest_file(engine, write_csv(tmp_path / "g.csv", rows), RULES, now=NOW)
    assert (summary.accepted, summary.duplicates, summary.reasons) == (10, 9, {"duplicate_conflict": 1})
    assert count(engine, "feedback") == 30
