"""The ``refit`` command line.

Every command has ``--json`` and exits non-zero with a one-line reason on failure; ``--debug``
shows the full traceback instead. The commands live in ``data`` (schema, ingest, sync, quarantine,
dev set, forget), ``models`` (the loop, drift, registry, serving), ``rollout`` (the live rollout)
and ``ops`` (demo, stack, ablation, backtests); this module builds the app from them and holds the
entry point, ``main``.

The CLI is the top layer and imports the library inside each command function, not at the top of
its modules: ``refit --help`` and a mistyped option then answer without loading torch, Prefect or
SQLAlchemy.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from refit.cli import data, estimate, models, ops, rollout
from refit.cli._shared import group, state
from refit.core.errors import one_line

__all__ = ["app", "main"]

app = group(
    "refit keeps a fine-tuned BERT satisfaction model current: ingest feedback, detect drift, retrain, gate against "
    "the champion, publish. Configure with REFIT_* variables (see README).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _root(debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False) -> None:
    state["debug"] = debug


# In the order `refit --help` lists them, the command groups last.
for _command in (
    data.ingest,
    data.sync,
    data.quarantine,
    data.forget,
    models.run,
    models.drift,
    estimate.estimate,
    models.rollback,
    models.gc,
    models.serve,
    models.predict,
    ops.demo,
    ops.up,
    ops.down,
    ops.ablate,
    models.tensorboard,
    ops.simulate,
):
    app.command()(_command)
app.add_typer(data.db_app, name="db")
app.add_typer(data.devset_app, name="devset")
app.add_typer(data.schema_app, name="schema")
app.add_typer(models.models_app, name="models")
app.add_typer(rollout.rollout_app, name="rollout")

# Defaults for the ephemeral Prefect API that `refit run` and `refit demo` start in-process;
# an operator's own PREFECT_* values win. On 2 cores its start can take longer than Prefect's 20 s.
PREFECT_DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
}


def main() -> None:
    """Run the command line: one-line errors instead of tracebacks (unless ``--debug``)."""
    for key, value in PREFECT_DEFAULTS.items():
        os.environ.setdefault(key, value)
    try:
        app()
    except SystemExit:
        raise
    except Exception as exc:  # the last line of defence for an operator-facing tool
        if state["debug"]:
            raise
        typer.echo(f"refit: error: {one_line(exc)}", err=True)
        sys.exit(1)
