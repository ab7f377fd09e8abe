"""The operational story on real parts: `refit up` starts a real Prefect server, deploys
deployments/prefect.yaml with the real `prefect deploy`, and starts a process worker for each of
the cpu and gpu pools; flows run in worker subprocesses against the real Postgres, moto's S3
server and the Slack receiver. `refit down` stops it all.

One stack serves the module (its start costs ~30 s); the tests run in file order and build on
each other's state: the storm test makes the first champion, the crash test needs one.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import httpx
import psutil
import pytest
from sqlalchemy import text

from refit.core.settings import load_settings
from refit.data.db import get_engine
from refit.data.ingest import ingest_file
from refit.data.validate import IngestRules
from refit.ops.synth import generate_feedback, write_feedback
from refit.registry.pointer import read_pointer
from refit.registry.store import open_store
from refit.registry.table import champion

from conftest import TINY_TRAINING
from helpers import free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DEPLOYMENTS = {"sync", "drift-check", "retrain", "rollout", "ingest", "rollback", "devset-refresh"}
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def refit_cli(env: dict, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``refit`` from the checkout with exactly ``env``: the stack's workers inherit it, so none of
    this process's REFIT_* or PREFECT_* values may leak in (unlike ``helpers.refit_cli``)."""
    return subprocess.run(
        [sys.executable, "-m", "refit.cli", *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


class Api:
    """The stack's REST API, read the way an operator's tools would."""

    def __init__(self, url: str):
        self.url = url

    def _call(self, method: str, path: str, **kwargs):
        # Prefect's own client retries a busy SQLite's 503 the same way
        for _attempt in range(10):
            response = httpx.request(method, f"{self.url}{path}", timeout=30, **kwargs)
            if response.status_code not in (429, 503):
                break
            time.sleep(1)
        response.raise_for_status()
        return response.json() if response.content else None

    def post(self, path: str, body: dict | list | None = None):
        return self._call("POST", path, json=body if body is not None else {})

    def get(self, path: str):
        return self._call("GET", path)

    def deployment(self, name: str) -> dict:
        return self.get(f"/deployments/name/{name}/{name}")

    def runs_of(self, deployment: str) -> list[dict]:
        dep = self.deployment(deployment)
        return self.post("/flow_runs/filter", {"flow_runs": {"deployment_id": {"any_": [dep["id"]]}}})

    def run(self, run_id: str) -> dict:
        return self.get(f"/flow_runs/{run_id}")

    def start(self, deployment: str, parameters: dict | None = None) -> dict:
        dep = self.deployment(deployment)
        return self.post(f"/deployments/{dep['id']}/create_flow_run", {"parameters": parameters or {}})

    def wait(self, run_id: str, states: set[str], timeout: float = 300) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = self.run(run_id)
            if run["state_type"] in states:
                return run
            time.sleep(1)
        raise AssertionError(f"flow run {run_id} still {run['state_type']} after {timeout} s")

    def task_runs(self, run_id: str) -> list[dict]:
        return self.post("/task_runs/filter", {"flow_runs": {"id": {"any_": [run_id]}}})

    def logs(self, run_id: str) -> list[str]:
        logs = self.post("/logs/filter", {"logs": {"flow_run_id": {"any_": [run_id]}}, "limit": 200})
        return [entry["message"] for entry in logs]

    def logged(self, run_id: str, fragment: str, timeout: float = 30) -> bool:
        """Whether a log line of the run holds ``fragment``. A run's last lines reach the API
        after its state turns final (the process flushes them as it exits), so this polls."""
        deadline = time.monotonic() + timeout
        while True:
            if any(fragment in line for line in self.logs(run_id)):
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.5)


@pytest.fixture(scope="module")
def stack(tmp_path_factory, pg_admin, s3_endpoint, _slack_server, tiny_model):
    """`refit up` on its own database, bucket, state directory and port. The database starts
    empty: `refit up` applies the schema before anything checks for it (issue 16)."""
    import boto3

    db = f"refit_stack_{uuid.uuid4().hex[:8]}"
    with pg_admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{db}"'))
    db_url = pg_admin.url.set(database=db).render_as_string(hide_password=False)
    bucket = f"refit-stack-{uuid.uuid4().hex[:8]}"
    boto3.client(
        "s3", endpoint_url=s3_endpoint, region_name="us-east-1", aws_access_key_id="testing",
        aws_secret_access_key="testing",
    ).create_bucket(Bucket=bucket)  # fmt: skip
    work = tmp_path_factory.mktemp("stack")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REFIT_", "PREFECT_"))}
    env.update(
        REFIT_DATABASE_URL=db_url,
        REFIT_STORE_URL=f"s3://{bucket}/refit",
        REFIT_SLACK_WEBHOOK_URL=_slack_server.url,
        REFIT_BASE_MODEL=str(tiny_model),
        REFIT_WORK_DIR=str(work / "work"),
        AWS_ENDPOINT_URL_S3=s3_endpoint,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
        # tests: workers poll every second, and no hourly drift check fires in the middle of one
        PREFECT_WORKER_QUERY_SECONDS="1",
        PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED="false",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        **TINY_TRAINING,
    )
    state_dir = work / "state"
    port = free_port()
    started = refit_cli(env, "up", "--port", str(port), "--state-dir", str(state_dir), "--json")
    assert started.returncode == 0, started.stdout + started.stderr
    info = json.loads(started.stdout)
    yield {"info": info, "env": env, "state_dir": state_dir, "api": Api(info["api_url"]), "db_url": db_url}
    refit_cli(env, "down", "--state-dir", str(state_dir))
    get_engine(db_url).dispose()
    with pg_admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'))


def test_every_deployment_has_its_pool_schedule_trigger_and_described_form(stack):
    api = stack["api"]
    assert set(stack["info"]["deployments"]) == {f"{name}/{name}" for name in DEPLOYMENTS}
    pools = {name: api.deployment(name)["work_pool_name"] for name in DEPLOYMENTS}
    assert pools == {name: "gpu" if name == "retrain" else "cpu" for name in DEPLOYMENTS}

    drift = api.deployment("drift-check")
    assert [s["schedule"]["cron"] for s in drift["schedules"]] == ["0 * * * *"]
    sync = api.deployment("sync")
    assert [s["schedule"]["cron"] for s in sync["schedules"]] == ["*/15 * * * *"]
    assert sync["concurrency_options"]["collision_strategy"] == "CANCEL_NEW"
    rollout = api.deployment("rollout")
    assert [s["schedule"]["cron"] for s in rollout["schedules"]] == ["*/5 * * * *"]
    assert rollout["concurrency_options"]["collision_strategy"] == "CANCEL_NEW"
    # `refit up` started from an empty database and applied the schema itself
    from refit.data.db import applied_migrations, load_migrations

    assert applied_migrations(get_engine(stack["db_url"])) == [m.name for m in load_migrations()]

    retrain = api.deployment("retrain")
    assert retrain["global_concurrency_limit"]["limit"] == 1
    assert retrain["concurrency_options"]["collision_strategy"] == "CANCEL_NEW"
    assert retrain["schedules"] == []  # started by drift, or by hand
    form = retrain["parameter_openapi_schema"]["properties"]
    assert {"force", "snapshot_id", "drift_report_id", "strategy", "warm_start"} <= set(form)
    assert json.dumps(form["strategy"]).count('"lora"') == 1
    # the UI's form shows help text for every parameter of every deployment
    for name in DEPLOYMENTS:
        properties = api.deployment(name)["parameter_openapi_schema"]["properties"]
        undescribed = [p for p, schema in properties.items() if not schema.get("description")]
        assert not undescribed, f"{name}: {undescribed}"

    [trigger] = [a for a in api.post("/automations/filter") if a["name"] == "refit-retrain-on-drift"]
    assert trigger["trigger"]["expect"] == ["refit.drift.detected"]
    assert trigger["trigger"]["within"] == 1800 and trigger["trigger"]["threshold"] == 1
    [action] = trigger["actions"]
    assert action["type"] == "run-deployment" and action["deployment_id"] == retrain["id"]
    assert action["parameters"]["snapshot_id"] == "{{ event.payload.snapshot_id }}"


def _post_drift_events(api: Api, n: int, payload: dict) -> None:
    now = datetime.now(timezone.utc).isoformat()
    api.post(
        "/events",
        [
            {
                "id": str(uuid.uuid4()),
                "occurred": now,
                "event": "refit.drift.detected",
                "resource": {"prefect.resource.id": "refit.model.satisfaction"},
                "payload": payload,
            }
            for _ in range(n)
        ],
    )


def test_a_drift_storm_starts_exactly_one_retrain_on_the_gpu_pool_which_publishes(stack, tmp_path, monkeypatch):
    api, env = stack["api"], stack["env"]
    settings = load_settings(database_url=stack["db_url"])
    engine = get_engine(stack["db_url"])
    feedback = write_feedback(generate_feedback(600, seed=3), tmp_path / "f.csv")
    ingest_file(engine, feedback, IngestRules.from_settings(settings))

    check = api.start("drift-check")
    check = api.wait(check["id"], FINAL, timeout=240)
    assert check["state_type"] == "COMPLETED", check["state"]
    with engine.connect() as conn:
        [snapshot_id] = conn.execute(text("SELECT id FROM dataset_snapshots")).scalars().all()
        report_id = conn.execute(text("SELECT max(id) FROM drift_reports")).scalar()
    # four more drift events about the same model, right behind the first: a storm
    _post_drift_events(api, 4, {"snapshot_id": snapshot_id, "drift_report_id": report_id})

    deadline = time.monotonic() + 300
    while not api.runs_of("retrain") and time.monotonic() < deadline:
        time.sleep(1)
    [run] = api.runs_of("retrain")
    run = api.wait(run["id"], FINAL, timeout=300)
    assert run["state_type"] == "COMPLETED", run["state"]
    time.sleep(5)  # any late firing of the trigger would show as a second run by now
    runs = api.runs_of("retrain")
    assert len(runs) == 1, [(r["name"], r["state_type"]) for r in runs]
    assert run["work_pool_name"] == "gpu"
    assert run["parameters"]["snapshot_id"] == snapshot_id
    assert run["parameters"]["drift_report_id"] == report_id
    assert api.logged(run["id"], "trained on cpu")  # the device is in the logs

    current = champion(engine)
    assert current is not None and current["snapshot_id"] == snapshot_id
    for key in ("AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
        monkeypatch.setenv(key, env[key])
    store = open_store(env["REFIT_STORE_URL"])
    assert read_pointer(store)["version"] == current["version"]


def _engine_process(worker_pid: int) -> psutil.Process | None:
    for child in psutil.Process(worker_pid).children(recursive=True):
        if "prefect.engine" in " ".join(child.cmdline()):
            return child
    return None


def test_manual_retrains_never_overlap_and_a_killed_training_crashes_cleanly_with_one_alert(stack, slack):
    api = stack["api"]
    engine = get_engine(stack["db_url"])
    before = champion(engine)
    assert before is not None, "the storm test makes the first champion"

    first = api.start("retrain", {"force": True})
    deadline = time.monotonic() + 240
    training = None
    while training is None and time.monotonic() < deadline:
        tasks = [t for t in api.task_runs(first["id"]) if t["name"].startswith("train-challenger")]
        training = next((t for t in tasks if t["state_type"] == "RUNNING"), None)
        time.sleep(0.5)
    assert training is not None, "training never started"

    # a second retrain by hand while the first trains: cancelled, not run beside it, and the
    # reason is on its state
    second = api.wait(api.start("retrain", {"force": True})["id"], FINAL, timeout=120)
    assert second["state_type"] == "CANCELLED", second["state"]
    assert "concurrency limit" in second["state"]["message"]
    assert api.run(first["id"])["state_type"] == "RUNNING"

    # the training process dies (OOM killer, a lost node): the worker reports the run Crashed
    slack.messages.clear()
    state = json.loads((stack["state_dir"] / "stack.json").read_text())
    process = _engine_process(state["pids"]["worker-gpu"])
    assert process is not None
    process.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    crashed = api.wait(first["id"], FINAL, timeout=120)
    assert crashed["state_type"] == "CRASHED"

    after = champion(engine)
    assert after["version"] == before["version"]
    with engine.connect() as conn:
        statuses = conn.execute(text("SELECT status FROM model_versions")).scalars().all()
    assert statuses == ["champion"]  # nothing half-published from the killed run
    # one alert: the flow's crash hook when the worker could run it, else the server's automation,
    # which waits 20 s for the hook's confirmation (so by 35 s a duplicate would have arrived)
    deadline = time.monotonic() + 90
    while not slack.messages and time.monotonic() < deadline:
        time.sleep(1)
    time.sleep(max(0.0, killed_at + 35 - time.monotonic()))
    alerts = [m for m in slack.messages if crashed["name"] in json.dumps(m)]
    assert len(alerts) == 1, slack.messages
    assert alerts[0]["refit"]["kind"] == "failure" and "Crashed" in json.dumps(alerts[0])


def test_a_sync_runs_through_its_deployment_on_the_cpu_pool(stack, pg_admin):
    from helpers import SOURCE_MAP, source_database

    api = stack["api"]
    engine = get_engine(stack["db_url"])
    with source_database(pg_admin) as source:
        with source["owner"].begin() as conn:
            conn.execute(
                text("INSERT INTO app_reviews (review_body, stars, user_ref) SELECT 'synced review ' || g, 4, 'u'"
                     " FROM generate_series(1, 12) g")
            )  # fmt: skip
        # the source's settings reach the worker's flow run as job variables, as a pool's would
        env = {"REFIT_SOURCE_URL": source["url"], "REFIT_SOURCE_TABLE": "app_reviews", "REFIT_COLUMN_MAP": SOURCE_MAP}
        dep = api.deployment("sync")
        run = api.post(f"/deployments/{dep['id']}/create_flow_run", {"parameters": {}, "job_variables": {"env": env}})
        run = api.wait(run["id"], FINAL, timeout=180)
        assert run["state_type"] == "COMPLETED", run["state"]
        assert run["work_pool_name"] == "cpu"
    with engine.connect() as conn:
        synced = conn.execute(text("SELECT count(*) FROM feedback WHERE origin = 'pg:app_reviews'")).scalar()
    assert synced == 12
    assert api.logged(run["id"], "12 new or edited"), api.logs(run["id"])


def test_refit_down_stops_every_process_it_started(stack):
    state = json.loads((stack["state_dir"] / "stack.json").read_text())
    started = []
    for pid in state["pids"].values():
        process = psutil.Process(pid)
        started += [process, *process.children(recursive=True)]
    assert len(started) >= 3
    stopped = refit_cli(stack["env"], "down", "--state-dir", str(stack["state_dir"]), "--json")
    assert stopped.returncode == 0, stopped.stderr
    left = [p.pid for p in started if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert left == []
    assert not (stack["state_dir"] / "stack.json").exists()
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{state['api_url']}/health", timeout=2)
