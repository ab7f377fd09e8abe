"""Commands that run refit: the demo, the local stack, ablations and backtests."""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer

from refit.cli._shared import JsonOpt, current_settings, emit, migrated_engine
from refit.core.errors import RefitError

StateDirOpt = Annotated[
    Path, typer.Option("--state-dir", help="Where the stack keeps its PIDs, logs and Prefect database.")
]


def demo(
    data_dir: Annotated[Path, typer.Option(help="Where the embedded Postgres, store and work go.")] = Path(
        ".refit/demo"
    ),
    rows: Annotated[int, typer.Option(help="Rows in each of the two phases.")] = 1200,
    keep: Annotated[
        bool, typer.Option("--keep", help="Leave the demo's Postgres running afterwards, for the commands it prints.")
    ] = False,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Run no loop: start an earlier demo's Postgres again and print its settings as export lines "
            '(eval "$(refit demo --resume)").',
        ),
    ] = False,
    stop: Annotated[
        bool, typer.Option("--stop", help="Run no loop: stop the Postgres that --keep or --resume left running.")
    ] = False,
    verbose: Annotated[
        bool, typer.Option("--verbose", help="Show Prefect's log lines too (every task run, the training epochs).")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Run the whole loop on embedded defaults, before and after a shift in the feedback.

    An embedded Postgres, a file:// store, synthetic feedback with a shift in it, and the packaged
    BERT. It ends with the commands that carry on from it in another shell: `refit demo --resume`
    starts its Postgres again and prints the settings that point refit at its database and store.
    """
    from refit.ops import demo as demo_ops

    if resume or stop:
        if stop:
            demo_ops.stop_demo(data_dir)
            emit({"stopped": str(data_dir.resolve())}, as_json, f"stopped the demo's Postgres in {data_dir.resolve()}")
            return
        environment = demo_ops.resume_demo(data_dir)
        emit(environment, as_json, "\n".join(f"export {k}={shlex.quote(v)}" for k, v in environment.items()))
        if not as_json:
            where = shlex.quote(str(data_dir.resolve()))
            typer.echo(f"# the demo's Postgres runs until: {_refit_command()} demo --stop --data-dir {where}", err=True)
        return
    # One line per step: Prefect's task-run lines only on request (the demo is read by a person;
    # --verbose, or `refit run`, shows them)
    os.environ["PREFECT_LOGGING_LEVEL"] = "INFO" if verbose else "WARNING"
    report = demo_ops.run_demo(data_dir, rows, echo=None if as_json else typer.echo, keep=keep)
    if as_json:
        emit(report, True, "")
        return
    refit, where = _refit_command(), shlex.quote(str(Path(report["data_dir"])))
    running = "is still running (--keep)" if keep else "stopped with the demo; --resume starts it again"
    typer.echo(f"\ncarry on in a new shell (the demo's Postgres {running}):")
    typer.echo(f'  eval "$({refit} demo --resume --data-dir {where})"')
    typer.echo(f"  {refit} models")
    typer.echo(f"  {refit} predict {shlex.quote(str(Path(report['data_dir']) / 'feedback_after.jsonl'))} --json")
    typer.echo(f"  {refit} demo --stop --data-dir {where}    # when you are done")


def _refit_command() -> str:
    """How this ``refit`` was started, so that the printed commands work from any folder: its
    absolute path when run as the ``refit`` script (``.venv/bin/refit``), else ``refit``."""
    script = Path(sys.argv[0])
    return shlex.quote(str(script.resolve())) if script.name == "refit" and script.exists() else "refit"


# --- the local stack ----------------------------------------------------------------
def up(
    port: Annotated[int, typer.Option(help="The Prefect server's port.")] = 4200,
    host: Annotated[str, typer.Option(help="The address the Prefect server listens on.")] = "127.0.0.1",
    state_dir: StateDirOpt = Path(".refit/stack"),
    as_json: JsonOpt = False,
) -> None:
    """Start the local stack: a Prefect server, its work pools, the deployments and the workers.

    The server keeps its state in SQLite, or in PREFECT_API_DATABASE_CONNECTION_URL. Then come the
    cpu and gpu work pools, every deployment of deployments/prefect.yaml and a worker per pool.
    """
    from refit.ops.stack import up as start

    settings = current_settings()
    if settings.database_url:
        from refit.data.db import check_connection, engine_for, upgrade

        # Not migrated_engine(): it refuses a database without the schema, which `up` creates.
        engine = engine_for(settings)
        check_connection(engine)
        upgrade(engine)
    root = Path.cwd()  # the workers run here, with this folder's .env
    echo = (lambda _line: None) if as_json else typer.echo
    stack = start(root, state_dir, host=host, port=port, settings=settings, echo=echo)
    emit(stack.__dict__, as_json, f"deployments: {', '.join(stack.deployments)}\nstop it with: refit down")


def down(state_dir: StateDirOpt = Path(".refit/stack"), as_json: JsonOpt = False) -> None:
    """Stop what `refit up` started: the workers (their unfinished runs are marked Crashed), then the server."""
    from refit.ops.stack import down as stop

    result = stop(state_dir, echo=(lambda _line: None) if as_json else typer.echo)
    emit(result, as_json, f"stopped {len(result['stopped'])} process(es)")


# --- defences and compression ------------------------------------------------------
def ablate(
    snapshot: Annotated[int | None, typer.Option("--snapshot", help="Snapshot to train on (default: latest).")] = None,
    variants: Annotated[
        str,
        typer.Option(
            help="Comma-separated: `baseline`, `augment`, `fgm`, `pgd`, `lora`, `ensemble<K>`, `prune<L>`, `heads<N>`."
        ),
    ] = "baseline,augment,fgm,lora,ensemble3,prune4",
    seeds: Annotated[int, typer.Option(help="Seeds per variant, from REFIT_SEED on.")] = 3,
    out: Annotated[Path | None, typer.Option(help="Folder for ablation.md and ablation.json.")] = None,
    train_rows: Annotated[int | None, typer.Option(help="Sample this many training rows (default: all).")] = None,
    eval_rows: Annotated[int | None, typer.Option(help="At most this many dev and test rows (default: all).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Train every variant on one snapshot with the same seeds; print and save the comparison."""
    from refit.sim.ablation import ablate as run_ablate

    settings = current_settings()
    migrated_engine(settings)
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
    emit({k: v for k, v in result.items() if k != "table"}, as_json, text)


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
    """Backtest retraining policies on a simulated clock; compare online quality and cost.

    Feedback is replayed through the real loop, with one database schema and store prefix per
    policy.
    """
    from refit.sim import backtest as sim
    from refit.sim.policies import Policy

    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")  # a line per step here, not one per task run
    if step not in ("day", "week"):
        raise typer.BadParameter("--step must be day or week")
    policies = [Policy.parse(p) for p in policy or ["never", "schedule:4", "drift", "drift:2/3:14d"]]
    settings = current_settings()
    if not settings.database_url:  # like the demo: an embedded Postgres when none is configured
        from refit.ops.demo import start_embedded_postgres

        settings = settings.with_overrides(database_url=start_embedded_postgres(Path(settings.work_dir) / "pg"))
    faults_for = _chaos_faults(settings, seed) if chaos else None
    echo = (lambda _r: None) if as_json else (lambda r: typer.echo(step_line(r)))
    result = sim.backtest(
        settings, policies, out, feedback=feedback, scenario=scenario, rows=rows, steps=steps,
        step_days=1.0 if step == "day" else 7.0, seed=seed, real_model=real_model,
        devset_every=devset_every or None, warmup=warmup, faults_for=faults_for, keep=keep, on_step=echo,
    )  # fmt: skip
    emit({k: v for k, v in result.items() if k != "steps"}, as_json, _simulate_text(result))
    if result["violations"]:
        raise RefitError(f"{result['violations']} invariant violation(s); see {result['outputs']['json']}")


def _chaos_faults(settings, seed: int):
    """What ``--chaos`` injects: a seeded fault plan per policy, an S3 store reached through a
    fault proxy (when it is an http:// endpoint) so that its faults can be injected too."""
    from refit.sim.faults import Chaos, FaultProxy, plan

    proxy, endpoint = None, os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if settings.store_url.startswith("s3://") and endpoint and endpoint.startswith("http://"):
        proxy = FaultProxy(endpoint).start()
        os.environ["AWS_ENDPOINT_URL_S3"] = proxy.url  # boto3 reaches the store through the proxy
    return lambda n: Chaos(plan(seed, n), proxy=proxy)


def _simulate_text(result: dict) -> str:
    """``refit simulate``'s report: the table, the time, the invariant violations, the outputs and
    (with --chaos) the step each fault fired at."""
    text = f"{result['table']}\n\n{len(result['steps'])} policy-steps in {result['seconds']:.0f} s; "
    text += f"invariant violations: {result['violations']}\n" + "\n".join(
        f"{k}: {v}" for k, v in result["outputs"].items()
    )
    if "chaos" in result:
        text += "\nfaults (step fired per policy): " + json.dumps({k: v["fired"] for k, v in result["chaos"].items()})
    return text


def step_line(record: dict) -> str:
    """One backtest step of one policy as a line: online quality, cycles, faults, violations.

    Args:
        record: A step record from :func:`refit.sim.backtest.backtest`.

    Returns:
        The line.
    """
    online = record["online"]
    quality = f"{online['metric']} {online['value']:.4f}" if online else "no champion"
    cycles = ", ".join(
        c["outcome"] + (f" ({c['drift']['decision']})" if c.get("drift") else "") for c in record["cycles"]
    )
    faults = f" faults: {', '.join(record['faults'])}" if record["faults"] else ""
    problems = f" VIOLATIONS: {'; '.join(record['violations'])}" if record["violations"] else ""
    return f"{record['policy']:>18} step {record['step']:>3}: {quality}; {cycles}{faults}{problems}"
