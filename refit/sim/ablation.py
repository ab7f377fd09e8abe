"""``refit ablate``: which defences and compressions help on this data, measured.

Every variant is trained on the same snapshot rows with the same seeds, evaluated on the same dev
and test rows, and timed on the same texts; the result is a table (markdown) and the raw runs
(JSON). Variants, on top of the configured training settings:

- ``baseline``: the settings as they are (the reference every other row is compared with);
- ``augment``: EDA on the training texts (delete 0.1, swap 0.1, synonyms 0.2 per word);
- ``fgm``, ``pgd``: adversarial training on the word embeddings;
- ``lora``: LoRA adapters instead of full fine-tuning;
- ``ensemble<K>``: the mean of K models trained with K seeds (seed ``s`` of the ablation uses
  seeds ``s, s+1000, ...``; the first member is the baseline run of seed ``s``, trained once);
- ``prune<L>``: keep the bottom L encoder layers, then fine-tune;
- ``heads<N>``: remove the N least important attention heads after the first epoch, then fine-tune.

The logic is plain functions over data frames; the CLI only parses and prints.
"""

from __future__ import annotations

import copy
import io
import json
import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from refit.data.snapshots import features_frame
from refit.models.config import TrainConfig
from refit.models.inference import predict_texts
from refit.models.metrics import DIRECTION
from refit.models.train import train
from refit.training import challenger
from refit.training.modeling import targets, training_data

DEFAULT_VARIANTS = ("baseline", "augment", "fgm", "lora", "ensemble3", "prune4")
AUGMENT_RATES = {"augment_delete_rate": 0.1, "augment_swap_rate": 0.1, "augment_synonym_rate": 0.2}


@dataclass(frozen=True)
class Variant:
    """One row of the ablation: training overrides, and how many seeds' models it averages."""

    name: str
    overrides: dict = field(default_factory=dict, hash=False)
    ensemble: int = 1


def parse_variant(name: str) -> Variant:
    """A variant from its name (see the module docstring).

    Raises:
        ValueError: an unknown name.
    """
    name = name.strip().lower()
    fixed = {
        "baseline": {},
        "augment": dict(AUGMENT_RATES),
        "fgm": {"adversarial": "fgm"},
        "pgd": {"adversarial": "pgd"},
        "lora": {"strategy": "lora"},
    }
    if name in fixed:
        return Variant(name, fixed[name])
    if match := re.fullmatch(r"ensemble(\d+)", name):
        if int(match[1]) < 2:
            raise ValueError("an ensemble variant needs at least 2 members: ensemble2, ensemble3, ...")
        return Variant(name, {}, int(match[1]))
    if match := re.fullmatch(r"prune(\d+)", name):
        return Variant(name, {"keep_layers": int(match[1])})
    if match := re.fullmatch(r"heads(\d+)", name):
        return Variant(name, {"prune_heads": int(match[1]), "prune_after_epoch": 1})
    known = "baseline, augment, fgm, pgd, lora, ensemble<K>, prune<L>, heads<N>"
    raise ValueError(f"unknown ablation variant {name!r}; expected one of {known}")


@dataclass
class EvalRows:
    """The rows every variant is scored on."""

    dev: pd.DataFrame
    test: pd.DataFrame
    new_item_mask: np.ndarray  # test rows whose item was unseen before the snapshot's window


def split_rows(
    rows: pd.DataFrame,
    known_items: set[str],
    train_rows: int | None = None,
    eval_rows: int | None = None,
    seed: int = 0,
) -> tuple[pd.DataFrame, EvalRows]:
    """The training rows and the dev/test rows of a snapshot, optionally sampled (seeded).

    Args:
        rows: snapshot rows with a ``split`` column.
        known_items: item ids seen before the snapshot's window; other test items are new.
        train_rows, eval_rows: sample this many training rows, and at most this many dev and test rows.
    """
    train = rows[rows["split"] == "train"]
    if train_rows is not None and len(train) > train_rows:
        train = train.sample(n=train_rows, random_state=seed).sort_values("id")
    parts = {}
    for split in ("dev", "test"):
        part = rows[rows["split"] == split]
        if eval_rows is not None and len(part) > eval_rows:
            part = part.sample(n=eval_rows, random_state=seed).sort_values("id")
        parts[split] = part.reset_index(drop=True)
    test = parts["test"]
    new = (~test["item_id"].isin(known_items) & test["item_id"].notna()).to_numpy()
    return train, EvalRows(parts["dev"], test, new)


def _state_bytes(model: torch.nn.Module) -> int:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


