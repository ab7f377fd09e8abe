"""The one typed settings object.

Every setting comes from a ``REFIT_*`` environment variable or an optional ``.env`` file and is
validated when loaded. Nothing else in refit reads ``os.environ`` for its own configuration; the
S3 endpoint and credentials are boto3's own (``AWS_ENDPOINT_URL_S3``, ``AWS_ENDPOINT_URL``, the
standard credential chain), so that every S3-compatible store works the way its docs say.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Literal, get_args
from urllib.parse import urlparse

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from refit.core.drift_groups import DEFAULT_TRIGGERS, GROUPS
from refit.core.errors import ConfigError

PACKAGED_MODEL = "packaged:all-MiniLM-L6-v2"
# The columns of a feedback file that refit reads itself; every other column is a feature.
RESERVED = ("feedback_id", "user_id", "item_id", "text", "created_at", "satisfaction", "rating", "label")

# Choices that cross layers, written once: the settings fields below, the retrain flow's parameters
# and the trainer's config (refit.models.train.TrainConfig) all take these types, so a new strategy
# or task is added here and nowhere else.
Task = Literal["regression", "classification"]
Strategy = Literal["full", "freeze", "lora"]
TASKS: tuple[str, ...] = get_args(Task)
STRATEGIES: tuple[str, ...] = get_args(Strategy)
DEFAULT_LABELS = ("negative", "neutral", "positive")


class Settings(BaseSettings):
    """refit's configuration, read once and passed down."""

    # populate_by_name: a field with an alias (a renamed setting that still reads its former
    # variable) is also set by its field name, as with_overrides, model_validate and the training
    # child's settings file do; every other field is set by its name anyway.
    model_config = SettingsConfigDict(
        env_prefix="REFIT_", env_file=".env", env_file_encoding="utf-8", extra="ignore", populate_by_name=True
    )

    # --- where things live -------------------------------------------------------------------
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL of the Postgres that holds feedback and the registry."
    )
    store_url: str = Field(
        default="file://./.refit/store",
        description="Object store root: s3://bucket/prefix or file:///path.",
    )
    work_dir: Path = Field(default=Path(".refit/work"), description="Local scratch for checkpoints.")

    # --- publishing -----------------------------------------------------------------
    model_name: str = Field(
        default="satisfaction",
        pattern=r"^[a-z0-9][a-z0-9._-]{0,62}$",
        description="Name of the model in the store: models/<name>/versions/<version>/, models/<name>/champion.json.",
    )
    store_multipart_mb: int = Field(default=8, ge=5, description="Files above this many MB move in parts.")
    store_part_mb: int = Field(default=8, ge=5, description="Part size of multipart transfers, in MB.")
    store_max_concurrency: int = Field(
        default=10, ge=1, le=64, description="Parts in flight at once, across a publish's files."
    )
    store_checksum: Literal["crc32", "sha256", "md5"] = Field(
        default="crc32",
        description="How the store checks each part on arrival, and publishing checks what it keeps: an S3 "
        "checksum (crc32, or sha256: slower), or md5 (Content-MD5 and the ETag) for a store that refuses S3 checksums.",
    )
    store_addressing_style: Literal["auto", "path", "virtual"] = Field(
        default="auto", description="S3 addressing; 'path' for MinIO, Ceph and most self-hosted stores."
    )
    keep_versions: int = Field(
        default=10, ge=1, description="`refit gc` keeps this many newest versions, plus every version ever champion."
    )

    # --- serving --------------------------------------------------------------------
    serve_host: str = Field(default="127.0.0.1", description="Where `refit serve` listens.")
    serve_port: int = Field(default=8080, ge=1, le=65535, description="The port `refit serve` listens on.")
    serve_token: SecretStr | None = Field(
        default=None,
        description="Bearer token for /predict, /explain and /reload (health checks stay open); "
        "`refit serve` refuses to start without one unless given --no-auth.",
    )
    serve_poll_s: float = Field(default=30, gt=0, description="How often the champion pointer is checked.")
    serve_batch_size: int = Field(default=32, ge=1, le=1024, description="Texts gathered into one model call.")
    serve_batch_wait_ms: float = Field(
        default=5, ge=0, le=1000, description="The most a request waits for others to join it while the model is free."
    )
    serve_max_items: int = Field(default=64, ge=1, description="Items allowed in one request.")
    serve_max_text_chars: int = Field(default=5000, ge=16, description="Longer texts are cut (and flagged).")
    serve_quantize: bool = Field(default=False, description="Serve the int8 ONNX Runtime model (CPU speed).")
    serve_quantize_tolerance: float = Field(
        default=0.05, gt=0, description="int8 is refused when it moves a prediction by more than this."
    )
    serve_log_predictions: bool = Field(
        default=False, description="Write predictions (text hash and length, not the text) to prediction_log."
    )
    serve_log_flush_s: float = Field(default=2.0, gt=0, description="How often logged predictions are written.")
    slack_webhook_url: SecretStr | None = Field(default=None, description="Incoming-webhook URL.")

    # --- live rollout --------------------------------------------------------------
    rollout: Literal["off", "shadow", "canary"] = Field(
        default="off",
        description="What a challenger that passes the gate does: off (it becomes champion at once), shadow "
        "(scored on live traffic, never answering, then canary, then champion) or canary (straight to canary).",
    )
    rollout_shadow_share: float = Field(
        default=1.0, gt=0, le=1, description="Share of request items the model that did not answer also scores, unseen."
    )
    rollout_canary_share: float = Field(
        default=0.1, gt=0, lt=1, description="Share of requests the candidate answers in canary (sticky per user)."
    )
    rollout_min_requests: int = Field(
        default=500, ge=1, description="Requests both models must have scored before a stage can end."
    )
    rollout_min_labels: int = Field(
        default=100, ge=0, description="Joined live labels (or ratings) needed before a stage can end."
    )
    rollout_stage_max_hours: float = Field(
        default=72, gt=0, description="A stage that has not gathered its evidence by then ends the rollout."
    )
    rollout_approval: bool = Field(
        default=False, description="Pause between stages for an operator's approve or reject in the Prefect UI."
    )
    rollout_approval_timeout_s: int = Field(
        default=900,
        ge=1,
        description="How long a rollout step waits for the operator; without an answer the stage holds, and the "
        "next step checks the guards again and asks again.",
    )
    rollout_max_error_increase: float = Field(
        default=0.01, ge=0, description="How much higher the candidate's live error rate may be than the champion's."
    )
    rollout_max_p99_ratio: float = Field(
        default=1.5, ge=1, description="How many times the champion's live p99 model latency the candidate may take."
    )
    rollout_max_disagreement: float = Field(
        default=0.35,
        gt=0,
        description="Prediction drift between the two models that ends a rollout: the share of differing labels, "
        "or the mean absolute difference of satisfaction.",
    )
    rollout_poll_s: float = Field(default=60, gt=0, description="How often `refit serve` checks the candidate pointer.")

    # --- notifications --------------------------------------------------------------
    slack_webhook_block: str | None = Field(
        default=None,
        description="A saved Prefect block holding the Slack URL: NAME (a slack-webhook block) or TYPE-SLUG/NAME.",
    )
    webhook_url: SecretStr | None = Field(
        default=None, description="A generic JSON webhook that gets every event as {event, title, fields, run_url}."
    )
    webhook_block: str | None = Field(
        default=None, description="A saved Prefect block holding that URL: NAME (a webhook block) or TYPE-SLUG/NAME."
    )
    webhook_token: SecretStr | None = Field(
        default=None, description="Sent to the generic webhook as 'Authorization: Bearer <token>'; never logged."
    )
    ui_url: str | None = Field(
        default=None, description="The Prefect UI's base URL for run links (default: Prefect's PREFECT_UI_URL)."
    )

    # --- the model ---------------------------------------------------------------------------
    base_model: str = Field(
        default=PACKAGED_MODEL,
        description="A local Hugging Face model folder, a model id, or the packaged all-MiniLM-L6-v2.",
    )
    task: Task = Field(
        default="regression",
        description="regression on satisfaction in [0, 1], or classification on the named REFIT_LABELS.",
    )
    labels: Annotated[list[str], NoDecode] = Field(
        default=list(DEFAULT_LABELS), description="Class names, comma-separated, from least to most satisfied."
    )
    rating_min: float = Field(default=1.0, description="The lowest rating: a rating is scaled to 0..1 from here.")
    rating_max: float = Field(default=5.0, description="The highest rating (scaled to 1).")
    max_text_chars: int = Field(default=5000, gt=0, description="Longer texts are quarantined at ingest.")
    ingest_batch_rows: int = Field(default=50_000, ge=1, description="Rows per committed ingest batch.")
    pii_mode: Literal["off", "redact", "drop"] = Field(
        default="redact", description="Emails, phones, card numbers, URLs: replaced, rows dropped, or kept."
    )
    pii_handles: bool = Field(default=True, description="Social @handles are personal data too: [HANDLE].")
    feature_types: Annotated[dict[str, Literal["numeric", "categorical"]], NoDecode] = Field(
        default_factory=dict,
        description="name:numeric|categorical,...; when set, only these columns are features, type-checked.",
    )
    features: Literal["auto", "none"] = Field(
        default="auto",
        description="Without REFIT_FEATURE_TYPES: auto infers the behaviour features' types from the training rows;"
        " none trains on the text (and the vector) only.",
    )
    vector_feature: str | None = Field(
        default=None,
        description="The feature column that holds a precomputed embedding (a list of numbers), e.g. item_vec.",
    )
    column_map: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict, description="refit column=file column,... e.g. text=review_body,created_at=ts"
    )

    # --- the Postgres source: `refit sync` and the sync deployment -----------------
    source_url: str | None = Field(
        default=None, description="Postgres URL of the team's database that feedback is pulled from (read-only)."
    )
    source_table: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*)?$",
        description="The table or view to pull (schema.name or name).",
    )
    source_query: str | None = Field(
        default=None, description="Instead of a table: a SELECT; it must select the base table's xmin AS _xmin."
    )
    source_cursor: str | None = Field(
        default=None,
        description="The source column the sync follows: a monotonic id, or updated_at (ties broken by the key);"
        " default: the key (the column mapped to feedback_id).",
    )
    source_reconcile_hours: float = Field(
        default=24, ge=0, description="How often a sync also compares every source key to find deletes (0: each sync)."
    )
    source_timeout_s: int = Field(default=600, ge=1, description="Statement timeout of each sync's source queries.")

    @field_validator("source_query")
    @classmethod
    def _source_query_is_a_select(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        value = value.strip().rstrip(";").strip()
        if value.split(None, 1)[0].lower() not in ("select", "with"):
            raise ValueError("must be a SELECT (or WITH ... SELECT) query")
        return value

    # --- splits -----------------------------------------------------------------------------
    dev_fraction: float = Field(
        default=0.15,
        gt=0,
        lt=0.5,
        description="Share of rows in the dev split, the gate's frozen dev set (a stable hash of the feedback id"
        " decides the split).",
    )
    test_fraction: float = Field(
        default=0.05,
        ge=0,
        lt=0.5,
        description="Share held out for the checkpoint's test metrics only (reporting); each row there is not"
        " trained on.",
    )

    # --- drift ----------------------------------------------------------------------
    # The drift decision policy; README "Drift policy" explains each one.
    drift_min_rows: int = Field(default=100, ge=1, description="Below this, drift says 'insufficient data'.")
    drift_sample_cap: int = Field(default=2000, ge=10, description="Rows per side measured (time-stratified).")
    drift_embedding_rows: int = Field(
        default=1000, ge=10, description="Rows per side given to EmbeddingsDrift (its t-SNE view grows with it)."
    )
    drift_embeddings_picture: bool = Field(
        default=True, description="Render EmbeddingsDrift's t-SNE picture in the report (about 6-12 s a check)."
    )
    drift_window_days: float | None = Field(
        default=None, gt=0, description="Current window: the last N days of feedback instead of all since the champion."
    )
    drift_triggers: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_TRIGGERS),
        description="Signal groups whose drift triggers a retrain on its own.",
    )
    drift_share: float = Field(default=0.5, gt=0, le=1, description="Share of drifted signals that triggers.")
    drift_alpha: float = Field(
        default=0.01, gt=0, lt=1, description="Level of the drift tests, corrected over the family of signals."
    )
    drift_correction: Literal["holm", "bh"] = Field(
        default="holm", description="Family correction of the drift tests: Holm or Benjamini-Hochberg."
    )
    drift_numeric_threshold: float = Field(default=0.2, gt=0, description="Floor: normed Wasserstein distance.")
    drift_categorical_threshold: float = Field(default=0.1, gt=0, le=1, description="Floor: Jensen-Shannon distance.")
    drift_text_auc: float = Field(default=0.56, gt=0.5, lt=1, description="Floor: text domain classifier ROC AUC.")
    drift_embeddings_auc: float = Field(default=0.56, gt=0.5, lt=1, description="Floor: embeddings classifier AUC.")
    drift_performance_min_degradation: float = Field(
        default=0.1, gt=0, description="Relative loss of the champion's metric on current vs dev that counts."
    )
    drift_performance_confidence: float = Field(default=0.99, gt=0.5, lt=1, description="Bootstrap confidence.")
    drift_performance_rows: int = Field(
        default=10_000, ge=10, description="Labelled rows per side scored for the performance signal."
    )
    drift_bootstrap_rounds: int = Field(
        default=300, ge=50, le=10_000, description="Bootstrap resamples of the performance signal (fixed seed)."
    )
    drift_confirm_n: int = Field(default=1, ge=1, description="Retrain when drift was seen in N ...")
    drift_confirm_m: int = Field(default=1, ge=1, description="... of the last M checks against this champion.")
    drift_cooldown_hours: float = Field(default=0, ge=0, description="No drift-triggered retrain this soon after one.")
    drift_short_text_chars: int = Field(default=10, ge=1, description="Texts shorter than this count as very short.")

    @field_validator("drift_triggers")
    @classmethod
    def _known_drift_triggers(cls, value: list[str]) -> list[str]:
        unknown = sorted(set(value) - set(GROUPS))
        if unknown:
            raise ValueError(f"unknown signal group(s) {', '.join(unknown)}; expected some of {', '.join(GROUPS)}")
        return value

    @model_validator(mode="after")
    def _drift_confirmation(self) -> Settings:
        if self.drift_confirm_n > self.drift_confirm_m:
            raise ValueError("REFIT_DRIFT_CONFIRM_N cannot exceed REFIT_DRIFT_CONFIRM_M")
        return self

    # --- end drift -------------------------------------------------------------------

    # --- training ----------------------------------------------------------------------------
    recipe: Literal["auto", "manual"] = Field(
        default="auto",
        description="auto: epochs, patience, learning rate and class weights follow the data's size, task and"
        " balance (refit.training.recipe), unless pinned by REFIT_*; manual: the fixed defaults.",
    )
    epochs: int | None = Field(default=None, ge=1, description="Most epochs (unset: the recipe decides).")
    batch_size: int = Field(default=16, ge=1, description="Training batch size.")
    learning_rate: float | None = Field(default=None, gt=0, description="Peak learning rate (unset: per strategy).")
    weight_decay: float = Field(default=0.01, ge=0, description="AdamW weight decay.")
    warmup_ratio: float = Field(
        default=0.1, ge=0, lt=1, description="Share of training steps spent warming the learning rate up."
    )
    max_length: int = Field(default=128, ge=8, le=512, description="Tokens per text; longer texts are cut.")
    patience: int | None = Field(default=None, ge=0, description="Stale epochs before stopping (unset: the recipe).")
    val_fraction: float = Field(
        default=0.15,
        gt=0,
        lt=0.5,
        description="Share of the training rows held out as the early-stopping and blending fold; never the"
        " gate's dev set.",
    )
    val_max_rows: int = Field(
        default=600,
        ge=0,
        description="The validation fold's most rows (0: no cap): past a few hundred rows it chooses the epoch and"
        " the blend as well, and every row held out of it trains the model instead.",
    )
    train_budget_minutes: float | None = Field(
        default=None, gt=0, description="Training stops at this budget with the best weights so far (unset: none)."
    )
    blend_text_baseline: bool = Field(
        default=True,
        description="Blend the BERT's predictions with TF-IDF's, the weight fitted on the validation fold and"
        " the mix served only when it beats the BERT alone there beyond the fold's noise; a first model that"
        " cannot beat TF-IDF is TF-IDF itself.",
    )
    # --- learning from unlabelled feedback: the pool, adaptation, self-training ---------------
    adapt: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="Continued masked-language-model pre-training of the encoder on the feedback's own text"
        " (labelled and unlabelled training rows; never dev, validation or test rows) before fine-tuning. auto:"
        " tried when there are unlabelled rows, and kept only when the validation fold says it pays; on: always"
        " used; off: never.",
    )
    adapt_budget_minutes: float = Field(
        default=4.0, gt=0, description="Wall-time budget of one adaptation of the encoder; it stops there."
    )
    adapt_refresh: float = Field(
        default=0.5,
        gt=0,
        description="A cached adaptation is reused until the corpus has grown by this share of the rows it was"
        " adapted on; then it is redone. Likewise, under auto a warm retrain does not try an arm the champion's"
        " validation fold turned down until the unlabelled pool has grown by this share.",
    )
    self_train: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="Self-training: confident pseudo-labels (or pseudo-targets) of unlabelled training rows, from"
        " the champion or the run's own first pass, added to the training rows. auto: tried when there are"
        " unlabelled rows and kept only when the validation fold says it pays; on: always used; off: never.",
    )
    pseudo_confidence: float = Field(
        default=0.8,
        gt=0,
        lt=1,
        description="Classification: the teacher's probability a pseudo-label needs. Regression: the share of"
        " unlabelled rows ranked least uncertain that may be kept.",
    )
    pseudo_share: float = Field(
        default=1.0,
        gt=0,
        description="Most pseudo-labelled rows, as a multiple of the labelled training rows.",
    )
    setfit: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="SetFit's contrastive stage for few labels (classification): the encoder tuned on pairs of"
        " labelled training rows (same class or not) before fine-tuning. auto: tried alongside the other ways of"
        " learning more from the data, when the labelled training rows are at most REFIT_SETFIT_MAX_ROWS, and kept"
        " only when the validation fold says it pays; on: always used; off: never.",
    )
    setfit_max_rows: int = Field(
        default=500,
        ge=1,
        description="Under auto, SetFit's stage is tried up to this many labelled training rows (after the"
        " validation fold); above it the labels are enough for a plain fine-tune.",
    )
    setfit_budget_minutes: float = Field(
        default=3.0, gt=0, description="Wall-time budget of SetFit's contrastive stage; it stops there."
    )
    seed: int = Field(default=13, description="Seed of training, sampling and the bootstraps.")
    retention_days: int | None = Field(
        default=None, ge=1, description="Feedback older than this many days is left out of training (kept)."
    )
    max_train_rows: int | None = Field(default=None, ge=1, description="Newest rows kept for training.")
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="Where training runs: auto (CUDA when available), cpu or cuda."
    )

    # --- model -----------------------------------------------------------------------
    strategy: Strategy = Field(
        default="full",
        # env_prefix does not apply to aliases, so the variables are named in full; the former
        # name REFIT_FINE_TUNE is still read, and REFIT_STRATEGY wins when both are set
        validation_alias=AliasChoices("REFIT_STRATEGY", "REFIT_FINE_TUNE"),
        description="Fine-tuning strategy: full; freeze the lower REFIT_FREEZE_LAYERS layers; or LoRA adapters "
        "(merged). REFIT_FINE_TUNE, its former name, is still accepted.",
    )
    freeze_layers: int = Field(default=0, ge=0, description="Encoder layers kept fixed with REFIT_STRATEGY=freeze.")
    lora_r: int = Field(default=8, ge=1, description="LoRA rank with REFIT_STRATEGY=lora.")
    grad_accum_steps: int = Field(default=1, ge=1, description="Batches per optimizer step.")
    max_grad_norm: float = Field(default=1.0, ge=0, description="Gradient clipping norm (0: no clipping).")
    min_delta: float = Field(default=0.0, ge=0, description="Smallest dev-metric change that counts as better.")
    early_stopping_metric: Literal["mse", "mae", "spearman", "accuracy", "macro_f1"] | None = Field(
        default=None, description="Dev metric for early stopping (default: the gate's metric)."
    )
    regression_loss: Literal["mse", "bce"] = Field(
        default="mse", description="Regression loss: mse, or bce (binary cross-entropy on the 0..1 score)."
    )
    class_weights: Literal["none", "balanced", "sqrt"] | None = Field(
        default=None,
        description="Classification loss weights: none; balanced (n / (k * count)); sqrt (their square root)"
        " (unset: the auto recipe decides).",
    )
    warm_start: bool = Field(default=True, description="Start from the champion when its architecture matches.")
    replay_fraction: float | None = Field(
        default=None,
        ge=0,
        description="Warm start: train on the rows new since the champion plus this share of older rows (unset: all).",
    )
    num_threads: int | None = Field(default=None, ge=1, description="CPU threads for training (unset: torch's).")
    train_attention: Literal["auto", "encoder", "padded", "packed"] = Field(
        default="auto", description="How BERT runs in training (models/paths.py); auto: timed on the run's own rows."
    )
    train_path_cache: Path | None = Field(
        default=None,
        description="The machine's file of measured attention layouts (unset: ~/.cache/refit/train_paths.json).",
    )
    train_precision: Literal["auto", "fp32", "bf16"] = Field(
        default="auto",
        description="Training precision; auto: bf16 autocast on a bf16 GPU, or a CPU with AMX or AVX512-BF16"
        " (encoders 128+ wide).",
    )

    # --- defences and compression ---------------------------------------------------
    augment_delete_rate: float = Field(default=0.0, ge=0, le=1, description="EDA: chance a training word is dropped.")
    augment_swap_rate: float = Field(default=0.0, ge=0, le=1, description="EDA: word swaps per training word.")
    augment_synonym_rate: float = Field(
        default=0.0, ge=0, le=1, description="EDA: chance a word with a synonym in the shipped list is replaced."
    )
    adversarial: Literal["none", "fgm", "pgd"] = Field(
        default="none", description="Adversarial training on the word embeddings."
    )
    adversarial_epsilon: float = Field(default=1.0, gt=0, description="Norm of the embedding perturbation.")
    adversarial_steps: int = Field(default=3, ge=1, description="PGD steps.")
    ensemble_size: int = Field(default=1, ge=1, le=16, description="Models averaged into one challenger (1: none).")
    ensemble_source: Literal["seeds", "champions"] = Field(
        default="seeds", description="Members: K seeds of this run, or this run plus the K-1 previous champions."
    )
    keep_layers: int | None = Field(default=None, ge=1, description="Keep the bottom N encoder layers, then fine-tune.")
    prune_heads: int = Field(default=0, ge=0, description="Attention heads removed by importance after epoch 1.")
    publish_int8: bool = Field(
        default=True, description="Publish an int8 copy of the weights beside the float ones, with its dev difference."
    )
    tensorboard: bool = Field(default=True, description="Write TensorBoard event files into the checkpoint folder.")
    train_in_child_process: bool = Field(
        default=False,
        description="Train the challenger in a child process: a training the kernel kills (out of memory) fails the"
        " run, with its alert, instead of taking the worker down.",
    )
    train_processes: int = Field(
        default=1,
        ge=1,
        description="Processes that train the challenger data-parallel (DDP through torchrun, one per GPU; gloo on"
        " the CPU); above 1 it trains in child processes.",
    )

    # --- the gate ----------------------------------------------------------------------------
    gate_metric: Literal["mse", "mae", "spearman", "accuracy", "macro_f1"] | None = Field(
        default=None, description="Primary metric of the gate (default: mse, or macro_f1 for classification)."
    )
    gate_min_improvement: float = Field(
        default=0.0,
        ge=0,
        description="The lower end of the bootstrap interval of the improvement must be above this.",
    )
    gate_rule: Literal["recent", "pooled", "whole"] = Field(
        default="recent",
        description="recent: against a champion, a one-sided test (a challenger no better passes with a chance of at"
        " most 1 - REFIT_GATE_CONFIDENCE) on the dev rows newer than the champion's training data; pooled: the same"
        " one-sided test on every dev row; whole: the two-sided interval on every dev row.",
    )
    gate_recent_min_rows: int = Field(
        default=100, ge=1, description="Fewer dev rows newer than the champion than this: every dev row decides."
    )
    devset_grow: bool = Field(
        default=True,
        description="Each snapshot's dev-split rows join the gate's dev set as a new recorded version (false: the"
        " dev set changes only by `refit devset refresh`).",
    )
    gate_resamples: int = Field(default=1000, ge=100, le=100_000, description="Paired bootstrap resamples.")
    gate_confidence: float = Field(default=0.95, gt=0.5, lt=1, description="Level of the bootstrap interval.")
    gate_first_confidence: float = Field(
        default=0.8,
        gt=0.5,
        lt=1,
        description="Level of the interval a first model needs against the trivial predictor, when it did not"
        " beat every baseline at REFIT_GATE_CONFIDENCE (nothing is in production to protect yet).",
    )
    gate_slice_min_rows: int = Field(default=50, ge=5, description="Slices smaller than this are not gated on.")
    gate_slice_features: Annotated[list[str], NoDecode] = Field(
        default=["category"], description="Behaviour features the gate slices by (numbers in quartile ranges)."
    )
    gate_slice_tolerance: float | None = Field(
        default=None,
        ge=0,
        description="How much worse (in the metric's units) a slice may be; default per metric (mse 0.01, "
        "mae 0.03, spearman 0.05, accuracy 0.03, macro_f1 0.05).",
    )
    gate_calibration_tolerance: float = Field(
        default=0.03, ge=0, description="How much the calibration error (or |mean residual|) may grow."
    )
    gate_first_baselines: Annotated[list[Literal["trivial", "tfidf"]], NoDecode] = Field(
        default=["trivial", "tfidf"], min_length=1, description="Baselines a first model (no champion) must beat."
    )
    gate_approval: bool = Field(
        default=False, description="Pause after a passing gate for an operator's approve or reject in the Prefect UI."
    )
    gate_approval_timeout_s: int = Field(
        default=24 * 3600, ge=1, description="Seconds to wait for approval; then the challenger is rejected."
    )
    gate_approval_poll_s: int = Field(default=10, ge=1, description="How often a paused run checks for an answer.")

    @field_validator("labels", "drift_triggers", "gate_first_baselines", "gate_slice_features", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("feature_types", "column_map", mode="before")
    @classmethod
    def _split_pairs(cls, value: object, info) -> object:
        if not isinstance(value, str):
            return value
        separator = ":" if info.field_name == "feature_types" else "="
        pairs = {}
        for part in filter(None, (p.strip() for p in value.split(","))):
            key, sep, val = part.partition(separator)
            if not sep or not key.strip() or not val.strip():
                raise ValueError(f"expected name{separator}value pairs separated by commas, got {part!r}")
            pairs[key.strip()] = val.strip()
        return pairs

    @field_validator("column_map")
    @classmethod
    def _mapped_columns_are_refits(cls, value: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(value) - set(RESERVED))
        if unknown:
            raise ValueError(f"can only map refit's columns ({', '.join(RESERVED)}), not {', '.join(unknown)}")
        return value

    @field_validator("labels")
    @classmethod
    def _labels_distinct(cls, value: list[str]) -> list[str]:
        if len(value) < 2:
            raise ValueError("needs at least two class names")
        if len(set(value)) != len(value):
            raise ValueError("class names must be distinct")
        return value

    # --- security: a credential may name a Prefect Secret block instead (refit/secrets.py)
    @field_validator(
        "database_url",
        "source_url",
        "slack_webhook_url",
        "serve_token",
        "webhook_url",
        "webhook_token",
        mode="before",
        check_fields=False,
    )
    @classmethod
    def _from_prefect_secret(cls, value: object) -> object:
        from refit.core.secrets import resolve

        return resolve(value)

    @field_validator("database_url", "source_url")
    @classmethod
    def _psycopg2_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        scheme = value.split("://", 1)[0]
        if not scheme.startswith("postgres"):
            raise ValueError(f"expected a postgresql+psycopg2:// URL, got scheme {scheme!r}")
        if scheme in ("postgres", "postgresql"):
            # SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3; refit ships psycopg2.
            value = "postgresql+psycopg2://" + value.split("://", 1)[1]
        return value

    @field_validator("store_url")
    @classmethod
    def _store_scheme(cls, value: str) -> str:
        parsed = urlparse(value)
        if parsed.scheme not in ("s3", "file"):
            raise ValueError(f"expected s3://bucket/prefix or file:///path, got {value!r}")
        if parsed.scheme == "s3" and not parsed.netloc:
            raise ValueError("an s3:// URL needs a bucket name")
        return value

    @model_validator(mode="after")
    def _coherent(self) -> Settings:
        if self.rating_max <= self.rating_min:
            raise ValueError("REFIT_RATING_MAX must be greater than REFIT_RATING_MIN")
        if self.gate_metric is not None:
            fits = {"regression": ("mse", "mae", "spearman"), "classification": ("accuracy", "macro_f1")}
            if self.gate_metric not in fits[self.task]:
                raise ValueError(f"REFIT_GATE_METRIC={self.gate_metric} does not fit REFIT_TASK={self.task}")
        if self.dev_fraction + self.test_fraction >= 0.8:
            raise ValueError("REFIT_DEV_FRACTION + REFIT_TEST_FRACTION leave too little for training")
        # --- model
        if self.early_stopping_metric is not None:
            fits = {"regression": ("mse", "mae", "spearman"), "classification": ("accuracy", "macro_f1")}
            if self.early_stopping_metric not in fits[self.task]:
                raise ValueError(
                    f"REFIT_EARLY_STOPPING_METRIC={self.early_stopping_metric} does not fit REFIT_TASK={self.task}"
                )
        # --- defences and compression
        if self.prune_heads and self.strategy == "lora":
            raise ValueError("REFIT_PRUNE_HEADS does not combine with REFIT_STRATEGY=lora")
        if self.prune_heads and self.epochs is not None and self.epochs < 2:
            raise ValueError("REFIT_PRUNE_HEADS needs REFIT_EPOCHS >= 2: heads go after epoch 1, then it fine-tunes")
        # --- the Postgres source
        if self.source_table and self.source_query:
            raise ValueError("set REFIT_SOURCE_TABLE or REFIT_SOURCE_QUERY, not both")
        return self

    def require_source(self) -> str:
        """The source URL, or a clear error naming what to set."""
        if not self.source_url:
            raise ConfigError("REFIT_SOURCE_URL is not set: the Postgres database that feedback is pulled from")
        if not (self.source_table or self.source_query):
            raise ConfigError("set REFIT_SOURCE_TABLE (a table or view) or REFIT_SOURCE_QUERY (a SELECT)")
        return self.source_url

    def require_database(self) -> str:
        """The database URL, or a clear error naming the setting."""
        if not self.database_url:
            raise ConfigError("REFIT_DATABASE_URL is not set (e.g. postgresql+psycopg2://user@host/db)")
        return self.database_url

    def with_overrides(self, **overrides: object) -> Settings:
        """A copy with some settings replaced, validated as a fresh load is.

        ``model_copy(update=...)`` would skip validation, so a flow or command parameter could set
        a value that ``REFIT_*`` never could (a strategy that does not exist, a port out of range).

        Args:
            **overrides: Field names and their new values; a value of None keeps the setting as
                configured (an empty flow or command parameter means "as configured").

        Returns:
            The new, validated settings; ``self`` is unchanged.

        Raises:
            ConfigError: An unknown name, or a value the setting does not accept (one line that
                names the setting, as :func:`load_settings` gives).
        """
        unknown = sorted(set(overrides) - set(type(self).model_fields))
        if unknown:
            raise ConfigError(f"unknown setting(s): {', '.join(unknown)}")
        values = {**self.model_dump(), **{k: v for k, v in overrides.items() if v is not None}}
        try:
            # model_validate, not Settings(...): the values are complete, so no REFIT_* is read again
            settings = type(self).model_validate(values)
        except ValidationError as exc:
            raise ConfigError(describe_validation_error(exc)) from None
        from refit.core.secrets import mask_settings

        mask_settings(settings)  # an overridden credential is masked in logs like a loaded one
        return settings

    def redacted(self) -> dict:
        """The settings as a dict that is safe to print or store: no credentials."""
        data = self.model_dump(mode="json")
        data["slack_webhook_url"] = "set" if self.slack_webhook_url else None
        from sqlalchemy.engine import make_url

        for name in ("database_url", "source_url"):
            if getattr(self, name):
                data[name] = make_url(getattr(self, name)).render_as_string(hide_password=True)
        return data


# The settings that load_settings() returns inside a use_settings() block: a backtest's sandbox runs
# the real flows against its own schema and store without touching the process environment.
_CURRENT: ContextVar[Settings | None] = ContextVar("refit_settings", default=None)


@contextmanager
def use_settings(settings: Settings) -> Iterator[Settings]:
    """Make :func:`load_settings` return ``settings`` (with any overrides applied) in this block.

    A context variable, not the environment: it holds in this thread and in what runs inside it
    (a flow called here, its tasks and its failure hooks), and nowhere else.

    Args:
        settings: The settings the block's flows and tasks load.

    Yields:
        ``settings``.
    """
    token = _CURRENT.set(settings)
    try:
        yield settings
    finally:
        _CURRENT.reset(token)


def load_settings(**overrides: object) -> Settings:
    """Read and validate the settings; a bad value raises a one-line :class:`ConfigError`.

    Inside :func:`use_settings` the settings given there are returned instead of reading ``REFIT_*``.
    """
    current = _CURRENT.get()
    if current is not None:
        return current.with_overrides(**overrides) if overrides else current
    if "REFIT_STORE_SEND_CHECKSUMS" in os.environ:
        raise ConfigError(
            "REFIT_STORE_SEND_CHECKSUMS was replaced by REFIT_STORE_CHECKSUM (crc32, the default; sha256; or md5 "
            "for a store that refuses S3 checksums): set that instead"
        )
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc)) from None
    from refit.core.secrets import mask_settings

    mask_settings(settings)  # the HTTP clients' request logs never show a credential
    return settings


def describe_validation_error(exc: ValidationError) -> str:
    """One line per bad setting, named as the user would set it."""
    parts = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"] if not isinstance(p, int))
        message = err["msg"].removeprefix("Value error, ")
        parts.append(f"invalid setting {_variable_name(field)}: {message}")
    return "; ".join(parts)


def _variable_name(field: str) -> str:
    """The variable that sets ``field``, with any former name it is still read under.

    An error locates a renamed setting by its field name (a value given in code) or by its first
    alias (a value read from the environment, whichever of its names was set): both name the
    current variable, and the former one is mentioned since the value may have come from it.
    """
    if not field:
        return "settings"
    name = field.upper() if field.upper().startswith("REFIT_") else f"REFIT_{field.upper()}"
    for field_name, info in Settings.model_fields.items():
        if isinstance(info.validation_alias, AliasChoices) and f"REFIT_{field_name.upper()}" == name:
            former = [str(choice) for choice in info.validation_alias.choices if str(choice) != name]
            return f"{name} (or {', '.join(former)})" if former else name
    return name
