"""Commands on the models: the retrain loop, drift, the registry, serving and scoring."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

from refit.cli._shared import JsonOpt, current_settings, emit, group, migrated_engine
from refit.core.errors import RefitError

models_app = group("The model registry: versions, decisions, lineage.")


def run(
    force: Annotated[bool, typer.Option("--force", help="Retrain even without drift.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Run the retrain flow once, in this process.

    It uses an ephemeral Prefect API unless PREFECT_API_URL points at a server.
    """
    from refit.flows.retrain import describe_run, retrain

    migrated_engine(current_settings())
    summary = retrain(force=force)
    emit(summary, as_json, describe_run(summary))


def drift(
    force: Annotated[bool, typer.Option("--force", help="Record a forced retrain decision.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Check drift between the champion's training data and the current window, and record it.

    The current window is all feedback since the champion, or the last REFIT_DRIFT_WINDOW_DAYS
    days. The record holds every signal's score, threshold and verdict and the decision's reasons;
    nothing is trained. Slack hears of a retrain.
    """
    from refit.core.quality import quality_lines
    from refit.registry.table import require_champion
    from refit.tasks.drift import run_and_announce as run_drift_check  # records, then posts a retrain

    settings = current_settings()
    engine = migrated_engine(settings)
    summary = run_drift_check(settings, require_champion(engine), force=force)
    lines = [f"drift: {summary['decision']} - {'; '.join(summary['reasons'])}"]
    lines += [
        f"  {'*' if s['drifted'] else ' '} {s['column']:<24} {s['method']:<24} "
        + ("-" if s["score"] is None else f"{s['score']:.4g}")
        + f" (threshold {s['threshold']})"
        for s in summary["signals"]
    ]
    lines += [f"quality: {line}" for line in quality_lines(summary["signals"])]  # estimated or realized
    if summary["html_uri"]:
        lines.append(f"report: {summary['html_uri']}")
    emit(summary, as_json, "\n".join(lines))


@models_app.callback(invoke_without_command=True)
def models(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """List model versions, newest first, with status and key metrics; the champion is marked."""
    if ctx.invoked_subcommand is not None:
        return
    from refit.registry.table import list_versions

    rows = list_versions(migrated_engine(current_settings()))
    lines = [
        f"{'*' if r['is_champion'] else ' '} {r['version']}  {r['status']:<10} {r['created_at']:%Y-%m-%d %H:%M}  "
        + (f"{r['metrics']['kind']:<6} " if r["metrics"].get("kind") else "")
        + ", ".join(f"{k}={v:.4f}" for k, v in (r["metrics"].get("dev") or {}).items() if v is not None)
        for r in rows
    ]
    emit(rows, as_json, "\n".join(lines) if rows else "no model versions yet")


@models_app.command("show")
def models_show(
    version: Annotated[str, typer.Argument(help="The model version, e.g. v20261127-190512-123456.")],
    as_json: JsonOpt = False,
) -> None:
    """Show a version's registry record, lineage, and every decision about it (the gate's table)."""
    from refit.gate.records import decision_markdown
    from refit.registry.table import get_version, lineage

    engine = migrated_engine(current_settings())
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
    emit(record, as_json, "\n".join(lines).rstrip())


def rollback(
    version: Annotated[str | None, typer.Argument(help="Version to restore (default: the previous champion).")] = None,
    reason: Annotated[str, typer.Option("--reason", help="Why; recorded in the promotion log.")] = "",
    by: Annotated[str | None, typer.Option("--by", help="Who is rolling back (default: $USER).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Make an earlier champion the champion again, after checking its files against their checksums."""
    from refit.registry.promotion import rollback as roll_back
    from refit.registry.store import store_for

    if not reason.strip():
        raise RefitError("say why with --reason; it goes in the promotion log")
    settings = current_settings()
    actor = by or os.environ.get("USER") or "operator"
    engine, store = migrated_engine(settings), store_for(settings)
    moved = roll_back(engine, store, version, reason, actor, settings.work_dir, settings.model_name)
    emit(moved, as_json, f"rolled back: {moved['from']} -> {moved['to']} (champion is {moved['to']})")


def gc(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List what would go; change nothing.")] = False,
    keep: Annotated[int | None, typer.Option(help="Newest versions kept (default: REFIT_KEEP_VERSIONS).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Delete old rejected versions from the store and mark them archived.

    Kept: the newest REFIT_KEEP_VERSIONS versions and every version that was ever champion.
    """
    from refit.registry.store import store_for
    from refit.registry.table import collect_garbage

    settings = current_settings()
    keep = settings.keep_versions if keep is None else keep
    if keep < 1:
        raise RefitError("--keep must be at least 1")
    gone = collect_garbage(migrated_engine(settings), store_for(settings), keep, dry_run, settings.model_name)
    verb = "would delete" if dry_run else "deleted"
    lines = [f"{verb} {len(gone)} version(s), keeping the newest {keep} and every champion"]
    lines += [f"  {g['version']}  {g['status']}  {g['created_at']:%Y-%m-%d %H:%M}" for g in gone]
    emit({"dry_run": dry_run, "keep": keep, "versions": gone}, as_json, "\n".join(lines))


def serve(
    host: Annotated[str | None, typer.Option(help="Listen address (default: REFIT_SERVE_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default: REFIT_SERVE_PORT).")] = None,
    no_auth: Annotated[
        bool,
        typer.Option(
            "--no-auth", help="Serve without a bearer token when REFIT_SERVE_TOKEN is not set (warned about)."
        ),
    ] = False,
) -> None:
    """Serve the champion over HTTP, swapping models without downtime.

    POST /predict, /explain and /reload (they need the REFIT_SERVE_TOKEN bearer token; without one
    it refuses to start unless given --no-auth); GET /healthz, /readyz, /version and /metrics. The
    server follows the champion pointer.
    """
    import logging

    from refit.serving.app import serve as run_server

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run_server(current_settings().with_overrides(serve_host=host, serve_port=port), no_auth=no_auth)


def predict(
    file: Annotated[Path, typer.Argument(help="CSV, JSONL or Parquet feedback file with a text column.")],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write .csv or .jsonl here (default: standard output).")
    ] = None,
    mapping: Annotated[
        list[str] | None,
        typer.Option(
            "--map", help="refit column=file column, e.g. --map text=body (repeatable; wins over REFIT_COLUMN_MAP)."
        ),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="JSON lines on standard output; with -o, the summary as JSON.")
    ] = False,
) -> None:
    """Score a feedback file with the champion, row by row, as `/predict` scores a request.

    Each row keeps the input's feedback_id and its row number, and gains /predict's fields:
    satisfaction (or label and probabilities), truncated and model_version. A row that cannot be
    scored (not UTF-8, no text) gets an error with its reason, and the others are scored. The
    file's columns are mapped by REFIT_COLUMN_MAP and --map, as for `refit ingest`.
    """
    from refit.cli.data import pairs
    from refit.serving.scoring import score_file

    column_map = pairs(mapping or [], "--map")
    result = score_file(current_settings(), file, output, as_json=as_json, column_map=column_map)
    errors = result["errors"]
    if output is None:
        typer.echo(result.pop("content"), nl=False)
        for error in errors:  # on stderr: the scored rows on stdout stay machine-readable
            typer.echo(f"refit: row {error['row']} not scored: {error['error']}", err=True)
        return
    text = f"scored {result['scored']} of {result['rows']} rows with {result['model_version']} -> {output}"
    text += "".join(f"\nrow {e['row']} not scored: {e['error']}" for e in errors)
    emit(result, as_json, text)


def tensorboard(
    version: Annotated[str, typer.Argument(help="The model version whose training curves to open.")],
    print_logdir: Annotated[
        bool, typer.Option("--print-logdir", help="Fetch the version and print its log folder; start nothing.")
    ] = False,
    host: Annotated[str, typer.Option(help="Where TensorBoard listens.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TensorBoard's port.")] = 6006,
) -> None:
    """Open a version's TensorBoard event files.

    They hold per-step loss and learning rate, and per-epoch dev metrics.
    """
    from refit.registry.versions import checkout

    folder = checkout(current_settings(), version)
    if not any(folder.rglob("events.out.tfevents.*")):
        raise RefitError(f"version {version} has no TensorBoard event files (trained with REFIT_TENSORBOARD=false?)")
    if print_logdir:
        typer.echo(str(folder))
        return
    # The checkpoint folder is the log folder: an ensemble's members show up as one run each.
    command = [sys.executable, "-m", "tensorboard.main", "--logdir", str(folder), "--host", host, "--port", str(port)]
    raise typer.Exit(subprocess.call(command))
