"""The gate as a task: champion and challenger scored on the same dev rows, in this run."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE

from models.predict import Predictor
from refit.db import engine_for
from refit.devset import dev_rows, ensure_devset
from refit.gate import GateDecision, gate
from refit.modeling import baseline_metrics, prediction_problem, score
from refit.registry import fetch_checkpoint
from refit.settings import Settings
from refit.slices import known_items, slice_frame, slice_metrics
from refit.snapshots import Snapshot, SplitConfig, get_snapshot, snapshot_rows
from refit.store import open_store
from tasks.training import Challenger


def evaluate_folder(folder: Path, dev, settings: Settings):
    """Metrics on the dev rows, what is wrong with the predictions (if anything), and the predictions."""
    predictor = Predictor(folder)
    prediction = predictor.predict(dev["text"].tolist())
    metrics = score(prediction, dev, settings.task, settings.labels)
    return metrics, prediction_problem(prediction, settings.task), prediction


def per_slice(dev, slices, predictions: dict, settings: Settings) -> dict:
    """Each model's metrics on every slice of the dev rows that is big enough to read."""
    return {
        name: slice_metrics(
            slices, lambda mask, p=prediction: score(p[mask], dev[mask], settings.task, settings.labels)
        )
        for name, prediction in predictions.items()
    }


@task(name="gate", cache_policy=NONE, timeout_seconds=3600)
def gate_challenger(
    settings: Settings, snapshot: Snapshot, challenger: Challenger, champion: dict | None
) -> GateDecision:
    logger = get_run_logger()
    engine = engine_for(settings)
    split = SplitConfig.from_settings(settings)
    devset = ensure_devset(engine, split, snapshot.watermark_to, "initial: first gate")
    dev = dev_rows(engine, devset, split)
    challenger_metrics, problem, challenger_pred = evaluate_folder(challenger.folder, dev, settings)
    predictions = {"challenger": challenger_pred}
    if champion is None:
        # only the no-champion case reads the training rows (for the trivial baseline)
        rows = snapshot_rows(engine, snapshot, split)
        train = rows[rows["split"] == "train"]
        against, reference = "baseline", baseline_metrics(train, dev, settings.task, settings.labels)
        seen_upto = 0
    else:
        folder = Path(settings.work_dir) / "champions" / champion["version"]
        fetch_checkpoint(open_store(settings.store_url), champion["version"], folder)
        against, (reference, _, predictions["champion"]) = "champion", evaluate_folder(folder, dev, settings)
        seen_upto = get_snapshot(engine, champion["snapshot_id"]).watermark_to
    slices = per_slice(dev, slice_frame(dev, known_items(engine, seen_upto)), predictions, settings)
    metric = challenger_metric(settings)
    decision = gate(metric, challenger_metrics, reference, settings.gate_min_improvement, against=against)
    if problem:
        decision = replace(decision, promote=False, reason=f"challenger refused: {problem}")
    decision = replace(decision, dev_set=devset.version, slices=slices)
    logger.info("gate on dev set v%d (%d rows): %s", devset.version, len(dev), decision.reason)
    create_markdown_artifact(
        key="gate-decision",
        markdown="\n".join(
            [
                f"**{'PROMOTE' if decision.promote else 'REJECT'}** challenger `{challenger.version}` vs {against}",
                "",
                "| metric | challenger | " + against + " |",
                "|---|---|---|",
                *[f"| {k} | {challenger_metrics[k]:.4f} | {reference[k]:.4f} |" for k in challenger_metrics],
                "",
                decision.reason,
                f"Dev set v{devset.version}: {len(dev)} rows up to watermark {devset.watermark}",
                "",
                *slice_table(slices, metric),
            ]
        ),
        description="refit promotion gate",
    )
    return decision


def challenger_metric(settings: Settings) -> str:
    from models.metrics import DEFAULT_METRIC

    return settings.gate_metric or DEFAULT_METRIC[settings.task]


def slice_table(slices: dict, metric: str) -> list[str]:
    """Markdown rows of each slice's primary metric for every model scored."""
    models = list(slices)
    names = sorted({name for by_model in slices.values() for name in by_model})
    if not names:
        return []
    lines = ["| slice | rows | " + " | ".join(models) + " |", "|---|---|" + "---|" * len(models)]
    for name in names:
        cells = [f"{slices[m][name][metric]:.4f}" if name in slices[m] else "-" for m in models]
        rows = next(slices[m][name]["rows"] for m in models if name in slices[m])
        lines.append(f"| {name} | {rows} | " + " | ".join(cells) + " |")
    return lines
