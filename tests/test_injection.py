"""SQL injection: every query is parameterized or built from constants (a scan of the source), and
injection strings fed through every text path (feedback text, ids, feature names and values, CLI
options and arguments) are stored verbatim while the schema and the other rows stay as they were.
The serving API's bodies are covered in tests/test_fuzz_serving.py."""

import ast
import csv
from pathlib import Path

import pytest
from helpers import count, gate_decision, publish_and_record
from sqlalchemy import text
from typer.testing import CliRunner

from refit.cli import app
from refit.data.pii import redact

ROOT = Path(__file__).resolve().parents[1]

# Strings that break a query built by pasting; none of them is touched by PII redaction.
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


# --- the source scan ----------------------------------------------------------------------------

SINKS = {"text", "execute", "exec_driver_sql", "executemany", "copy_expert", "copy_from", "copy_to"}
# (file, start of the SQL as written in the source): why building it is safe.
ALLOWED = {
    ("refit/ingest.py", 'f"COPY feedback_staging ('): "the column list is the constant _COLUMNS",
    ("refit/simulate.py", 'f\'DROP SCHEMA IF EXISTS "{schema}"'): "sandbox schema names come from _identifier()",
    ("refit/simulate.py", "f'CREATE SCHEMA \"{schema}\"'"): "sandbox schema names come from _identifier()",
    ("refit/simulate.py", 'f\'DROP SCHEMA IF EXISTS "{box.schema}"'): "sandbox schema names come from _identifier()",
    ("refit/chaos.py", 'f\'LOCK TABLE "{schema}"."{table}"'): "a sandbox schema and refit's own table names",
    ("refit/chaos.py", "'SELECT pid FROM pg_stat_activity"): "the appended condition is a constant string",
}


def _built(node: ast.AST) -> bool:
    """An expression that builds a string at run time: an f-string with values, +, %, .format, .join."""
    if isinstance(node, ast.JoinedStr):
        return any(isinstance(v, ast.FormattedValue) for v in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mod)):
        return True
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("format", "join")


def built_sql(path: Path) -> list[tuple[int, str]]:
    """Calls of text()/execute()/COPY whose SQL is built at run time, directly or through a local
    variable assigned a built string in the same function."""
    found = []
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for scope in ast.walk(tree):
        if not isinstance(scope, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        built_names = {
            node.targets[0].id
            for node in ast.walk(scope)
            if isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
            and _built(node.value)
        }
        for node in ast.walk(scope):
            if not (isinstance(node, ast.Call) and node.args):
                continue
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
            first = node.args[0]
            if name in SINKS and (_built(first) or (isinstance(first, ast.Name) and first.id in built_names)):
                found.append((node.lineno, ast.unparse(first)))
    return sorted(set(found))


def test_every_query_is_parameterized_or_built_from_constants():
    offenders = []
    for folder in ("refit", "flows", "tasks", "models"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            for line, sql in built_sql(path):
                if not any(rel == file and sql.startswith(start) for file, start in ALLOWED):
                    offenders.append(f"{rel}:{line}: {sql[:100]}")
    assert offenders == [], "SQL built from run-time strings; use bind parameters:\n" + "\n".join(offenders)


def test_the_scan_finds_pasted_sql(tmp_path):
    """The scanner itself catches the usual ways of pasting a value into SQL."""
    sample = tmp_path / "bad.py"
    sample.write_text(
        "def f(conn, user, table):\n"
        "    conn.execute(text(f\"DELETE FROM feedback WHERE user_id = '{user}'\"))\n"
        "    conn.execute(text('SELECT * FROM ' + table))\n"
        "    query = 'DELETE FROM x WHERE id = %s' % user\n"
        "    conn.exec_driver_sql(query)\n"
        "    conn.execute(text('SELECT * FROM feedback WHERE id = :id'), {'id': user})\n"
    )
    assert [line for line, _ in built_sql(sample)] == [2, 3, 5]


# --- injection strings through every text path ---------------------------------------------------


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
