"""Settings: typed, validated at load, one-line errors that name the setting."""

import pytest

from refit.core.errors import ConfigError
from refit.core.settings import PACKAGED_MODEL, load_settings


def test_defaults_need_no_configuration():
    settings = load_settings()
    assert settings.task == "regression"
    assert settings.labels == ["negative", "neutral", "positive"]
    assert settings.base_model == PACKAGED_MODEL
    assert settings.database_url is None


def test_reads_refit_variables(monkeypatch):
    monkeypatch.setenv("REFIT_TASK", "classification")
    monkeypatch.setenv("REFIT_LABELS", "bad, ok ,good")
    monkeypatch.setenv("REFIT_STORE_URL", "s3://bucket/some/prefix")
    monkeypatch.setenv("REFIT_DATABASE_URL", "postgresql://u@h/db")
    settings = load_settings()
    assert settings.task == "classification"
    assert settings.labels == ["bad", "ok", "good"]
    assert settings.store_url == "s3://bucket/some/prefix"
    # a bare postgresql:// would mean psycopg 3 to SQLAlchemy 2.1; refit ships psycopg2
    assert settings.database_url == "postgresql+psycopg2://u@h/db"


def test_reads_dotenv_file(tmp_path):
    (tmp_path / ".env").write_text("REFIT_EPOCHS=7\n")
    assert load_settings().epochs == 7


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("REFIT_TASK", "ranking", "REFIT_TASK"),
        ("REFIT_STORE_URL", "ftp://x/y", "REFIT_STORE_URL"),
        ("REFIT_STORE_URL", "s3:///nobucket", "REFIT_STORE_URL"),
        ("REFIT_DATABASE_URL", "mysql://x/y", "REFIT_DATABASE_URL"),
        ("REFIT_EPOCHS", "many", "REFIT_EPOCHS"),
        ("REFIT_LABELS", "one", "REFIT_LABELS"),
        ("REFIT_LABELS", "a,a", "REFIT_LABELS"),
        ("REFIT_DEV_FRACTION", "0.9", "REFIT_DEV_FRACTION"),
        ("REFIT_STORE_CHECKSUM", "crc64", "REFIT_STORE_CHECKSUM"),
        ("REFIT_STORE_SEND_CHECKSUMS", "true", "replaced by REFIT_STORE_CHECKSUM"),  # the old name, not ignored
        ("REFIT_SLACK_WEBHOOK_URL", "", None),
    ],
)
def test_bad_value_is_one_line_naming_the_setting(monkeypatch, name, value, expected):
    monkeypatch.setenv(name, value)
    if expected is None:
        load_settings()  # an empty optional value is simply unset
        return
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    assert expected in message
    assert "\n" not in message


def test_gate_metric_must_fit_the_task(monkeypatch):
    monkeypatch.setenv("REFIT_GATE_METRIC", "macro_f1")
    with pytest.raises(ConfigError, match="REFIT_GATE_METRIC"):
        load_settings()


def test_redacted_settings_hide_credentials(monkeypatch):
    monkeypatch.setenv("REFIT_DATABASE_URL", "postgresql+psycopg2://user:hunter2@db/refit")
    monkeypatch.setenv("REFIT_SLACK_WEBHOOK_URL", "https://hooks.example/T/B/secret-token")
    shown = str(load_settings().redacted())
    assert "hunter2" not in shown
    assert "secret-token" not in shown


def test_importing_refit_has_no_side_effects(tmp_path):
    import subprocess
    import sys

    code = (
        "import refit.cli, refit.data.db, refit.registry.store, refit.core.settings;"
        "import refit.flows.retrain, refit.tasks.drift, refit.models.train;"
        "import os; print(sorted(os.listdir('.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_every_setting_is_in_the_generated_reference_and_the_docs_name_no_other():
    """An operator finds every REFIT_* variable in the settings reference, which is generated from
    this object (scripts/gen_reference.py); the README and the site name no setting that is gone."""
    import importlib.util
    import re
    from pathlib import Path

    from refit.core.settings import Settings

    root = Path(__file__).resolve().parents[2]
    spec = importlib.util.spec_from_file_location("gen_reference", root / "scripts" / "gen_reference.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    reference = gen.settings_reference()
    entries = set(re.findall(r"^### `(REFIT_[A-Z0-9_]+)`", reference, re.M))
    known = {f"REFIT_{name.upper()}" for name in Settings.model_fields}
    for field in Settings.model_fields.values():  # a setting's former names, still accepted
        choices = getattr(field.validation_alias, "choices", [])
        known |= {c for c in choices if isinstance(c, str) and c.startswith("REFIT_")}
    assert len(entries) == len(Settings.model_fields)
    assert entries <= known
    # the hand-written pages and the README name no setting that does not exist (other REFIT_
    # variables are the tests', the benchmarks' and the deployments')
    written = [root / "README.md", *sorted((root / "docs").rglob("*.md"))]
    named = {name for path in written for name in re.findall(r"REFIT_[A-Z0-9_]+", path.read_text())}
    others = {"REFIT_TEST_ADMIN_URL", "REFIT_BENCH_ADMIN_URL", "REFIT_HOME"}
    stale = sorted(name for name in named - known - others if not name.endswith("_"))
    assert stale == []
