"""The reference pages are generated from the code (scripts/gen_reference.py, run by the mkdocs
hook on every build): every setting, command and route gets an entry, and one without a
description, help or docstring stops the build with a line that names it."""

import importlib.util
from pathlib import Path

import pytest
import typer
from pydantic import Field

from refit.core.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gen = _load("gen_reference")


def test_a_setting_without_a_description_is_named():
    class WithUndocumented(Settings):
        shiny_new_knob: int = 3  # no Field(description=...)
        documented_knob: int = Field(default=1, description="Has an entry.")

    with pytest.raises(gen.ReferenceGap) as gap:
        gen.settings_reference(WithUndocumented)
    message = str(gap.value)
    assert "REFIT_SHINY_NEW_KNOB" in message and "REFIT_DOCUMENTED_KNOB" not in message
    assert "\n" not in message


def test_the_mkdocs_hook_turns_a_gap_into_a_build_error_that_names_it(monkeypatch):
    from mkdocs.exceptions import PluginError

    hooks = _load("docs_hooks")

    class WithUndocumented(Settings):
        shiny_new_knob: int = 3

    monkeypatch.setattr("refit.core.settings.Settings", WithUndocumented)
    with pytest.raises(PluginError, match="REFIT_SHINY_NEW_KNOB"):
        hooks.on_files([], {})


def test_a_command_without_help_and_a_route_without_a_docstring_are_named():
    app = typer.Typer()

    @app.command()
    def documented() -> None:
        """Does a thing."""

    @app.command()
    def mystery() -> None:
        pass

    with pytest.raises(gen.ReferenceGap, match="refit mystery") as gap:
        gen.cli_reference(app)
    assert "documented" not in str(gap.value)

    spec = {"paths": {"/ok": {"get": {"description": "Fine."}}, "/bare": {"post": {"summary": "Bare"}}}}
    with pytest.raises(gen.ReferenceGap, match="POST /bare"):
        gen.http_reference(spec)


def test_every_setting_command_route_and_table_has_an_entry():
    pages = gen.generate()
    for name, field in Settings.model_fields.items():
        env = (getattr(field.validation_alias, "choices", None) or [f"REFIT_{name.upper()}"])[0]
        assert f"### `{env}`" in pages["reference/settings.md"]
    for command in ("refit predict", "refit demo", "refit models show", "refit db upgrade", "refit rollout status"):
        assert f"## `{command}`" in pages["reference/cli.md"]
    for route in ("POST /predict", "POST /explain", "GET /healthz", "GET /metrics"):
        assert f"## {route}" in pages["reference/http-api.md"]
    for table in ("feedback", "model_versions", "promotion_log", "prediction_log", "rollouts"):
        assert f"## {table}\n" in pages["reference/database.md"]
    # a column added by a later migration is on its table, with the migration that added it
    assert "| `call_items` |" in pages["reference/database.md"].split("## prediction_log", 1)[1]
