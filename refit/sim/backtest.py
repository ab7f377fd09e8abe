"""``refit simulate``: backtest retraining policies by replaying a feedback stream through the
real ``retrain`` flow on a simulated clock.

Each policy gets its own sandbox (:mod:`refit.sim.sandbox`): a Postgres schema, its own store
prefix and work folder. For every step (a day or a week of feedback, by feedback time) and every
policy (:mod:`refit.sim.replay`):

1. the then-champion scores the step's labelled feedback before it is revealed: the **online
   quality** a user would have seen;
2. the step's feedback is ingested (a CSV through ``refit ingest``'s code path);
3. the ``retrain`` flow of ``flows/retrain.py`` runs on the sandbox's settings, its drift check
   dated at the step's end: pull, drift, train, gate, approval, upload, record, notifications;
4. the invariants are checked (:mod:`refit.sim.invariants`).

Policies (:mod:`refit.sim.policies`): ``never`` (one first model, then never again),
``schedule:K`` (every K steps), ``drift`` (whenever the drift check says retrain),
``drift:N/M[:COOLDOWN]`` (drift seen in N of the last M checks, and no retrain within the cooldown,
e.g. ``drift:2/3:14d``).

Faults are injected by :mod:`refit.sim.faults` from outside the flow, through the hooks of
:class:`refit.sim.replay.NoFaults`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from refit.sim.invariants import FAILED
from refit.sim.policies import Policy
from refit.sim.replay import NoFaults, run_step
from refit.sim.sandbox import drop_sandbox, open_sandbox
from refit.sim.stream import load_stream, scenario_stream, steps_of

# Training and drift sizes for the tiny model: a year of weekly steps in minutes on 2 cores.
# Settings an operator set explicitly (REFIT_* variables) win over these.
FAST_SETTINGS = {
    "epochs": 3,
    "batch_size": 32,
    "learning_rate": 1e-3,
    "max_length": 64,
    "patience": 1,
    "num_threads": 1,
    "max_train_rows": 3000,
    "drift_min_rows": 50,
    "drift_sample_cap": 600,
    "drift_embedding_rows": 300,
    "drift_embeddings_picture": False,
    "drift_performance_rows": 1000,
    "drift_bootstrap_rounds": 100,
    "gate_resamples": 300,
    "gate_first_baselines": ["trivial"],
}


def simulate(
    base,
    stream: pd.DataFrame,
    policies: list[Policy],
    step_days: float = 7.0,
    *,
    run_id: str | None = None,
    work_dir: Path | None = None,
    faults: NoFaults | None = None,
    devset_every: int | None = 4,
    warmup: int = 1,
    keep: bool = False,
    on_step: Callable[[dict], None] | None = None,
) -> dict:
    """Replay ``stream`` through the loop once per policy, each in its own sandbox.

    Args:
        base: refit's settings (database, store, training); each sandbox derives its own.
        stream: timestamped feedback (:func:`scenario_stream` or :func:`load_stream`).
        policies: the policies to compare.
        step_days: the step (1 for a day, 7 for a week).
        run_id: names the schemas and store prefixes (default: from the clock).
        work_dir: where deliveries and checkpoints go (default: the settings' work dir).
        faults: the fault injector (default: none).
        devset_every: refresh the gate's dev set every that many steps (None: never, as with no
            scheduled ``refit devset refresh``).
        warmup: steps of history the first champion is trained on (see :func:`steps_of`).
        keep: keep the sandboxes' schemas after the run.
        on_step: called with every step's record.

    Returns:
        ``{"steps": [...], "summary": {policy: {...}}, "table": markdown, ...}``.
    """
    faults = faults or NoFaults()
    run_id = run_id or datetime.now(timezone.utc).strftime("%m%d%H%M%S")
    work_dir = Path(work_dir or Path(base.work_dir) / "sim" / run_id)
    steps = steps_of(stream, step_days, warmup=warmup)
    started = time.perf_counter()
    records: list[dict] = []
    for policy in policies:
        box = open_sandbox(base, policy, run_id, work_dir, overrides=faults.sandbox_overrides())
        try:
            for step in steps:
                record = run_step(box, step, faults, devset_every)
                records.append(record)
                if on_step:
                    on_step(record)
        finally:
            if not keep:
                drop_sandbox(box)
    summary = {policy.name: summarize([r for r in records if r["policy"] == policy.name]) for policy in policies}
    return {
        "run_id": run_id,
        "steps": records,
        "summary": summary,
        "table": summary_table(summary),
        "seconds": round(time.perf_counter() - started, 1),
        "rows": len(stream),
        "step_days": step_days,
        "violations": sum(len(r["violations"]) for r in records),
    }


# --- reporting ----------------------------------------------------------------------------------


def summarize(records: list[dict]) -> dict:
    """One policy's table row from its step records."""
    from refit.models.metrics import DIRECTION

    cycles = [c for r in records for c in r["cycles"]]
    scored = [r["online"] for r in records if r["online"]]
    outcomes = [c["outcome"] for c in cycles if c.get("retrain")]
    row = {
        "retrains": len(outcomes),
        "promotions": outcomes.count("promoted"),
        "rejections": outcomes.count("rejected") + outcomes.count("superseded"),
        "failures": outcomes.count(FAILED),
        "train_seconds": round(sum(c.get("train_seconds", 0) for c in cycles), 1),
        "train_samples": int(sum(c.get("train_samples", 0) for c in cycles)),
        "violations": sum(len(r["violations"]) for r in records),
        "scored_steps": len(scored),
    }
    if scored:
        metric = scored[0]["metric"]
        values = np.array([s["value"] for s in scored])
        weights = np.array([s["rows"] for s in scored])
        higher = DIRECTION[metric]
        sign = 1.0 if higher else -1.0
        best = np.array([s.get("best", s["value"]) for s in scored])
        row.update(
            metric=metric,
            mean=float(values.mean()),
            worst=float(values.min() if higher else values.max()),
            weighted=float(np.average(values, weights=weights)),
            gap_to_best=float(np.mean(sign * (best - values))),
            final_gap_to_best=float(sign * (best[-1] - values[-1])),
            worse_promotions=worse_promotions(records, higher),
        )
    return row


