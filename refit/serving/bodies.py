"""The request and response bodies: validated, so a bad body is a 422 with the reason, never a 500."""

# No `from __future__ import annotations`: pydantic and FastAPI read these annotations at runtime.
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, StrictStr, create_model, field_validator

# A feature value is a scalar, or a list of numbers for a precomputed embedding vector.
FeatureValue = StrictStr | float | bool | list[float] | None


class Item(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(description="The feedback text.")
    features: dict[str, FeatureValue] | None = Field(default=None, description="Behaviour features by name.")

    @field_validator("text")
    @classmethod
    def _encodable(cls, value: str) -> str:
        # JSON can carry lone UTF-16 surrogates ("\ud800") that no tokenizer or UTF-8 encoder
        # accepts; they become U+FFFD like any other undecodable character.
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            value = value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        return value


def request_model(name: str, max_items: int) -> type[BaseModel]:
    """The request body with its item limit in the schema, so the OpenAPI spec documents it."""
    return create_model(
        name,
        __config__=ConfigDict(extra="forbid"),
        items=(list[Item], Field(min_length=1, max_length=max_items, description="What to score.")),
    )


class ErrorBody(BaseModel):
    detail: str = Field(description="What went wrong.")


def feature_error(exc: Exception) -> RequestValidationError:
    """A model that cannot read a request's features: a 422 shaped like every other 422.

    Args:
        exc: what the model raised on the features.

    Returns:
        The validation error to raise.
    """
    message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return RequestValidationError([{"type": "value_error", "loc": ("body", "items", "features"), "msg": message}])
