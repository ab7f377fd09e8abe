"""`refit ablate` on the demo data with the tiny BERT: every variant trained, scored and tabled."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from refit.cli import app
from refit.core.settings import load_settings
from refit.sim.ablation import ingest_demo_snapshots, parse_variant

VARIANTS = ["baseline", "augment", "fgm", "lora", "ensemble2", "prune1", "heads1"]


def test_ablate_compares_every_variant_on_one_snapshot(engine, db_url, tiny_model, tmp_path, monkeypatch):
    env = {
        "REFIT_DATABASE_URL": db_url,
        "REFIT_BASE_MODEL": str(tiny_model),
        "REFIT_WORK_DIR": str(tmp_path / "work"),
        "REFIT_EPOCHS": "2",
        "REFIT_MAX_LENGTH": "48",
        "REFIT_LEARNING_RATE": "1e-3",
        "REFIT_NUM_THREADS": "1",
        "REFIT_TEST_FRACTION": "0.15",  # 60 evaluation rows need a test split above the 5% default
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    snapshots = ingest_demo_snapshots(engine, load_settings(), tmp_path, rows=200)
    out = tmp_path / "ablation"
    args = ["ablate", "--snapshot", str(snapshots[-1].id), "--variants", ",".join(VARIANTS), "--seeds", "1"]
    result = CliRunner().invoke(app, [*args, "--train-rows", "150", "--eval-rows", "60", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output

    saved = json.loads((out / "ablation.json").read_text())
    table = (out / "ablation.md").read_text()
    assert saved["snapshot_id"] == snapshots[-1].id and saved["train_rows"] == 150 and saved["test_rows"] == 60
    assert list(saved["variants"]) == VARIANTS
    for name in VARIANTS:
        assert f"| {name} |" in table
        [run] = saved["variants"][name]["runs"]
        assert 0 < run["test"]["mse"] < 1 and 0 < run["dev"]["mse"] < 1
        assert run["float_texts_per_s"] > 0 and run["int8_texts_per_s"] > 0
        assert run["int8_bytes"] < run["float_bytes"]
    # The shifted regime's new category is the new-items slice (items unseen before the snapshot).
    assert saved["new_item_test_rows"] > 0
    assert saved["variants"]["baseline"]["runs"][0]["test_new_items"] is not None
    runs = {name: saved["variants"][name]["runs"][0] for name in VARIANTS}
    assert runs["ensemble2"]["member_seeds"] == [13, 1013] and runs["ensemble2"]["retrained_members"] == 1
    assert runs["ensemble2"]["float_bytes"] > 1.9 * runs["baseline"]["float_bytes"]
    assert runs["prune1"]["float_bytes"] < runs["baseline"]["float_bytes"]
    assert runs["heads1"]["float_bytes"] < runs["baseline"]["float_bytes"]
    assert saved["variants"]["baseline"]["summary"]["test_vs_baseline"] == 0
    # Variants differ from the baseline in what they train, so their test scores differ too.
    assert len({round(r["test"]["mse"], 8) for r in runs.values()}) == len(VARIANTS)


def test_unknown_variant_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown ablation variant 'dropout'"):
        parse_variant("dropout")
    with pytest.raises(ValueError, match="at least 2 members"):
        parse_variant("ensemble1")
    assert parse_variant("prune4").overrides == {"keep_layers": 4}
