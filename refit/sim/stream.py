"""The feedback a backtest replays: scenario streams from the demo's generator, feedback files,
and the steps (windows of feedback time) they are cut into."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from refit.core.errors import InputError

SCENARIOS = ("steady", "gradual", "sudden", "seasonal")
DEFAULT_START = datetime(2025, 1, 6, tzinfo=timezone.utc)


def shifted_share(scenario: str, step: int, steps: int) -> float:
    """The share of a step's feedback drawn from the shifted regime.

    ``steady``: none. ``sudden``: all of it from 40% of the way in. ``gradual``: a linear ramp
    from a quarter to three quarters of the way. ``seasonal``: a quarterly season that peaks at
    80% shifted.
    """
    if scenario not in SCENARIOS:
        raise InputError(f"unknown scenario {scenario!r}; expected one of {', '.join(SCENARIOS)}")
    position = step / max(steps, 1)
    if scenario == "steady":
        return 0.0
    if scenario == "sudden":
        return 1.0 if position >= 0.4 else 0.0
    if scenario == "gradual":
        return float(np.clip((position - 0.25) / 0.5, 0.0, 1.0))
    period = max(steps / 4, 2)  # seasonal: four seasons over the run
    return 0.4 * (1 - math.cos(2 * math.pi * step / period))


def scenario_stream(
    scenario: str,
    rows: int = 50_000,
    steps: int = 52,
    step_days: float = 7.0,
    start: datetime = DEFAULT_START,
    seed: int = 0,
    noise: float = 0.1,
) -> pd.DataFrame:
    """A timestamped feedback stream from the demo's generator (:mod:`refit.synth`).

    Args:
        scenario: one of :data:`SCENARIOS` (see :func:`shifted_share`).
        rows: rows over the whole stream, spread evenly over the steps.
        steps: how many steps of ``step_days`` the stream covers.
        start: when the first step begins.
        seed: the same seed gives the same stream.
        noise: share of ratings shuffled among themselves (real satisfaction is not fixed by the
            words, as it is in the generator).
    """
    from refit.ops.synth import generate_feedback
    from refit.sim.scenarios import _shuffle_ratings

    rng = np.random.default_rng(seed)
    frames = []
    per_step = np.full(steps, rows // steps)
    per_step[: rows % steps] += 1
    for step, n in enumerate(per_step):
        shifted = int(round(n * shifted_share(scenario, step, steps)))
        part = generate_feedback(n - shifted, seed=seed * 10_000 + step, id_prefix=f"{scenario}-b{step}")
        part += generate_feedback(shifted, seed=seed * 10_000 + step, shifted=True, id_prefix=f"{scenario}-s{step}")
        part = _shuffle_ratings(part, noise, seed * 10_000 + step) if noise and part else part
        offsets = np.sort(rng.uniform(0, step_days * 86_400, len(part)))
        begin = start + timedelta(days=step * step_days)
        for row, offset in zip(part, offsets, strict=True):
            row["created_at"] = (begin + timedelta(seconds=float(offset))).isoformat()
        frames.append(pd.DataFrame(part))
    frame = pd.concat(frames, ignore_index=True)
    frame["created_at"] = pd.to_datetime(frame["created_at"], utc=True)
    return frame.sort_values("created_at", kind="stable").reset_index(drop=True)


def load_stream(path: Path) -> pd.DataFrame:
    """A feedback file (CSV, JSONL or Parquet) with a ``created_at`` column, in feedback-time order."""
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            frame = pd.read_parquet(path)
        elif suffix in (".jsonl", ".ndjson", ".json"):
            frame = pd.read_json(path, lines=True, dtype=False)
        else:
            frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read {path}: {exc}") from None
    if "created_at" not in frame:
        raise InputError(f"{path} has no created_at column: a simulation replays feedback by its time")
    times = pd.to_datetime(frame["created_at"], utc=True, errors="coerce", format="mixed")
    if times.isna().all():
        raise InputError(f"{path}: no parseable created_at")
    frame = frame.assign(created_at=times).dropna(subset=["created_at"])
    return frame.sort_values("created_at", kind="stable").reset_index(drop=True)


@dataclass
class Step:
    index: int
    start: datetime
    end: datetime
    feedback: pd.DataFrame


def steps_of(stream: pd.DataFrame, step_days: float, start: datetime | None = None, warmup: int = 1) -> list[Step]:
    """The stream cut into consecutive windows of feedback time (empty ones kept).

    Args:
        stream: the feedback, with ``created_at``.
        step_days: each window's width, in days.
        start: where the first window starts (default: the day of the first feedback).
        warmup: the first that many windows are one step 0, the history a first champion is
            trained on before the replay (so every policy starts from the same, realistic champion).

    Returns:
        The steps, in order.
    """
    begin = pd.Timestamp(start or stream["created_at"].min()).floor("D")
    width = pd.Timedelta(days=step_days)
    index = ((stream["created_at"] - begin) // width).astype(int)
    steps = []
    for i in range(int(index.max()) + 1 if len(stream) else 0):
        steps.append(
            Step(
                i,
                (begin + i * width).to_pydatetime(),
                (begin + (i + 1) * width).to_pydatetime(),
                stream[index == i].reset_index(drop=True),
            )
        )
    if warmup > 1 and len(steps) > warmup:
        head = steps[:warmup]
        history = pd.concat([s.feedback for s in head], ignore_index=True)
        steps = [Step(0, head[0].start, head[-1].end, history), *steps[warmup:]]
    return steps
