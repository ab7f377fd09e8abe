"""The ``refit`` command line. Every command has ``--json`` and exits non-zero with a one-line
reason on failure; ``--debug`` shows the full traceback instead."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from refit.errors import RefitError

app = typer.Typer(
    help="refit keeps a fine-tuned BERT satisfaction model current: ingest feedback, detect drift, "
    "retrain, gate against the champion, publish. Configure with REFIT_* variables (see README).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
db_app = typer.Typer(help="Database schema commands.", no_args_is_help=True)
app.add_typer(db_app, name="db")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
_state = {"debug": False}


@app.callback()
def _root(debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False) -> None:
    _state["debug"] = debug


def _emit(data: dict | list, as_json: bool, text: str) -> None:
    typer.echo(json.dumps(data, indent=2, default=str) if as_json else text)


def _settings():
    from refit.settings import load_settings

    return load_settings()


def _engine(settings):
    from refit.db import engine_for, require_schema

    engine = engine_for(settings)
    require_schema(engine)
    return engine


@db_app.command("upgrade")
def db_upgrade(as_json: JsonOpt = False) -> None:
    """Apply the SQL migrations in sql/ that are not applied yet (a second run is a no-op)."""
    from refit.db import check_connection, engine_for, upgrade

    settings = _settings()
    engine = engine_for(settings)
    check_connection(engine)
    applied = upgrade(engine)
    _emit(
        {"applied": applied},
        as_json,
        f"applied {len(applied)} migration(s): {', '.join(applied)}" if applied else "schema is up to date",
    )


@app.command()
def ingest(
    file: Annotated[str, typer.Argument(help="CSV, JSONL or Parquet feedback file, or - for standard input.")],
    mapping: Annotated[
        list[str] | None,
        typer.Option("--map", help="refit column=file column, e.g. --map text=review_body (repeatable)."),
    ] = None,
    fmt: Annotated[str | None, typer.Option("--format", help="csv, jsonl or parquet (default: from the name).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Load feedback into Postgres.

    Needs text and created_at, and one of satisfaction (0..1), rating or label; feedback_id,
    user_id and item_id are optional; other columns are behaviour features. Bad rows go to
    quarantine with a reason; re-ingesting a file adds nothing.
    """
    from refit.ingest import IngestRules
    from refit.ingest import ingest as run_ingest

    settings = _settings()
    engine = _engine(settings)
    rules = IngestRules.from_settings(settings, column_map=_pairs(mapping or [], "--map"))
    show_progress = sys.stderr.isatty() and not as_json

    def progress(summary) -> None:
        if show_progress:
            sys.stderr.write(
                f"\r{summary.rows_read:,} rows: {summary.accepted:,} accepted, {summary.duplicates:,} duplicate,"
                f" {summary.quarantined:,} quarantined ({summary.rows_per_second:,.0f} rows/s)"
            )

    summary = run_ingest(engine, file, rules, fmt=fmt, batch_rows=settings.ingest_batch_rows, on_progress=progress)
    if show_progress:
        sys.stderr.write("\n")
    data = summary.as_dict()
    reasons = ", ".join(f"{k}={v}" for k, v in sorted(summary.reasons.items())) or "none"
    _emit(
        data,
        as_json,
        f"{summary.source}: {summary.rows_read} rows read, {summary.accepted} accepted, {summary.duplicates} "
        f"duplicate, {summary.quarantined} quarantined ({reasons}) at {data['rows_per_second']:.0f} rows/s",
    )


def _pairs(values: list[str], option: str) -> dict[str, str]:
    pairs = {}
    for value in values:
        key, sep, val = value.partition("=")
        if not sep or not key or not val:
            raise typer.BadParameter(f"expected {option} name=value, got {value!r}")
        pairs[key.strip()] = val.strip()
    return pairs