def _timed_predict(model, tokenizer, texts, features, config: TrainConfig) -> tuple[np.ndarray, float]:
    started = time.perf_counter()
    prediction = predict_texts(model, tokenizer, texts, features, config.task, config.max_length)
    return prediction, len(texts) / max(time.perf_counter() - started, 1e-9)


def evaluate(model, tokenizer, config: TrainConfig, rows: EvalRows) -> dict:
    """Dev and test metrics, the new-items slice, float and int8 speed and size of one model."""
    from refit.models.metrics import task_metrics
    from refit.models.quantize import quantize_model

    previous = torch.get_num_threads()
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    try:
        model.eval()
        n_out = config.n_outputs
        dev_pred = predict_texts(
            model, tokenizer, rows.dev["text"].tolist(), features_frame(rows.dev), config.task, config.max_length
        )
        test_texts, test_features = rows.test["text"].tolist(), features_frame(rows.test)
        test_y = targets(rows.test, config.task, config.labels)
        float_pred, float_speed = _timed_predict(model, tokenizer, test_texts, test_features, config)
        quant = quantize_model(copy.deepcopy(model))
        int8_pred, int8_speed = _timed_predict(quant, tokenizer, test_texts, test_features, config)
        new = rows.new_item_mask
        result = {
            "dev": task_metrics(config.task, targets(rows.dev, config.task, config.labels), dev_pred, n_out),
            "test": task_metrics(config.task, test_y, float_pred, n_out),
            "test_int8": task_metrics(config.task, test_y, int8_pred, n_out),
            "new_item_rows": int(new.sum()),
            "test_new_items": task_metrics(config.task, test_y[new], float_pred[new], n_out)
            if new.sum() >= 5
            else None,
            "int8_max_abs_diff": float(np.max(np.abs(int8_pred - float_pred))) if len(test_texts) else 0.0,
            "float_texts_per_s": float_speed,
            "int8_texts_per_s": int8_speed,
            "float_bytes": _state_bytes(model),
            "int8_bytes": quant.nbytes,  # the int8 ONNX model, as published
        }
    finally:
        torch.set_num_threads(previous)
    return result


def run_ablation(
    train_frame: pd.DataFrame,
    rows: EvalRows,
    base: TrainConfig,
    variants: list[Variant],
    seeds: list[int],
    echo=None,
) -> dict:
    """Train and evaluate every variant with every seed.

    Args:
        train_frame: the training rows (with ``split == "train"``).
        rows: the dev and test rows (dev also drives early stopping, as in a retrain).
        base: the training config every variant starts from.
        variants: what to compare; the first ``baseline`` among them is the reference.
        seeds: one run (or one ensemble) per seed and variant.
        echo: called with a progress line per run.

    Returns:
        ``{"metric", "direction", "seeds", "train_rows", "dev_rows", "test_rows", "variants": {name: {...}}}``.
    """
    frame = pd.concat([train_frame.assign(split="train"), rows.dev.assign(split="dev")], ignore_index=True)
    data = training_data(frame, base.task, base.labels)
    models = _TrainedModels(base, data)
    out = {
        "metric": base.metric,
        "direction": "higher is better" if DIRECTION[base.metric] else "lower is better",
        "seeds": list(seeds),
        "train_rows": len(data.train_texts),
        "dev_rows": len(rows.dev),
        "test_rows": len(rows.test),
        "new_item_test_rows": int(rows.new_item_mask.sum()),
        "config": {k: v for k, v in vars(base).items() if k not in ("base_model", "init_from")},
        "variants": {},
    }
    for variant in variants:
        runs = []
        for seed in seeds:
            run = _run_variant(variant, seed, base, rows, models)
            runs.append(run)
            if echo:
                echo(
                    f"{variant.name} seed {seed}: dev {base.metric} {run['dev'][base.metric]:.4f}, "
                    f"test {run['test'][base.metric]:.4f}, {run['train_seconds']:.0f} s"
                )
        out["variants"][variant.name] = {"overrides": variant.overrides, "ensemble": variant.ensemble, "runs": runs}
    summarize(out)
    return out


class _TrainedModels:
    """The models an ablation trained, by (overrides, seed): a member that another variant
    already trained is reused, not trained again."""

    def __init__(self, base: TrainConfig, data):
        self.base, self.data = base, data
        self.cache: dict[tuple, object] = {}

    @staticmethod
    def key(overrides: dict, seed: int) -> tuple:
        return json.dumps(overrides, sort_keys=True), seed

    def trained(self, overrides: dict, seed: int):
        key = self.key(overrides, seed)
        if key not in self.cache:
            self.cache[key] = train(replace(self.base, seed=seed, **overrides), self.data)
        return self.cache[key]


