"""Manual approval through a real Prefect API: a paused run is approved, rejected, or times out,
and the operator's verdict and note reach the promotion log."""

import threading
import time

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.flow_runs import resume_flow_run
from sqlalchemy import create_engine, text

from refit.gate.rule import GateDecision
from refit.registry.store import open_store
from refit.tasks.approval import await_approval

from helpers import publish_and_record

pytestmark = pytest.mark.integration

PASSED = GateDecision(True, "mse", 0.01, 0.02, 0.01, 0.0, "champion", "promote: better", reasons=["better"])


@flow(name="approval-under-test")
def approval_flow(timeout_s: int) -> GateDecision:
    from prefect.runtime import flow_run

    approval_flow.run_ids.append(flow_run.get_id())
    return await_approval(PASSED, "v-approve", timeout_s, poll_s=1)


approval_flow.run_ids = []


def run_and_answer(answer: dict | None, timeout_s: int) -> tuple[GateDecision, str]:
    """Start the flow in a thread, wait until the API shows it paused, then resume it with ``answer``."""
    result = {}
    approval_flow.run_ids.clear()
    worker = threading.Thread(target=lambda: result.setdefault("decision", approval_flow(timeout_s)))
    worker.start()
    deadline = time.monotonic() + 60
    state = None
    while time.monotonic() < deadline:
        if approval_flow.run_ids:
            with get_client(sync_client=True) as client:
                runs = client.read_flow_runs(
                    flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=approval_flow.run_ids))
                )
            state = runs[0].state if runs else None
            if state is not None and state.is_paused():
                break
        time.sleep(0.2)
    assert state is not None and state.is_paused(), f"the run never paused (state {state})"
    if answer is not None:
        resume_flow_run(approval_flow.run_ids[0], run_input=answer)
    worker.join(timeout=120)
    assert not worker.is_alive()
    return result["decision"], approval_flow.run_ids[0]


def final_state(run_id: str):
    with get_client(sync_client=True) as client:
        return client.read_flow_run(run_id).state


def test_an_operator_approves_and_the_note_is_recorded(prefect_api, db_url, s3_bucket, tmp_path):
    decision, run_id = run_and_answer({"approve": True, "note": "looks right on the new category", "by": "alice"}, 60)
    assert decision.promote
    assert decision.approval == {"verdict": "approved", "by": "alice", "note": "looks right on the new category"}
    assert final_state(run_id).is_completed()

    engine = create_engine(db_url)
    store = open_store(f"s3://{s3_bucket}/refit")
    outcome = publish_and_record(engine, store, tmp_path, "v-approve", decision)
    assert outcome == "promoted"
    with engine.connect() as conn:
        details = conn.execute(text("SELECT details FROM promotion_log")).scalar_one()
    assert details["approval"]["note"] == "looks right on the new category"
    assert details["approval"]["by"] == "alice"
    engine.dispose()


def test_an_operator_rejects(prefect_api):
    decision, run_id = run_and_answer({"approve": False, "note": "wait for the holiday data", "by": "bob"}, 60)
    assert not decision.promote
    assert decision.reason == "reject: bob rejected it: wait for the holiday data"
    assert decision.approval["verdict"] == "rejected"
    assert final_state(run_id).is_completed()


def test_no_answer_before_the_timeout_rejects(prefect_api):
    decision, run_id = run_and_answer(None, 3)
    assert not decision.promote
    assert decision.reason == "reject: no operator approval within 3 s"
    assert decision.approval["verdict"] == "timed out"
    # the run goes on (it publishes the rejected challenger and records why) and completes
    assert final_state(run_id).is_completed()
