"""``refit demo``: the whole loop on embedded defaults, with nothing configured.

It starts an embedded PostgreSQL (pgserver) under the data folder, uses a ``file://`` store
there, generates synthetic feedback with a shift in it, and runs the loop before and after the
shift with the packaged BERT.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

from refit.ops.synth import generate_feedback, write_feedback
from refit.registry.layout import pointer_key

# Demo-sized training: two phases, each trained in about a minute on 2 CPU cores.
DEMO_SETTINGS = {
    "REFIT_EPOCHS": "3",
    "REFIT_BATCH_SIZE": "16",
    "REFIT_LEARNING_RATE": "1e-4",
    "REFIT_MAX_LENGTH": "64",
    "REFIT_PATIENCE": "1",
    "REFIT_DRIFT_MIN_ROWS": "100",
}


def start_embedded_postgres(folder: Path, keep: bool = False) -> str:
    """Start (or reuse) an embedded PostgreSQL in ``folder``; return its psycopg2 URL.

    Args:
        folder: the database's data folder (created when missing).
        keep: leave the server running when this process exits (``refit demo --keep`` and
            ``--resume``); otherwise it stops with the last process that uses it.

    Returns:
        The database URL.
    """
    folder.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # platformdirs warns that XDG_RUNTIME_DIR is unset when pgserver is imported (its lock
        # file's folder is computed in a class body) and falls back to /tmp: nothing to act on
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
        import pgserver

        server = pgserver.get_server(folder, cleanup_mode=None if keep else "stop")
    uri = server.get_uri()
    return "postgresql+psycopg2://" + uri.split("://", 1)[1]


def demo_environment(data_dir: Path, database_url: str) -> dict[str, str]:
    """The settings that point refit at the demo's database, store and work folder.

    Args:
        data_dir: the demo's data folder.
        database_url: the embedded Postgres' URL.

    Returns:
        ``REFIT_DATABASE_URL``, ``REFIT_STORE_URL`` and ``REFIT_WORK_DIR``.
    """
    data_dir = Path(data_dir).resolve()
    return {
        "REFIT_DATABASE_URL": database_url,
        "REFIT_STORE_URL": (data_dir / "store").as_uri(),
        "REFIT_WORK_DIR": str(data_dir / "work"),
    }


def resume_demo(data_dir: Path) -> dict[str, str]:
    """Start the embedded Postgres of an earlier demo again, left running, and return the settings
    that point refit at it (``refit demo --resume``).

    Args:
        data_dir: the data folder the demo ran in.

    Returns:
        What :func:`demo_environment` returns.

    Raises:
        InputError: no demo ran in ``data_dir``.
    """
    from refit.core.errors import InputError

    data_dir = Path(data_dir).resolve()
    if not (data_dir / "pg" / "PG_VERSION").is_file():
        raise InputError(f"no demo database in {data_dir}: run `refit demo` first (or give its --data-dir)")
    return demo_environment(data_dir, start_embedded_postgres(data_dir / "pg", keep=True))


def stop_demo(data_dir: Path) -> None:
    """Stop the embedded Postgres that ``--keep`` or ``--resume`` left running (``refit demo --stop``).

    A handle that stops the server with the last process using it is taken, and this process is
    that last one: the server stops when it exits.

    Args:
        data_dir: the data folder the demo ran in.
    """
    data_dir = Path(data_dir).resolve()
    if (data_dir / "pg" / "PG_VERSION").is_file():
        start_embedded_postgres(data_dir / "pg", keep=False)


def run_demo(data_dir: Path, rows: int = 1200, echo: Callable[[str], None] | None = print, keep: bool = False) -> dict:
    """Run the demo end to end: a first feedback file, a retrain, a shifted one, a retrain.

    Args:
        data_dir: where the embedded Postgres, the store, the work folder and the files go.
        rows: feedback rows per file.
        echo: where progress lines go (None: nowhere).
        keep: leave the embedded Postgres running afterwards.

    Returns:
        What happened in each phase (ingest summary, the run, seconds), the whole run's time, and
        ``environment``: the settings that point refit at the demo's database and store.
    """
    from refit.data.devset import refresh_devset
    from refit.data.ingest import ingest_file
    from refit.data.snapshots import SplitConfig
    from refit.data.validate import IngestRules
    from refit.flows.retrain import describe_run, retrain

    say = echo or (lambda _msg: None)
    data_dir = Path(data_dir).resolve()
    started = time.perf_counter()
    say(f"refit demo in {data_dir}")
    settings, engine, database_url = _configure(data_dir, keep)
    say("  embedded Postgres ready, schema applied")
    files = _write_feedback_files(data_dir, rows)
    rules = IngestRules.from_settings(settings)
    report: dict = {"data_dir": str(data_dir), "phases": {}}
    for phase, path in files.items():
        summary = ingest_file(engine, path, rules)
        say(f"\n[{phase}] ingested {path.name}: {summary.accepted} accepted, {summary.quarantined} quarantined")
        if phase == "after":
            # Growing the gate's dev set is an explicit, recorded act (`refit devset refresh`):
            # the operator decides that the new regime is what the models must be judged on.
            devset = refresh_devset(engine, SplitConfig.from_settings(settings), "demo: the shifted regime joins")
            say(f"  dev set refreshed to v{devset.version} ({devset.rows} rows)")
        say("  retraining: snapshot, drift check, training, gate, publish (training takes most of it)")
        phase_started = time.perf_counter()
        result = retrain(force=False)
        say("  " + describe_run(result).replace("\n", "\n  "))
        say(f"  {phase} phase took {time.perf_counter() - phase_started:.0f} s")
        report["phases"][phase] = {
            "ingest": summary.as_dict(),
            "run": result,
            "seconds": round(time.perf_counter() - phase_started, 1),
        }
    report["seconds"] = round(time.perf_counter() - started, 1)
    report["store"] = settings.store_url
    report["environment"] = demo_environment(data_dir, database_url)
    _say_where(say, data_dir, settings, database_url)
    if not any(
        (settings.slack_webhook_url, settings.slack_webhook_block, settings.webhook_url, settings.webhook_block)
    ):
        say("\nnotifications: none sent (no target configured); set REFIT_SLACK_WEBHOOK_URL to get each run in Slack")
    say(f"done in {report['seconds']:.0f} s")
    return report


def _configure(data_dir: Path, keep: bool = False):
    """Start the embedded Postgres, point this process's settings at it and at ``data_dir``, and
    apply the schema; returns the settings, the engine and the database URL."""
    from refit.core.settings import load_settings
    from refit.data.db import engine_for, upgrade

    database_url = start_embedded_postgres(data_dir / "pg", keep=keep)
    # The demo is an entry point: it configures this process the way an operator would.
    os.environ.update(
        {
            **demo_environment(data_dir, database_url),
            **{k: v for k, v in DEMO_SETTINGS.items() if k not in os.environ},
        }
    )
    settings = load_settings()
    engine = engine_for(settings)
    upgrade(engine)
    return settings, engine, database_url


def _write_feedback_files(data_dir: Path, rows: int) -> dict[str, Path]:
    """The demo's two feedback files: two months ago as usual, and a shifted regime since."""
    now = datetime.now(timezone.utc)
    before = generate_feedback(rows, seed=1, start=now - timedelta(days=60), id_prefix="before")
    after = generate_feedback(rows, seed=2, shifted=True, start=now - timedelta(days=20), id_prefix="after")
    return {
        "before": write_feedback(before, data_dir / "feedback_before.csv"),
        "after": write_feedback(after, data_dir / "feedback_after.jsonl"),
    }


def _say_where(say, data_dir: Path, settings, database_url: str) -> None:
    """Where the demo left what it made: the pointer, the reports, the checkpoints, the database."""
    say(f"\nchampion pointer: {data_dir / 'store' / pointer_key(settings.model_name)}")
    say(f"drift reports:    {data_dir / 'store' / 'reports' / 'drift'}")
    say(f"checkpoints:      {data_dir / 'store' / 'models'}")
    say(f"database URL:     {database_url}")
