"""`refit demo` as a newcomer meets it: its output is for a person, and the commands it prints at
the end carry on from it in a new shell (a fresh environment): the demo's Postgres starts again,
and `refit models` and `refit predict` work on its database and store.

The demo runs at the tests' smallest sizes (the tiny BERT, 240 rows a phase, two epochs): about
a minute and a half on 2 cores."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TINY_TRAINING

pytestmark = pytest.mark.e2e


@pytest.fixture
def demo_run(tiny_model, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("REFIT_") and k != "XDG_RUNTIME_DIR"}
    env.update(TINY_TRAINING)
    env.update(
        {
            "REFIT_BASE_MODEL": str(tiny_model),
            "REFIT_EPOCHS": "2",
            "REFIT_DRIFT_EMBEDDINGS_PICTURE": "false",
            "REFIT_TRAIN_PATH_CACHE": str(tmp_path / "train_paths.json"),
            "PREFECT_LOGGING_LEVEL": "INFO",  # the demo quiets Prefect itself, unless --verbose
        }
    )
    data_dir = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "refit.cli", "demo", "--rows", "240", "--data-dir", str(data_dir)],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    yield result, data_dir
    subprocess.run(
        [sys.executable, "-m", "refit.cli", "demo", "--stop", "--data-dir", str(data_dir)],
        env=env, capture_output=True, timeout=120,
    )  # fmt: skip


def test_the_printed_commands_carry_on_from_the_demo_in_a_new_shell(demo_run, tmp_path):
    result, data_dir = demo_run
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout

    # for a person: a line per step, no Prefect task-run lines, each drift reason once,
    # the missing notification target said once, no runtime-dir warning
    assert "Task run" not in out + result.stderr and "Finished in state" not in out + result.stderr
    assert out.count("text drifted") == 1, out
    assert out.count("no target configured") == 1
    assert "XDG_RUNTIME_DIR" not in result.stderr and "RuntimeDirWarning" not in result.stderr

    carry_on = out.split("carry on in a new shell", 1)[1].splitlines()[1:]
    commands = [line.strip() for line in carry_on if line.strip() and "--stop" not in line]
    assert commands[0].startswith('eval "$(refit demo --resume'), commands
    assert any(" models" in c for c in commands) and any(" predict " in c for c in commands)

    fresh = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8"}
    script = "set -e\n" + "\n".join(
        c.replace(" models", " models --json", 1) if " models" in c else c for c in commands
    )
    shell = subprocess.run(["bash", "-c", script], env=fresh, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert shell.returncode == 0, shell.stderr[-3000:]

    models_json, _, predictions = shell.stdout.partition("\n]\n")
    versions = json.loads(models_json + "\n]")
    assert [v["status"] for v in versions].count("champion") == 1
    rows = [json.loads(line) for line in predictions.splitlines() if line.strip()]
    assert len(rows) == 240
    champion = next(v["version"] for v in versions if v["status"] == "champion")
    assert all(r["model_version"] == champion and 0 <= r["satisfaction"] <= 1 for r in rows)
    assert rows[0]["feedback_id"].startswith("after-") and rows[0]["row"] == 1
