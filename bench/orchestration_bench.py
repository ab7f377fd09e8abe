"""Orchestration overhead: one full retrain cycle (snapshot, drift, training, gate, model card,
upload, record) run through the `retrain` deployment on a process worker of `refit up`'s stack,
against the same steps called as plain functions in this process, measured side by side in one
run on the same data (each path on its own database and store prefix).

What a user would pick instead of the deployment is the plain script; the overhead is what the
server, the worker's polling, the flow-run subprocess (a fresh Python importing torch) and the
API calls add. Goal: under 15 s or under 10% of the plain time, whichever is larger.

Run: python bench/orchestration_bench.py [--rows 800] [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from _common import scratch_database  # noqa: E402

TINY = {
    "REFIT_EPOCHS": "4",
    "REFIT_BATCH_SIZE": "16",
    "REFIT_LEARNING_RATE": "1e-3",
    "REFIT_MAX_LENGTH": "64",
    "REFIT_PATIENCE": "1",
    "REFIT_GATE_FIRST_BASELINES": "trivial",
    "REFIT_NUM_THREADS": "1",
}


def load(engine, rows: list[dict], path: Path, settings) -> None:
    from refit.data.ingest import ingest_file
    from refit.data.validate import IngestRules
    from refit.ops.synth import write_feedback

    ingest_file(engine, write_feedback(rows, path), IngestRules.from_settings(settings))


def plain_cycle(settings) -> str:
    """The retrain flow's steps as plain calls (Prefect's run logger switched off)."""
    from prefect.logging import disable_run_logger

    from refit.data.db import engine_for
    from refit.registry.table import champion as current_champion
    from refit.tasks.data import preflight, pull_snapshot
    from refit.tasks.drift import drift_check
    from refit.tasks.gate import gate_challenger, write_model_card
    from refit.tasks.publish import record, upload
    from refit.training.challenger import train_challenger

    with disable_run_logger():
        preflight.fn(settings)
        snapshot = pull_snapshot.fn(settings)
        champion = current_champion(engine_for(settings))
        drift = drift_check.fn(settings, snapshot, champion, force=True)
        assert drift["decision"] == "retrain"
        challenger = train_challenger(settings, snapshot, champion)
        decision = gate_challenger.fn(settings, snapshot, challenger, champion)
        write_model_card.fn(challenger, decision, snapshot)
        published = upload.fn(settings, challenger)
        return record.fn(settings, published, snapshot, challenger, decision, champion)


def deployed_cycle(api_url: str) -> str:
    from prefect.client.orchestration import SyncPrefectClient

    with SyncPrefectClient(api=api_url) as client:
        deployment = client.read_deployment_by_name("retrain/retrain")
        run = client.create_flow_run_from_deployment(deployment.id, parameters={"force": True})
        while True:
            run = client.read_flow_run(run.id)
            if run.state.is_final():
                break
            time.sleep(0.25)
    if not run.state.is_completed():
        raise RuntimeError(f"the deployed retrain ended {run.state.name}: {run.state.message}")
    return run.state.name


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=800)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    import boto3
    from moto.server import ThreadedMotoServer
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from refit.core.settings import load_settings
    from refit.ops.stack import down, up
    from refit.ops.synth import generate_feedback
    from refit.sim.scenarios import tiny_bert

    scratch = Path(tempfile.mkdtemp(prefix="refit-orch-bench-"))
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    host, port = moto.get_host_and_port()
    aws = {"AWS_ENDPOINT_URL_S3": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "bench",
           "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}  # fmt: skip
    os.environ.update(aws)
    boto3.client("s3", endpoint_url=aws["AWS_ENDPOINT_URL_S3"]).create_bucket(Bucket="bench")
    model = tiny_bert(scratch / "tiny-bert")
    rows = generate_feedback(args.rows, seed=11)
    plain_times, deployed_times = [], []
    state_dir = scratch / "stack"
    os.environ.update({"REFIT_BASE_MODEL": str(model), **TINY})
    with scratch_database() as deployed_db, scratch_database() as plain_db:
        stack_env = {"REFIT_DATABASE_URL": deployed_db.url.render_as_string(hide_password=False),
                     "REFIT_STORE_URL": "s3://bench/deployed", "REFIT_WORK_DIR": str(scratch / "deployed")}  # fmt: skip
        saved = dict(os.environ)
        os.environ.update({**stack_env, "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false"})
        try:
            started = time.perf_counter()
            stack = up(ROOT, state_dir, port=free_port(), echo=lambda _line: None)
            print(f"refit up: {time.perf_counter() - started:.1f} s (not counted below)")
        finally:
            os.environ.clear()
            os.environ.update(saved)
        settings = load_settings(
            database_url=plain_db.url.render_as_string(hide_password=False),
            store_url="s3://bench/plain",
            work_dir=scratch / "plain",
        )
        try:
            for repeat in range(args.repeats):
                # the same new feedback for both paths each round; every round retrains (forced),
                # the first from the base model, the next ones warm from the champion
                batch = [{**row, "feedback_id": f"r{repeat}-{row['feedback_id']}"} for row in rows]
                load(plain_db, batch, scratch / f"plain-{repeat}.csv", settings)
                load(deployed_db, batch, scratch / f"deployed-{repeat}.csv", settings)
                # the plain steps' artifacts go to the same, already running API (no ephemeral one)
                with temporary_settings(updates={PREFECT_API_URL: stack.api_url}):
                    started = time.perf_counter()
                    outcome = plain_cycle(settings)
                    plain_times.append(time.perf_counter() - started)
                started = time.perf_counter()
                state = deployed_cycle(stack.api_url)
                deployed_times.append(time.perf_counter() - started)
                print(f"round {repeat + 1}: plain {plain_times[-1]:.1f} s ({outcome}), "
                      f"deployment + worker {deployed_times[-1]:.1f} s ({state})")  # fmt: skip
        finally:
            down(state_dir, echo=lambda _line: None)
            moto.stop()
    plain, deployed = statistics.median(plain_times), statistics.median(deployed_times)
    overhead = deployed - plain
    allowed = max(15.0, 0.10 * plain)
    print()
    print(f"{'path':<28}{'median s':>10}")
    print(f"{'plain functions':<28}{plain:>10.1f}")
    print(f"{'deployment + worker':<28}{deployed:>10.1f}")
    print(f"overhead: {overhead:+.1f} s ({overhead / plain:+.0%} of plain)")
    print(f"ratio deployed/plain: {deployed / plain:.2f}x")
    print(f"goal: overhead under {allowed:.1f} s -> {'met' if overhead < allowed else 'MISSED'}")


if __name__ == "__main__":
    main()
