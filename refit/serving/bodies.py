"""The request and response bodies: validated, so a bad body is a 422 with the reason, never a 500.

An item may carry the ids that later feedback joins its logged prediction on (``feedback_id``, or
``user_id`` and ``item_id``); ``user_id`` also keeps a user on one model during a canary. A request
may carry its own ``request_id`` (one is made when it does not). None of them changes the answer.
"""

# No `from __future__ import annotations`: pydantic and FastAPI read these annotations at runtime.
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, StrictStr, create_model, field_validator

# A feature value is a scalar, or a list of numbers for a precomputed embedding vector.
FeatureValue = StrictStr | float | bool | list[float] | None
ID_CHARS = 256  # ids are keys to join on, not payloads


def _an_id(description: str):
    return Field(default=None, min_length=1, max_length=ID_CHARS, description=description)


def encodable(value):
    """``value`` with any lone UTF-16 surrogate replaced by U+FFFD (anything but a string as it is,
    for the type check after).

    JSON can carry lone surrogates ("\\ud800") that no tokenizer or UTF-8 encoder accepts; they
    become U+FFFD like any other undecodable character.
    """
    if not isinstance(value, str):
        return value
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return value


class Item(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(description="The feedback text.")
    features: dict[str, FeatureValue] | None = Field(default=None, description="Behaviour features by name.")
    user_id: StrictStr | None = _an_id(
        "Who wrote it: later feedback joins on it, and a canary keeps a user on one model."
    )
    item_id: StrictStr | None = _an_id("What it is about: later feedback joins on user and item.")
    feedback_id: StrictStr | None = _an_id("The feedback's own id, when it has one: later labels join on it.")

    @field_validator("text", "user_id", "item_id", "feedback_id", mode="before")
    @classmethod
    def _encodable(cls, value):
        return encodable(value)


class RequestBody(BaseModel):
    """What every request body has beside its items."""

    model_config = ConfigDict(extra="forbid")

    request_id: StrictStr | None = _an_id("The caller's id of this request (logged with its predictions).")

    @field_validator("request_id", mode="before")
    @classmethod
    def _encodable(cls, value):
        return encodable(value)


def request_model(name: str, max_items: int) -> type[BaseModel]:
    """The request body with its item limit in the schema, so the OpenAPI spec documents it."""
    return create_model(
        name,
        __base__=RequestBody,
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
