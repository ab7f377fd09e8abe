"""Files that ship with refit: the SQL migrations and the Prefect deployment definitions.

In the repository they are the top-level ``sql/`` and ``deployments/`` folders; an installed wheel
carries the same folders as package data, inside the ``refit`` package. Both are found from here.
"""

from __future__ import annotations

from pathlib import Path

from refit.core.errors import ConfigError

_PACKAGE = Path(__file__).resolve().parents[1]  # the refit package folder


def resource_dir(name: str) -> Path:
    """The shipped folder ``name`` (``sql`` or ``deployments``).

    Raises:
        ConfigError: Neither the installed copy nor the checkout's folder exists.
    """
    for candidate in (_PACKAGE / name, _PACKAGE.parent / name):
        if candidate.is_dir():
            return candidate
    raise ConfigError(f"refit's {name}/ folder is missing: looked in {_PACKAGE} and {_PACKAGE.parent}")


def sql_dir() -> Path:
    """The folder of migration files."""
    return resource_dir("sql")


def deployments_dir() -> Path:
    """The folder of ``prefect.yaml``, ``automations.yaml`` and the work-pool templates."""
    return resource_dir("deployments")