def _run_variant(variant: Variant, seed: int, base: TrainConfig, rows: EvalRows, models: _TrainedModels) -> dict:
    """One run of a variant at one seed (one model, or an ensemble's members), evaluated."""
    from refit.models.ensemble import EnsembleModel

    member_seeds = challenger.member_seeds(seed, variant.ensemble)
    cached = [models.key(variant.overrides, s) in models.cache for s in member_seeds]
    # the retrain's own member loop; a member another variant already trained is reused
    results = challenger.train_seed_members(
        replace(base, seed=seed),
        variant.ensemble,
        lambda _i, config, overrides=variant.overrides: models.trained(overrides, config.seed),
    )
    config = results[0].config
    members = [r.model for r in results]
    model = EnsembleModel(members, config.task) if variant.ensemble > 1 else members[0]
    return {
        "seed": seed,
        "member_seeds": member_seeds,
        # An ensemble's cost is all of its members' training, reused ones included.
        "train_seconds": sum(r.train_seconds for r in results),
        "retrained_members": cached.count(False),
        "epochs_run": [len(r.history) for r in results],
        **evaluate(model, results[0].tokenizer, config, rows),
    }


def _mean_sd(values: list[float]) -> tuple[float, float]:
    arr = np.asarray(values, dtype=float)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0


def summarize(result: dict) -> None:
    """Add each variant's summary (means and spreads, ratios against the baseline), in place."""
    metric = result["metric"]
    for entry in result["variants"].values():
        runs = entry["runs"]
        news = [r["test_new_items"][metric] for r in runs if r["test_new_items"]]
        summary = {
            "dev": _mean_sd([r["dev"][metric] for r in runs]),
            "test": _mean_sd([r["test"][metric] for r in runs]),
            "test_int8": _mean_sd([r["test_int8"][metric] for r in runs]),
            "test_new_items": _mean_sd(news) if news else None,
            "train_seconds": float(np.mean([r["train_seconds"] for r in runs])),
            "float_texts_per_s": float(np.mean([r["float_texts_per_s"] for r in runs])),
            "int8_texts_per_s": float(np.mean([r["int8_texts_per_s"] for r in runs])),
            "float_mb": runs[0]["float_bytes"] / 1e6,
            "int8_mb": runs[0]["int8_bytes"] / 1e6,
        }
        summary["int8_speedup"] = summary["int8_texts_per_s"] / max(summary["float_texts_per_s"], 1e-9)
        entry["summary"] = summary
    reference = result["variants"].get("baseline")
    for entry in result["variants"].values():
        s = entry["summary"]
        if reference is None:
            s["test_vs_baseline"] = s["train_time_vs_baseline"] = s["speed_vs_baseline"] = None
            continue
        ref = reference["summary"]
        s["test_vs_baseline"] = s["test"][0] - ref["test"][0]
        s["train_time_vs_baseline"] = s["train_seconds"] / max(ref["train_seconds"], 1e-9)
        s["speed_vs_baseline"] = s["float_texts_per_s"] / max(ref["float_texts_per_s"], 1e-9)