@app.command()
def quarantine(
    requeue: Annotated[
        bool, typer.Option("--requeue", help="Re-validate quarantined rows with the current settings.")
    ] = False,
    limit: Annotated[int, typer.Option(help="How many recent rows to list.")] = 10,
    as_json: JsonOpt = False,
) -> None:
    """Count quarantined rows by reason and list the latest; --requeue re-validates them after a
    configuration change, moving the rows that now pass into feedback."""
    from refit.quarantine import quarantine_report, requeue_quarantine

    settings = _settings()
    engine = _engine(settings)
    if requeue:
        result = requeue_quarantine(engine, settings)
        _emit(result, as_json, f"requeued {result['requeued']} row(s); {result['still_quarantined']} still quarantined")
        return
    report = quarantine_report(engine, limit)
    lines = [f"{n:>8}  {reason}" for reason, n in report["counts"].items()] or ["quarantine is empty"]
    lines += [
        f"  #{r['id']} {r['reason']} (line {r['line_no']} of {r['source']}): {r['detail']}" for r in report["latest"]
    ]
    _emit(report, as_json, "\n".join(lines))


devset_app = typer.Typer(help="The gate's frozen, versioned dev set.", no_args_is_help=True)
app.add_typer(devset_app, name="devset")


@devset_app.command("show")
def devset_show(as_json: JsonOpt = False) -> None:
    """Show the current dev set version: its watermark, size and hash."""
    from refit.devset import current_devset

    devset = current_devset(_engine(_settings()))
    data = devset.as_dict() if devset else {}
    _emit(data, as_json, f"dev set v{devset.version}: {devset.rows} rows up to id {devset.watermark} ({devset.reason})"
          if devset else "no dev set yet: the first gate creates one")  # fmt: skip


@devset_app.command("refresh")
def devset_refresh(
    reason: Annotated[str, typer.Option(help="Why the dev set grows (recorded).")] = "manual refresh",
    as_json: JsonOpt = False,
) -> None:
    """Grow the dev set to every dev-split row ingested so far, as a new recorded version. The gate
    never does this on its own."""
    from refit.devset import refresh_devset
    from refit.snapshots import SplitConfig

    settings = _settings()
    devset = refresh_devset(_engine(settings), SplitConfig.from_settings(settings), reason)
    _emit(devset.as_dict(), as_json, f"dev set v{devset.version}: {devset.rows} rows up to id {devset.watermark}")


@app.command()
def forget(
    user: Annotated[str, typer.Option("--user", help="The user id whose feedback is deleted.")],
    as_json: JsonOpt = False,
) -> None:
    """Delete a user's feedback, record that it was done, and list the models trained on it."""
    from refit.privacy import forget_user

    result = forget_user(_engine(_settings()), user)
    affected = ", ".join(result["affected_versions"]) or "none"
    _emit(result, as_json, f"deleted {result['rows_deleted']} row(s); models trained on them: {affected}")


