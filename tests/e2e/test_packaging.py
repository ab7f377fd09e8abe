"""The wheel installs refit as one namespace and works from an empty folder, as a worker image
would use it: built from the checkout, installed non-editable into a fresh virtualenv outside the
checkout, then `refit db upgrade`, a forced `refit run` with the tiny model, and `refit up --help`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest
import tomllib

from refit.ops.synth import generate_feedback, write_feedback

from conftest import TINY_TRAINING

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel_build(tmp_path_factory) -> tuple[Path, str]:
    """The wheel, and everything its build printed (pip -v passes the build backend's output on)."""
    out = tmp_path_factory.mktemp("wheel")
    # setuptools builds in the source folder (build/, *.egg-info): build from a copy of the checkout
    source = tmp_path_factory.mktemp("source") / "refit"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".venv", ".git", ".refit", "build", "__pycache__"))
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-v", "-w", str(out), str(source)],
        check=True, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    [built] = out.glob("refit-*.whl")
    return built, build.stdout + build.stderr


@pytest.fixture(scope="module")
def wheel(wheel_build) -> Path:
    return wheel_build[0]


def test_building_the_wheel_prints_no_warning_about_refits_own_configuration(wheel_build):
    """setuptools warns about a deprecated pyproject.toml (a license table) and about data folders
    that ship without being listed as packages; neither may come back."""
    _, output = wheel_build
    flagged = [
        line
        for line in output.splitlines()
        if "Deprecat" in line or "is absent from the `packages` configuration" in line or "license" in line.lower()
    ]
    assert flagged == [], "\n".join(flagged)


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """A fresh venv with the wheel installed (not editable). Its dependencies come from this
    environment's site-packages through a .pth line: the test checks refit's packaging, and a
    second download of torch and Prefect would check only the network."""
    home = tmp_path_factory.mktemp("venv") / "venv"
    venv.EnvBuilder(with_pip=False).create(home)
    python = home / "bin" / "python"
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True, capture_output=True, text=True,
        ).stdout.strip()
    )  # fmt: skip
    (site / "refit-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q", str(wheel)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    return home


def test_the_wheel_holds_only_the_refit_namespace(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert {name.split("/")[0] for name in names} == {"refit", "refit-0.1.0.dist-info"}
    for shipped in ("refit/sql/001_init.sql", "refit/sql/roles/grants.sql", "refit/deployments/prefect.yaml",
                    "refit/deployments/automations.yaml", "refit/deployments/work-pools/gpu-kubernetes.json",
                    "refit/models/data/synonyms.txt", "refit/flows/retrain.py", "refit/tasks/training.py"):  # fmt: skip
        assert shipped in names
    # every package of the checkout is in the wheel: a subpackage left out of pyproject.toml fails here
    packages = {name.rsplit("/", 1)[0].replace("/", ".") for name in names if name.endswith("/__init__.py")}
    listed = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    on_disk = {
        ".".join(("refit", *path.parent.relative_to(ROOT / "refit").parts)).rstrip(".")
        for path in (ROOT / "refit").rglob("__init__.py")
    }
    assert on_disk <= set(listed)
    # data-only packages (migrations, deployment files, word lists) ship without an __init__.py
    data_only = {"refit.sql", "refit.sql.roles", "refit.deployments", "refit.models.data"}
    assert packages == {p for p in listed if p not in data_only}
    assert {"refit/sql/roles/grants.sql", "refit/models/data/synonyms.txt"} <= set(names)


def _refit(home: Path, *args: str, env: dict, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(home / "bin" / "refit"), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def test_from_an_empty_folder_the_installed_refit_upgrades_runs_and_deploys(
    installed, empty_db_url, tiny_model, tmp_path
):
    workdir = tmp_path / "empty"
    workdir.mkdir()
    env = {
        "PATH": f"{installed / 'bin'}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        "REFIT_DATABASE_URL": empty_db_url,
        "REFIT_STORE_URL": f"file://{tmp_path / 'store'}",
        "REFIT_BASE_MODEL": str(tiny_model),
        "REFIT_WORK_DIR": str(tmp_path / "work"),
        **TINY_TRAINING,
    }
    where = subprocess.run(
        [str(installed / "bin" / "python"), "-c",
         "import refit, refit.models.train, refit.flows.retrain; from refit.core.resources import sql_dir;"
         "print(refit.__file__); print(refit.models.train.__file__); print(sql_dir())"],
        env=env, cwd=workdir, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert all(path.startswith(str(installed)) for path in where), where  # nothing comes from the checkout
    assert not any(path.startswith(str(ROOT)) for path in where)

    upgrade = _refit(installed, "db", "upgrade", env=env, cwd=workdir)
    assert upgrade.returncode == 0, upgrade.stderr
    again = _refit(installed, "db", "upgrade", "--json", env=env, cwd=workdir)
    assert again.returncode == 0, again.stderr

    feedback = write_feedback(generate_feedback(300, seed=3), tmp_path / "feedback.csv")
    ingest = _refit(installed, "ingest", str(feedback), env=env, cwd=workdir)
    assert ingest.returncode == 0, ingest.stderr
    run = _refit(installed, "run", "--force", "--json", env=env, cwd=workdir)
    assert run.returncode == 0, run.stderr
    assert '"outcome": "promoted"' in run.stdout, run.stdout

    up_help = _refit(installed, "up", "--help", env=env, cwd=workdir)
    assert up_help.returncode == 0, up_help.stderr
    assert "deployments" in up_help.stdout
    assert sorted(os.listdir(workdir)) == []  # nothing was written into the folder it ran from
