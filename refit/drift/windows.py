"""The two windows a drift check compares, read from Postgres: the champion's training rows (the
reference) and the feedback since (the current window), and the time-stratified sample of each.

Both windows are sampled to a fixed number of rows, evenly in time, so that the cost is bounded
and a test's sensitivity does not grow with the window.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
from sqlalchemy import text

from refit.data.snapshots import get_snapshot, read_feedback, snapshot_rows


def reference_and_current(
    engine,
    split,
    champion: dict,
    upto: int | None = None,
    window_days: float | None = None,
    now=None,
    max_train_rows: int | None = None,
):
    """The champion's training rows, and the current window.

    The current window is every row that arrived after the champion's snapshot or, with
    ``window_days``, every row whose feedback time is within that many days before ``now``.
    With ``max_train_rows`` (``REFIT_MAX_TRAIN_ROWS``) the champion trained on the newest that
    many training rows only, and those are the reference.
    """
    trained_on = get_snapshot(engine, champion["snapshot_id"])
    reference = snapshot_rows(engine, trained_on, split)
    reference = reference[reference["split"] == "train"]
    if max_train_rows is not None and len(reference) > max_train_rows:
        reference = reference.sort_values("id").tail(max_train_rows)
    if window_days is None:
        return reference, read_feedback(engine, after=trained_on.watermark_to, upto=upto)
    since = (now or datetime.now(timezone.utc)) - timedelta(days=window_days)
    return reference, read_window(engine, since, upto)


def read_window(engine, since: datetime, upto: int | None = None) -> pd.DataFrame:
    """Feedback whose ``created_at`` is at or after ``since`` (late arrivals included), in id order."""
    with engine.connect() as conn:
        first = conn.execute(text("SELECT min(id) FROM feedback WHERE created_at >= :s"), {"s": since}).scalar()
    if first is None:
        return read_feedback(engine, after=0, upto=0)
    frame = read_feedback(engine, after=int(first) - 1, upto=upto)
    return frame[frame["created_at"] >= pd.Timestamp(since)].reset_index(drop=True)


def time_stratified_sample(frame: pd.DataFrame, cap: int) -> pd.DataFrame:
    """At most ``cap`` rows, evenly spaced in feedback time (ingest order when there is no time),
    so every part of the window is represented and the sample size does not grow with it."""
    if len(frame) <= cap:
        return frame
    order = "created_at" if "created_at" in frame else ("id" if "id" in frame else None)
    if order is not None:
        frame = frame.sort_values(order, kind="stable")
    positions = np.linspace(0, len(frame) - 1, cap).round().astype(int)
    return frame.iloc[np.unique(positions)]


def read_served(
    engine, version: str, task: str, labels: list[str] | None, since=None, until=None, cap: int | None = None
) -> np.ndarray:
    """The answers ``refit serve`` logged for ``version`` (``REFIT_SERVE_LOG_PREDICTIONS``), in
    ``[since, until)`` of their logged time: class probabilities (rows by ``labels``) or scores.

    With ``cap``, the newest ``cap`` answers. Shadow answers of a rollout's candidate are logged
    under the candidate's version, so a version's answers are its own.
    """
    query = (
        "SELECT satisfaction, probabilities FROM prediction_log WHERE model_version = :v"
        " AND (CAST(:since AS timestamptz) IS NULL OR logged_at >= :since)"
        " AND (CAST(:until AS timestamptz) IS NULL OR logged_at < :until) ORDER BY id DESC"
    )
    if cap is not None:
        query += f" LIMIT {int(cap)}"
    with engine.connect() as conn:
        rows = conn.execute(text(query), {"v": version, "since": since, "until": until}).all()
    rows = rows[::-1]
    if task == "regression":
        return np.array([r[0] for r in rows if r[0] is not None], dtype=float)
    names = list(labels or [])
    probs = [json.loads(r[1]) if isinstance(r[1], str) else r[1] for r in rows]
    values = np.array([[p[name] for name in names] for p in probs if p], dtype=float)
    return values.reshape(-1, len(names))
