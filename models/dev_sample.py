"""A checkpoint's own dev rows, a small sample of them kept in the folder as ``dev_sample.jsonl``.

The training run writes it beside the weights (:func:`write_dev_sample`), so that a check made
later with nothing but the folder runs on rows the model was measured on, not on fixed texts:
serving's int8 check (:func:`refit.models.quantize.quantized`) reads it (:func:`read_dev_sample`).
It is published and checksummed with the rest of the folder.

Each line is one row: ``{"text": ..., "features": {...}}``. The sample is small
(:data:`DEV_SAMPLE_ROWS`, spread evenly over the dev rows) and holds feedback text, which may
carry personal data: refit redacts it at ingest (:mod:`refit.data.pii`, unless
``REFIT_PII_MODE=off``), so these are the same redacted texts the snapshot and the training run
already hold, and a version's readers can already read its training lineage. Delete the file
from a folder (before publishing) to keep none; the check then falls back to fixed texts.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

DEV_SAMPLE_FILE = "dev_sample.jsonl"
DEV_SAMPLE_ROWS = 64


def _plain(value):
    """A feature value as JSON holds it: numpy scalars and arrays as numbers and lists, NaN as null."""
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return None if value is pd.NaT or value is pd.NA else value


def write_dev_sample(
    folder: Path, texts: list[str], features: pd.DataFrame | None = None, rows: int = DEV_SAMPLE_ROWS
) -> int:
    """Write up to ``rows`` dev rows, spread evenly over them, into ``folder``.

    Args:
        folder: the checkpoint folder (before publishing: the file is then in its manifest).
        texts: the dev texts.
        features: their behaviour features (a frame row-aligned with ``texts``), or None.
        rows: the most rows to keep.

    Returns:
        The rows written (none when there are no dev rows: no file is written then).
    """
    n = len(texts)
    if n == 0 or rows <= 0:
        return 0
    index = np.unique(np.linspace(0, n - 1, min(rows, n)).round().astype(int))
    frame = features.reset_index(drop=True) if features is not None else None
    lines = []
    for i in index:
        row = {} if frame is None else {k: _plain(v) for k, v in frame.iloc[int(i)].items()}
        lines.append(json.dumps({"text": str(texts[int(i)]), "features": row}, ensure_ascii=False, default=str))
    (Path(folder) / DEV_SAMPLE_FILE).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return len(lines)


def read_dev_sample(folder: Path | None) -> tuple[list[str], pd.DataFrame | None] | None:
    """The dev sample of ``folder``: its texts and their features (None when no row has any), or
    None when the folder has no sample."""
    path = Path(folder) / DEV_SAMPLE_FILE if folder is not None else None
    if path is None or not path.is_file():
        return None
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not rows:
        return None
    texts = [str(r["text"]) for r in rows]
    features = [r.get("features") or {} for r in rows]
    return texts, (pd.DataFrame(features) if any(features) else None)
