"""Notifications: the messages as pure functions, their delivery to real HTTP receivers (Slack's
JSON and the generic JSON webhook), saved Prefect blocks, the failure hook, and the failure
automation against the real Prefect API."""

from __future__ import annotations

import time

import pytest
from prefect import flow, task

from refit.core.settings import load_settings
from refit.notify.automations import install_automations, install_failure_alerts, save_alert_block
from refit.notify.delivery import post, send, targets
from refit.notify.notices import gate_notice, outcome_notice, rollback_notice
from refit.tasks.notify import notify_failure, notify_gate, notify_summary

from conftest import SlackReceiver
from helpers import GATE


@pytest.fixture(scope="module")
def _hook_server():
    receiver = SlackReceiver()
    yield receiver
    receiver.close()


@pytest.fixture
def hook(_hook_server):
    """A second receiver: the generic JSON webhook."""
    _hook_server.reset()
    return _hook_server


def _header(headers: dict, name: str) -> str | None:
    return next((v for k, v in headers.items() if k.lower() == name.lower()), None)


def test_slack_and_the_json_webhook_each_get_their_format(monkeypatch, slack, hook, caplog):
    monkeypatch.setenv("REFIT_SLACK_WEBHOOK_URL", slack.url)
    monkeypatch.setenv("REFIT_WEBHOOK_URL", hook.url)
    monkeypatch.setenv("REFIT_WEBHOOK_TOKEN", "tok-s3cret")
    settings = load_settings()
    assert "tok-s3cret" not in repr(targets(settings)) and slack.url not in repr(targets(settings))
    results = send(settings, gate_notice(GATE, "v2", "http://ui/runs/flow-run/1"))
    assert results == {"slack": True, "webhook": True}
    assert slack.kinds() == ["gate"] and slack.messages[0]["blocks"][0]["type"] == "header"
    assert _header(slack.headers[0], "Authorization") is None  # the token is the generic webhook's only
    event = hook.messages[0]
    assert event["event"] == "gate" and event["title"] == "refit: gate FAILED for v2"
    assert event["fields"]["challenger"] == "v2" and event["run_url"] == "http://ui/runs/flow-run/1"
    assert event["sent_at"].endswith("+00:00")
    assert _header(hook.headers[0], "Authorization") == "Bearer tok-s3cret"
    # a refusal is logged without the URL or the token
    hook.status = 403
    with caplog.at_level("WARNING", logger="refit.notify"):
        assert send(settings, outcome_notice({"outcome": "no_retrain"})) == {
            "slack": True,
            "webhook": False,
        }
    assert "HTTP 403" in caplog.text and "tok-s3cret" not in caplog.text and hook.url not in caplog.text


def test_delivery_failures_are_retried_once_then_reported_never_raised(slack):
    slack.status = 503
    assert post(slack.url, {"text": "x"}, retry_delays=(0.1,)) is False
    assert len(slack.messages) == 2  # a 5xx is tried again
    slack.status = 404
    assert post(slack.url, {"text": "x"}, retry_delays=(0.1,)) is False
    assert len(slack.messages) == 3  # a 4xx is not
    assert post("http://127.0.0.1:9/nothing-listens", {"text": "x"}, timeout=1, retry_delays=(0.1,)) is False
    assert post("not a url", {"text": "x"}) is False


def test_saved_blocks_hold_the_urls(prefect_api, monkeypatch, slack, hook):
    from prefect.blocks.notifications import SlackWebhook

    # a custom-webhook block saved by refit for the generic target, URL and token kept as secrets
    monkeypatch.setenv("REFIT_WEBHOOK_URL", hook.url)
    monkeypatch.setenv("REFIT_WEBHOOK_TOKEN", "tok-2")
    ref = save_alert_block(load_settings(), "refit-test-hook")
    assert ref == "custom-webhook/refit-test-hook"
    monkeypatch.delenv("REFIT_WEBHOOK_URL")
    monkeypatch.delenv("REFIT_WEBHOOK_TOKEN")
    monkeypatch.setenv("REFIT_WEBHOOK_BLOCK", ref)
    # Prefect's own slack-webhook block keeps the URL; refit posts its Slack blocks to it
    SlackWebhook(url=slack.url).save("refit-test-slack", overwrite=True)
    monkeypatch.setenv("REFIT_SLACK_WEBHOOK_BLOCK", "refit-test-slack")
    settings = load_settings()
    assert send(settings, rollback_notice({"from": "v3", "to": "v2"}, "why", "bob")) == {
        "slack": True,
        "webhook": True,
    }
    assert slack.kinds() == ["rolled_back"] and hook.messages[0]["event"] == "rolled_back"
    assert _header(hook.headers[0], "Authorization") == "Bearer tok-2"
    # a block that does not exist is logged and skipped; the other target still gets the message
    monkeypatch.setenv("REFIT_SLACK_WEBHOOK_BLOCK", "no-such-block")
    assert send(load_settings(), outcome_notice({"outcome": "no_retrain"})) == {"webhook": True}


