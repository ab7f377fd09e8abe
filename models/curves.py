"""A run's curves: TensorBoard event files while it trains, and ``training_curve.png`` in its checkpoint."""

from __future__ import annotations

from pathlib import Path

CURVE_FILE = "training_curve.png"


class TensorBoardLog:
    """TensorBoard event files of a run: per-step loss and learning rate, per-epoch dev metrics.

    Without a folder every method does nothing, so the loop logs unconditionally.
    """

    def __init__(self, folder: Path | None):
        self.writer = None
        if folder is not None:
            # tensorboard is optional and slow to import: only runs that ask for event files load it.
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(folder))

    def step(self, loss: float, learning_rate: float, step: int) -> None:
        """Record one optimizer step's mean loss and the learning rate it used.

        Args:
            loss: the step's mean loss.
            learning_rate: the rate it used.
            step: the optimizer step's number.
        """
        if self.writer is not None:
            self.writer.add_scalar("train/loss", loss, step)
            self.writer.add_scalar("train/learning_rate", learning_rate, step)

    def epoch(self, train_loss: float, metrics: dict[str, float], epoch: int) -> None:
        """Record an epoch's mean training loss and its dev metrics, and flush them to disk.

        Args:
            train_loss: the epoch's mean training loss.
            metrics: its dev metrics, by name.
            epoch: the epoch's number.
        """
        if self.writer is not None:
            self.writer.add_scalar("train/epoch_loss", train_loss, epoch)
            for name, value in metrics.items():
                self.writer.add_scalar(f"dev/{name}", value, epoch)
            self.writer.flush()

    def close(self) -> None:
        """Close the event file."""
        if self.writer is not None:
            self.writer.close()


def save_training_curve(history: list[dict], metric: str, path: Path) -> Path | None:
    """Train loss and the dev metric per epoch as a PNG (None when matplotlib is missing).

    Args:
        history: the run's per-epoch records (``epoch``, ``train_loss``, ``dev_<metric>``).
        metric: the dev metric to draw.
        path: where the PNG goes.

    Returns:
        ``path``, or None when matplotlib is not installed.
    """
    try:
        from matplotlib.figure import Figure  # matplotlib is optional: without it a checkpoint has no plot
    except ImportError:
        return None
    epochs = [h["epoch"] for h in history]
    figure = Figure(figsize=(6, 3.2), dpi=100)
    loss_axis = figure.add_subplot(1, 1, 1)
    loss_axis.plot(epochs, [h["train_loss"] for h in history], "o-", color="tab:blue", label="train loss")
    loss_axis.set_xlabel("epoch")
    loss_axis.set_ylabel("train loss", color="tab:blue")
    metric_axis = loss_axis.twinx()
    metric_axis.plot(epochs, [h[f"dev_{metric}"] for h in history], "s--", color="tab:orange", label=f"dev {metric}")
    metric_axis.set_ylabel(f"dev {metric}", color="tab:orange")
    figure.suptitle("training curve")
    figure.tight_layout()
    figure.savefig(path)
    return path
