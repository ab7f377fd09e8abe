"""Fault injection for ``refit simulate --chaos`` and the tests: real faults on the real parts.

- ``s3_unreachable``: a small HTTP proxy in front of the S3 endpoint closes its listener and its
  open connections for a while (connection refused), as the loop starts a cycle.
- ``s3_500``: the proxy answers every request with HTTP 500 for a while, as a publish starts.
- ``corrupt_object``: the proxy flips bytes of a checkpoint file on its way into the store, once.
- ``pg_drop_pull``: the sandbox's Postgres connection is terminated (``pg_terminate_backend``,
  what a server restart does to its clients) in the middle of the pull's ``COPY``.
- ``pg_drop_promotion``: the same in the middle of a promotion: when the registry transaction is
  open and the champion pointer is being written to the store (through the proxy), or, with no
  proxy, while the promotion waits on the registry row.
- ``train_kill``: training runs in a child process, which gets SIGKILL during training.
- ``duplicate_delivery``: a step's feedback file is ingested twice.
- ``drift_storm``: the loop is triggered many times in one step.

Each fault is armed from a step drawn with the seed and fires at the first matching moment at or
after it (a publish fault waits for a publish), once per policy.
"""

from __future__ import annotations

import http.client
import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
from sqlalchemy import text

from refit.core.errors import RefitError
from refit.sim.backtest import NoFaults, Sandbox, Step

FAULTS = (
    "s3_unreachable",
    "s3_500",
    "corrupt_object",
    "pg_drop_pull",
    "pg_drop_promotion",
    "train_kill",
    "duplicate_delivery",
    "drift_storm",
)
S3_FAULTS = ("s3_unreachable", "s3_500", "corrupt_object")


class TrainingKilled(RefitError):
    """The training process died (SIGKILL) before it finished."""


# --- the S3 proxy --------------------------------------------------------------------------------


class FaultProxy:
    """An HTTP proxy in front of an S3 endpoint that can refuse connections, answer 500, corrupt
    one upload in flight, or run a hook when a matching request passes."""

    def __init__(self, upstream: str):
        parsed = urlparse(upstream)
        if parsed.scheme != "http":
            raise RefitError(f"the fault proxy fronts plain-HTTP S3 endpoints, not {upstream}")
        self.upstream = (parsed.hostname, parsed.port or 80)
        self.port = 0
        self.failing_until = 0.0
        self.corrupt: str | None = None
        self.corrupted: list[str] = []
        self.hooks: list[tuple[str, str, object]] = []
        self.down_since: float | None = None
        self._server: ThreadingHTTPServer | None = None
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FaultProxy:
        proxy = self

        class Handler(_ProxyHandler):
            pass

        Handler.proxy = proxy
        server = _QuietServer(("127.0.0.1", self.port), Handler)
        self.port = server.server_address[1]
        self._server = server
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        with self._lock:
            for conn in list(self._connections):
                _close(conn)
            self._connections.clear()

    def down_for(self, seconds: float) -> None:
        """Refuse connections for ``seconds``: the listener and every open connection close."""
        self.stop()
        self.down_since = time.monotonic()
        timer = threading.Timer(seconds, self._up)
        timer.daemon = True
        timer.start()

    def _up(self) -> None:
        for _ in range(50):
            try:
                self.start()
                break
            except OSError:  # the port is still in TIME_WAIT
                time.sleep(0.1)
        self.down_since = None

    def fail_for(self, seconds: float) -> None:
        """Answer every request with HTTP 500 for ``seconds``."""
        self.failing_until = time.monotonic() + seconds

    def corrupt_next(self, suffix: str) -> None:
        """Flip bytes in the body of the next PUT whose path ends with ``suffix``."""
        self.corrupt = suffix

    def on_request(self, method: str, suffix: str, hook) -> None:
        """Run ``hook()`` once, before forwarding the first ``method`` request whose path ends with ``suffix``."""
        self.hooks.append((method, suffix, hook))


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], OSError):  # clients cut off by a fault are expected
            super().handle_error(request, client_address)


