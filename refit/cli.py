"""The ``refit`` command line. Every command has ``--json`` and exits non-zero with a one-line
reason on failure; ``--debug`` shows the full traceback instead."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

from refit.core.errors import RefitError

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
    from refit.core.settings import load_settings

    return load_settings()


def _engine(settings):
    from refit.data.db import engine_for, require_schema

    engine = engine_for(settings)
    require_schema(engine)
    return engine


@db_app.command("upgrade")
def db_upgrade(as_json: JsonOpt = False) -> None:
    """Apply the SQL migrations in sql/ that are not applied yet (a second run is a no-op)."""
    from refit.data.db import check_connection, engine_for, upgrade

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
    from refit.data.ingest import IngestRules
    from refit.data.ingest import ingest as run_ingest

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
    from refit.data.quarantine import quarantine_report, requeue_quarantine

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
    from refit.data.devset import current_devset

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
    from refit.data.devset import refresh_devset
    from refit.data.snapshots import SplitConfig

    settings = _settings()
    devset = refresh_devset(_engine(settings), SplitConfig.from_settings(settings), reason)
    _emit(devset.as_dict(), as_json, f"dev set v{devset.version}: {devset.rows} rows up to id {devset.watermark}")


@app.command()
def forget(
    user: Annotated[str, typer.Option("--user", help="The user id whose feedback is deleted.")],
    as_json: JsonOpt = False,
) -> None:
    """Delete a user's feedback, record that it was done, and list the models trained on it."""
    from refit.data.privacy import forget_user

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
    from refit.flows.retrain import retrain

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
    from refit.gate.records import decision_markdown
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
    from refit.registry.store import store_for

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
    from refit.registry.store import store_for

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
    from refit.serving.scoring import score_file

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
    from refit.ops.demo import run_demo

    report = run_demo(data_dir, rows, echo=None if as_json else typer.echo)
    if as_json:
        _emit(report, True, "")


# --- the local stack (issue 8) ----------------------------------------------------------------
StateDirOpt = Annotated[
    Path, typer.Option("--state-dir", help="Where the stack keeps its PIDs, logs and Prefect database.")
]


@app.command()
def up(
    port: Annotated[int, typer.Option(help="The Prefect server's port.")] = 4200,
    host: Annotated[str, typer.Option(help="The address the Prefect server listens on.")] = "127.0.0.1",
    state_dir: StateDirOpt = Path(".refit/stack"),
    as_json: JsonOpt = False,
) -> None:
    """Start the local stack: a Prefect server (SQLite, or PREFECT_API_DATABASE_CONNECTION_URL), the
    cpu and gpu work pools, every deployment of deployments/prefect.yaml and a worker per pool."""
    from refit.ops.stack import up as start

    settings = _settings()
    if settings.database_url:
        from refit.data.db import upgrade

        upgrade(_engine(settings))
    root = Path.cwd()  # the workers run here, with this folder's .env
    echo = (lambda _line: None) if as_json else typer.echo
    stack = start(root, state_dir, host=host, port=port, settings=settings, echo=echo)
    _emit(stack.__dict__, as_json, f"deployments: {', '.join(stack.deployments)}\nstop it with: refit down")


@app.command()
def down(state_dir: StateDirOpt = Path(".refit/stack"), as_json: JsonOpt = False) -> None:
    """Stop what `refit up` started: the workers (their unfinished runs are marked Crashed), then the server."""
    from refit.ops.stack import down as stop

    result = stop(state_dir, echo=(lambda _line: None) if as_json else typer.echo)
    _emit(result, as_json, f"stopped {len(result['stopped'])} process(es)")


# --- defences and compression (issue 10) ------------------------------------------------------


