"""Where a model's objects live under the store root (``REFIT_STORE_URL``), per model name
(``REFIT_MODEL_NAME``)::

    models/<name>/versions/<version>/...             checkpoint files, MODEL_CARD.md
    models/<name>/versions/<version>/manifest.json   size and SHA-256 of every file, version,
                                                     lineage; written last, never overwritten
    models/<name>/champion.json                      the pointer: version, manifest URI and
                                                     SHA-256, promoted at; moved last, by ETag
    models/<name>/candidate.json                     the version in live rollout, its stage and
                                                     share (only while one is live), by ETag
    reports/drift/<id>/report.{html,json}
    adapted/<base key>/<corpus version>/...          an encoder adapted to the feedback's text
                                                     (refit.training.adapt), adaptation.json last

The keys of a version and of the pointer are built here only.
"""

from __future__ import annotations

DEFAULT_MODEL = "satisfaction"


def model_prefix(version: str, model_name: str = DEFAULT_MODEL) -> str:
    """The store prefix under which ``version`` of ``model_name`` keeps its files and manifest."""
    return f"models/{model_name}/versions/{version}"


def pointer_key(model_name: str = DEFAULT_MODEL) -> str:
    """The store key of ``model_name``'s champion pointer."""
    return f"models/{model_name}/champion.json"


def candidate_key(model_name: str = DEFAULT_MODEL) -> str:
    """The store key of ``model_name``'s candidate pointer (the version in live rollout)."""
    return f"models/{model_name}/candidate.json"


def adapted_prefix(base_key: str, corpus_version: str | None = None) -> str:
    """The store prefix of the encoder adaptations of one base model, or of the one on ``corpus_version``."""
    return f"adapted/{base_key}" + (f"/{corpus_version}" if corpus_version else "")


POINTER = pointer_key()