def worse_promotions(records: list[dict], higher: bool) -> int:
    """Promotions whose model scored worse than the champion it replaced on the next scored step's
    feedback, which neither had seen (a first model replaces nothing and is not counted)."""
    worse, holder = 0, None
    for i, record in enumerate(records):
        holder = (record.get("online") or {}).get("champion", holder)
        for cycle in record["cycles"]:
            if cycle["outcome"] != "promoted":
                continue
            later = next((r["online"] for r in records[i + 1 :] if r.get("online")), None) or {}
            new, old = later.get("scores", {}).get(cycle.get("version")), later.get("scores", {}).get(holder)
            if holder is not None and new is not None and old is not None and (new < old if higher else new > old):
                worse += 1
            holder = cycle.get("version")
    return worse


def summary_table(summary: dict) -> str:
    """The per-policy comparison as a markdown table."""
    metric = next((row["metric"] for row in summary.values() if "metric" in row), "metric")
    lines = [
        f"| policy | retrains | promoted | rejected | failed | mean online {metric} | worst | "
        f"volume-weighted | gap to the best model | worse promoted | training (s) | training samples |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in summary.items():
        quality = [f"{row[k]:.4f}" if k in row else "-" for k in ("mean", "worst", "weighted", "gap_to_best")]
        lines.append(
            f"| {name} | {row['retrains']} | {row['promotions']} | {row['rejections']} | {row['failures']} | "
            f"{' | '.join(quality)} | {row.get('worse_promotions', '-')} | {row['train_seconds']:.0f} | "
            f"{row['train_samples']:,} |"
        )
    return "\n".join(lines)


def plot(result: dict, path: Path) -> Path:
    """Online quality per policy over time, with promotions marked, and the drift share of the
    drift policies' checks below it, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 6.5), sharex=True, height_ratios=[3, 1.3])
    metric = "metric"
    for i, name in enumerate(result["summary"]):
        records = [r for r in result["steps"] if r["policy"] == name]
        color = f"C{i}"
        xs = [pd.Timestamp(r["start"]) for r in records if r["online"]]  # scored as the step begins
        ys = [r["online"]["value"] for r in records if r["online"]]
        if ys:
            metric = records[-1]["online"]["metric"] if records[-1]["online"] else metric
        top.plot(xs, ys, color=color, label=name, linewidth=1.6)
        promoted = [pd.Timestamp(r["end"]) for r in records for c in r["cycles"] if c["outcome"] == "promoted"]
        rejected = [pd.Timestamp(r["end"]) for r in records for c in r["cycles"] if c["outcome"] == "rejected"]
        strip = top.get_xaxis_transform()  # x in data, y in axes units: one row of marks per policy
        top.scatter(promoted, [0.03 + 0.04 * i] * len(promoted), marker="^", color=color, s=36, transform=strip)
        top.scatter(rejected, [0.03 + 0.04 * i] * len(rejected), marker="x", color=color, s=30, transform=strip)
        drift = [(pd.Timestamp(r["end"]), c["drift"]["drift_share"]) for r in records for c in r["cycles"]
                 if c.get("drift") and c["drift"].get("drift_share") is not None and c["trigger"] == 0]  # fmt: skip
        if drift:
            bottom.plot([d[0] for d in drift], [d[1] for d in drift], color=color, marker=".", label=name)
    top.set_ylabel(f"online {metric} (champion, before the step)")
    top.set_title("refit simulate: online quality per policy (▲ promoted, × rejected)")
    top.legend(loc="upper left", fontsize=8)
    top.grid(alpha=0.3)
    bottom.set_ylabel("drift share")
    bottom.grid(alpha=0.3)
    if bottom.get_legend_handles_labels()[0]:
        bottom.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_outputs(result: dict, out_dir: Path) -> dict:
    """``steps.json`` (every step), ``summary.md`` (the table) and ``simulate.png`` in ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "steps.json").write_text(json.dumps(result, indent=1, default=str))
    (out_dir / "summary.md").write_text(result["table"] + "\n")
    png = plot(result, out_dir / "simulate.png")
    return {"json": str(out_dir / "steps.json"), "table": str(out_dir / "summary.md"), "plot": str(png)}