def test_a_refused_notification_never_fails_the_flow(prefect_api, monkeypatch, slack):
    monkeypatch.setenv("REFIT_SLACK_WEBHOOK_URL", slack.url)
    monkeypatch.setenv("REFIT_UI_URL", "http://prefect.example:4200")
    settings = load_settings()
    slack.status = 500

    @flow(name="notify-refused")
    def run() -> tuple:
        return notify_summary(settings, {"outcome": "no_retrain"}), notify_gate(settings, GATE, "v9")

    summary_result, gate_result = run()
    assert summary_result == {"slack": False} and gate_result == {"slack": False}
    assert slack.kinds() == ["no_retrain"] * 2 + ["gate"] * 2  # each tried twice, the flow completed
    assert slack.messages[-1]["blocks"][-1]["elements"][0]["text"].startswith(
        "<http://prefect.example:4200/runs/flow-run/"
    )


@task(name="pull-snapshot-that-fails")
def failing_pull():
    raise RuntimeError("relation feedback does not exist")


def test_the_failure_hook_names_the_flow_the_task_the_error_and_the_run(prefect_api, monkeypatch, slack):
    monkeypatch.setenv("REFIT_SLACK_WEBHOOK_URL", slack.url)
    monkeypatch.setenv("REFIT_UI_URL", "http://prefect.example:4200")

    @flow(name="refit-hook-test", on_failure=[notify_failure])
    def run():
        failing_pull()

    state = run(return_state=True)
    assert state.is_failed()
    assert slack.kinds() == ["failure"]
    text = slack.messages[0]["text"]
    assert "*Flow*: refit-hook-test / " in text and "*Task*: pull-snapshot-that-fails" in text
    assert "relation feedback does not exist" in text
    assert f"http://prefect.example:4200/runs/flow-run/{state.state_details.flow_run_id}" in text


@pytest.fixture
def installed_automation(prefect_api, monkeypatch, slack):
    """The failure automation installed with a block that posts to the Slack receiver; removed
    afterwards, so that no other test's failing run is alerted twice."""
    from prefect.client.orchestration import get_client

    monkeypatch.setenv("REFIT_SLACK_WEBHOOK_URL", slack.url)
    assert install_failure_alerts(load_settings()) != []  # saves custom-webhook/refit-alerts
    # or a saved notification block by name; installing again replaces, never duplicates
    save_alert_block(load_settings(), "refit-test-alerts")
    monkeypatch.setenv("REFIT_SLACK_WEBHOOK_BLOCK", "custom-webhook/refit-test-alerts")
    ids = install_failure_alerts(load_settings())
    yield ids
    with get_client(sync_client=True) as client:
        for automation in client.read_automations_by_name("refit-run-failed"):
            client.delete_automation(automation.id)


def test_the_automation_alerts_on_a_failed_refit_run_from_the_server(installed_automation, slack):
    from prefect.blocks.notifications import CustomWebhookNotificationBlock
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        (stored,) = client.read_automations_by_name("refit-run-failed")
    assert [stored.id] == installed_automation
    assert (
        stored.actions[0].block_document_id
        == CustomWebhookNotificationBlock.load("refit-test-alerts")._block_document_id
    )

    # no hooks: only the server can tell; a flow that is not refit's is not alerted on; a refit
    # flow whose hook alerted is not alerted on twice
    @flow(name="someone-elses-flow")
    def other():
        raise RuntimeError("not ours")

    @flow(name="retrain")
    def retrain():
        raise RuntimeError("died before any hook")

    @flow(name="drift-check", on_failure=[notify_failure])
    def drift_check():
        raise RuntimeError("failed with its hook in place")

    assert other(return_state=True).is_failed()
    assert drift_check(return_state=True).is_failed()
    run = retrain(return_state=True)
    assert _wait_for(lambda: len(slack.messages) >= 2, 60)
    time.sleep(8)  # the hooked run's window closes too: a duplicate would arrive by now
    hooked, alerted = slack.messages
    assert hooked["refit"]["kind"] == "failure" and "failed with its hook in place" in hooked["text"]
    assert alerted["refit"] == {"kind": "failure", "source": "automation"}
    with get_client(sync_client=True) as client:
        name = client.read_flow_run(run.state_details.flow_run_id).name
    assert alerted["text"].startswith(f"refit: retrain run {name} Failed\nFlow: retrain / {name} (Failed)")
    assert "RuntimeError: died before any hook" in alerted["text"] and "(Failed)" in alerted["text"]


def test_installing_needs_a_notification_block(prefect_api):
    from prefect.blocks.system import Secret

    from refit.core.errors import ConfigError

    Secret(value="x").save("refit-test-not-a-notifier", overwrite=True)
    with pytest.raises(ConfigError, match="not a notification block"):
        install_automations("secret/refit-test-not-a-notifier")
    assert install_failure_alerts(load_settings()) == []  # no target: nothing installed


def _wait_for(predicate, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False
