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
- ``train_kill``: the sandbox trains in a child process (REFIT_TRAIN_IN_CHILD_PROCESS), which gets
  SIGKILL from outside once it is training.
- ``duplicate_delivery``: a step's feedback file is ingested twice.
- ``drift_storm``: the loop is triggered many times in one step.

Each fault is armed from a step drawn with the seed and fires at the first matching moment at or
after it (a publish fault waits for a publish), once per policy. Every fault acts on the real
``retrain`` flow from outside, as the world would: through the proxy, the database's connections,
or the training process; none reaches inside a run.
"""

from __future__ import annotations

import http.client
import signal
import socket
import sys
import threading
import time
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
from sqlalchemy import text

from refit.core.errors import RefitError
from refit.sim.replay import NoFaults
from refit.sim.sandbox import Sandbox
from refit.sim.stream import Step
from refit.training.launch import CHILD_MODULE

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
    """``pg_terminate_backend`` on every connection of a sandbox, as a server restart would drop them.

    Args:
        admin: an engine with the right to terminate others' connections.
        application_name: the sandbox's connections' application name.
        only_waiting: only the connections waiting on a lock.

    Returns:
        How many connections were terminated.
    """
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
    """Hold an exclusive lock on a table while the body runs; the first sandbox query that waits
    on it has its connection terminated, then the lock goes. The dropped connection is therefore
    one in the middle of its work (a pull's COPY, a promotion's transaction).

    Args:
        admin: an engine with the right to lock the table and terminate connections.
        schema: the sandbox's schema.
        table: the table locked.
        application_name: the sandbox's connections' application name.
        timeout_s: the longest the lock is held waiting for a query.

    Yields:
        A dict whose ``dropped`` counts the connections terminated.
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


def kill_training_when_started(stop: threading.Event, after_s: float, state: dict) -> None:
    """Kill a training child process once it trains, as an out-of-memory kill would.

    Watches this process's children for a training process (``python -m refit.training.launch``);
    once it reports that it trains (its status file), SIGKILLs it a little later.

    Args:
        stop: set to stop watching.
        after_s: seconds between the child's report and the kill.
        state: ``state["killed"]`` is set when the kill landed.
    """
    import psutil

    me = psutil.Process()
    while not stop.is_set():
        for child in me.children(recursive=True):
            try:
                command = child.cmdline()
            except psutil.Error:
                continue
            if CHILD_MODULE not in command or not command[-1].endswith(".status"):
                continue
            status = Path(command[-1])
            if status.is_file() and status.read_text() == "training":
                time.sleep(after_s)
                try:
                    child.send_signal(signal.SIGKILL)
                    state["killed"] = True
                except psutil.NoSuchProcess:  # it finished first: the fault missed
                    pass
                return
        stop.wait(0.05)


# --- the injector --------------------------------------------------------------------------------


def plan(seed: int, steps: int, faults: tuple[str, ...] = FAULTS) -> dict[str, int]:
    """The step each fault is armed from, drawn at random (from step 1: a champion exists).

    Args:
        seed: the draw's seed.
        steps: the run's steps.
        faults: the faults to arm.

    Returns:
        The step each fault is armed from, by fault.
    """
    rng = np.random.default_rng(seed)
    return {fault: int(rng.integers(1, max(steps, 2))) for fault in faults}


@dataclass
class Chaos(NoFaults):
    """Injects the faults of :data:`FAULTS` into a replay, through :class:`refit.sim.replay.NoFaults`'
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

    def sandbox_overrides(self) -> dict:
        # a training to kill must run in its own process; the loop then fails cleanly, not the replay
        return {"train_in_child_process": True} if "train_kill" in self.schedule else {}

    @contextmanager
    def cycle(self, box: Sandbox, step: Step):
        """Arm the faults due for one run of the flow, from outside it: the proxy's outage, errors
        and corruption, the database's dropped connections, the training process's kill."""
        with ExitStack() as stack:
            after = []  # what fired, read once the run is over
            if self._armed(box, step, "s3_unreachable"):  # as the run starts: its preflight meets it
                self.proxy.down_for(self.s3_outage_s)
                self._fire(box, step, "s3_unreachable", seconds=self.s3_outage_s)
            if self._armed(box, step, "pg_drop_pull"):  # the first query on feedback is the pull's
                dropped = stack.enter_context(
                    drop_when_blocked(box.admin, box.schema, "feedback", box.application_name, 20)
                )
                after.append(lambda: dropped["dropped"] and self._fire(box, step, "pg_drop_pull", **dropped))
            if self._armed(box, step, "s3_500"):
                after.append(self._s3_500_on_publish(box, step, stack))
            if self._armed(box, step, "corrupt_object"):
                after.append(self._corrupt_on_publish(box, step, stack))
            if self._armed(box, step, "pg_drop_promotion"):
                after.append(self._drop_during_promotion(box, step, stack))
            if self._armed(box, step, "train_kill"):
                after.append(self._kill_training(box, step, stack))
            try:
                yield
            finally:
                stack.close()
                for check in after:
                    check()

    def _s3_500_on_publish(self, box: Sandbox, step: Step, stack: ExitStack):
        # The checkpoint's weights pass the proxy only when a challenger is uploaded: errors from then on.
        state = {}

        def hook() -> None:
            self.proxy.fail_for(self.s3_error_s)
            state["fired"] = True

        self.proxy.on_request("PUT", "model.safetensors", hook)
        stack.callback(lambda: setattr(self.proxy, "hooks", [h for h in self.proxy.hooks if h[2] is not hook]))
        return lambda: state and self._fire(box, step, "s3_500", seconds=self.s3_error_s)

    def _corrupt_on_publish(self, box: Sandbox, step: Step, stack: ExitStack):
        before = len(self.proxy.corrupted)
        self.proxy.corrupt_next("model.safetensors")
        stack.callback(lambda: setattr(self.proxy, "corrupt", None))
        return lambda: (
            len(self.proxy.corrupted) > before and self._fire(box, step, "corrupt_object", key=self.proxy.corrupted[-1])
        )

    def _drop_during_promotion(self, box: Sandbox, step: Step, stack: ExitStack):
        from refit.registry.layout import pointer_key

        if self.proxy is not None:
            # The registry transaction is open while the pointer is written: drop it right then.
            state = {"dropped": 0}

            def hook() -> None:
                state["dropped"] = terminate_connections(box.admin, box.application_name)

            self.proxy.on_request("PUT", pointer_key(box.settings.model_name), hook)
            stack.callback(lambda: setattr(self.proxy, "hooks", [h for h in self.proxy.hooks if h[2] is not hook]))
        else:
            state = stack.enter_context(
                drop_when_blocked(box.admin, box.schema, "registry_head", box.application_name, 20)
            )
        return lambda: state["dropped"] and self._fire(box, step, "pg_drop_promotion", dropped=state["dropped"])

    def _kill_training(self, box: Sandbox, step: Step, stack: ExitStack):
        stop, state = threading.Event(), {}
        watcher = threading.Thread(
            target=kill_training_when_started, args=(stop, self.kill_after_s, state), daemon=True
        )
        watcher.start()
        stack.callback(watcher.join, 30)
        stack.callback(stop.set)
        return lambda: state.get("killed") and self._fire(box, step, "train_kill", after_s=self.kill_after_s)

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
