"""Which behaviour features a model trains on, and as what.

``REFIT_FEATURE_TYPES`` names them when it is set. Otherwise, with ``REFIT_FEATURES=auto`` (the
default), their types are the feature schema's (:mod:`refit.data.schema`) when one is recorded;
without one they are inferred from the training rows' features: a feature is ``numeric`` when
every present value is a finite number, else ``categorical``. Either way a feature is left out when it
is almost always missing, constant, or an identifier (a categorical whose values mostly occur
once); the vector feature (``REFIT_VECTOR_FEATURE``) is fused on its own path, never as a scalar.
The trainer records the result in the checkpoint (``train_config.feature_types`` and the feature
schema of ``refit.json``), so a served model reads exactly the features it learned.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import pandas as pd

from refit.core.settings import Settings

MIN_PRESENT_SHARE = 0.05  # a feature present in fewer of the training rows is left out
MIN_REPEATED_SHARE = 0.5  # a categorical whose repeated values cover fewer present rows is an identifier
MAX_CATEGORIES = 256  # as the fusion head's vocabulary (refit.models.fusion.MAX_CATEGORIES)


def infer_feature_types(
    frame: pd.DataFrame | None, skip: Iterable[str] = (), schema_types: dict[str, str] | None = None
) -> dict[str, str]:
    """The types of the behaviour features worth training on, inferred from the training rows.

    Args:
        frame: the training rows' features, one column per feature (as
            :func:`refit.data.snapshots.features_frame` gives them); None or empty for none.
        skip: features never to type (the vector feature).
        schema_types: the feature schema's types (:attr:`refit.data.schema.SchemaVersion.types`):
            when given, only its numeric and categorical features are considered, typed as there,
            and still left out when these rows make them useless.

    Returns:
        Feature name to ``numeric`` or ``categorical``, sorted by name; ``{}`` when none qualifies.
    """
    if frame is None or frame.empty:
        return {}
    skip = set(skip)
    types: dict[str, str] = {}
    for name in sorted(map(str, frame.columns)):
        given = None if schema_types is None else schema_types.get(name)
        if name in skip or (schema_types is not None and given not in ("numeric", "categorical")):
            continue
        present = frame[name][frame[name].map(_present)]
        if len(present) < max(2, MIN_PRESENT_SHARE * len(frame)):
            continue  # almost always missing
        if present.map(lambda v: isinstance(v, (list, tuple, dict, np.ndarray))).any():
            continue  # a list or an object is not a scalar feature
        if present.astype(str).nunique() < 2:
            continue  # constant: it tells the rows nothing
        if given == "numeric" or (given is None and _all_numbers(present)):
            types[name] = "numeric"
            continue
        counts = present.astype(str).value_counts()
        repeated = counts[counts >= 2].head(MAX_CATEGORIES)
        if repeated.sum() >= MIN_REPEATED_SHARE * len(present):
            types[name] = "categorical"
    return types


def feature_types_for(
    settings: Settings, frame: pd.DataFrame | None, schema_types: dict[str, str] | None = None
) -> dict[str, str]:
    """The behaviour features a model trains on: ``REFIT_FEATURE_TYPES`` when set; else, with
    ``REFIT_FEATURES=auto``, the feature schema's types when there is one, else the types inferred
    from ``frame``, leaving out the features useless in ``frame`` (:func:`infer_feature_types`);
    else none. The vector feature is never among them (it has its own place in the model).

    Args:
        settings: refit's settings.
        frame: the training rows' features.
        schema_types: the recorded feature schema's types (None when there is none).
    """
    vector = settings.vector_feature
    if settings.feature_types:
        return {name: kind for name, kind in settings.feature_types.items() if name != vector}
    if settings.features == "none":
        return {}
    return infer_feature_types(frame, skip=[vector] if vector else [], schema_types=schema_types)


def _present(value) -> bool:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    return not (isinstance(value, str) and not value.strip())


def _all_numbers(values: pd.Series) -> bool:
    """Whether every value is a finite number (booleans are categories, not numbers)."""
    if values.map(lambda v: isinstance(v, (bool, np.bool_))).any():
        return False
    numbers = pd.to_numeric(values, errors="coerce")
    return bool(numbers.notna().all() and np.isfinite(numbers.astype(float)).all())