def _close(conn: socket.socket) -> None:
    with suppress(OSError):
        conn.shutdown(socket.SHUT_RDWR)
    conn.close()


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    proxy: FaultProxy

    def setup(self):
        super().setup()
        with self.proxy._lock:
            self.proxy._connections.add(self.connection)

    def finish(self):
        with self.proxy._lock:
            self.proxy._connections.discard(self.connection)
        super().finish()

    def log_message(self, *args):
        pass

    def do_GET(self):  # noqa: N802 - http.server's naming
        self._forward()

    do_PUT = do_POST = do_DELETE = do_HEAD = do_GET  # noqa: N815

    def _forward(self) -> None:
        proxy = self.proxy
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        path = self.path.split("?", 1)[0]
        if time.monotonic() < proxy.failing_until:
            error = b"<Error><Code>InternalError</Code><Message>injected by refit.chaos</Message></Error>"
            self.send_response(500)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(error)))
            self.end_headers()
            if self.command != "HEAD":  # a HEAD answer has no body; one would poison the connection
                self.wfile.write(error)
            return
        for hook in list(proxy.hooks):
            if hook[0] == self.command and path.endswith(hook[1]):
                proxy.hooks.remove(hook)
                hook[2]()
        if self.command == "PUT" and proxy.corrupt and path.endswith(proxy.corrupt) and len(body) > 64:
            proxy.corrupt = None
            proxy.corrupted.append(path)
            damaged = bytearray(body)
            for i in range(0, len(damaged), max(1, len(damaged) // 16)):
                damaged[i] ^= 0xFF
            body = bytes(damaged)
        skip = {"connection", "transfer-encoding", "expect", "keep-alive"}
        headers = {k: v for k, v in self.headers.items() if k.lower() not in skip}
        upstream = http.client.HTTPConnection(*proxy.upstream, timeout=120)
        try:
            upstream.request(self.command, self.path, body=body or None, headers=headers)
            response = upstream.getresponse()
            data = response.read()
        finally:
            upstream.close()
        self.send_response_only(response.status, response.reason)
        for key, value in response.getheaders():
            if key.lower() in ("transfer-encoding", "connection", "content-length", "keep-alive"):
                continue
            self.send_header(key, value)
        length = response.getheader("Content-Length") if self.command == "HEAD" else str(len(data))
        self.send_header("Content-Length", length or "0")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)


# --- Postgres: connections dropped ---------------------------------------------------------------


def terminate_connections(admin, application_name: str, only_waiting: bool = False) -> int:
    """``pg_terminate_backend`` on every connection of a sandbox (by its application name), as a
    server restart would drop them. Returns how many went."""
    where = " AND wait_event_type = 'Lock'" if only_waiting else ""
    with admin.connect() as conn:
        pids = conn.execute(
            text(
                "SELECT pid FROM pg_stat_activity WHERE application_name = :a AND pid <> pg_backend_pid()" + where
            ),
            {"a": application_name},
        ).scalars().all()  # fmt: skip
        for pid in pids:
            conn.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
        conn.commit()
    return len(pids)


@contextmanager
def drop_when_blocked(admin, schema: str, table: str, application_name: str, timeout_s: float = 60.0):
    """Hold an exclusive lock on ``schema.table`` while the body runs; the first sandbox query
    that waits on it has its connection terminated, then the lock goes. The dropped connection
    is therefore one in the middle of its work (a pull's COPY, a promotion's transaction).

    Yields a dict whose ``dropped`` counts the connections terminated.
    """
    state = {"dropped": 0}
    locked = threading.Event()
    done = threading.Event()

    def hold() -> None:
        with admin.connect() as conn:
            conn.execute(text(f'LOCK TABLE "{schema}"."{table}" IN ACCESS EXCLUSIVE MODE'))
            locked.set()
            deadline = time.monotonic() + timeout_s
            while not done.is_set() and time.monotonic() < deadline:
                dropped = terminate_connections(admin, application_name, only_waiting=True)
                if dropped:
                    state["dropped"] += dropped
                    break
                time.sleep(0.02)
            conn.rollback()

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    locked.wait(10)
    try:
        yield state
    finally:
        done.set()
        thread.join(timeout_s)


# --- training killed -------------------------------------------------------------------------------


def _settings_file(settings, folder: Path) -> Path:
    from pydantic import SecretStr

    data = {
        k: v
        for k, v in settings.model_dump(mode="json").items()
        if not isinstance(getattr(settings, k), SecretStr) and v is not None
    }
    folder.mkdir(parents=True, exist_ok=True)
    fd, path = tempfile.mkstemp(dir=folder, prefix="settings-", suffix=".json")
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle)
    return Path(path)


