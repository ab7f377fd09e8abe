"""The layers of docs/architecture.md hold: import-linter's contracts in pyproject.toml pass on
the installed layout, and an upward import or a circle made on purpose breaks the contract meant
to catch it (and only the contracts it should)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "lint_imports.py"

# An import added on purpose, and the contracts it must break.
INJECTED = {
    "refit.core.errors:refit.cli": {"layers", "no-circles", "serving-without-trainer"},  # bottom imports top
    "refit.models.metrics:refit.data.db": {"layers"},  # models/ reaches beyond refit.core
    "refit.data.db:refit.data.ingest": {"no-circles"},  # ingest imports db: a circle inside one layer
    "refit.serving.scoring:refit.models.train": {"serving-without-trainer"},  # allowed by layers, not for serving
}


def _kept(*injections: str) -> dict[str, dict[str, bool]]:
    # A fresh interpreter: one that already imported refit from the checkout would hide the
    # installed layout from import-linter.
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--kept", *injections], capture_output=True, text=True, timeout=120, check=True
    )
    return json.loads(out.stdout)


def test_the_import_contracts_are_kept_and_an_import_made_on_purpose_breaks_its_contract():
    results = _kept(*INJECTED)
    assert results[""] == {"layers": True, "no-circles": True, "serving-without-trainer": True}
    for injection, broken in INJECTED.items():
        assert {name for name, kept in results[injection].items() if not kept} == broken, injection


def test_lint_imports_itself_passes_on_the_installed_layout():
    result = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 3 kept, 0 broken." in result.stdout
