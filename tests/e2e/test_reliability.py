"""Retries, failure alerts and resumption of the flows, on the real services.

The database sits behind a real TCP proxy that can drop connections, the way a Postgres restart
or a flaky network does to its clients: psycopg2 sees a closed connection, not a mock.
"""

from __future__ import annotations

import contextlib
import socket
import threading

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

from refit.core.settings import load_settings
from refit.data.db import get_engine
from refit.data.ingest import ingest_file
from refit.data.validate import IngestRules
from refit.flows.drift_check import drift_check_flow
from refit.ops.synth import generate_feedback, write_feedback
from refit.tasks.data import pull_snapshot

from helpers import count

pytestmark = pytest.mark.integration


class DroppingProxy:
    """A TCP proxy to ``target`` that drops the first ``drop`` connections it accepts (all of them
    with ``drop=None``) and forwards the rest."""

    def __init__(self, target: tuple[str, int], drop: int | None):
        self.target, self.drop, self.accepted = target, drop, 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.accepted += 1
            if self.drop is None or self.accepted <= self.drop:
                client.close()
                continue
            upstream = socket.create_connection(self.target)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, dest: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                dest.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, dest):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def proxied_db(refit_env, monkeypatch):
    """Factory: point REFIT_DATABASE_URL at a proxy that drops ``drop`` connections first."""
    proxies = []

    def make(drop: int | None) -> DroppingProxy:
        url = get_engine(refit_env.database_url).url
        proxy = DroppingProxy((url.host or "127.0.0.1", url.port or 5432), drop)
        proxies.append(proxy)
        monkeypatch.setenv(
            "REFIT_DATABASE_URL", url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
        )
        return proxy

    yield make
    for proxy in proxies:
        proxy.close()


def _task_runs(flow_run_id) -> dict[str, list]:
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    found: dict[str, list] = {}
    for run in runs:
        found.setdefault(run.name.rsplit("-", 1)[0], []).append(run)
    return found


def test_a_task_that_fails_twice_is_retried_and_the_flow_completes(prefect_api, refit_env, proxied_db, slack):
    proxy = proxied_db(drop=2)  # the preflight's first two connections are dropped
    state = drift_check_flow(return_state=True)
    assert state.is_completed(), state.message
    assert state.result()["decision"] == "no_new_data"
    [preflight] = _task_runs(state.state_details.flow_run_id)["preflight"]
    assert preflight.run_count == 3 and preflight.state.is_completed()
    assert proxy.accepted >= 3
    assert slack.kinds() == []  # a recovered task is not an alert


def test_a_failure_after_retries_posts_one_failure_message(prefect_api, refit_env, proxied_db, slack):
    proxied_db(drop=None)  # the database stays unreachable
    state = drift_check_flow(return_state=True)
    assert state.is_failed()
    [preflight] = _task_runs(state.state_details.flow_run_id)["preflight"]
    assert preflight.run_count == 4  # the first try and three retries, with backoff
    failures = [m for m in slack.messages if m.get("refit", {}).get("kind") == "failure"]
    assert len(failures) == 1 and len(slack.messages) == 1
    assert "preflight" in failures[0]["text"] and "drift-check" in failures[0]["text"]


def test_a_retried_flow_run_resumes_after_its_finished_tasks(prefect_api, refit_env, tmp_path):
    settings = load_settings()
    engine = get_engine(settings.database_url)
    rules = IngestRules.from_settings(settings)
    ingest_file(engine, write_feedback(generate_feedback(120, seed=5), tmp_path / "f.csv"), rules)
    attempts = []

    @flow(retries=1, retry_delay_seconds=0, persist_result=True)
    def pull_then_fail_once() -> int:
        snapshot = pull_snapshot(settings)
        attempts.append(snapshot)
        if len(attempts) == 1:
            raise RuntimeError("the worker lost its node after the pull")
        return snapshot.id

    snapshot_id = pull_then_fail_once()
    # the retry reused the finished pull (a second pull would have found nothing new: None)
    assert attempts[0] is not None and attempts[1] is not None
    assert attempts[1].id == attempts[0].id == snapshot_id
    assert count(engine, "dataset_snapshots") == 1
