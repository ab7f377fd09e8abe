"""Credentials never show: a whole loop runs with recognizable secrets (a database password, AWS
keys, the Slack webhook URL, the serving token), and every output is scanned for them: captured
logs and standard streams, Prefect logs, artifacts and run states read back through the Prefect
client, Slack messages, every file written to the work folder and the store (manifests, model
cards, refit.json), every refit table, CLI output and error messages, serving answers.
Credentials may also come from Prefect Secret blocks (``prefect-secret://NAME``)."""

import json
import os
from pathlib import Path

import boto3
import pytest
from prefect.blocks.system import Secret
from prefect.client.orchestration import get_client
from sqlalchemy import text
from sqlalchemy.engine import make_url

from refit.core.errors import ConfigError
from refit.core.settings import load_settings

from helpers import refit_cli

pytestmark = pytest.mark.integration

DB_PASSWORD = "s3cr3t-db-XYZ"
AWS_KEY_ID = "AKIAS3CR3TKEYXYZ0001"
AWS_SECRET = "s3cr3t-aws-XYZ"
SLACK_SECRET = "s3cr3t-slack-XYZ"
TOKEN = "s3cr3t-token-XYZ"
SECRETS = (DB_PASSWORD, AWS_KEY_ID, AWS_SECRET, SLACK_SECRET, TOKEN)


def leaks(where: str, content) -> list[str]:
    shown = content if isinstance(content, str) else json.dumps(content, default=str)
    return [f"{secret} in {where}" for secret in SECRETS if secret in shown]


