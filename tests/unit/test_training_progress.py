"""Training progress in the Prefect logs: a line about every tenth of the run, saying how far it
is and how long is left, from the rate of the steps run so far."""

import logging

from refit.training.progress import ProgressLog, duration


class Lines(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def _logger():
    logger = logging.getLogger("test-training-progress")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    logger.handlers = [handler := Lines()]
    return logger, handler


def test_a_line_each_tenth_with_the_time_left_at_the_rate_so_far():
    now = [0.0]
    logger, handler = _logger()
    progress = ProgressLog(logger, steps_per_epoch=20, epochs=3, clock=lambda: now[0])
    for epoch in (1, 2, 3):
        for step in range(1, 21):
            now[0] += 2.0  # two seconds a step
            progress.step(epoch, step)
    assert len(handler.lines) == 10
    assert handler.lines[0] == "training: 10% (epoch 1 of 3, step 6 of 20), about 1 min 48 s left"
    assert handler.lines[4] == "training: 50% (epoch 2 of 3, step 10 of 20), about 1 min 00 s left"
    assert handler.lines[-1] == "training: 100% (epoch 3 of 3, step 20 of 20), about 0 s left"


def test_a_resumed_run_estimates_from_its_own_steps():
    now = [100.0]
    logger, handler = _logger()
    progress = ProgressLog(logger, steps_per_epoch=10, epochs=2, clock=lambda: now[0])
    for step in range(1, 11):  # epoch 1 ran before the restart: this process starts at epoch 2
        now[0] += 1.0
        progress.step(2, step)
    # the time left is at this run's own rate, from its first step on
    assert handler.lines[0] == "training: 60% (epoch 2 of 2, step 2 of 10), about 8 s left"
    assert handler.lines[-1].startswith("training: 100%")


def test_durations_read_as_a_person_says_them():
    assert [duration(s) for s in (4.4, 59.6, 200, 3725)] == ["4 s", "1 min 00 s", "3 min 20 s", "1 h 02 min"]


def test_a_one_step_run_still_says_it_finished():
    logger, handler = _logger()
    ProgressLog(logger, steps_per_epoch=1, epochs=1, clock=lambda: 5.0).step(1, 1)
    assert handler.lines == ["training: 100% (epoch 1 of 1, step 1 of 1), about 0 s left"]


def test_a_child_trainings_progress_and_epoch_lines_reach_the_runs_log_as_they_come():
    import sys

    from refit.training.launch import _forward_progress, _run_child

    logger, handler = _logger()
    child = (
        "import logging, sys\n"
        "logging.basicConfig(level=logging.INFO, stream=sys.stderr)\n"
        "log = logging.getLogger('refit.training')\n"
        "log.info('training: 50% (epoch 1 of 2, step 3 of 6), about 4 s left')\n"
        "log.info('epoch 1: train loss 0.0954, dev mse 0.0637 (0.4 s)')\n"
        "log.info('recipe auto: {}')\n"
        "logging.getLogger('other').info('training: 99% (elsewhere)')\n"
        'print(\'{"version": "v1"}\')\n'
    )
    returncode, out, err = _run_child([sys.executable, "-c", child], on_line=_forward_progress(logger))
    assert (returncode, out.strip()) == (0, '{"version": "v1"}')
    assert handler.lines == [
        "training: 50% (epoch 1 of 2, step 3 of 6), about 4 s left",
        "epoch 1: train loss 0.0954, dev mse 0.0637 (0.4 s)",
    ]
    assert "recipe auto" in err  # the child's other lines stay in its errors, for a failure message
