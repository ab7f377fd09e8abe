"""The gate as a task: champion and challenger scored on the same dev rows, in this run."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE

from models.predict import Predictor
from refit.db import engine_for
from refit.devset import current_devset, dev_rows, refresh_devset
from refit.gate import GateDecision, gate
from refit.modeling import baseline_metrics, prediction_problem, score
from refit.registry import fetch_checkpoint
from refit.settings import Settings
from refit.snapshots import Snapshot, SplitConfig, snapshot_rows
from refit.store import open_store
from tasks.training import Challenger


def evaluate_folder(folder: Path, dev, settings: Settings) -> tuple[dict, str | None]:
    predictor = Predictor(folder)
    prediction = predictor.predict(dev["text"].tolist())
    return score(prediction, dev, settings.task, settings.labels), prediction_problem(prediction, settings.task)


@task(name="gate", cache_policy=NONE, timeout_seconds=3600)
def gate_challenger(
    settings: Settings, snapshot: Snapshot, challenger: Challenger, champion: dict | None
) -> GateDecision:
    logger = get_run_logger()
    engine = engine_for(settings)
    split = SplitConfig.from_settings(settings)
    devset = current_devset(engine) or refresh_devset(engine, split, "initial: first gate", upto=snapshot.watermark_to)
    dev = dev_rows(engine, devset, split)
    rows = snapshot_rows(engine, snapshot, split)
    challenger_metrics, problem = evaluate_folder(challenger.folder, dev, settings)
    if champion is None:
        against, reference = (
            "baseline",
            baseline_metrics(rows[rows["split"] == "train"], dev, settings.task, settings.labels),
        )
    else:
        folder = Path(settings.work_dir) / "champions" / champion["version"]
        fetch_checkpoint(open_store(settings.store_url), champion["version"], folder)
        against, (reference, _) = "champion", evaluate_folder(folder, dev, settings)
    metric = challenger_metric(settings)
    decision = gate(metric, challenger_metrics, reference, settings.gate_min_improvement, against=against)
    if problem:
        decision = replace(decision, promote=False, reason=f"challenger refused: {problem}")
    decision = replace(decision, dev_set=devset.version)
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
            ]
        ),
        description="refit promotion gate",
    )
    return decision


def challenger_metric(settings: Settings) -> str:
    from models.metrics import DEFAULT_METRIC

    return settings.gate_metric or DEFAULT_METRIC[settings.task]
