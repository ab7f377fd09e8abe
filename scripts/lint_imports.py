"""Check refit's import contracts (``[tool.importlinter]`` in pyproject.toml) on the installed layout.

import-linter reads a package from the folder it lives in, and in a checkout ``refit.models``,
``refit.tasks`` and ``refit.flows`` live in ``models/``, ``tasks/`` and ``flows/`` (setuptools'
package-dir mapping). So this lays the Python files out as the wheel installs them, in a temporary
folder, and runs ``lint-imports`` there. Exit status is lint-imports' own: 0 when every contract
is kept.

Usage: python scripts/lint_imports.py [--inject MODULE:IMPORTED]
    --inject adds ``import IMPORTED`` to MODULE in the copy (to see a broken contract on purpose).
       python scripts/lint_imports.py --kept [MODULE:IMPORTED ...]
    prints, as JSON, which contracts are kept as the code is ("") and with each added import,
    building the import graph once (what tests/unit/test_architecture.py runs).
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def installed_layout(dest: Path, root: Path = ROOT) -> Path:
    """Copy the Python files of ``root`` into ``dest`` as the wheel installs them: ``refit/`` as it
    is, and each folder of setuptools' package-dir mapping under its package's name. Whole trees
    are copied, so a new subpackage is checked even before pyproject.toml lists it."""
    mapping = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"].get("package-dir", {})
    for package, folder in {"refit": "refit", **mapping}.items():
        source = root / folder
        for path in source.rglob("*.py"):
            if "__pycache__" in path.parts:
                continue
            target = dest / package.replace(".", "/") / path.relative_to(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
    return dest


def lint(inject: str | None = None, root: Path = ROOT) -> subprocess.CompletedProcess:
    """Run lint-imports on the installed layout of ``root``; ``inject`` is ``MODULE:IMPORTED``."""
    with tempfile.TemporaryDirectory() as tmp:
        layout = installed_layout(Path(tmp), root)
        if inject:
            module, imported = inject.split(":")
            path = layout / (module.replace(".", "/") + ".py")
            if not path.exists():
                path = layout / module.replace(".", "/") / "__init__.py"
            path.write_text(path.read_text() + f"\nimport {imported}  # injected\n")
        exe = Path(sys.executable).with_name("lint-imports")
        return subprocess.run(
            [str(exe), "--no-cache", str(root / "pyproject.toml")],
            cwd=layout,
            env={"PYTHONPATH": str(layout), "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            timeout=120,
        )


def kept(injections: list[str], root: Path = ROOT) -> dict[str, dict[str, bool]]:
    """Which contracts hold as the code is (key ``""``) and with each ``MODULE:IMPORTED`` added.

    Builds the graph once in this process; call it in a fresh interpreter (``--kept``), since a
    ``refit`` already imported from the checkout would hide the installed layout.
    """
    import grimp
    from importlinter.application import use_cases
    from importlinter.configuration import configure
    from importlinter.domain.contract import registry

    configure()
    use_cases._register_built_in_contract_types()
    options = use_cases.read_user_options(str(root / "pyproject.toml"))
    with tempfile.TemporaryDirectory() as tmp:
        sys.path.insert(0, str(installed_layout(Path(tmp), root)))
        graph = grimp.build_graph("refit", cache_dir=None)
    results = {}
    for injection in ["", *injections]:
        variant = copy.deepcopy(graph)
        if injection:
            importer, imported = injection.split(":")
            variant.add_import(importer=importer, imported=imported, line_number=1, line_contents="injected")
        results[injection] = {}
        for contract_options in options.contracts_options:
            contract = registry.get_contract_class(contract_options["type"])(
                name=contract_options["name"], session_options=options.session_options,
                contract_options=contract_options,
            )  # fmt: skip
            results[injection][contract_options["id"]] = contract.check(copy.deepcopy(variant), verbose=False).kept
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inject", help="MODULE:IMPORTED, e.g. refit.core.errors:refit.cli")
    parser.add_argument("--kept", nargs="*", metavar="MODULE:IMPORTED", help="print which contracts hold, as JSON")
    args = parser.parse_args()
    if args.kept is not None:
        print(json.dumps(kept(args.kept)))
        return 0
    result = lint(args.inject)
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
    return result.returncode


if __name__ == "__main__":
    raise SystemExit(main())
