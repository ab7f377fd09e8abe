"""``refit estimate``: the champion's performance estimated on a window before its labels are in."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import typer

from refit.cli._shared import JsonOpt, current_settings, emit, migrated_engine


def estimate(
    since: Annotated[
        datetime | None, typer.Option("--since", help="Window start (feedback time, or logged time with --served).")
    ] = None,
    until: Annotated[datetime | None, typer.Option("--until", help="Window end, exclusive (default: now).")] = None,
    snapshot: Annotated[int | None, typer.Option("--snapshot", help="The window is this snapshot's new rows.")] = None,
    served: Annotated[
        bool, typer.Option("--served", help="The window is the champion's served answers (prediction_log).")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Estimate the champion's metrics on a window, with an interval, before its labels are in.

    The window is the feedback since the champion (default), a time range (`--since`, `--until`),
    a snapshot's new rows (`--snapshot`), or the answers `refit serve` logged for the champion
    (`--served`, with `REFIT_SERVE_LOG_PREDICTIONS=true`). It is calibrated on the gate's frozen
    dev set and corrected for how the window differs from it; where some of the window's labels
    are in, the realized value stands beside the estimate.
    """
    import numpy as np

    from refit.core.errors import InputError
    from refit.data.devset import current_devset, dev_rows
    from refit.data.snapshots import SplitConfig, get_snapshot, read_feedback
    from refit.drift.check import load_champion
    from refit.drift.estimate import METRICS, dev_calibration, estimate_performance, numeric_targets
    from refit.drift.policy import DriftPolicy
    from refit.drift.signals import champion_predict
    from refit.drift.windows import read_served, read_window, time_stratified_sample
    from refit.registry.table import require_champion

    since, until = _utc(since), _utc(until)
    settings = current_settings()
    engine = migrated_engine(settings)
    policy = DriftPolicy.from_settings(settings)
    split = SplitConfig.from_settings(settings)
    record = require_champion(engine)
    devset = current_devset(engine)
    if devset is None:
        raise InputError("no dev set yet: the estimate is calibrated on the gate's dev set (refit devset refresh)")
    champion = load_champion(settings, record)
    task, labels = champion.task, champion.labels
    dev = dev_rows(engine, devset, split)
    window_true = win_emb = embedded = None
    if served:
        window_pred = read_served(engine, record["version"], task, labels, since, until, policy.performance_rows)
        described = f"{len(window_pred)} served answers of {record['version']}"
    else:
        if snapshot is not None:
            shot = get_snapshot(engine, snapshot)
            rows = read_feedback(engine, after=shot.watermark_from, upto=shot.watermark_to)
            described = f"snapshot {snapshot}'s {len(rows)} new rows"
        elif since is not None:
            rows = read_window(engine, since)
            described = f"feedback since {since:%Y-%m-%d %H:%M}"
        else:
            champion_snapshot = get_snapshot(engine, record["snapshot_id"])
            rows = read_feedback(engine, after=champion_snapshot.watermark_to)
            described = f"feedback since the champion {record['version']}"
        if until is not None and len(rows):
            rows = rows[rows["created_at"] < until]
            described += f" until {until:%Y-%m-%d %H:%M}"
        rows = time_stratified_sample(rows, policy.performance_rows).reset_index(drop=True)
        window_pred = champion_predict(champion, rows) if len(rows) else np.zeros((0, len(labels or [1])))
        window_true = numeric_targets(rows, task, labels).to_numpy(dtype=float)
        if len(rows) >= policy.min_rows:
            sample = time_stratified_sample(rows, policy.embedding_rows)
            embedded = sample.index.to_numpy()
            win_emb = champion.embed(sample["text"].astype(str).tolist())
    dev_true, dev_pred, dev_emb = dev_calibration(champion, dev, task, labels, policy, embed=win_emb is not None)
    result = estimate_performance(
        task,
        dev_true,
        dev_pred,
        window_pred,
        dev_emb,
        win_emb,
        window_true,
        labels,
        embedded,
        min_rows=policy.min_rows,
        resamples=policy.bootstrap_rounds,
        loss_confidence=policy.performance_confidence,
    )
    data = {"champion": record["version"], "window": described, "dev_set": devset.version, **result.as_dict()}
    lines = [f"champion {record['version']} on {described} (dev set v{devset.version}, {result.dev_rows} rows):"]
    lines += [f"  {result.line(metric)}" for metric in METRICS[task]]
    emit(data, as_json, "\n".join(lines))


def _utc(moment: datetime | None) -> datetime | None:
    """A time given without a zone read as UTC (feedback times are stored in UTC)."""
    from datetime import timezone

    return moment.replace(tzinfo=timezone.utc) if moment is not None and moment.tzinfo is None else moment
