"""The feature schema (issue 16, part 3) against the real Postgres: version 1 inferred by the first
ingest or sync, later rows held to it across runs, a new column reported and kept, changes only as
a recorded `refit schema update --reason`, and free-text feature values redacted."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from typer.testing import CliRunner

from refit.cli import app
from refit.core.settings import load_settings
from refit.data.ingest import ingest_file
from refit.data.quarantine import requeue_quarantine
from refit.data.schema import load_schema, schema_history
from refit.data.source import SourceSpec, sync_source
from refit.data.validate import IngestRules

from helpers import quarantine_reasons, source_database, write_csv

pytestmark = pytest.mark.integration
LABELS = ("negative", "neutral", "positive")
RULES = IngestRules(labels=LABELS, vector_feature="item_vec")
NOW = datetime.now(timezone.utc)
COUNTS = ["3", "0", "12", "7", "lots", "5", "2", "9"]  # the file: numbers on every row but one


def row(i: int, **features) -> dict:
    return {
        "feedback_id": f"r{i}",
        "text": f"review number {i}",
        "created_at": (NOW - timedelta(days=1)).isoformat(),
        "rating": 4,
        **features,
    }


def lots_file(tmp_path):
    devices = ["ios", "web", "ios", "android", "ios", "web", "ios", "web"]
    rows = [
        row(i, useful_count=c, device=d, item_vec=json.dumps([0.5, float(i)]))
        for i, (c, d) in enumerate(zip(COUNTS, devices, strict=True))
    ]
    return write_csv(tmp_path / "lots.csv", rows)


def details(engine) -> list[tuple[str, str, str]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(text("SELECT feedback_id, reason, detail FROM quarantine ORDER BY id"))]


def cli(db_url: str, *args: str):
    env = {"REFIT_DATABASE_URL": db_url, "REFIT_VECTOR_FEATURE": "item_vec", "COLUMNS": "200"}
    return CliRunner().invoke(app, list(args), env=env)


def test_the_first_ingest_infers_version_1_and_holds_the_file_to_it(engine, tmp_path):
    path = lots_file(tmp_path)
    summary = ingest_file(engine, path, RULES)

    # 8 rows: `lots` is quarantined, naming the column and the value; the 7 others land.
    assert (summary.rows_read, summary.accepted, summary.quarantined) == (8, 7, 1)
    assert details(engine) == [("r4", "bad_feature", "feature useful_count should be a number, got 'lots'")]
    assert summary.schema_version == 1 and summary.new_features == []

    schema = load_schema(engine)
    assert (schema.version, schema.reason, schema.source) == (1, f"inferred from the first ingest of {path}", str(path))
    assert schema.features == {
        "device": {"type": "categorical", "values": ["ios", "web", "android"], "distinct": 3},
        "item_vec": {"type": "vector", "length": 2},
        "useful_count": {"type": "numeric", "min": 0, "max": 12},  # of the accepted rows
    }
    # Numbers are stored as JSON numbers, not strings.
    with engine.connect() as conn:
        kinds = conn.execute(
            text("SELECT jsonb_typeof(features -> 'useful_count'), count(*) FROM feedback GROUP BY 1")
        ).all()
        stored = conn.execute(text("SELECT features FROM feedback WHERE feedback_id = 'r2'")).scalar()
    assert kinds == [("number", 7)]
    assert stored == {"useful_count": 12, "device": "ios", "item_vec": [0.5, 2.0]}


def test_later_files_are_held_to_the_schema_and_a_new_column_is_reported_not_added(engine, db_url, tmp_path):
    ingest_file(engine, lots_file(tmp_path), RULES)
    first = load_schema(engine)
    # A whole file of words where counts belong: inferred per file, it would have passed as text.
    later = [
        row(10, useful_count="many", device="ios", referrer="newsletter", item_vec="[1, 2]"),
        row(11, useful_count="4", device="tablet", referrer="search", item_vec="[1, 2]"),
        row(12, useful_count="none at all", device="web", referrer="search", item_vec="[1, 2]"),
        row(13, useful_count="6", device="web", referrer="newsletter", item_vec="[1, 2, 3]"),
    ]
    path = write_csv(tmp_path / "later.csv", later)
    summary = ingest_file(engine, path, RULES)
    assert (summary.accepted, summary.quarantined) == (1, 3)
    assert details(engine)[1:] == [
        ("r10", "bad_feature", "feature useful_count should be a number, got 'many'"),
        ("r12", "bad_feature", "feature useful_count should be a number, got 'none at all'"),
        ("r13", "bad_feature", "feature item_vec has 3 values, expected 2"),
    ]
    assert summary.new_features == ["referrer"]
    assert summary.new_values == {"device": 1}  # `tablet`: reported, not quarantined
    with engine.connect() as conn:
        kept = conn.execute(text("SELECT features FROM feedback WHERE feedback_id = 'r11'")).scalar()
    assert kept == {"useful_count": 4, "device": "tablet", "referrer": "search", "item_vec": [1.0, 2.0]}
    assert load_schema(engine) == first  # nothing joined the schema silently

    # The CLI says so, and what to do about it.
    more = write_csv(tmp_path / "more.csv", [row(20, useful_count="1", device="ios", referrer="ad", item_vec="[0, 1]")])
    result = CliRunner().invoke(
        app, ["ingest", str(more)], env={"REFIT_DATABASE_URL": db_url, "REFIT_VECTOR_FEATURE": "item_vec"}
    )
    assert result.exit_code == 0, result.output
    assert "new feature columns not in the schema: referrer" in result.output
    assert "refit schema update --reason" in result.output


def test_a_schema_change_is_an_explicit_recorded_act(engine, db_url, tmp_path):
    ingest_file(engine, lots_file(tmp_path), RULES)
    ingest_file(engine, write_csv(tmp_path / "b.csv", [row(9, useful_count="1", device="ios", referrer="ad")]), RULES)

    refused = cli(db_url, "schema", "update")
    assert refused.exit_code != 0 and "--reason" in refused.output
    blank = cli(db_url, "schema", "update", "--reason", " ")
    assert blank.exit_code != 0
    assert [v.version for v in schema_history(engine)] == [1]

    done = cli(db_url, "schema", "update", "--reason", "counts are free text now", "--type", "useful_count=categorical")
    assert done.exit_code == 0, done.output
    assert "feature schema v2 recorded: added referrer; retyped useful_count (numeric -> categorical)" in done.output
    schema = load_schema(engine)
    assert (schema.version, schema.reason) == (2, "counts are free text now")
    assert schema.actor.startswith("cli:")
    assert schema.types == {
        "device": "categorical", "item_vec": "vector", "referrer": "categorical", "useful_count": "categorical",
    }  # fmt: skip

    shown = cli(db_url, "schema")
    assert shown.exit_code == 0, shown.output
    assert "feature schema v2" in shown.output and "counts are free text now" in shown.output
    assert any(line.split()[:2] == ["referrer", "categorical"] for line in shown.output.splitlines())
    history = cli(db_url, "schema", "history")
    assert [line.split()[0] for line in history.output.splitlines()] == ["v1", "v2"]
    as_json = json.loads(cli(db_url, "schema", "--json").output)
    assert as_json["version"] == 2 and as_json["features"]["useful_count"]["type"] == "categorical"

    # Under the new version the quarantined `lots` row passes a requeue.
    result = requeue_quarantine(engine, load_settings(database_url=db_url, vector_feature="item_vec"))
    assert (result["requeued"], result["still_quarantined"]) == (1, 0)

    # The history is append-only, for the app as for anyone.
    for statement in (
        "UPDATE feature_schema SET reason = 'x'",
        "DELETE FROM feature_schema",
        "TRUNCATE feature_schema",
    ):
        with pytest.raises(DBAPIError, match="append-only"), engine.begin() as conn:
            conn.execute(text(statement))
    assert [v.version for v in schema_history(engine)] == [1, 2]


def test_configured_types_win_over_the_schema(engine, tmp_path):
    ingest_file(engine, lots_file(tmp_path), RULES)
    typed = IngestRules(labels=LABELS, feature_types=(("useful_count", "categorical"),))
    summary = ingest_file(engine, write_csv(tmp_path / "c.csv", [row(30, useful_count="plenty")]), typed)
    assert (summary.accepted, summary.quarantined) == (1, 0)


def test_free_text_feature_values_are_redacted_like_the_text(engine, tmp_path):
    rows = [row(i, comment=c) for i, c in enumerate(["mail me at jane@example.com", "fine", "see www.shop.example"])]
    ingest_file(engine, write_csv(tmp_path / "c.csv", rows), IngestRules(labels=LABELS))
    with engine.connect() as conn:
        stored = dict(conn.execute(text("SELECT feedback_id, features ->> 'comment' FROM feedback")).all())
    assert stored == {"r0": "mail me at [EMAIL]", "r1": "fine", "r2": "see [URL]"}
    assert "jane@example.com" not in json.dumps(load_schema(engine).features)  # nor in the schema's values

    dropped = [row(5, comment="call +44 20 7946 0958 now"), row(6, comment="fine")]
    summary = ingest_file(engine, write_csv(tmp_path / "d.csv", dropped), IngestRules(labels=LABELS, pii_mode="drop"))
    assert summary.reasons == {"contains_pii": 1}
    assert quarantine_reasons(engine) == {"contains_pii": 1}


def test_the_first_sync_records_version_1_too(engine, pg_admin):
    column_map = (("feedback_id", "id"), ("text", "review_body"), ("rating", "stars"),
                  ("user_id", "user_ref"), ("created_at", "created"))  # fmt: skip
    rules = IngestRules(labels=LABELS, column_map=column_map)
    with source_database(pg_admin) as source:
        with source["owner"].begin() as conn:
            conn.execute(
                text("INSERT INTO app_reviews (review_body, stars, user_ref, sessions) VALUES (:t, 4, 'u1', :n)"),
                [{"t": f"review {i}", "n": n} for i, n in enumerate([3, 8, 1])],
            )
        spec = SourceSpec(url=source["url"], table="app_reviews", key="id")
        summary = sync_source(engine, spec, rules)
    assert summary.accepted == 3 and summary.schema_version == 1
    schema = load_schema(engine)
    assert schema.reason == "inferred from the first sync of pg:app_reviews"
    assert schema.features == {"sessions": {"type": "numeric", "min": 1, "max": 8}}
    with engine.connect() as conn:
        assert conn.execute(text("SELECT DISTINCT jsonb_typeof(features -> 'sessions') FROM feedback")).scalar() == (
            "number"
        )


def test_a_challenger_trains_on_the_schemas_types(engine, db_url, tmp_path, monkeypatch):
    """train_challenger reads the recorded schema: a count the schema says is a category trains as
    one (the rows alone would make it numeric). Training itself is stopped before it starts."""
    from refit.data.schema import record_schema
    from refit.data.snapshots import SplitConfig, take_snapshot
    from refit.ops.synth import generate_feedback, write_feedback
    from refit.training import challenger

    ingest_file(engine, write_feedback(generate_feedback(300, seed=5), tmp_path / "f.csv"), IngestRules(labels=LABELS))
    inferred = load_schema(engine)
    assert inferred.types["sessions_7d"] == "numeric"
    retyped = {**inferred.features, "sessions_7d": {"type": "categorical", "values": [], "distinct": 0}}
    record_schema(engine, retyped, "sessions are buckets", actor="test")
    settings = load_settings(database_url=db_url, work_dir=str(tmp_path / "work"), labels=list(LABELS))
    snapshot = take_snapshot(engine, SplitConfig.from_settings(settings))
    seen = {}

    class Stop(Exception):
        pass

    def no_training(config, runs, fit):
        seen.update(config.feature_types)
        raise Stop

    monkeypatch.setattr(challenger, "train_seed_members", no_training)
    with pytest.raises(Stop):
        challenger.train_challenger(settings, snapshot, None)
    assert seen["sessions_7d"] == "categorical"
    assert seen["device"] == "categorical" and seen["dwell_seconds"] == "numeric"
