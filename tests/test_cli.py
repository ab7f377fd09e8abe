"""The refit command as an operator runs it: help, one-line errors, JSON output."""

import json
import subprocess

import pytest
from helpers import refit_cli as refit

from refit.ops.synth import generate_feedback, write_feedback

COMMANDS = [
    "db upgrade",
    "ingest",
    "quarantine",
    "run",
    "drift",
    "models",
    "models show",
    "rollback",
    "gc",
    "serve",
    "predict",
    "devset refresh",
    "forget",
    "demo",
]


LONG_RUNNING = {"serve"}  # a server prints logs, not a result


def assert_one_line_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("refit: error:")
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0]


def test_help_explains_every_command():
    top = refit("--help")
    assert top.returncode == 0
    for command in COMMANDS:
        assert command.split()[0] in top.stdout
        sub = refit(*command.split(), "--help")
        assert sub.returncode == 0, sub.stderr
        assert "--json" in sub.stdout or command in LONG_RUNNING
        assert len(sub.stdout.split()) > 20  # a real description, not just a usage line


def test_bad_setting_is_one_line_naming_it():
    assert_one_line_error(refit("models", env={"REFIT_TASK": "ranking"}), "REFIT_TASK")


def test_missing_database_url_is_named():
    assert_one_line_error(refit("models"), "REFIT_DATABASE_URL")


def test_unreachable_database_is_one_line():
    url = "postgresql+psycopg2://nobody@127.0.0.1:9/none"
    assert_one_line_error(refit("db", "upgrade", env={"REFIT_DATABASE_URL": url}), "cannot connect")


def test_missing_schema_says_what_to_run(empty_db_url):
    assert_one_line_error(refit("models", env={"REFIT_DATABASE_URL": empty_db_url}), "refit db upgrade")


def test_db_upgrade_then_ingest_with_json(empty_db_url, tmp_path):
    env = {"REFIT_DATABASE_URL": empty_db_url}
    first = refit("db", "upgrade", "--json", env=env)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["applied"]
    again = refit("db", "upgrade", "--json", env=env)
    assert json.loads(again.stdout)["applied"] == []

    path = write_feedback(generate_feedback(40, seed=1), tmp_path / "f.csv")
    result = refit("ingest", str(path), "--json", env=env)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["accepted"], summary["quarantined"]) == (40, 0)
    assert summary["rows_per_second"] > 0

    text = refit("ingest", str(path), env=env)
    assert "0 accepted, 40 duplicate" in text.stdout


@pytest.mark.parametrize(("content", "needle"), [(None, "cannot read"), (b"just,some\n1,2\n", "required column")])
def test_bad_file_is_one_line(db_url, tmp_path, content, needle):
    path = tmp_path / "in.csv"
    if content is not None:
        path.write_bytes(content)
    assert_one_line_error(refit("ingest", str(path), env={"REFIT_DATABASE_URL": db_url}), needle)


def test_predict_without_champion_is_one_line(tmp_path):
    path = write_feedback(generate_feedback(3, seed=1), tmp_path / "f.csv")
    result = refit("predict", str(path), env={"REFIT_STORE_URL": (tmp_path / "store").as_uri()})
    assert_one_line_error(result, "no champion")
