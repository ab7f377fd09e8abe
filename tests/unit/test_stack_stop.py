"""How ``refit down`` waits for the stack's processes: one that exited but that nobody reaps yet
(a zombie whose parent, or the init that adopted it, does not reap) has stopped, at once; one that
still runs is waited for and reported, to be killed."""

import subprocess
import sys
import time

import psutil

from refit.ops.stack import _wait_stopped

UNREAPED_CHILD = (
    "import subprocess, sys, time\n"
    "child = subprocess.Popen([sys.executable, '-c', 'pass'])\n"
    "print(child.pid, flush=True)\n"
    "time.sleep(60)  # never reaps it\n"
)


def test_an_exited_process_nobody_reaps_counts_as_stopped_at_once():
    parent = subprocess.Popen([sys.executable, "-c", UNREAPED_CHILD], stdout=subprocess.PIPE, text=True)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        zombie = psutil.Process(int(parent.stdout.readline()))
        deadline = time.monotonic() + 10
        while zombie.status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
            time.sleep(0.05)
        assert zombie.status() == psutil.STATUS_ZOMBIE
        started = time.monotonic()
        assert _wait_stopped([zombie], 10) == []
        assert time.monotonic() - started < 2  # psutil.wait_procs waited the whole 10 s here
        left = _wait_stopped([zombie, psutil.Process(sleeper.pid)], 0.3)
        assert [p.pid for p in left] == [sleeper.pid]
    finally:
        for process in (parent, sleeper):
            process.kill()
            process.wait()