@app.command()
def ablate(
    snapshot: Annotated[int | None, typer.Option("--snapshot", help="Snapshot to train on (default: latest).")] = None,
    variants: Annotated[
        str, typer.Option(help="Comma-separated: baseline, augment, fgm, pgd, lora, ensemble<K>, prune<L>, heads<N>.")
    ] = "baseline,augment,fgm,lora,ensemble3,prune4",
    seeds: Annotated[int, typer.Option(help="Seeds per variant, from REFIT_SEED on.")] = 3,
    out: Annotated[Path | None, typer.Option(help="Folder for ablation.md and ablation.json.")] = None,
    train_rows: Annotated[int | None, typer.Option(help="Sample this many training rows (default: all).")] = None,
    eval_rows: Annotated[int | None, typer.Option(help="At most this many dev and test rows (default: all).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Train every variant on one snapshot with the same seeds; print and save the comparison."""
    from refit.sim.ablation import ablate as run_ablate

    settings = _settings()
    _engine(settings)
    result = run_ablate(
        settings,
        snapshot,
        [v for v in variants.split(",") if v.strip()],
        n_seeds=seeds,
        out_dir=out,
        train_rows=train_rows,
        eval_rows=eval_rows,
        echo=None if as_json else typer.echo,
    )
    text = f"{result['table']}\n\nsaved {result['markdown']} and {result['json']}"
    _emit({k: v for k, v in result.items() if k != "table"}, as_json, text)


@app.command()
def tensorboard(
    version: Annotated[str, typer.Argument(help="The model version whose training curves to open.")],
    print_logdir: Annotated[
        bool, typer.Option("--print-logdir", help="Fetch the version and print its log folder; start nothing.")
    ] = False,
    host: Annotated[str, typer.Option(help="Where TensorBoard listens.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TensorBoard's port.")] = 6006,
) -> None:
    """Open a version's TensorBoard event files (per-step loss and learning rate, per-epoch dev metrics)."""
    from refit.registry import checkout

    settings = _settings()
    folder = checkout(settings, version)
    if not any(folder.rglob("events.out.tfevents.*")):
        raise RefitError(f"version {version} has no TensorBoard event files (trained with REFIT_TENSORBOARD=false?)")
    if print_logdir:
        typer.echo(str(folder))
        return
    # The checkpoint folder is the log folder: an ensemble's members show up as one run each.
    command = [sys.executable, "-m", "tensorboard.main", "--logdir", str(folder), "--host", host, "--port", str(port)]
    raise typer.Exit(subprocess.call(command))


@app.command()
def simulate(
    feedback: Annotated[
        Path | None, typer.Argument(help="Feedback with created_at (CSV, JSONL, Parquet); omit to use --scenario.")
    ] = None,
    scenario: Annotated[
        str, typer.Option(help="steady, gradual, sudden or seasonal (the demo's generator).")
    ] = "sudden",
    rows: Annotated[int, typer.Option(help="Rows in the generated stream.")] = 50_000,
    steps: Annotated[int, typer.Option(help="Steps in the generated stream.")] = 52,
    step: Annotated[str, typer.Option(help="day or week.")] = "week",
    policy: Annotated[
        list[str] | None,
        typer.Option("--policy", help="never, schedule:K, drift or drift:N/M[:COOLDOWN] (repeatable)."),
    ] = None,
    devset_every: Annotated[int, typer.Option(help="Refresh the gate's dev set every N steps (0: never).")] = 4,
    warmup: Annotated[int, typer.Option(help="Steps of history the first champion trains on before the replay.")] = 4,
    out: Annotated[Path, typer.Option(help="Where the table, steps.json and simulate.png go.")] = Path(
        ".refit/simulate"
    ),
    real_model: Annotated[
        bool, typer.Option("--real-model", help="Train the configured BERT, not a tiny one.")
    ] = False,
    chaos: Annotated[bool, typer.Option("--chaos", help="Inject faults at random steps and check invariants.")] = False,
    seed: Annotated[int, typer.Option(help="Seed of the generated stream and of the fault steps.")] = 0,
    keep: Annotated[bool, typer.Option("--keep", help="Keep each policy's database schema afterwards.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Backtest retraining policies: replay feedback through the real loop on a simulated clock,
    one database schema and store prefix per policy, and compare online quality and cost."""
    from refit.sim import backtest as sim

    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")  # a line per step here, not one per task run
    if step not in ("day", "week"):
        raise typer.BadParameter("--step must be day or week")
    policies = [sim.Policy.parse(p) for p in policy or ["never", "schedule:4", "drift", "drift:2/3:14d"]]
    settings = _settings()
    if not settings.database_url:  # like the demo: an embedded Postgres when none is configured
        from refit.ops.demo import start_embedded_postgres

        settings = settings.model_copy(update={"database_url": start_embedded_postgres(Path(settings.work_dir) / "pg")})
    faults_for = None
    if chaos:
        from refit.sim.faults import Chaos, FaultProxy, plan

        proxy, endpoint = None, os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if settings.store_url.startswith("s3://") and endpoint and endpoint.startswith("http://"):
            proxy = FaultProxy(endpoint).start()
            os.environ["AWS_ENDPOINT_URL_S3"] = proxy.url  # boto3 reaches the store through the proxy
        faults_for = lambda n: Chaos(plan(seed, n), proxy=proxy)  # noqa: E731
    echo = (lambda _r: None) if as_json else (lambda r: typer.echo(_step_line(r)))
    result = sim.backtest(
        settings, policies, out, feedback=feedback, scenario=scenario, rows=rows, steps=steps,
        step_days=1.0 if step == "day" else 7.0, seed=seed, real_model=real_model,
        devset_every=devset_every or None, warmup=warmup, faults_for=faults_for, keep=keep, on_step=echo,
    )  # fmt: skip
    text = f"{result['table']}\n\n{len(result['steps'])} policy-steps in {result['seconds']:.0f} s; "
    text += f"invariant violations: {result['violations']}\n" + "\n".join(
        f"{k}: {v}" for k, v in result["outputs"].items()
    )
    if "chaos" in result:
        text += "\nfaults (step fired per policy): " + json.dumps({k: v["fired"] for k, v in result["chaos"].items()})
    _emit({k: v for k, v in result.items() if k != "steps"}, as_json, text)
    if result["violations"]:
        raise RefitError(f"{result['violations']} invariant violation(s); see {result['outputs']['json']}")


def _step_line(record: dict) -> str:
    online = record["online"]
    quality = f"{online['metric']} {online['value']:.4f}" if online else "no champion"
    cycles = ", ".join(
        c["outcome"] + (f" ({c['drift']['decision']})" if c.get("drift") else "") for c in record["cycles"]
    )
    faults = f" faults: {', '.join(record['faults'])}" if record["faults"] else ""
    problems = f" VIOLATIONS: {'; '.join(record['violations'])}" if record["violations"] else ""
    return f"{record['policy']:>18} step {record['step']:>3}: {quality}; {cycles}{faults}{problems}"


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
