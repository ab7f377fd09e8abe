"""`refit up` and `refit down`: the local stack, a Prefect server with a worker per work pool.

``up`` starts a Prefect server, creates the ``cpu`` and ``gpu`` pools, deploys every deployment of
``deployments/prefect.yaml`` (and the alert automations beside it), starts one worker per pool and
writes every PID to ``<state dir>/stack.json``. ``down`` stops what that file names: the workers
first, then marks any run they left unfinished as Crashed, then stops the server. Every process
starts in its own session, and each is stopped with its children, so nothing is left behind.

The same deployment file serves a real cluster: there the pools are Kubernetes pools
(``deployments/work-pools/``) and the workers run elsewhere; only the pool type changes.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

from refit.core.errors import RefitError
from refit.core.resources import deployments_dir

STATE_FILE = "stack.json"
POOLS = ("cpu", "gpu")
UNFINISHED = ["RUNNING", "PENDING", "CANCELLING"]


class StackError(RefitError):
    """The local stack could not be started or stopped."""


@dataclass
class Stack:
    """What ``up`` started: where the API and UI are, and every process by role."""

    state_dir: str
    api_url: str
    ui_url: str
    pids: dict[str, int] = field(default_factory=dict)
    logs: dict[str, str] = field(default_factory=dict)
    deployments: list[str] = field(default_factory=list)

    def save(self) -> None:
        path = Path(self.state_dir) / STATE_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.replace(path)

    @classmethod
    def load(cls, state_dir: Path) -> Stack | None:
        path = Path(state_dir) / STATE_FILE
        if not path.exists():
            return None
        return cls(**json.loads(path.read_text()))


def _prefect() -> list[str]:
    exe = Path(sys.executable).with_name("prefect")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "prefect"]


def stack_env(root: Path, state_dir: Path, api_url: str, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of every process of the stack: its own Prefect home (SQLite unless
    ``PREFECT_API_DATABASE_CONNECTION_URL`` is set), its API, and the checkout the workers run.

    Args:
        root: the checkout the workers run (``REFIT_HOME``).
        state_dir: the stack's folder (the Prefect home is under it).
        api_url: the Prefect API's URL.
        base: the environment to start from (default: this process's).

    Returns:
        The environment.
    """
    env = dict(os.environ if base is None else base)
    env.update(
        PREFECT_HOME=str(state_dir / "prefect"),
        PREFECT_API_URL=api_url,
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_UI_API_URL=api_url,
        REFIT_HOME=str(root),
    )
    env.setdefault("PREFECT_UI_URL", api_url.removesuffix("/api"))
    # A local worker asks for work every 2 s instead of Prefect's 10: a run starts sooner, and the
    # cost is one cheap query against a server on the same machine.
    env.setdefault("PREFECT_WORKER_QUERY_SECONDS", "2")
    return env


def _spawn(name: str, args: list[str], env: dict, cwd: Path, logs: Path) -> tuple[int, str]:
    log = logs / f"{name}.log"
    with open(log, "ab") as out:
        process = subprocess.Popen(
            args, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
    return process.pid, str(log)


def _run(args: list[str], env: dict, cwd: Path, what: str, timeout_s: float) -> str:
    done = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout_s)
    if done.returncode != 0:
        tail = (done.stdout + done.stderr).strip()[-2000:]
        raise StackError(f"{what} failed (exit {done.returncode}):\n{tail}")
    return done.stdout


