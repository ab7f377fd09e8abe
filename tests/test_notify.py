"""Notifications: the messages as pure functions, their delivery to real HTTP receivers (Slack's
JSON and the generic JSON webhook), saved Prefect blocks, the failure hook, and the failure
automation against the real Prefect API."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from conftest import SlackReceiver
from prefect import flow, task
from refit.tasks.notify import failed_task_name, notify_failure, notify_gate, notify_summary

from refit import notify
from refit.core.settings import load_settings

ROOT = Path(__file__).resolve().parents[1]


def _signal(column, group, method, score, threshold, drifted) -> dict:
    return {
        "column": column,
        "group": group,
        "method": method,
        "score": score,
        "threshold": threshold,
        "drifted": drifted,
    }


SIGNALS = [
    _signal("rating", "labels", "jensenshannon", 0.05, 0.1, False),
    _signal("text", "text", "domain classifier", 0.91, 0.56, True),
    _signal("sessions_7d", "features", "wasserstein", None, 0.2, False),
]
DRIFT = {
    "decision": "retrain",
    "reasons": ["text drifted (domain classifier AUC 0.91 > 0.56) & <b>more</b>"],
    "signals": SIGNALS,
    "drifted_columns": ["text"],
    "drift_share": 1 / 3,
    "current_rows": 800,
    "reference_rows": 560,
    "report_id": 7,
    "html_uri": "s3://bucket/refit/reports/drift/7/report.html",
}
GATE = {
    "promote": False,
    "metric": "mse",
    "challenger_score": 0.0123,
    "champion_score": 0.0119,
    "improvement": -0.0004,
    "min_improvement": 0.0,
    "against": "champion",
    "reason": "the 95% interval of the improvement reaches below 0",
    "reasons": ["mse improvement -0.0004, 95% interval -0.0021 to +0.0013: not above 0"],
    "interval": (-0.0021, 0.0013),
    "comparisons": {
        "champion": {
            "challenger": 0.0123,
            "reference": 0.0119,
            "point": -0.0004,
            "low": -0.0021,
            "high": 0.0013,
            "passed": False,
        },
    },  # fmt: skip
    "failed_slices": ["category=books"],
    "slice_checks": {
        "category=books": {"rows": 61, "challenger": 0.031, "champion": 0.012, "improvement": -0.019, "passed": False}
    },
    "dev_set": 1,
    "dev_rows": 240,
    "confidence": 0.95,
}


# --- messages --------------------------------------------------------------------------------


def test_drift_message_has_the_signals_table_drifted_first_and_the_report_link():
    notice = notify.drift_notice(DRIFT, "v1", report_url="https://s3.example/report?sig=1", run_url="http://ui/r/1")
    slack = notice.slack()
    assert slack["refit"]["kind"] == "drift"
    header, body, table, links = slack["blocks"]
    rows = table["text"]["text"].strip("`").splitlines()
    assert rows[0].split() == ["signal", "group", "method", "score", "threshold", "drifted"]
    assert rows[2].split()[0] == "text" and rows[2].endswith("YES")  # the drifted signal comes first
    assert "0.9100" in rows[2] and "0.5600" in rows[2]
    (features,) = [row for row in rows if row.startswith("sessions_7d")]
    assert " - " in features  # a missing score shows as "-"
    links = links["elements"][0]["text"]
    assert "<https://s3.example/report?sig=1|Drift report>" in links and "<http://ui/r/1|Open the run>" in links
    # Slack's control characters in a reason are escaped, so they cannot break the message
    assert "&amp; &lt;b&gt;more&lt;/b&gt;" in body["text"]["text"]
    assert header["text"]["text"] == "refit: drift detected, retraining"
    event = notice.event()
    assert event["event"] == "drift" and event["run_url"] == "http://ui/r/1"
    assert event["fields"]["drifted"] == ["text"] and len(event["fields"]["signals"]) == 3
    assert event["links"]["Drift report"] == "https://s3.example/report?sig=1"


def test_drift_message_without_a_browser_link_names_the_stored_report():
    notice = notify.drift_notice(DRIFT, "v1")
    assert notice.links == {"Drift report": DRIFT["html_uri"]}
    assert notice.run_url is None and "Open the run" not in notice.slack()["text"]


def test_gate_message_has_the_metrics_table_with_interval_and_the_failed_slices():
    notice = notify.gate_notice(GATE, "v2", run_url="http://ui/runs/flow-run/abc")
    slack = notice.slack()
    assert slack["refit"]["kind"] == "gate"
    assert slack["blocks"][0]["text"]["text"] == "refit: gate FAILED for v2"
    body = slack["blocks"][1]["text"]["text"]
    assert "worse on slice *category=books* (61 rows: mse 0.0310 vs 0.0120)" in body
    table = slack["blocks"][2]["text"]["text"]
    assert "95% interval" in table and "-0.0021 to +0.0013" in table and table.rstrip("`").rstrip().endswith("NO")
    fields = notice.event()["fields"]
    assert fields["promote"] is False and fields["interval"] == [-0.0021, 0.0013]
    assert fields["failed_slices"] == ["category=books"]


def test_retrain_started_says_on_what_and_why():
    snapshot = {"id": 4, "watermark_from": 801, "watermark_to": 1600, "total_rows": 800}
    drifted = notify.retrain_started_notice(snapshot, "v1", DRIFT, run_url="http://ui/r/2")
    assert drifted.kind == "retrain_started" and "*Why*: drift: text" in drifted.slack()["text"]
    assert "feedback ids 801..1600, 800 rows" in drifted.slack()["text"]
    assert drifted.event()["fields"]["snapshot_id"] == 4 and drifted.event()["fields"]["champion"] == "v1"
    # a run started by a drift event knows the check's reasons, not its columns
    triggered = notify.retrain_started_notice(snapshot, "v1", {"reasons": ["drift report 7 decided to retrain"]})
    assert triggered.fields["reason"] == "drift: drift report 7 decided to retrain"
    assert notify.retrain_started_notice(snapshot, None).fields["reason"] == "no champion yet: the first model"
    assert notify.retrain_started_notice(snapshot, "v1", forced=True).fields["reason"] == "forced by the operator"


def test_outcome_rollback_and_failure_messages_are_machine_readable():
    summary = {
        "outcome": "promoted",
        "version": "v2",
        "champion": "v2",
        "drift": DRIFT,
        "gate": {**GATE, "promote": True},
    }
    promoted = notify.outcome_notice(summary)
    assert promoted.slack()["refit"]["kind"] == "promoted" and "`v2`" in promoted.slack()["text"]
    assert notify.outcome_notice({"outcome": "no_new_data"}).title == "refit: no new feedback"
    rolled = notify.rollback_notice({"from": "v3", "to": "v2"}, "bad scores in prod", "alice")
    assert rolled.kind == "rolled_back" and rolled.event()["fields"] == {
        "from": "v3", "to": "v2", "actor": "alice", "reason": "bad scores in prod"
    }  # fmt: skip
    failed = notify.failure_notice("retrain", "calm-fox", "StoreError: <bucket> missing", "preflight", "http://ui/x")
    text = failed.slack()["blocks"][1]["text"]["text"]
    assert "*Flow*: retrain / calm-fox (Failed)" in text and "*Task*: preflight" in text
    assert "&lt;bucket&gt;" in text
    assert failed.event()["fields"]["task"] == "preflight" and failed.event()["run_url"] == "http://ui/x"


def test_run_links_use_the_configured_ui_else_prefects(monkeypatch):
    from prefect.settings import PREFECT_UI_URL, temporary_settings

    assert notify.flow_run_url(None, "abc") is None
    monkeypatch.setenv("REFIT_UI_URL", "https://prefect.example.com/")
    assert notify.ui_base(load_settings()) == "https://prefect.example.com"
    monkeypatch.delenv("REFIT_UI_URL")
    with temporary_settings({PREFECT_UI_URL: "http://prefect.internal:4200"}):
        base = notify.ui_base(load_settings())
    assert notify.flow_run_url(base, "abc") == "http://prefect.internal:4200/runs/flow-run/abc"


@task(name="boom-task")
def boom():
    raise RuntimeError("the store is gone")


def test_the_failed_task_is_read_from_the_traceback():
    try:
        boom.fn()
    except RuntimeError as exc:
        assert failed_task_name(exc) == "boom-task"
    try:
        raise ValueError("in the flow's own code")
    except ValueError as exc:
        assert failed_task_name(exc) is None


# --- delivery --------------------------------------------------------------------------------


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
    assert "tok-s3cret" not in repr(notify.targets(settings)) and slack.url not in repr(notify.targets(settings))
    results = notify.send(settings, notify.gate_notice(GATE, "v2", "http://ui/runs/flow-run/1"))
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
        assert notify.send(settings, notify.outcome_notice({"outcome": "no_retrain"})) == {
            "slack": True,
            "webhook": False,
        }
    assert "HTTP 403" in caplog.text and "tok-s3cret" not in caplog.text and hook.url not in caplog.text


def test_delivery_failures_are_retried_once_then_reported_never_raised(slack):
    slack.status = 503
    assert notify.post(slack.url, {"text": "x"}, retry_delays=(0.1,)) is False
    assert len(slack.messages) == 2  # a 5xx is tried again
    slack.status = 404
    assert notify.post(slack.url, {"text": "x"}, retry_delays=(0.1,)) is False
    assert len(slack.messages) == 3  # a 4xx is not
    assert notify.post("http://127.0.0.1:9/nothing-listens", {"text": "x"}, timeout=1, retry_delays=(0.1,)) is False
    assert notify.post("not a url", {"text": "x"}) is False


def test_saved_blocks_hold_the_urls(prefect_api, monkeypatch, slack, hook):
    from prefect.blocks.notifications import SlackWebhook

    # a custom-webhook block saved by refit for the generic target, URL and token kept as secrets
    monkeypatch.setenv("REFIT_WEBHOOK_URL", hook.url)
    monkeypatch.setenv("REFIT_WEBHOOK_TOKEN", "tok-2")
    ref = notify.save_alert_block(load_settings(), "refit-test-hook")
    assert ref == "custom-webhook/refit-test-hook"
    monkeypatch.delenv("REFIT_WEBHOOK_URL")
    monkeypatch.delenv("REFIT_WEBHOOK_TOKEN")
    monkeypatch.setenv("REFIT_WEBHOOK_BLOCK", ref)
    # Prefect's own slack-webhook block keeps the URL; refit posts its Slack blocks to it
    SlackWebhook(url=slack.url).save("refit-test-slack", overwrite=True)
    monkeypatch.setenv("REFIT_SLACK_WEBHOOK_BLOCK", "refit-test-slack")
    settings = load_settings()
    assert notify.send(settings, notify.rollback_notice({"from": "v3", "to": "v2"}, "why", "bob")) == {
        "slack": True,
        "webhook": True,
    }
    assert slack.kinds() == ["rolled_back"] and hook.messages[0]["event"] == "rolled_back"
    assert _header(hook.headers[0], "Authorization") == "Bearer tok-2"
    # a block that does not exist is logged and skipped; the other target still gets the message
    monkeypatch.setenv("REFIT_SLACK_WEBHOOK_BLOCK", "no-such-block")
    assert notify.send(load_settings(), notify.outcome_notice({"outcome": "no_retrain"})) == {"webhook": True}


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


# --- the failure automation -------------------------------------------------------------------


def test_the_automation_file_parses_into_prefects_model():
    from prefect.events.schemas.automations import AutomationCore, EventTrigger

    (automation,) = notify.load_automations(ROOT / "deployments" / "automations.yaml")
    assert isinstance(automation, AutomationCore) and isinstance(automation.trigger, EventTrigger)
    # after a Failed or Crashed run, the absence of the hook's confirmation is what alerts
    assert automation.trigger.posture == "Proactive"
    assert automation.trigger.after == {"prefect.flow-run.Failed", "prefect.flow-run.Crashed"}
    assert automation.trigger.expect == {"refit.run.alerted"}
    names = automation.trigger.match_related
    names = names if isinstance(names, list) else [names]
    assert {"retrain", "drift-check", "ingest", "rollback", "devset-refresh"} <= set(
        names[0].root["prefect.resource.name"]
    )
    (action,) = automation.actions
    assert action.type == "send-notification" and "{{ flow_run|ui_url }}" in action.body


@pytest.fixture
def installed_automation(prefect_api, monkeypatch, slack):
    """The failure automation installed with a block that posts to the Slack receiver; removed
    afterwards, so that no other test's failing run is alerted twice."""
    from prefect.client.orchestration import get_client

    monkeypatch.setenv("REFIT_SLACK_WEBHOOK_URL", slack.url)
    assert notify.install_failure_alerts(load_settings()) != []  # saves custom-webhook/refit-alerts
    # or a saved notification block by name; installing again replaces, never duplicates
    notify.save_alert_block(load_settings(), "refit-test-alerts")
    monkeypatch.setenv("REFIT_SLACK_WEBHOOK_BLOCK", "custom-webhook/refit-test-alerts")
    ids = notify.install_failure_alerts(load_settings())
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
        notify.install_automations("secret/refit-test-not-a-notifier")
    assert notify.install_failure_alerts(load_settings()) == []  # no target: nothing installed


def _wait_for(predicate, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False
