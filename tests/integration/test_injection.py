"""SQL injection: every query is parameterized or built from constants (a scan of the source), and
injection strings fed through every text path (feedback text, ids, feature names and values, CLI
options and arguments) are stored verbatim while the schema and the other rows stay as they were.
The serving API's bodies are covered in tests/test_fuzz_serving.py."""

import csv

import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from refit.cli import app
from refit.data.pii import redact

from helpers import count, gate_decision, publish_and_record

INJECTIONS = [
    "'); DROP TABLE feedback; --",
    "' OR '1'='1",
    "$$; DROP TABLE promotion_log; $$",
    '"; DELETE FROM quarantine; --',
    "x'||(SELECT current_user)||'",
    "%s %(name)s :name ?",
    "\\'; TRUNCATE model_versions CASCADE; --",
    "Robert'); DROP TABLE feedback;-- ʼ＇‘’ 🙂 ü",
]


def schema_fingerprint(engine) -> list[tuple]:
    with engine.connect() as conn:
        return conn.execute(
            text(
                "SELECT c.relname, c.relkind, count(a.attname) FROM pg_class c"
                " JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = 'public'"
                " LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped"
                " GROUP BY c.relname, c.relkind ORDER BY c.relname"
            )
        ).all()


@pytest.fixture
def cli_env(monkeypatch, db_url, tmp_path):
    monkeypatch.setenv("REFIT_DATABASE_URL", db_url)
    monkeypatch.setenv("REFIT_STORE_URL", (tmp_path / "store").as_uri())
    monkeypatch.setenv("REFIT_WORK_DIR", str(tmp_path / "work"))
    return CliRunner()


def refit(runner: CliRunner, *args: str):
    return runner.invoke(app, list(args), catch_exceptions=True)


def test_injection_strings_in_feedback_are_stored_verbatim_and_change_nothing_else(engine, cli_env, tmp_path):
    before = schema_fingerprint(engine)
    rows = [
        {
            "feedback_id": f"{s} #{i}",
            "user_id": s,
            "item_id": f"item {s}",
            "text": f"review {i}: {s}",
            "created_at": "2026-01-02T03:04:05Z",
            "rating": "4",
            s: f"value {s}",  # the injection as a feature's name and value
        }
        for i, s in ((i, INJECTIONS[i % len(INJECTIONS)]) for i in range(48))  # enough for a dev split
    ]
    path = tmp_path / "inject.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
        writer.writeheader()
        writer.writerows(rows)
    result = refit(cli_env, "ingest", str(path))
    assert result.exit_code == 0, result.output

    assert schema_fingerprint(engine) == before
    with engine.connect() as conn:
        stored = {r.feedback_id: r for r in conn.execute(text("SELECT * FROM feedback"))}
    assert len(stored) == 48
    for i in range(48):
        s = INJECTIONS[i % len(INJECTIONS)]
        row = stored[f"{s} #{i}"]
        assert (row.user_id, row.item_id) == (s, f"item {s}")
        assert row.text == redact(f"review {i}: {s}") == f"review {i}: {s}"
        assert row.features == {s: f"value {s}"}

    # forget one injected user id: exactly that user's row goes
    result = refit(cli_env, "forget", "--user", INJECTIONS[1])
    assert result.exit_code == 0, result.output
    assert count(engine, "feedback") == 48 - 6
    with engine.connect() as conn:
        assert (
            conn.execute(text("SELECT count(*) FROM feedback WHERE user_id = :u"), {"u": INJECTIONS[1]}).scalar() == 0
        )

    # a dev set refresh reason
    result = refit(cli_env, "devset", "refresh", "--reason", INJECTIONS[0])
    assert result.exit_code == 0, result.output
    with engine.connect() as conn:
        assert conn.execute(text("SELECT reason FROM dev_sets")).scalar_one() == INJECTIONS[0]

    # quarantine listing and requeue read injected raw rows back without harm
    bad = tmp_path / "bad.csv"
    quoted = INJECTIONS[3].replace('"', '""')
    bad.write_text(f'feedback_id,text,created_at,rating\n"{INJECTIONS[2]}","{quoted}",not a time,4\n')
    assert refit(cli_env, "ingest", str(bad)).exit_code == 0
    listed = refit(cli_env, "quarantine", "--json")
    assert listed.exit_code == 0 and INJECTIONS[2] in listed.output
    assert refit(cli_env, "quarantine", "--requeue").exit_code == 0
    with engine.connect() as conn:
        raw = conn.execute(text("SELECT raw FROM quarantine")).scalar_one()
    assert raw["feedback_id"] == INJECTIONS[2] and raw["text"] == INJECTIONS[3]
    assert schema_fingerprint(engine) == before


def test_injection_strings_in_registry_commands_are_stored_verbatim(engine, cli_env, tmp_path):
    from refit.registry.store import open_store

    store = open_store((tmp_path / "store").as_uri())
    publish_and_record(engine, store, tmp_path, "v1", gate_decision(True), None)
    publish_and_record(engine, store, tmp_path, "v2", gate_decision(True), "v1")
    before = schema_fingerprint(engine)
    log_before = count(engine, "promotion_log")

    for s in INJECTIONS[:3]:  # a version name that is an injection: one clear error, nothing else
        for args in (("models", "show", s), ("rollback", s, "--reason", "x")):
            result = refit(cli_env, *args)
            assert result.exit_code != 0
            assert "no model version" in str(result.exception)

    reason, by = INJECTIONS[0], INJECTIONS[7]
    result = refit(cli_env, "rollback", "--reason", reason, "--by", by, "--json")
    assert result.exit_code == 0, result.output
    with engine.connect() as conn:
        line = conn.execute(text("SELECT decision, reason, actor FROM promotion_log ORDER BY id DESC LIMIT 1")).one()
    assert tuple(line) == ("rolled_back", reason, by)
    assert count(engine, "promotion_log") == log_before + 1
    assert count(engine, "model_versions") == 2
    shown = refit(cli_env, "models", "show", "v1")
    assert shown.exit_code == 0 and reason in shown.output and by in shown.output
    assert schema_fingerprint(engine) == before
