"""Every Prefect task has a timeout; I/O retries with backoff; training never retries."""

import importlib
import pkgutil

from prefect import Task

from refit import tasks
from refit.tasks import RESUMABLE


def all_tasks() -> dict[str, Task]:
    found = {}
    for module in pkgutil.iter_modules(tasks.__path__):
        loaded = importlib.import_module(f"refit.tasks.{module.name}")
        found.update({t.name: t for t in vars(loaded).values() if isinstance(t, Task)})
    return found


def test_every_task_has_a_timeout():
    found = all_tasks()
    assert len(found) >= 15
    assert [name for name, t in found.items() if not t.timeout_seconds] == []


def test_io_retries_with_backoff_and_training_never_retries():
    found = all_tasks()
    for name in ("preflight", "pull-new-feedback", "load-snapshot", "upload-checkpoint"):
        assert found[name].retries == 3, name
        assert found[name].retry_delay_seconds == [2, 5, 15], name
    # the record retries a lost connection inside the task: a failed Prefect attempt inside the
    # publish transaction would roll the upload back even when the retry succeeds
    from refit.tasks.publish import RECORD_RETRY_DELAYS

    assert found["record-decision"].retries == 0 and RECORD_RETRY_DELAYS == (2, 5, 15)
    assert found["start-rollout"].retries == 0  # inside the same transaction, for the same reason
    # a rollout step's reads and moves are I/O; each move is a compare-and-swap, so a retry is safe
    for name in ("read-live-rollout", "gather-live-evidence", "advance-rollout", "promote-rollout", "stop-rollout"):
        assert found[name].retries == 3, name
    assert found["train-challenger"].retries == 0
    assert found["gate"].retries == 0


def test_a_retried_run_reuses_only_its_own_finished_steps():
    found = all_tasks()
    for name in ("pull-new-feedback", "check-drift", "train-challenger", "gate"):
        assert found[name].cache_policy == RESUMABLE, name  # keyed by the flow run's id
    for name in ("upload-checkpoint", "record-decision", "ingest"):
        assert found[name].cache_policy != RESUMABLE, name