def train_and_kill(settings, snapshot, kill_after_s: float = 1.0, start_timeout_s: float = 300.0):
    """Train the challenger in a child process (the same task body as the loop), and SIGKILL the
    child ``kill_after_s`` seconds after it starts training.

    Returns:
        ``(challenger, killed)``: the child's challenger when it finished before the kill (the
        fault missed), else ``(None, True)``.
    """
    from refit.tasks.training import Challenger

    path = _settings_file(settings, Path(settings.work_dir) / "chaos")
    child = subprocess.Popen(
        [sys.executable, "-m", "refit.sim.faults", "train", str(path), str(snapshot.id)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        deadline = time.monotonic() + start_timeout_s
        while time.monotonic() < deadline:
            ready, _, _ = select.select([child.stdout], [], [], 0.5)
            if ready:
                line = child.stdout.readline()
                if line.strip() == "training" or not line:
                    break
            if child.poll() is not None:
                break
        time.sleep(kill_after_s)
        if child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)
            child.wait()
            return None, True
        out = child.stdout.read().strip().splitlines()
        if child.returncode != 0 or not out:
            raise RefitError(f"the training process exited with status {child.returncode}")
        data = json.loads(out[-1])
        return Challenger(**{**data, "folder": Path(data["folder"])}), False
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        path.unlink(missing_ok=True)


def _child_train(settings_path: str, snapshot_id: str) -> None:
    from prefect.logging import disable_run_logger

    from refit.core.settings import load_settings
    from refit.data.db import engine_for
    from refit.data.snapshots import get_snapshot
    from refit.registry import champion
    from refit.tasks.training import train_challenger

    settings = load_settings(**json.loads(Path(settings_path).read_text()))
    engine = engine_for(settings)
    snapshot = get_snapshot(engine, int(snapshot_id))
    print("training", flush=True)
    with disable_run_logger():
        challenger = train_challenger.fn(settings, snapshot, champion(engine))
    print(json.dumps({**challenger.__dict__, "folder": str(challenger.folder)}), flush=True)


# --- the injector --------------------------------------------------------------------------------


def plan(seed: int, steps: int, faults: tuple[str, ...] = FAULTS) -> dict[str, int]:
    """The step each fault is armed from, drawn with ``seed`` (from step 1: a champion exists)."""
    rng = np.random.default_rng(seed)
    return {fault: int(rng.integers(1, max(steps, 2))) for fault in faults}


@dataclass
class Chaos(NoFaults):
    """Injects the faults of :data:`FAULTS` into a replay, through :class:`refit.simulate.NoFaults`'
    hooks. Give it the proxy that fronts the store's S3 endpoint for the S3 faults (without one
    they are skipped, and reported so)."""

    schedule: dict[str, int]
    proxy: FaultProxy | None = None
    s3_outage_s: float = 4.0
    s3_error_s: float = 3.0
    storm_triggers: int = 5
    kill_after_s: float = 1.0
    fired: dict = field(default_factory=dict)  # (policy, fault) -> {"step": i, ...}

    def _armed(self, box: Sandbox, step: Step, fault: str) -> bool:
        return (
            fault in self.schedule
            and step.index >= self.schedule[fault]
            and (box.policy.name, fault) not in self.fired
            and (self.proxy is not None or fault not in S3_FAULTS)
        )

    def _fire(self, box: Sandbox, step: Step, fault: str, **detail) -> None:
        self.fired[(box.policy.name, fault)] = {"step": step.index, **detail}

    def deliveries(self, box: Sandbox, step: Step) -> int:
        if self._armed(box, step, "duplicate_delivery"):
            self._fire(box, step, "duplicate_delivery")
            return 2
        return 1

    def triggers(self, box: Sandbox, step: Step) -> int:
        if self._armed(box, step, "drift_storm"):
            self._fire(box, step, "drift_storm", triggers=self.storm_triggers)
            return self.storm_triggers
        return 1

    @contextmanager
    def phase(self, box: Sandbox, step: Step, name: str):
        if name == "pull":
            if self._armed(box, step, "s3_unreachable"):
                self.proxy.down_for(self.s3_outage_s)
                self._fire(box, step, "s3_unreachable", seconds=self.s3_outage_s)
            if self._armed(box, step, "pg_drop_pull"):
                with drop_when_blocked(box.admin, box.schema, "feedback", box.application_name, 20) as state:
                    yield
                if state["dropped"]:
                    self._fire(box, step, "pg_drop_pull", dropped=state["dropped"])
                return
        elif name == "publish":
            if self._armed(box, step, "s3_500"):
                self.proxy.fail_for(self.s3_error_s)
                self._fire(box, step, "s3_500", seconds=self.s3_error_s)
            if self._armed(box, step, "corrupt_object"):
                before = len(self.proxy.corrupted)
                self.proxy.corrupt_next("model.safetensors")
                try:
                    yield
                finally:
                    self.proxy.corrupt = None
                if len(self.proxy.corrupted) > before:
                    self._fire(box, step, "corrupt_object", key=self.proxy.corrupted[-1])
                return
        elif name == "promote" and self._armed(box, step, "pg_drop_promotion"):
            yield from self._drop_during_promotion(box, step)
            return
        yield

    def _drop_during_promotion(self, box: Sandbox, step: Step):
        from refit.registry import pointer_key

        if self.proxy is not None:
            # The registry transaction is open while the pointer is written: drop it right then.
            state = {"dropped": 0}

            def hook() -> None:
                state["dropped"] = terminate_connections(box.admin, box.application_name)

            self.proxy.on_request("PUT", pointer_key(box.settings.model_name), hook)
            try:
                yield
            finally:
                self.proxy.hooks = [h for h in self.proxy.hooks if h[2] is not hook]
        else:
            with drop_when_blocked(box.admin, box.schema, "registry_head", box.application_name, 20) as state:
                yield
        if state["dropped"]:
            self._fire(box, step, "pg_drop_promotion", dropped=state["dropped"])

    def train(self, box: Sandbox, step: Step, snapshot, champion):
        if not self._armed(box, step, "train_kill"):
            return None
        challenger, killed = train_and_kill(box.settings, snapshot, self.kill_after_s)
        if not killed:
            return challenger  # it finished first: the fault missed, and stays armed
        self._fire(box, step, "train_kill", after_s=self.kill_after_s)
        raise TrainingKilled(f"the training process was killed (SIGKILL) {self.kill_after_s:g} s into training")

    def injected(self, box: Sandbox, step: Step) -> list[str]:
        return sorted(
            f for (policy, f), v in self.fired.items() if policy == box.policy.name and v["step"] == step.index
        )

    def report(self, policies: list[str]) -> dict:
        """Per fault: the step it was armed from, and per policy the step it fired (None: never
        met its moment, e.g. no publish after it was armed)."""
        return {
            fault: {
                "armed_from": armed,
                "fired": {p: (self.fired.get((p, fault)) or {}).get("step") for p in policies},
                "skipped": fault in S3_FAULTS and self.proxy is None,
            }
            for fault, armed in self.schedule.items()
        }


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "train":
        _child_train(sys.argv[2], sys.argv[3])
    else:
        sys.exit("usage: python -m refit.chaos train SETTINGS_JSON SNAPSHOT_ID")
