"""Training progress for the Prefect logs: a line about every tenth of the run, with the share
done, where in the run it is and how long is left. (A terminal also gets the trainer's own
progress bar, per epoch; a worker's log has no terminal.)"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable


def duration(seconds: float) -> str:
    """A duration as a person reads it: ``45 s``, ``3 min 20 s``, ``1 h 05 min``."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class ProgressLog:
    """Logs training progress with an estimate of the time left, about every ``every`` of the run.

    The estimate is the rate of the steps this process has run so far, applied to the steps left
    (a run that stops early on patience or at its budget ends sooner than it says).

    Args:
        logger: where the lines go (the flow run's logger in a Prefect task).
        steps_per_epoch: optimizer steps in one epoch.
        epochs: the most epochs the run may take.
        every: the share of the run between two lines.
        clock: the time source, in seconds.
    """

    def __init__(
        self,
        logger: logging.Logger,
        steps_per_epoch: int,
        epochs: int,
        every: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger, self.every, self.clock = logger, every, clock
        self.steps_per_epoch, self.epochs = max(1, steps_per_epoch), max(1, epochs)
        self.total = self.steps_per_epoch * self.epochs
        self.started = 0.0
        self.first_done: int | None = None
        self.next_share = every

    def step(self, epoch: int, step: int) -> None:
        """Called after each optimizer step, with the epoch (from 1) and the step in it (from 1)."""
        done = min(self.total, (epoch - 1) * self.steps_per_epoch + step)
        if self.first_done is None:
            # The rate is timed from the first step on: loading the model and choosing the attention
            # layout come before it, and a resumed run starts part-way.
            self.first_done, self.started = done, self.clock()
            if done < self.total:
                return
        share = done / self.total
        if share + 1e-9 < self.next_share and done < self.total:
            return
        self.next_share = (math.floor(share / self.every + 1e-9) + 1) * self.every
        ran = done - self.first_done
        left = (self.clock() - self.started) / max(1, ran) * (self.total - done)
        self.logger.info(
            "training: %d%% (epoch %d of %d, step %d of %d), about %s left",
            round(share * 100), epoch, self.epochs, step, self.steps_per_epoch, duration(left),
        )  # fmt: skip
