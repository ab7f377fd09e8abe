"""Training the challenger: no retries, and no cache across runs, by design.

The training itself is :func:`refit.training.challenger.train_challenger` (in this process) or
:func:`refit.training.launch.train_in_child` (in a child process); this task only picks one and
adds Prefect's timeout, cache within a run, and run logger.
"""

from __future__ import annotations

from prefect import get_run_logger, task

from refit.core.settings import Settings
from refit.data.snapshots import Snapshot
from refit.tasks import RESUMABLE
from refit.training import challenger, launch
from refit.training.challenger import Challenger


# No retries: a failed training is a result to look at, not to repeat. Cached only within one flow
# run, so that a retried run resumes after a finished training.
@task(name="train-challenger", cache_policy=RESUMABLE, timeout_seconds=6 * 3600)
def train_challenger(settings: Settings, snapshot: Snapshot, champion: dict | None) -> Challenger:
    """Train the challenger, in this process or, with REFIT_TRAIN_IN_CHILD_PROCESS, in a child
    process whose death (out of memory, SIGKILL) fails the run cleanly; with REFIT_TRAIN_PROCESSES
    above 1, in that many data-parallel child processes under torchrun.

    Args:
        settings: refit's settings.
        snapshot: the snapshot to train on.
        champion: the champion's registry row, or None before the first promotion.

    Returns:
        The challenger.
    """
    in_child = settings.train_in_child_process or settings.train_processes > 1
    train = launch.train_in_child if in_child else challenger.train_challenger
    return train(settings, snapshot, champion, logger=get_run_logger())