def _log_tail(path: str, chars: int = 2000) -> str:
    try:
        return Path(path).read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def _wait_healthy(api_url: str, pid: int, log: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _alive(pid):
            raise StackError(f"the Prefect server exited while starting:\n{_log_tail(log)}")
        try:
            if httpx.get(f"{api_url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise StackError(f"the Prefect server did not answer at {api_url} within {timeout_s:.0f} s:\n{_log_tail(log)}")


def _wait_workers(api_url: str, stack: Stack, timeout_s: float) -> None:
    """Until every pool has a worker that reported in (so a run created now is picked up)."""
    deadline = time.monotonic() + timeout_s
    waiting = set(POOLS)
    while waiting and time.monotonic() < deadline:
        for pool in list(waiting):
            if not _alive(stack.pids[f"worker-{pool}"]):
                raise StackError(f"the {pool} worker exited:\n{_log_tail(stack.logs[f'worker-{pool}'])}")
            with _client(api_url) as client:
                workers = client.read_workers_for_work_pool(pool)
            if workers:
                waiting.discard(pool)
        time.sleep(0.5)
    if waiting:
        raise StackError(f"no worker reported in for pool(s) {', '.join(sorted(waiting))} within {timeout_s:.0f} s")


def up(
    root: Path,
    state_dir: Path,
    host: str = "127.0.0.1",
    port: int = 4200,
    timeout_s: float = 180,
    settings=None,
    echo=print,
) -> Stack:
    """Start the local stack (see the module docstring) and return what was started.

    Args:
        root: the folder the workers run in (their ``.env`` and relative paths are read there).
        state_dir: where the PIDs, logs and the Prefect home (with its SQLite database) live.
        host: the address the server listens on.
        port: the server's port.
        timeout_s: how long each start may take.
        settings: refit's settings, for the failure alerts' target (None: no alerts installed).
        echo: where progress lines go.

    Returns:
        The stack, also saved to ``state_dir/stack.json``.
    """
    root, state_dir = Path(root).resolve(), Path(state_dir).resolve()
    running = Stack.load(state_dir)
    if running and any(_alive(pid) for pid in running.pids.values()):
        raise StackError(f"the stack in {state_dir} is already up ({running.ui_url}); `refit down` first")
    logs = state_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    api_url = f"http://{host}:{port}/api"
    env = stack_env(root, state_dir, api_url)
    stack = Stack(state_dir=str(state_dir), api_url=api_url, ui_url=env["PREFECT_UI_URL"])
    prefect = _prefect()
    try:
        pid, log = _spawn("server", [*prefect, "server", "start", "--host", host, "--port", str(port)], env, root, logs)
        stack.pids["server"], stack.logs["server"] = pid, log
        stack.save()  # from here on, `refit down` can clean up whatever happens next
        echo(f"starting the Prefect server (pid {pid}) ...")
        _wait_healthy(api_url, pid, log, timeout_s)
        stack.deployments = _create_pools_and_deploy(prefect, env, root, timeout_s, echo)
        if settings is not None:
            alerts = _install_alerts(api_url, settings)
            echo(f"failure alerts: {'installed' if alerts else 'none (no Slack or webhook target configured)'}")
        _start_workers(stack, prefect, env, root, logs)
        _wait_workers(api_url, stack, timeout_s)
    except BaseException:
        echo("start failed; stopping what was started")
        down(state_dir, echo=lambda _line: None)
        raise
    stack.save()
    echo(f"refit is up: the Prefect UI is at {stack.ui_url}")
    return stack


def _create_pools_and_deploy(prefect: list[str], env: dict, root: Path, timeout_s: float, echo) -> list[str]:
    """Create the work pools and deploy ``deployments/prefect.yaml``; returns the deployments' names."""
    for pool in POOLS:
        _run([*prefect, "work-pool", "create", pool, "--type", "process", "--overwrite"], env, root,
             f"creating the {pool} pool", timeout_s)  # fmt: skip
    echo("deploying deployments/prefect.yaml ...")
    out = _run(
        [*prefect, "--no-prompt", "deploy", "--prefect-file", str(deployments_dir() / "prefect.yaml"), "--all"],
        env, root, "prefect deploy", timeout_s,
    )  # fmt: skip
    return sorted(set(_deployed_names(out)))


def _start_workers(stack: Stack, prefect: list[str], env: dict, root: Path, logs: Path) -> None:
    """Start one worker per pool, each saved in the stack as soon as it runs (for `refit down`)."""
    for pool in POOLS:
        name = f"worker-{pool}"
        args = [*prefect, "worker", "start", "--pool", pool, "--type", "process", "--name", f"refit-{pool}"]
        stack.pids[name], stack.logs[name] = _spawn(name, args, env, root, logs)
        stack.save()


def _deployed_names(output: str) -> list[str]:
    # `prefect deploy` prints "Deployment 'flow/name' successfully created with id '...'".
    names = []
    for line in output.splitlines():
        if "Deployment '" in line and "successfully" in line:
            names.append(line.split("Deployment '", 1)[1].split("'", 1)[0])
    return names


def _install_alerts(api_url: str, settings) -> int:
    """The failure automation (deployments/automations.yaml), alerting through the configured
    Slack or webhook target; none is installed without a target."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from refit.notify.automations import install_failure_alerts

    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        return len(install_failure_alerts(settings))


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _stop_tree(pid: int, timeout_s: float) -> list[int]:
    """SIGTERM a process and its descendants, then SIGKILL what is left after ``timeout_s``."""
    import psutil

    try:
        parent = psutil.Process(pid)
        tree = [parent, *parent.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []
    for process in reversed(tree):  # children first: a flow run must not outlive its worker
        with contextlib.suppress(psutil.NoSuchProcess):
            process.send_signal(signal.SIGTERM)
    alive = _wait_stopped(tree, timeout_s)
    for process in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    _wait_stopped(alive, 5)
    return [p.pid for p in tree]


def _wait_stopped(processes: list, timeout_s: float) -> list:
    """Wait until every process has exited, or ``timeout_s``; the ones still running.

    A process that exited but is not reaped yet (a zombie) has stopped. ``psutil.wait_procs``
    counts it as alive until its parent reaps it, and the stack's processes are not ours to reap:
    their parent is whatever adopted them (init, or a container's), which may never do it. Then
    ``refit down`` waited the whole grace for every worker (66 s instead of 8 in the tests)."""
    deadline = time.monotonic() + timeout_s
    running = list(processes)
    while True:
        running = [p for p in running if _alive(p.pid)]
        if not running or time.monotonic() >= deadline:
            return running
        time.sleep(0.05)


def _client(api_url: str):
    """Prefect's own client for the stack's API (it retries a busy server's 503s)."""
    from prefect.client.orchestration import SyncPrefectClient

    return SyncPrefectClient(api=api_url)


def _crash_unfinished(api_url: str, run_ids: list) -> None:
    from prefect.states import Crashed

    message = "refit down stopped its worker before it finished"
    with _client(api_url) as client:
        for run_id in run_ids:
            client.set_flow_run_state(run_id, Crashed(message=message), force=True)


def _unfinished_runs(api_url: str) -> list:
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
        WorkPoolFilter,
        WorkPoolFilterName,
    )
    from prefect.client.schemas.objects import StateType

    with _client(api_url) as client:
        return client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType(t) for t in UNFINISHED]))
            ),
            work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=list(POOLS))),
        )


