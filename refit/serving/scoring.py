"""Batch scoring of a feedback file with the champion (``refit predict``)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pandas as pd

from refit.core.errors import InputError, NoChampionError
from refit.core.settings import Settings
from refit.models.predict import Predictor
from refit.registry.pointer import read_pointer
from refit.registry.store import ObjectStore, store_for
from refit.registry.versions import checkout


def read_texts(path: Path) -> pd.DataFrame:
    """A CSV or JSONL file with a ``text`` column, as a frame (a clear error when it is not)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path} does not exist")
    try:
        if path.suffix.lower() in (".jsonl", ".ndjson"):
            frame = pd.read_json(path, lines=True, dtype=False)
        else:
            frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise InputError(f"cannot read {path}: {str(exc).splitlines()[0]}") from None
    if "text" not in frame.columns:
        raise InputError(f"{path} has no 'text' column")
    return frame


def champion_predictor(settings: Settings, store: ObjectStore | None = None) -> Predictor:
    """The champion named by the store's pointer, downloaded once and verified."""
    store = store or store_for(settings)
    pointer = read_pointer(store, settings.model_name)
    if pointer is None:
        raise NoChampionError("the store has no champion pointer yet: run `refit run` first")
    predictor = Predictor(checkout(settings, pointer["version"]))
    predictor.version = pointer["version"]
    return predictor


def score_file(settings: Settings, path: Path, output: Path | None) -> dict:
    """Score every row of ``path``; write CSV or JSONL to ``output`` (or return it as text)."""
    frame = read_texts(path)
    predictor = champion_predictor(settings)
    # behaviour features are the file's other columns, by name (a text-only model ignores them)
    prediction = predictor.predict(frame["text"].astype(str).tolist(), frame.reset_index(drop=True))
    records = predictor.to_records(prediction)
    ids = frame["feedback_id"].tolist() if "feedback_id" in frame else [None] * len(frame)
    rows = [
        {"feedback_id": fid, **record, "model_version": predictor.version}
        for fid, record in zip(ids, records, strict=True)
    ]
    jsonl = output is not None and output.suffix.lower() in (".jsonl", ".ndjson")
    if jsonl:
        content = "".join(json.dumps(row) + "\n" for row in rows)
    else:
        buffer = io.StringIO()
        fields = list(rows[0]) if rows else ["feedback_id", "prediction", "model_version"]
        writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        content = buffer.getvalue()
    result = {"rows": len(rows), "model_version": predictor.version, "output": str(output) if output else None}
    if output is None:
        result["content"] = content
    else:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(content, encoding="utf-8")
    return result
