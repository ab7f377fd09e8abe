"""Where a run starts and what of the model trains.

The start: the champion's weights when its architecture matches (a warm start), else the base
encoder with a new head. The strategy: ``full``; ``freeze`` (the embeddings and the lower
``freeze_layers`` encoder layers stay fixed); ``lora`` (``peft`` adapters on the attention
projections, merged into the weights before the model is returned, so serving needs no peft).
"""

from __future__ import annotations

import logging
from pathlib import Path

from refit.models.checkpoint import read_metadata
from refit.models.config import TrainConfig
from refit.models.fusion import FeatureSchema, SatisfactionModel, build_model, load_model_folder

log = logging.getLogger("refit.train")


def warm_start_problem(config: TrainConfig, schema: FeatureSchema) -> str | None:
    """Why ``config.init_from`` cannot seed this run (None when its architecture matches)."""
    from transformers import AutoConfig  # transformers is slow to import: only a warm start needs it here

    try:
        meta = read_metadata(Path(config.init_from))
    except Exception as exc:  # noqa: BLE001 - any unreadable champion means a cold start, with the reason
        return str(exc).splitlines()[0]
    arch = meta.get("architecture")
    if meta.get("ensemble"):
        return f"the champion is an ensemble of {len(meta['ensemble']['members'])} models"
    if not arch:
        return "the champion's checkpoint predates format 2"
    if meta.get("task") != config.task:
        return f"task differs ({meta.get('task')} vs {config.task})"
    if config.task == "classification" and meta.get("labels") != config.labels:
        return "labels differ"
    base = AutoConfig.from_pretrained(config.base_model)
    mine = {
        "model_type": base.model_type,
        "hidden_size": base.hidden_size,
        "num_hidden_layers": min(base.num_hidden_layers, config.keep_layers or base.num_hidden_layers),
        "vocab_size": base.vocab_size,
    }
    if arch.get("pruned_heads"):
        return "the champion has pruned attention heads"
    if arch["encoder"] != mine:
        return f"encoder differs ({arch['encoder']} vs {mine})"
    theirs = FeatureSchema.from_dict(meta.get("features"))
    if (sorted(theirs.numeric), sorted(theirs.categorical), theirs.vector, theirs.vector_dim) != (
        sorted(schema.numeric),
        sorted(schema.categorical),
        schema.vector,
        schema.vector_dim,
    ):
        return "features differ"
    if not schema.empty and arch.get("fusion_width") != config.fusion_width:
        return "fusion width differs"
    return None


def initial_model(config: TrainConfig, schema: FeatureSchema):
    """The model to train: the champion's weights when they fit, else the base encoder and a new head.

    Args:
        config: the run's config (``init_from``: the champion's folder, for a warm start).
        schema: the behaviour features the head reads.

    Returns:
        The model, its tokenizer, and where it started from (the champion, or the base model and
        why the warm start was refused).
    """
    init = {"from": "base", "base_model": config.base_model}
    if config.init_from:
        problem = warm_start_problem(config, schema)
        if problem is None:
            model, tokenizer, meta = load_model_folder(Path(config.init_from), dropout=config.dropout)
            return model, tokenizer, {"from": "champion", "parent_version": meta.get("version")}
        init["warm_start_refused"] = problem
        log.info("cold start from the base model: %s", problem)
    model, tokenizer = build_model(config.base_model, config.n_outputs, schema, config.fusion_width, config.dropout)
    return model, tokenizer, init


def apply_strategy(model: SatisfactionModel, config: TrainConfig) -> None:
    """Freeze lower layers, or wrap the encoder with LoRA adapters (the head always trains)."""
    if config.strategy == "freeze":
        layers = encoder_layers(model.encoder)
        if config.freeze_layers > len(layers):
            raise ValueError(f"freeze_layers={config.freeze_layers} but the encoder has {len(layers)} layers")
        for param in model.encoder.embeddings.parameters():
            param.requires_grad_(False)
        for layer in layers[: config.freeze_layers]:
            for param in layer.parameters():
                param.requires_grad_(False)
    elif config.strategy == "lora":
        # peft is optional: only LoRA runs need it, and merge_adapters leaves no trace of it.
        from peft import LoraConfig, get_peft_model
        from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as TARGETS

        targets = TARGETS.get(model.encoder.config.model_type, ["query", "value"])
        lora = LoraConfig(
            r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout, target_modules=targets
        )
        model.encoder = get_peft_model(model.encoder, lora)


def merge_adapters(model: SatisfactionModel) -> None:
    """Fold LoRA adapters into the encoder's weights, leaving a plain encoder."""
    if hasattr(model.encoder, "merge_and_unload"):
        model.encoder = model.encoder.merge_and_unload()
    for param in model.parameters():
        param.requires_grad_(True)


def encoder_layers(encoder) -> list:
    """The encoder's stack of transformer layers, for the encoder families refit knows.

    Raises:
        ValueError: the encoder has no layer stack at a known place.
    """
    for path in ("encoder.layer", "transformer.layer", "layers"):
        node = encoder
        for part in path.split("."):
            node = getattr(node, part, None)
        if node is not None:
            return list(node)
    raise ValueError(f"cannot find the layers of a {type(encoder).__name__} encoder to freeze")


# --- resumable state --------------------------------------------------------------------------
