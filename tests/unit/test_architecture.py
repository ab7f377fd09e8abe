"""The layers of docs/architecture.md hold: import-linter's contracts in pyproject.toml pass on
the installed layout, and an upward import or a circle made on purpose breaks the contract meant
to catch it (and only the contracts it should)."""

from __future__ import annotations

import ast
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


# What launches processes: refit.training.launch runs a training in a child process or under
# torchrun; refit.training.challenger says what a challenger is and trains one in this process.
LAUNCHER_MACHINERY = {"refit.training.launch", "subprocess", "signal", "multiprocessing"}


def _imported_modules(path: Path, package: str) -> set[str]:
    """Every module a file imports, at the top or inside a function, by its absolute name (and, for
    ``from X import Y``, ``X.Y`` too: Y may be a module)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def test_the_challenger_module_launches_no_process():
    imported = _imported_modules(ROOT / "refit" / "training" / "challenger.py", "refit.training")
    reached = {
        name for name in imported for banned in LAUNCHER_MACHINERY if name == banned or name.startswith(f"{banned}.")
    }
    assert not reached, f"refit.training.challenger imports the launcher's process machinery: {sorted(reached)}"