def fast_overrides(settings) -> dict:
    """:data:`FAST_SETTINGS` less what the operator set explicitly."""
    return {k: v for k, v in FAST_SETTINGS.items() if k not in settings.model_fields_set}


def tiny_model(folder: Path) -> Path:
    """A random 2-layer BERT on the packaged model's vocabulary (as the tests use), built once
    into ``folder``: training it takes seconds, so a year of steps replays in minutes."""
    from refit.sim.scenarios import tiny_bert

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        tiny_bert(folder)
    return folder


def backtest(
    settings,
    policies: list[Policy],
    out_dir: Path,
    *,
    feedback: Path | None = None,
    scenario: str = "sudden",
    rows: int = 50_000,
    steps: int = 52,
    step_days: float = 7.0,
    seed: int = 0,
    real_model: bool = False,
    devset_every: int | None = 4,
    warmup: int = 1,
    faults_for: Callable[[int], NoFaults] | None = None,
    keep: bool = False,
    on_step: Callable[[dict], None] | None = None,
) -> dict:
    """What ``refit simulate`` runs: build the stream (a file, or a scenario of the demo's
    generator), pick the model (the tiny BERT unless ``real_model``), replay, and write the table,
    the JSON of every step and the plot into ``out_dir``.

    Args:
        faults_for: given the number of steps, the fault injector (``--chaos``).
    """
    settings = settings.model_copy(update=fast_overrides(settings))
    if not real_model:
        settings = settings.model_copy(update={"base_model": str(tiny_model(Path(settings.work_dir) / "tiny-bert"))})
    if feedback is not None:
        stream = load_stream(feedback)
    else:
        stream = scenario_stream(scenario, rows=rows, steps=steps, step_days=step_days, seed=seed)
    faults = faults_for(len(steps_of(stream, step_days, warmup=warmup))) if faults_for else None
    result = simulate(
        settings, stream, policies, step_days, faults=faults, devset_every=devset_every, warmup=warmup, keep=keep,
        on_step=on_step,
    )  # fmt: skip
    result["scenario"] = None if feedback is not None else scenario
    result["model"] = "packaged" if real_model else "tiny"
    if faults is not None and hasattr(faults, "report"):
        result["chaos"] = faults.report([p.name for p in policies])
    result["outputs"] = write_outputs(result, out_dir)
    return result