@pytest.fixture
def secret_env(refit_env, monkeypatch, slack):
    """refit_env with every credential replaced by a recognizable secret. The local Postgres
    uses trust authentication, so the password is sent but not checked; moto accepts any keys."""
    url = make_url(refit_env.database_url).set(password=DB_PASSWORD).render_as_string(hide_password=False)
    values = {
        "REFIT_DATABASE_URL": url,
        "REFIT_SLACK_WEBHOOK_URL": slack.url.replace("XXXX", SLACK_SECRET),
        "REFIT_SERVE_TOKEN": TOKEN,
        "AWS_ACCESS_KEY_ID": AWS_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": AWS_SECRET,
        "REFIT_EPOCHS": "1",
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    settings = load_settings()
    assert settings.database_url.count(DB_PASSWORD) == 1
    return settings


def prefect_records() -> dict[str, list]:
    """What the Prefect API keeps about the runs: logs, artifacts, flow and task run states."""
    with get_client(sync_client=True) as client:
        flow_runs = client.read_flow_runs()
        return {
            "logs": [log.message for log in client.read_logs()],
            "artifacts": [(a.key, a.description, a.data) for a in client.read_artifacts()],
            "flow runs": [(r.name, r.parameters, r.state and r.state.message) for r in flow_runs],
            "task runs": [(r.name, r.state and r.state.message) for r in client.read_task_runs()],
        }


def test_a_whole_loop_and_its_failures_never_show_a_credential(
    prefect_api, secret_env, slack, s3_bucket, tmp_path, caplog, capfd
):
    from fastapi.testclient import TestClient

    from refit.flows.retrain import retrain
    from refit.ops.synth import generate_feedback, write_feedback
    from refit.serving.app import create_app
    from refit.serving.follower import Champion

    caplog.set_level("DEBUG")
    found: list[str] = []
    feedback = write_feedback(generate_feedback(400, seed=5), tmp_path / "feedback.csv")

    # the CLI, with --debug off, on success (in-process) and on failure (as an operator runs it)
    from typer.testing import CliRunner

    from refit.cli import app as cli_app

    ingested = CliRunner().invoke(cli_app, ["ingest", str(feedback)])
    assert ingested.exit_code == 0, ingested.output
    found += leaks("`refit ingest`", ingested.output)
    wrong_db = make_url(secret_env.database_url).set(port=1).render_as_string(hide_password=False)
    failed = [
        refit_cli("db", "upgrade", env={"REFIT_DATABASE_URL": wrong_db}),
        refit_cli("serve", env={"REFIT_STORE_URL": f"s3://{s3_bucket}/empty"}),
    ]
    assert all(o.returncode != 0 for o in failed)
    assert "***" in failed[0].stderr  # the URL is named, its password masked
    for o in failed:
        found += leaks(f"`refit {' '.join(o.args[3:])}`", o.stdout + o.stderr)

    # one real retrain (promotes a first champion, model card, manifest, Slack), then a failing one
    summary = retrain()
    assert summary["outcome"] == "promoted"
    found += leaks("the run summary", summary)
    os.environ["REFIT_STORE_URL"] = f"s3://no-such-bucket-{s3_bucket}/refit"
    try:
        with pytest.raises(Exception) as failure:
            retrain()
    finally:
        os.environ["REFIT_STORE_URL"] = secret_env.store_url
    found += leaks("the failed run's exception", f"{failure.value!r} {failure.value}")
    assert [k for k in slack.kinds() if k == "failure"], slack.messages
    found += leaks("Slack messages", slack.messages)

    # serving errors: wrong token, bad bodies, a reload
    champion = Champion(secret_env)
    champion.refresh()
    with TestClient(create_app(secret_env, champion)) as client:
        answers = [
            client.post("/predict", json={"items": [{"text": "fine"}]}, headers={"Authorization": "Bearer wrong"}),
            client.post("/predict", json={"items": [{"text": "fine"}]}),
            client.post("/predict", content=b"\xff", headers={"Authorization": f"Bearer {TOKEN}"}),
            client.post("/predict", json={"items": []}, headers={"Authorization": f"Bearer {TOKEN}"}),
            client.post("/reload", headers={"Authorization": f"Bearer {TOKEN}"}),
            client.get("/version"),
            client.get("/metrics"),
            client.get("/openapi.json"),
        ]
    assert [a.status_code for a in answers[:5]] == [401, 401, 422, 422, 200]
    for answer in answers:
        found += leaks(f"the answer to {answer.request.url.path}", answer.text + str(answer.headers))

    # what the Prefect API kept
    for where, records in prefect_records().items():
        found += leaks(f"Prefect {where}", records)

    # every file written: the work folder (checkpoints, refit.json, model card) and the store
    for path in Path(secret_env.work_dir).rglob("*"):
        if path.is_file():
            found += leaks(str(path.relative_to(tmp_path)), path.read_bytes().decode("utf-8", "replace"))
    s3 = boto3.client("s3")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=s3_bucket).get("Contents", [])]
    assert any(k.endswith("MODEL_CARD.md") for k in keys) and any(k.endswith("manifest.json") for k in keys)
    for key in keys:
        body = s3.get_object(Bucket=s3_bucket, Key=key)["Body"].read().decode("utf-8", "replace")
        found += leaks(f"s3://{s3_bucket}/{key}", body)

    # every refit table
    from refit.data.db import get_engine

    with get_engine(secret_env.database_url).connect() as conn:
        tables = conn.execute(text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")).scalars().all()
        for table in tables:
            rows = conn.execute(text(f'SELECT row_to_json(t)::text FROM "{table}" t')).scalars().all()  # noqa: S608
            found += leaks(f"table {table}", rows)

    # the settings as refit shows them
    found += leaks("Settings.redacted()", secret_env.redacted())
    found += leaks("repr(settings)", repr(secret_env.model_copy(update={"database_url": None})))

    out, err = capfd.readouterr()
    found += leaks("captured stdout", out) + leaks("captured stderr", err) + leaks("captured logs", caplog.text)
    assert sorted(set(found)) == []


# --- Prefect Secret blocks ---------------------------------------------------------------------


def test_credentials_can_come_from_prefect_secret_blocks(prefect_api, db_url, monkeypatch):
    """A setting of the form prefect-secret://NAME is loaded from that Secret block on the API."""
    import uuid

    from refit.data.db import check_connection, get_engine

    suffix = uuid.uuid4().hex[:8]
    url = make_url(db_url).set(password=DB_PASSWORD).render_as_string(hide_password=False)
    Secret(value=url).save(f"refit-db-{suffix}")
    Secret(value=TOKEN).save(f"refit-token-{suffix}")
    Secret(value=f"https://hooks.example/{SLACK_SECRET}").save(f"refit-slack-{suffix}")
    monkeypatch.setenv("REFIT_DATABASE_URL", f"prefect-secret://refit-db-{suffix}")
    monkeypatch.setenv("REFIT_SERVE_TOKEN", f"prefect-secret://refit-token-{suffix}")
    monkeypatch.setenv("REFIT_SLACK_WEBHOOK_URL", f"prefect-secret://refit-slack-{suffix}")

    settings = load_settings()
    assert settings.database_url == url  # and a bare postgresql:// would still be made psycopg2
    assert settings.serve_token.get_secret_value() == TOKEN
    assert settings.slack_webhook_url.get_secret_value() == f"https://hooks.example/{SLACK_SECRET}"
    check_connection(get_engine(settings.database_url))  # the URL from the block really connects
    assert leaks("redacted settings", settings.redacted()) == []

    monkeypatch.setenv("REFIT_DATABASE_URL", f"prefect-secret://no-such-block-{suffix}")
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    assert "REFIT_DATABASE_URL" in message and f"no-such-block-{suffix}" in message
    assert "\n" not in message and leaks("the error", message) == []