def render_table(result: dict) -> str:
    """The markdown table: one row per variant."""
    metric = result["metric"]
    n = len(result["seeds"])
    lines = [
        f"| variant | dev {metric} | test {metric} | test {metric}, new items | test vs baseline "
        f"| train s (x baseline) | texts/s float | texts/s int8 (x float) | int8 test {metric} | MB float / int8 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]

    def spread(pair) -> str:
        return f"{pair[0]:.4f} ± {pair[1]:.4f}" if n > 1 else f"{pair[0]:.4f}"

    for name, entry in result["variants"].items():
        s = entry["summary"]
        new = spread(s["test_new_items"]) if s["test_new_items"] else "-"
        delta = "-" if s["test_vs_baseline"] is None else f"{s['test_vs_baseline']:+.4f}"
        time_ratio = "" if s["train_time_vs_baseline"] is None else f" ({s['train_time_vs_baseline']:.2f}x)"
        lines.append(
            f"| {name} | {spread(s['dev'])} | {spread(s['test'])} | {new} "
            f"| {delta} | {s['train_seconds']:.0f}{time_ratio} | {s['float_texts_per_s']:.0f} "
            f"| {s['int8_texts_per_s']:.0f} ({s['int8_speedup']:.2f}x) | {s['test_int8'][0]:.4f} "
            f"| {s['float_mb']:.1f} / {s['int8_mb']:.1f} |"
        )
    lines.append("")
    lines.append(
        f"{metric} ({result['direction']}): mean ± sample standard deviation over {n} seed(s); "
        f"{result['train_rows']} training rows, {result['dev_rows']} dev rows, {result['test_rows']} test rows "
        f"({result['new_item_test_rows']} of new items)."
    )
    return "\n".join(lines)


def ablate(
    settings,
    snapshot_id: int | None,
    variants: list[str],
    seeds: list[int] | None = None,
    n_seeds: int = 3,
    out_dir: Path | None = None,
    train_rows: int | None = None,
    eval_rows: int | None = None,
    base_model: str | None = None,
    echo=None,
) -> dict:
    """Run the ablation on a snapshot and save ``ablation.md`` and ``ablation.json``.

    Args:
        settings: refit's settings (the database, and the training settings every variant starts from).
        snapshot_id: the snapshot to train on (None: the latest).
        variants: variant names (see :func:`parse_variant`).
        seeds: the seeds; default ``n_seeds`` seeds from ``REFIT_SEED`` on.
        out_dir: where the table and the JSON go (default ``work_dir/ablations/snapshot-<id>``).
        train_rows, eval_rows: sample this many training rows and at most this many dev and test rows.
        base_model: a base model instead of ``REFIT_BASE_MODEL``.
        echo: called with a progress line per run.

    Returns:
        The results (as saved in the JSON) with ``table`` (the markdown) and the file paths.
    """
    from refit.data.db import engine_for
    from refit.data.snapshots import SplitConfig, get_snapshot, latest_snapshot, snapshot_rows
    from refit.gate.slices import known_items
    from refit.training.modeling import train_config

    parsed = [parse_variant(v) for v in variants]
    if not parsed:
        raise ValueError("no variants to compare")
    engine = engine_for(settings)
    snapshot = get_snapshot(engine, snapshot_id) if snapshot_id is not None else latest_snapshot(engine)
    if snapshot is None:
        raise LookupError("there is no snapshot yet: ingest feedback and run `refit run` (or `refit drift`) first")
    rows = snapshot_rows(engine, snapshot, SplitConfig.from_settings(settings))
    seeds = seeds or [settings.seed + i for i in range(n_seeds)]
    train_frame, eval_rows_ = split_rows(
        rows, known_items(engine, snapshot.watermark_from), train_rows, eval_rows, seed=settings.seed
    )
    if len(train_frame) == 0 or len(eval_rows_.dev) == 0 or len(eval_rows_.test) == 0:
        raise ValueError(f"snapshot {snapshot.id} needs train, dev and test rows for an ablation")
    base = train_config(settings, base_model=base_model)
    base = replace(base, init_from=None)  # every variant starts from the base model
    result = run_ablation(train_frame, eval_rows_, base, parsed, seeds, echo=echo)
    result["snapshot_id"] = snapshot.id
    table = render_table(result)
    out_dir = Path(out_dir) if out_dir else Path(settings.work_dir) / "ablations" / f"snapshot-{snapshot.id}"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "ablation.md").write_text(table + "\n")
    (out_dir / "ablation.json").write_text(json.dumps(result, indent=2, default=str))
    return {**result, "table": table, "markdown": str(out_dir / "ablation.md"), "json": str(out_dir / "ablation.json")}


def ingest_demo_snapshots(engine, settings, folder: Path, rows: int = 1200) -> list:
    """Ingest the demo's feedback and take a snapshot after each file; for the ablation's test and
    benchmark.

    Args:
        engine: the database.
        settings: refit's settings (the ingest rules, the split).
        folder: where the feedback files are written.
        rows: reviews per file: the base regime, then the shifted one.

    Returns:
        The two snapshots.
    """
    from datetime import datetime, timedelta, timezone

    from refit.data.ingest import ingest_file
    from refit.data.snapshots import SplitConfig, take_snapshot
    from refit.data.validate import IngestRules
    from refit.ops.synth import generate_feedback, write_feedback

    now = datetime.now(timezone.utc)
    batches = {
        "before": generate_feedback(rows, seed=1, start=now - timedelta(days=60), id_prefix="before"),
        "after": generate_feedback(rows, seed=2, shifted=True, start=now - timedelta(days=20), id_prefix="after"),
    }
    rules, split = IngestRules.from_settings(settings), SplitConfig.from_settings(settings)
    snapshots = []
    for name, batch in batches.items():
        ingest_file(engine, write_feedback(batch, Path(folder) / f"feedback_{name}.csv"), rules)
        snapshots.append(take_snapshot(engine, split))
    return snapshots
