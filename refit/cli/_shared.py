"""What the command modules share: the app factory, ``--json``, output, settings and the engine."""

from __future__ import annotations

import json
from typing import Annotated

import typer

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
state = {"debug": False}  # set by the root callback, read by main() when a command fails


def group(help: str, **options) -> typer.Typer:
    """A Typer app (the root or a command group) with refit's help rendering.

    Markdown mode re-flows the hard-wrapped docstrings into paragraphs at the terminal's width; the
    default rich mode keeps their line breaks, so a help paragraph broke wherever the source did.

    Args:
        help: What the group is for, shown in its parent's command list.
        **options: Further ``typer.Typer`` options.

    Returns:
        The app.
    """
    return typer.Typer(help=help, rich_markup_mode="markdown", **options)


def emit(data: dict | list, as_json: bool, text: str) -> None:
    """Print ``data`` as JSON with ``--json``, else the human-readable ``text``.

    Args:
        data: The command's result.
        as_json: Whether ``--json`` was given.
        text: The result as an operator reads it.
    """
    typer.echo(json.dumps(data, indent=2, default=str) if as_json else text)


def current_settings():
    """The validated settings (a bad ``REFIT_*`` value ends the command with one line)."""
    from refit.core.settings import load_settings

    return load_settings()


def migrated_engine(settings):
    """The database engine of ``settings``, after checking that the schema is migrated."""
    from refit.data.db import engine_for, require_schema

    engine = engine_for(settings)
    require_schema(engine)
    return engine
