"""Notifications: the messages as pure functions, their delivery to real HTTP receivers (Slack's
JSON and the generic JSON webhook), saved Prefect blocks, the failure hook, and the failure
automation against the real Prefect API."""

from __future__ import annotations

from pathlib import Path

from prefect import task

from refit.core.settings import load_settings
from refit.notify.automations import load_automations
from refit.notify.links import flow_run_url, ui_base
from refit.notify.notices import (
    drift_notice,
    failure_notice,
    gate_notice,
    outcome_notice,
    retrain_started_notice,
    rollback_notice,
)
from refit.tasks.notify import failed_task_name

from helpers import GATE

ROOT = Path(__file__).resolve().parents[2]


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


def test_drift_message_has_the_signals_table_drifted_first_and_the_report_link():
    notice = drift_notice(DRIFT, "v1", report_url="https://s3.example/report?sig=1", run_url="http://ui/r/1")
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
    notice = drift_notice(DRIFT, "v1")
    assert notice.links == {"Drift report": DRIFT["html_uri"]}
    assert notice.run_url is None and "Open the run" not in notice.slack()["text"]


def test_gate_message_has_the_metrics_table_with_interval_and_the_failed_slices():
    notice = gate_notice(GATE, "v2", run_url="http://ui/runs/flow-run/abc")
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
    drifted = retrain_started_notice(snapshot, "v1", DRIFT, run_url="http://ui/r/2")
    assert drifted.kind == "retrain_started" and "*Why*: drift: text" in drifted.slack()["text"]
    assert "feedback ids 801..1600, 800 rows" in drifted.slack()["text"]
    assert drifted.event()["fields"]["snapshot_id"] == 4 and drifted.event()["fields"]["champion"] == "v1"
    # a run started by a drift event knows the check's reasons, not its columns
    triggered = retrain_started_notice(snapshot, "v1", {"reasons": ["drift report 7 decided to retrain"]})
    assert triggered.fields["reason"] == "drift: drift report 7 decided to retrain"
    assert retrain_started_notice(snapshot, None).fields["reason"] == "no champion yet: the first model"
    assert retrain_started_notice(snapshot, "v1", forced=True).fields["reason"] == "forced by the operator"


def test_outcome_rollback_and_failure_messages_are_machine_readable():
    summary = {
        "outcome": "promoted",
        "version": "v2",
        "champion": "v2",
        "drift": DRIFT,
        "gate": {**GATE, "promote": True},
    }
    promoted = outcome_notice(summary)
    assert promoted.slack()["refit"]["kind"] == "promoted" and "`v2`" in promoted.slack()["text"]
    assert outcome_notice({"outcome": "no_new_data"}).title == "refit: no new feedback"
    rolled = rollback_notice({"from": "v3", "to": "v2"}, "bad scores in prod", "alice")
    assert rolled.kind == "rolled_back" and rolled.event()["fields"] == {
        "from": "v3", "to": "v2", "actor": "alice", "reason": "bad scores in prod"
    }  # fmt: skip
    failed = failure_notice("retrain", "calm-fox", "StoreError: <bucket> missing", "preflight", "http://ui/x")
    text = failed.slack()["blocks"][1]["text"]["text"]
    assert "*Flow*: retrain / calm-fox (Failed)" in text and "*Task*: preflight" in text
    assert "&lt;bucket&gt;" in text
    assert failed.event()["fields"]["task"] == "preflight" and failed.event()["run_url"] == "http://ui/x"


def test_run_links_use_the_configured_ui_else_prefects(monkeypatch):
    from prefect.settings import PREFECT_UI_URL, temporary_settings

    assert flow_run_url(None, "abc") is None
    monkeypatch.setenv("REFIT_UI_URL", "https://prefect.example.com/")
    assert ui_base(load_settings()) == "https://prefect.example.com"
    monkeypatch.delenv("REFIT_UI_URL")
    with temporary_settings({PREFECT_UI_URL: "http://prefect.internal:4200"}):
        base = ui_base(load_settings())
    assert flow_run_url(base, "abc") == "http://prefect.internal:4200/runs/flow-run/abc"


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


def test_the_automation_file_parses_into_prefects_model():
    from prefect.events.schemas.automations import AutomationCore, EventTrigger

    (automation,) = load_automations(ROOT / "deployments" / "automations.yaml")
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
