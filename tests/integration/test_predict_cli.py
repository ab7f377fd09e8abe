"""`refit predict` as an operator runs it: a champion published to a real file:// store, the real
command in a subprocess, and files with the faults real exports have (a team's own column names,
a row that is not UTF-8, a text longer than the serving limit, a row without text, no rows)."""

import json

import pytest

from refit.models.saving import save_checkpoint
from refit.models.train import train
from refit.registry.pointer import write_pointer
from refit.registry.store import open_store
from refit.registry.versions import publish_checkpoint

from helpers import assert_one_line_error, refit_cli
from model_helpers import review_data, tiny_config

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def champion_store(tiny_model, tmp_path_factory):
    """A file:// store whose champion pointer names a tiny trained regression checkpoint."""
    result = train(tiny_config(tiny_model, epochs=1), review_data(120))
    folder = save_checkpoint(result, tmp_path_factory.mktemp("v1"), {"version": "v1"})
    root = tmp_path_factory.mktemp("store")
    store = open_store(root.as_uri())
    write_pointer(store, publish_checkpoint(store, folder, "v1"), None)
    return root.as_uri()


@pytest.fixture
def env(champion_store, tmp_path):
    return {"REFIT_STORE_URL": champion_store, "REFIT_WORK_DIR": str(tmp_path / "work")}


def test_mapped_column_bad_utf8_and_long_text_are_each_reported_and_every_id_kept(env, tmp_path):
    long_text = "great sound and a sturdy case " * 350  # 10,500 characters, over REFIT_SERVE_MAX_TEXT_CHARS (5,000)
    lines = [
        b"id,body,stars",
        b"r1,Love it works perfectly,5",
        "r2,Caf\u00e9 au lait was cold,2".encode("latin-1"),  # \xe9: not UTF-8
        f"r3,{long_text},4".encode(),
        b"r4,,3",
        b"r5,Broke after a day,1",
    ]
    path = tmp_path / "export.csv"
    path.write_bytes(b"\n".join(lines) + b"\n")

    result = refit_cli(
        "predict", str(path), "--map", "feedback_id=id", "--json", env={**env, "REFIT_COLUMN_MAP": "text=body"}
    )

    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["feedback_id"] for r in rows] == ["r1", "r2", "r3", "r4", "r5"]
    assert [r["row"] for r in rows] == [1, 2, 3, 4, 5]
    by_id = {r["feedback_id"]: r for r in rows}
    for fid in ("r1", "r3", "r5"):  # scored, with /predict's field names
        assert 0 <= by_id[fid]["satisfaction"] <= 1
        assert by_id[fid]["model_version"] == "v1"
        assert by_id[fid]["error"] is None
    assert by_id["r3"]["truncated"] is True
    assert by_id["r1"]["truncated"] is False
    assert "UTF-8" in by_id["r2"]["error"] and "satisfaction" not in by_id["r2"]
    assert by_id["r4"]["error"] == "no text"
    # the reasons also reach stderr, one line each, so stdout stays JSON lines
    assert "row 2 not scored" in result.stderr and "row 4 not scored: no text" in result.stderr


def test_output_file_holds_the_same_fields_and_the_summary_names_the_rows_not_scored(env, tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps({"text": "Works well"}) + "\n" + json.dumps({"text": None}) + "\n")
    out = tmp_path / "scored.csv"

    result = refit_cli("predict", str(path), "-o", str(out), env=env)

    assert result.returncode == 0, result.stderr
    assert "scored 1 of 2 rows with v1" in result.stdout and "row 2 not scored: no text" in result.stdout
    header, first, second = out.read_text().splitlines()
    assert header == "feedback_id,row,satisfaction,truncated,model_version,error"
    assert first.startswith(",1,") and first.endswith(",False,v1,")
    assert second == ",2,,,,no text"


def test_an_empty_file_and_a_missing_text_column_are_one_line_each(env, tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    assert_one_line_error(refit_cli("predict", str(empty), env=env), "empty.csv is empty")

    notext = tmp_path / "notext.csv"
    notext.write_text("body\nhello\n")
    assert_one_line_error(refit_cli("predict", str(notext), env=env), "no 'text' column", "REFIT_COLUMN_MAP")


def test_no_champion_names_the_store_and_the_setting(tmp_path):
    store = (tmp_path / "empty-store").as_uri()
    (tmp_path / "x.csv").write_text("text\nhello\n")
    result = refit_cli("predict", str(tmp_path / "x.csv"), env={"REFIT_STORE_URL": store})
    assert_one_line_error(result, store, "REFIT_STORE_URL", "no champion pointer")