def down(state_dir: Path, timeout_s: float = 30, echo=print) -> dict:
    """Stop the stack named by ``state_dir/stack.json``: workers, then unfinished runs marked
    Crashed, then the server.

    Returns:
        The PIDs stopped and the flow runs marked Crashed.
    """
    state_dir = Path(state_dir).resolve()
    stack = Stack.load(state_dir)
    if stack is None:
        echo(f"nothing to stop: no {STATE_FILE} in {state_dir}")
        return {"stopped": [], "crashed_runs": []}
    server_up = "server" in stack.pids and _alive(stack.pids["server"])
    in_flight = []
    if server_up:
        try:
            in_flight = _unfinished_runs(stack.api_url)
        except Exception as exc:  # the server is going down anyway; say so and carry on
            echo(f"could not list unfinished runs: {type(exc).__name__}")
    stopped = []
    for role, pid in stack.pids.items():
        if role.startswith("worker-"):
            echo(f"stopping {role} (pid {pid})")
            stopped += _stop_tree(pid, timeout_s)
    crashed = [run.name for run in in_flight]
    if in_flight:
        _crash_unfinished(stack.api_url, [run.id for run in in_flight])
        echo(f"marked Crashed, as their worker was stopped: {', '.join(crashed)}")
    if "server" in stack.pids:
        echo(f"stopping the Prefect server (pid {stack.pids['server']})")
        stopped += _stop_tree(stack.pids["server"], timeout_s)
    (state_dir / STATE_FILE).unlink(missing_ok=True)
    return {"stopped": stopped, "crashed_runs": crashed}


def default_state_dir() -> Path:
    return Path(".refit") / "stack"
