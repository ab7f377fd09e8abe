"""The refit command as an operator runs it: help, one-line errors, JSON output."""

from refit.ops.synth import generate_feedback, write_feedback

from helpers import assert_one_line_error
from helpers import refit_cli as refit

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


def test_predict_without_champion_is_one_line(tmp_path):
    path = write_feedback(generate_feedback(3, seed=1), tmp_path / "f.csv")
    result = refit("predict", str(path), env={"REFIT_STORE_URL": (tmp_path / "store").as_uri()})
    assert_one_line_error(result, "no champion")
