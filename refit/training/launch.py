"""Training a challenger in a child process: the launcher.

:func:`train_in_child` runs :func:`refit.training.challenger.train_challenger` in a child process
(``python -m refit.training.launch``), so that a training killed by the kernel (out of memory,
SIGKILL) fails the run cleanly instead of the worker; with REFIT_TRAIN_PROCESSES above 1, in that
many data-parallel processes under ``torchrun``. Here: the settings file the child reads, the
child's command line, the signals and torchrun's failure report read back, and the child's entry
point (:func:`_child_main`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

from refit.core.errors import ConfigError, RefitError
from refit.core.settings import Settings
from refit.data.db import engine_for
from refit.data.devset import devset_for
from refit.data.snapshots import Snapshot, SplitConfig, get_snapshot
from refit.models.distributed import backend_for, die_with_launcher, is_main_rank, process_group
from refit.registry.versions import checkout, new_version
from refit.training.challenger import FIRST_DEVSET_REASON, Challenger, train_challenger

log = logging.getLogger("refit.training")

# The module a child training process runs (python -m ...); the fault injector finds it by this name.
CHILD_MODULE = "refit.training.launch"


class TrainingKilled(RefitError):
    """The training process died from a signal (SIGKILL: out of memory, or killed) before it finished."""


def _settings_file(settings: Settings, folder: Path) -> Path:
    """The settings as a JSON file for the child, without credentials (the child reads those from
    its environment, as the parent did)."""
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


# The champion argument of a child when there is none yet (a version name is never this).
NO_CHAMPION = "none"

# torchrun's failure report: one "exitcode : N (pid: ...)" per failed rank, negative for a signal.
_RANK_EXITCODE = re.compile(r"exitcode\s*:\s*(-?\d+)")
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit)\b")
_RANK_PREFIX = re.compile(r"^\[rank\d+\]:")
# The child's progress and epoch lines, as its logging writes them to its errors (logging's default
# format; under torchrun a rank's lines may carry its prefix)
_PROGRESS_LINE = re.compile(r"^(?:\[rank\d+\]:)?INFO:refit\.training:((?:training: \d+%|epoch \d+: ).*)$")


def train_in_child(
    settings: Settings, snapshot: Snapshot, champion: dict | None, logger: logging.Logger | None = None
) -> Challenger:
    """:func:`train_challenger` in a child process (``python -m refit.training.launch``), or, with
    REFIT_TRAIN_PROCESSES=N above 1, in N data-parallel processes under ``torchrun`` (one per GPU;
    gloo on the CPU), each training the same model on its share of every batch.

    The parent picks the challenger's version, so that every rank trains under the same one, and
    before a data-parallel run creates what its ranks would otherwise race to create: the first dev
    set, the champion's local copy. The child reports its progress in a status file beside its
    settings (``training`` once it trains), and its challenger as the last line of its output
    (rank 0's under torchrun; the other ranks write nothing).

    Args:
        settings: refit's settings (the child gets them as a file, without credentials).
        snapshot: the snapshot to train on.
        champion: the champion's registry row, or None before the first promotion.
        logger: where progress goes (the task passes Prefect's run logger).

    Returns:
        The challenger the child trained.

    Raises:
        ConfigError: REFIT_TRAIN_PROCESSES asks for what this worker or these settings cannot do.
        TrainingKilled: the child, or one of its ranks, died from a signal.
        RefitError: the child failed otherwise.
    """
    logger = logger or log
    processes = settings.train_processes
    if processes > 1:
        _check_data_parallel(settings)
        _prepare_shared_inputs(settings, snapshot, champion)
    path = _settings_file(settings, Path(settings.work_dir) / "training-process")
    status = path.with_suffix(".status")
    champion_version = champion["version"] if champion else NO_CHAMPION
    arguments = [str(path), str(snapshot.id), new_version(), champion_version, str(status)]
    started = time.monotonic()
    try:
        returncode, out, err = _run_child(_child_command(processes, arguments), on_line=_forward_progress(logger))
    finally:
        path.unlink(missing_ok=True)
        status.unlink(missing_ok=True)
    challenger = _read_challenger(returncode, out, err, processes, time.monotonic() - started)
    if processes > 1:
        logger.info("trained %s in %d processes (DDP, %s)", challenger.version, processes, backend_for(settings.device))
    else:
        logger.info("trained %s in a child process", challenger.version)
    return challenger


def _child_command(processes: int, arguments: list[str]) -> list[str]:
    """The child's command line: ``python -m`` the child module, under torchrun above one process."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    return [*(launcher if processes > 1 else [sys.executable]), "-m", CHILD_MODULE, *arguments]


def _run_child(command: list[str], on_line: Callable[[str], None] | None = None) -> tuple[int, str, str]:
    """Run the child to its end; returns its exit status (negative: the signal that ended it), its
    output and its errors. Each line the child writes to its errors is also given to ``on_line`` as
    it comes. Whatever interrupts the wait (the task's timeout) ends the child too."""
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    errors: list[str] = []

    def read_errors() -> None:
        for line in child.stderr:
            errors.append(line)
            if on_line is not None:
                on_line(line.rstrip("\n"))

    reader = threading.Thread(target=read_errors, name="training-child-stderr", daemon=True)
    reader.start()
    try:
        out = child.stdout.read()
        child.wait()
        reader.join()
    finally:
        if child.poll() is None:  # the task's timeout interrupted the wait: the child goes too
            child.kill()  # and a torchrun launcher's ranks with it (die_with_launcher)
            child.wait()
    return child.returncode, out, "".join(errors)


def _forward_progress(logger: logging.Logger) -> Callable[[str], None]:
    """What passes a child's training progress and epoch lines on to the run's log (the child logs
    them to its errors; the rest of those stay there, for the failure message)."""

    def forward(line: str) -> None:
        match = _PROGRESS_LINE.match(line)
        if match:
            logger.info("%s", match.group(1))

    return forward


def _read_challenger(returncode: int, out: str, err: str, processes: int, seconds: float) -> Challenger:
    """The challenger a finished child printed last, or the error that says why there is none.

    Raises:
        TrainingKilled: the child, or one of its ranks, died from a signal.
        RefitError: the child failed otherwise, or printed nothing.
    """
    killed = signal.Signals(-returncode).name if returncode < 0 else None
    if processes > 1 and killed is None and returncode != 0:
        killed = _rank_signal(err)
    if killed:
        raise TrainingKilled(f"the training process was killed ({killed}) {seconds:.0f} s after it started")
    lines = out.strip().splitlines()
    if returncode != 0 or not lines:
        last = _failure_line(err) if processes > 1 else (err.strip().splitlines() or ["no output"])[-1]
        raise RefitError(f"the training process exited with status {returncode}: {last}")
    data = json.loads(lines[-1])
    return Challenger(**{**data, "folder": Path(data["folder"])})


def _check_data_parallel(settings: Settings) -> None:
    """Refuse, before anything starts, a data-parallel run that could not train."""
    import torch

    n = settings.train_processes
    if settings.adversarial != "none" or settings.prune_heads:
        raise ConfigError(
            f"REFIT_TRAIN_PROCESSES={n}: adversarial training (REFIT_ADVERSARIAL) and head pruning"
            " (REFIT_PRUNE_HEADS) train in one process"
        )
    if backend_for(settings.device) == "nccl" and n > torch.cuda.device_count():
        raise ConfigError(
            f"REFIT_TRAIN_PROCESSES={n}, but this worker has {torch.cuda.device_count()} GPU(s): one process per GPU"
        )


def _prepare_shared_inputs(settings: Settings, snapshot: Snapshot, champion: dict | None) -> None:
    """Create, once, what every rank of a data-parallel run reads: the dev set of the snapshot (two
    ranks would record two versions), and the warm start's local copy of the champion (two would download it
    into the same folder). The ranks then find both and only read them."""
    engine = engine_for(settings)
    split = SplitConfig.from_settings(settings)
    devset_for(engine, split, snapshot, FIRST_DEVSET_REASON, grow=settings.devset_grow)
    if champion is not None and settings.warm_start:
        checkout(settings, champion["version"])


def _rank_signal(err: str) -> str | None:
    """The signal a rank died from (the kernel's SIGKILL first), read from torchrun's failure report;
    None when every failed rank exited on its own. A SIGTERM beside an ordinary failure is torchrun
    stopping the other ranks, not a kill."""
    report = err[err.rfind("Failures:") :] if "Failures:" in err else ""
    codes = [int(code) for code in _RANK_EXITCODE.findall(report)]
    deaths = [-code for code in codes if code < 0]
    if not deaths or (set(deaths) == {signal.SIGTERM} and any(code > 0 for code in codes)):
        return None
    number = next((n for n in deaths if n != signal.SIGTERM), deaths[0])
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _failure_line(err: str) -> str:
    """The line that says why a torchrun training failed: the last exception a rank printed (without
    torch's ``[rankN]:`` prefix), rather than the last line of torchrun's own report."""
    lines = [_RANK_PREFIX.sub("", line).strip() for line in err.strip().splitlines() if line.strip()]
    errors = [line for line in lines if _EXCEPTION_LINE.match(line) and "ChildFailedError" not in line]
    return (errors or lines or ["no output"])[-1]


def _child_main(settings_path: str, snapshot_id: str, version: str, champion_version: str, status_path: str) -> None:
    """The child: train the challenger ``version`` on the snapshot, from the champion the parent saw.

    Under torchrun it is one rank of the process group: every rank reads the same rows and settings
    and trains the same model; rank 0 alone reports progress, writes the checkpoint and prints the
    challenger.
    """
    import torch.distributed as dist

    from refit.core.settings import load_settings
    from refit.registry.table import get_version

    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    settings = load_settings(**json.loads(Path(settings_path).read_text()))
    launched = dist.is_torchelastic_launched()
    if launched:
        die_with_launcher()
    with process_group(settings.device) if launched else nullcontext():
        engine = engine_for(settings)
        snapshot = get_snapshot(engine, int(snapshot_id))
        champion = None
        if champion_version != NO_CHAMPION:  # the row the parent's task was given, on every rank
            champion = {k: v for k, v in get_version(engine, champion_version).items() if k != "log"}
        main = is_main_rank()
        if main:
            Path(status_path).write_text("training")
        challenger = train_challenger(settings, snapshot, champion, version=version)
        if main:
            print(json.dumps({**challenger.__dict__, "folder": str(challenger.folder)}), flush=True)


if __name__ == "__main__":
    if len(sys.argv) != 6:
        sys.exit(
            f"usage: python -m {CHILD_MODULE} SETTINGS_JSON SNAPSHOT_ID VERSION CHAMPION_VERSION|{NO_CHAMPION}"
            " STATUS_FILE"
        )
    _child_main(*sys.argv[1:])