@app.command()
def run(
    force: Annotated[bool, typer.Option("--force", help="Retrain even without drift.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Run the retrain flow once, in this process (an ephemeral Prefect API unless
    PREFECT_API_URL points at a server)."""
    from flows.retrain import retrain

    settings = _settings()
    _engine(settings)
    summary = retrain(force=force)
    _emit(summary, as_json, describe_run(summary))


def describe_run(summary: dict) -> str:
    lines = [f"outcome: {summary['outcome']}"]
    drift = summary.get("drift")
    if drift:
        lines.append(f"drift: {drift['decision']} - {'; '.join(drift['reasons'])}")
        if drift.get("html_uri"):
            lines.append(f"drift report: {drift['html_uri']}")
    gate = summary.get("gate")
    if gate:
        lines.append(f"gate: {gate['reason']}")
    if summary.get("version"):
        lines.append(f"challenger: {summary['version']} at {summary['uri']}")
    if summary.get("champion"):
        lines.append(f"champion: {summary['champion']}")
    return "\n".join(lines)


@app.command()
def drift(
    force: Annotated[bool, typer.Option("--force", help="Record a forced retrain decision.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Check drift between the champion's training data and the current window (all feedback since
    the champion, or the last REFIT_DRIFT_WINDOW_DAYS days) and record it, with every signal's score,
    threshold and verdict and the decision's reasons (no training). Slack hears of a retrain."""
    from refit.drift import run_drift_check
    from refit.registry import require_champion

    settings = _settings()
    engine = _engine(settings)
    summary = run_drift_check(settings, require_champion(engine), force=force)
    lines = [f"drift: {summary['decision']} - {'; '.join(summary['reasons'])}"]
    lines += [
        f"  {'*' if s['drifted'] else ' '} {s['column']:<24} {s['method']:<24} "
        + ("-" if s["score"] is None else f"{s['score']:.4g}")
        + f" (threshold {s['threshold']})"
        for s in summary["signals"]
    ]
    if summary["html_uri"]:
        lines.append(f"report: {summary['html_uri']}")
    _emit(summary, as_json, "\n".join(lines))


models_app = typer.Typer(help="The model registry: versions, decisions, lineage.")
app.add_typer(models_app, name="models")


@models_app.callback(invoke_without_command=True)
def models(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """List model versions, newest first, with status and key metrics; the champion is marked."""
    if ctx.invoked_subcommand is not None:
        return
    from refit.registry import list_versions

    settings = _settings()
    rows = list_versions(_engine(settings))
    lines = [
        f"{'*' if r['is_champion'] else ' '} {r['version']}  {r['status']:<10} {r['created_at']:%Y-%m-%d %H:%M}  "
        + ", ".join(f"{k}={v:.4f}" for k, v in (r["metrics"].get("dev") or {}).items() if v is not None)
        for r in rows
    ]
    _emit(rows, as_json, "\n".join(lines) if rows else "no model versions yet")


@models_app.command("show")
def models_show(
    version: Annotated[str, typer.Argument(help="The model version, e.g. v20261127-190512-123456.")],
    as_json: JsonOpt = False,
) -> None:
    """A version's registry record, lineage, and every decision about it (the gate's table)."""
    from refit.records import decision_markdown
    from refit.registry import get_version, lineage

    engine = _engine(_settings())
    record = get_version(engine, version)
    record["lineage"] = lineage(engine, version)
    lines = [
        f"{record['version']}  status {record['status']}  created {record['created_at']:%Y-%m-%d %H:%M:%S}"
        f"  promoted {record['promoted_at'] or '-'}",
        f"store: {record['uri']}  manifest sha256 {record['manifest_sha256']}",
        f"snapshot {record['snapshot_id']}  config {record['config_hash'] or '-'}  run {record['flow_run_id'] or '-'}",
        "lineage: " + " <- ".join(f"{r['version']} ({r['status']})" for r in record["lineage"]),
        "",
    ]
    for entry in record["log"]:
        lines.append(
            f"## {entry['decided_at']:%Y-%m-%d %H:%M:%S} {entry['decision']} by {entry['actor']}: "
            f"{entry['challenger_version']} (champion before: {entry['champion_version'] or 'none'})"
        )
        details = entry["details"] or {}
        lines.append(
            decision_markdown(details, entry["challenger_version"]) if "promote" in details else entry["reason"]
        )
        lines.append("")
    _emit(record, as_json, "\n".join(lines).rstrip())


@app.command()
def rollback(
    version: Annotated[str | None, typer.Argument(help="Version to restore (default: the previous champion).")] = None,
    reason: Annotated[str, typer.Option("--reason", help="Why; recorded in the promotion log.")] = "",
    by: Annotated[str | None, typer.Option("--by", help="Who is rolling back (default: $USER).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Make an earlier champion the champion again, after checking its files against their checksums."""
    from refit.registry import rollback as roll_back
    from refit.store import store_for

    if not reason.strip():
        raise RefitError("say why with --reason; it goes in the promotion log")
    settings = _settings()
    actor = by or os.environ.get("USER") or "operator"
    engine, store = _engine(settings), store_for(settings)
    moved = roll_back(engine, store, version, reason, actor, settings.work_dir, settings.model_name)
    _emit(moved, as_json, f"rolled back: {moved['from']} -> {moved['to']} (champion is {moved['to']})")


@app.command()
def gc(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List what would go; change nothing.")] = False,
    keep: Annotated[int | None, typer.Option(help="Newest versions kept (default: REFIT_KEEP_VERSIONS).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Delete old rejected versions from the store and mark them archived. Kept: the newest
    REFIT_KEEP_VERSIONS versions and every version that was ever champion."""
    from refit.registry import collect_garbage
    from refit.store import store_for

    settings = _settings()
    keep = settings.keep_versions if keep is None else keep
    if keep < 1:
        raise RefitError("--keep must be at least 1")
    gone = collect_garbage(_engine(settings), store_for(settings), keep, dry_run, settings.model_name)
    verb = "would delete" if dry_run else "deleted"
    lines = [f"{verb} {len(gone)} version(s), keeping the newest {keep} and every champion"]
    lines += [f"  {g['version']}  {g['status']}  {g['created_at']:%Y-%m-%d %H:%M}" for g in gone]
    _emit({"dry_run": dry_run, "keep": keep, "versions": gone}, as_json, "\n".join(lines))


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Listen address (default: REFIT_SERVE_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default: REFIT_SERVE_PORT).")] = None,
) -> None:
    """Serve the champion over HTTP (POST /predict, /explain, /reload; GET /healthz, /readyz,
    /version, /metrics), following the champion pointer and swapping models without downtime."""
    import logging

    from refit.serving import serve as run_server

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = _settings()
    overrides = {k: v for k, v in {"serve_host": host, "serve_port": port}.items() if v is not None}
    run_server(settings.model_copy(update=overrides))


@app.command()
def predict(
    file: Annotated[Path, typer.Argument(help="CSV or JSONL with a text column (feedback_id kept).")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write .csv or .jsonl here.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Score a feedback file with the champion. Each row keeps its feedback_id and gains
    prediction, class probabilities (classification) and model_version."""
    from refit.scoring import score_file

    settings = _settings()
    result = score_file(settings, file, output)
    if output is None:
        typer.echo(result.pop("content"), nl=False)
        return
    _emit(result, as_json, f"scored {result['rows']} rows with {result['model_version']} -> {output}")


@app.command()
def demo(
    data_dir: Annotated[Path, typer.Option(help="Where the embedded Postgres, store and work go.")] = Path(
        ".refit/demo"
    ),
    rows: Annotated[int, typer.Option(help="Rows in each of the two phases.")] = 1200,
    as_json: JsonOpt = False,
) -> None:
    """The whole loop on embedded defaults: an embedded Postgres, a file:// store, synthetic feedback
    with a shift in it, the packaged BERT. Runs the loop before and after the shift."""
    from refit.demo import run_demo

    report = run_demo(data_dir, rows, echo=None if as_json else typer.echo)
    if as_json:
        _emit(report, True, "")


# Defaults for the ephemeral Prefect API that `refit run` and `refit demo` start in-process;
# an operator's own PREFECT_* values win. On 2 cores its start can take longer than Prefect's 20 s.
PREFECT_DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
}


def main() -> None:
    """Entry point: one-line errors instead of tracebacks (unless --debug)."""
    for key, value in PREFECT_DEFAULTS.items():
        os.environ.setdefault(key, value)
    try:
        app()
    except SystemExit:
        raise
    except Exception as exc:  # the last line of defence for an operator-facing tool
        if _state["debug"]:
            raise
        typer.echo(f"refit: error: {one_line(exc)}", err=True)
        sys.exit(1)


def one_line(exc: BaseException) -> str:
    if isinstance(exc, RefitError):
        return str(exc)
    from sqlalchemy.exc import DBAPIError

    if isinstance(exc, DBAPIError) and exc.orig is not None:
        return f"database error: {str(exc.orig).strip().splitlines()[0]}"
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first} (run with --debug for the traceback)"


if __name__ == "__main__":
    main()
