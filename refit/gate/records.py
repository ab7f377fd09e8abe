"""What people read: the gate decision as a markdown table, and the model card.

The same text goes to the Prefect artifact, ``refit models show`` and the card published with
each version, so an operator sees one account of a decision wherever they look.
"""

from __future__ import annotations

import math

MODEL_CARD = "MODEL_CARD.md"


def _f(value) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def decision_markdown(decision: dict, challenger_version: str | None = None) -> str:
    """The gate decision: verdict, the interval per reference, every reason, metrics, slices."""
    verdict = "PROMOTE" if decision["promote"] else "REJECT"
    metric = decision["metric"]
    lines = [f"### {verdict} challenger `{challenger_version or '?'}` vs {decision['against']}", ""]
    lines += [decision["reason"], ""]
    comparisons = decision.get("comparisons") or {}
    if comparisons:
        level = f"{decision.get('confidence', 0.95):.0%}"
        lines += [
            f"| vs | challenger {metric} | reference {metric} | improvement | {level} interval | passed |",
            "|---|---|---|---|---|---|",
        ]
        for name, c in comparisons.items():
            lines.append(
                f"| {name} | {_f(c['challenger'])} | {_f(c['reference'])} | {c['point']:+.4f} | "
                f"{c['low']:+.4f} to {c['high']:+.4f} | {'yes' if c['passed'] else 'NO'} |"
            )
        lines.append("")
    metrics = decision.get("metrics") or {}
    if metrics:
        models = list(metrics)
        names = list(next(iter(metrics.values())))
        lines += ["| metric | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]
        lines += [f"| {k} | " + " | ".join(_f(metrics[m].get(k)) for m in models) + " |" for k in names]
        lines.append("")
    checks = decision.get("slice_checks") or {}
    if checks:
        lines += [f"| slice | rows | challenger {metric} | champion {metric} | improvement | passed |"]
        lines += ["|---|---|---|---|---|---|"]
        for name, c in sorted(checks.items()):
            lines.append(
                f"| {name} | {c['rows']} | {_f(c['challenger'])} | {_f(c['champion'])} | {c['improvement']:+.4f} | "
                f"{'yes' if c['passed'] else 'NO'} |"
            )
        lines.append("")
    elif decision.get("slices"):
        lines += slice_table(decision["slices"], metric) + [""]
    lines += ["Reasons:", *[f"- {r}" for r in decision.get("reasons") or []]]
    if decision.get("dev_set") is not None:
        lines.append(f"- scored on dev set v{decision['dev_set']} ({decision.get('dev_rows', '?')} rows)")
    if decision.get("approval"):
        a = decision["approval"]
        lines.append(f"- operator approval: {a.get('verdict')} by {a.get('by') or 'unknown'}: {a.get('note') or '-'}")
    return "\n".join(lines)


def slice_table(slices: dict, metric: str) -> list[str]:
    """Markdown rows of each slice's primary metric for every model scored."""
    models = list(slices)
    names = sorted({name for by_model in slices.values() for name in by_model})
    if not names:
        return []
    lines = ["| slice | rows | " + " | ".join(models) + " |", "|---|---|" + "---|" * len(models)]
    for name in names:
        cells = [_f(slices[m][name][metric]) if name in slices[m] else "-" for m in models]
        rows = next(slices[m][name]["rows"] for m in models if name in slices[m])
        lines.append(f"| {name} | {rows} | " + " | ".join(cells) + " |")
    return lines


def model_card(version: str, metadata: dict, decision: dict, snapshot: dict) -> str:
    """The markdown model card published with a version.

    Args:
        version: the model version.
        metadata: the checkpoint's ``refit.json``.
        decision: the gate decision (as a dict).
        snapshot: the snapshot it was trained on (as a dict).
    """
    lineage = metadata.get("lineage") or {}
    task = metadata.get("task")
    output = (
        "a satisfaction score in [0, 1]"
        if task == "regression"
        else f"one of the labels {', '.join(metadata.get('labels') or [])}, with class probabilities"
    )
    training = metadata.get("training") or {}
    dev = (metadata.get("metrics") or {}).get("dev") or {}
    lines = [
        f"# Model card: {version}",
        "",
        "## Intended use",
        f"Predicts how satisfied a user is with an item from the feedback they leave: {output}. "
        "For ranking and monitoring in the recommender that feeds refit, on feedback like the training window's.",
        "",
        "## Data",
        f"- snapshot {snapshot.get('id')}: feedback ids {snapshot.get('watermark_from')}.."
        f"{snapshot.get('watermark_to')} ({snapshot.get('total_rows')} rows; splits {snapshot.get('split_counts')})",
        f"- window: {snapshot.get('window_start')} to {snapshot.get('window_end')}",
        f"- labels: {snapshot.get('label_counts')}",
        "",
        "## Training",
        f"- base: {lineage.get('base_model')}; parent version: {lineage.get('parent_version') or 'none'}",
        f"- best epoch {metadata.get('best_epoch')}, "
        f"stopped early: {metadata.get('stopped_by') or metadata.get('stopped_early')}; "
        f"{training.get('samples_per_second')} samples/s on {training.get('device')}"
        f" in {training.get('world_size') or 1} process(es)",
        f"- behaviour features: {_features_line(metadata)}",
        f"- seed {lineage.get('seed')}; versions {lineage.get('versions')}",
        f"- validation-fold metrics as served: {', '.join(f'{k}={_f(v)}' for k, v in dev.items())}",
        f"- kind: {_kind_line(metadata)}",
        f"- recipe: {_recipe_line(metadata)}",
        f"- unlabelled feedback: {_unlabelled_line(metadata)}",
        "",
        "## Gate decision",
        decision_markdown(decision, version),
        "",
        "## Known limits",
        "- Trained on one window of feedback; new items, categories or vocabulary after it are where it is weakest "
        "(see the new-item slice above and the drift reports).",
        "- Text is redacted of personal data before training; predictions on unredacted text are out of scope.",
        f"- Text beyond {metadata.get('max_length')} tokens is truncated.",
        "- Scores reflect the feedback of users who chose to leave it, not all users.",
    ]
    return "\n".join(lines) + "\n"


def _kind_line(metadata: dict) -> str:
    """What the checkpoint predicts with: its BERT, a blend with its TF-IDF model, or TF-IDF alone."""
    blend = metadata.get("blend") or {}
    kind = blend.get("kind", "bert")
    if kind == "bert" and not blend:
        return "bert"
    weight = blend.get("bert_weight", 1.0)
    where = blend.get("fitted_on", "")
    line = f"{kind} (BERT weight {_f(weight)}, TF-IDF weight {_f(1 - weight)}, chosen on the {where})"
    if blend.get("fold"):
        line += "; validation fold " + ", ".join(f"{k} {_f(v)}" for k, v in blend["fold"].items())
    if blend.get("why"):
        line += f"; {blend['why']}"
    return line


def _recipe_line(metadata: dict) -> str:
    """The training recipe's choices and their reasons (refit.training.recipe)."""
    recipe = (metadata.get("train_config") or {}).get("recipe") or {}
    if not recipe:
        return "not recorded"
    chosen = (
        f"{recipe.get('name')}: {recipe.get('epochs')} epochs at most, patience {recipe.get('patience')}, "
        f"lr {recipe.get('learning_rate')}, class weights {recipe.get('class_weights')}"
    )
    reasons = "; ".join(f"{k}: {v}" for k, v in (recipe.get("reasons") or {}).items())
    return f"{chosen} ({reasons})" if reasons else chosen


def _unlabelled_line(metadata: dict) -> str:
    """What the run tried with its unlabelled rows (refit.training.arms), each arm with its fold figure."""
    record = metadata.get("unlabelled") or {}
    pool = record.get("pool") or {}
    if not record or not pool.get("unlabelled_rows"):
        return "none in the snapshot"
    head = f"{pool.get('unlabelled_rows')} rows, {pool.get('pool_rows')} usable"
    if record.get("why"):
        return f"{head}; not used: {record['why']}"
    metric = record.get("metric", "")
    arms = []
    for arm in record.get("arms") or []:
        if not arm.get("tried"):
            arms.append(f"{arm['arm']} not tried ({arm.get('why')})")
            continue
        figure = (arm.get("fold") or {}).get(metric)
        gain = arm.get("improvement")
        change = f", {gain['point']:+.4f} [{gain['low']:+.4f}, {gain['high']:+.4f}]" if gain else ""
        arms.append(f"{arm['arm']} fold {metric} {_f(figure)}{change} {'kept' if arm.get('kept') else 'not kept'}")
    return f"{head}; chosen: {', '.join(record.get('chosen') or ['plain'])}; " + "; ".join(arms)


def _features_line(metadata: dict) -> str:
    """The behaviour features the model reads, with their types (inferred or configured)."""
    types = (metadata.get("train_config") or {}).get("feature_types") or {}
    vector = (metadata.get("features") or {}).get("vector")
    parts = [f"{name} ({kind})" for name, kind in sorted(types.items())]
    if vector:
        parts.append(f"{vector} (vector of {(metadata.get('features') or {}).get('vector_dim')})")
    return ", ".join(parts) or "none (text only)"
