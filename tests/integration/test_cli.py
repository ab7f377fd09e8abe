"""The refit command as an operator runs it: help, one-line errors, JSON output."""

import json

import pytest

from refit.ops.synth import generate_feedback, write_feedback

from helpers import assert_one_line_error
from helpers import refit_cli as refit


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
