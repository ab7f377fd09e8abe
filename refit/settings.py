"""The one typed settings object.

Every setting comes from a ``REFIT_*`` environment variable or an optional ``.env`` file and is
validated when loaded. Nothing else in refit reads ``os.environ`` for its own configuration; the
S3 endpoint and credentials are boto3's own (``AWS_ENDPOINT_URL_S3``, ``AWS_ENDPOINT_URL``, the
standard credential chain), so that every S3-compatible store works the way its docs say.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlparse

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from refit.errors import ConfigError

PACKAGED_MODEL = "packaged:all-MiniLM-L6-v2"
# The columns of a feedback file that refit reads itself; every other column is a feature.
RESERVED = ("feedback_id", "user_id", "item_id", "text", "created_at", "satisfaction", "rating", "label")


class Settings(BaseSettings):
    """refit's configuration, read once and passed down."""

    model_config = SettingsConfigDict(env_prefix="REFIT_", env_file=".env", env_file_encoding="utf-8", extra="ignore")

    # --- where things live -------------------------------------------------------------------
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL of the Postgres that holds feedback and the registry."
    )
    store_url: str = Field(
        default="file://./.refit/store",
        description="Object store root: s3://bucket/prefix or file:///path.",
    )
    work_dir: Path = Field(default=Path(".refit/work"), description="Local scratch for checkpoints.")
    slack_webhook_url: SecretStr | None = Field(default=None, description="Incoming-webhook URL.")

    # --- the model ---------------------------------------------------------------------------
    base_model: str = Field(
        default=PACKAGED_MODEL,
        description="A local Hugging Face model folder, a model id, or the packaged all-MiniLM-L6-v2.",
    )
    task: Literal["regression", "classification"] = "regression"
    labels: Annotated[list[str], NoDecode] = Field(default=["negative", "neutral", "positive"])
    rating_min: float = 1.0
    rating_max: float = 5.0
    max_text_chars: int = Field(default=5000, gt=0)
    ingest_batch_rows: int = Field(default=50_000, ge=1, description="Rows per committed ingest batch.")
    pii_mode: Literal["off", "redact", "drop"] = Field(
        default="redact", description="Emails, phones, card numbers, URLs: replaced, rows dropped, or kept."
    )
    feature_types: Annotated[dict[str, Literal["numeric", "categorical"]], NoDecode] = Field(
        default_factory=dict,
        description="name:numeric|categorical,...; when set, only these columns are features, type-checked.",
    )
    column_map: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict, description="refit column=file column,... e.g. text=review_body,created_at=ts"
    )

    # --- splits -----------------------------------------------------------------------------
    dev_fraction: float = Field(default=0.15, gt=0, lt=0.5)
    test_fraction: float = Field(default=0.15, ge=0, lt=0.5)

    # --- drift -------------------------------------------------------------------------------
    drift_min_rows: int = Field(default=100, ge=1, description="Below this, drift says 'insufficient data'.")
    drift_sample_cap: int = Field(default=2000, ge=10, description="Rows per side fed to Evidently.")
    drift_share: float = Field(default=0.5, gt=0, le=1, description="Share of drifted columns that triggers.")
    drift_trigger_columns: Annotated[list[str], NoDecode] = Field(
        default=["text", "target"], description="A drift in any of these columns triggers on its own."
    )

    # --- training ----------------------------------------------------------------------------
    epochs: int = Field(default=3, ge=1)
    batch_size: int = Field(default=16, ge=1)
    learning_rate: float = Field(default=5e-5, gt=0)
    weight_decay: float = Field(default=0.01, ge=0)
    warmup_ratio: float = Field(default=0.1, ge=0, lt=1)
    max_length: int = Field(default=128, ge=8, le=512)
    patience: int = Field(default=1, ge=0)
    seed: int = 13
    retention_days: int | None = Field(
        default=None, ge=1, description="Feedback older than this many days is left out of training (kept)."
    )
    max_train_rows: int | None = Field(default=None, ge=1, description="Newest rows kept for training.")
    device: Literal["auto", "cpu", "cuda"] = "auto"

    # --- the gate ----------------------------------------------------------------------------
    gate_metric: Literal["mse", "mae", "spearman", "accuracy", "macro_f1"] | None = Field(
        default=None, description="Primary metric of the gate (default: mse, or macro_f1 for classification)."
    )
    gate_min_improvement: float = Field(
        default=0.0, ge=0, description="The challenger must beat the champion by more than this."
    )

    @field_validator("labels", "drift_trigger_columns", mode="before")
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

    @field_validator("database_url")
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
        return self

    def require_database(self) -> str:
        """The database URL, or a clear error naming the setting."""
        if not self.database_url:
            raise ConfigError("REFIT_DATABASE_URL is not set (e.g. postgresql+psycopg2://user@host/db)")
        return self.database_url

    def redacted(self) -> dict:
        """The settings as a dict that is safe to print or store: no credentials."""
        data = self.model_dump(mode="json")
        data["slack_webhook_url"] = "set" if self.slack_webhook_url else None
        if self.database_url:
            from sqlalchemy.engine import make_url

            data["database_url"] = make_url(self.database_url).render_as_string(hide_password=True)
        return data


def load_settings(**overrides: object) -> Settings:
    """Read and validate the settings; a bad value raises a one-line :class:`ConfigError`."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc)) from None


def describe_validation_error(exc: ValidationError) -> str:
    """One line per bad setting, named as the user would set it."""
    parts = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"] if not isinstance(p, int))
        name = f"REFIT_{field.upper()}" if field else "settings"
        message = err["msg"].removeprefix("Value error, ")
        parts.append(f"invalid setting {name}: {message}")
    return "; ".join(parts)
