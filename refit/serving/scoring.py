"""Batch scoring of a feedback file with the champion (``refit predict``)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd

from refit.core.errors import InputError, NoChampionError
from refit.core.settings import Settings
from refit.data.read import iter_batches, read_source
from refit.models.predict import Predictor
from refit.registry.pointer import read_pointer
from refit.registry.store import ObjectStore, store_for
from refit.registry.versions import checkout


def read_rows(path: Path, column_map: dict[str, str] | None = None) -> tuple[pd.DataFrame, list[dict]]:
    """The rows of a feedback file to score, and the rows that cannot be read.

    The file is read as ``refit ingest`` reads it (CSV, JSONL or Parquet; a line that is not UTF-8
    or not a row is reported, not fatal), and its columns are renamed by ``column_map``.

    Args:
        path: the file.
        column_map: refit column -> file column (``REFIT_COLUMN_MAP``, ``--map``).

    Returns:
        The readable rows, with a ``_row`` column (the row's line in the file, the header not
        counted), and one ``{"row", "error"}`` dict per row that could not be read.

    Raises:
        InputError: the file cannot be read at all, is empty, or has no text column.
    """
    name, content, fmt = read_source(path)
    renamed = {src: dst for dst, src in (column_map or {}).items()}
    header_lines = 1 if fmt == "csv" else 0
    frames, unreadable = [], []
    for batch in iter_batches(name, content, fmt):
        frame = batch.frame.rename(columns=renamed)
        frame["_row"] = np.asarray(batch.line_no, dtype=int) - header_lines
        frames.append(frame)
        unreadable += [
            {
                "row": r.line_no - header_lines if r.line_no else None,
                "feedback_id": _raw_id(r.raw.get("_line"), fmt, list(batch.frame.columns), column_map or {}),
                "error": r.detail,
                "utf8": r.reason == "invalid_utf8",
            }
            for r in batch.rejections
        ]
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["_row"])
    dropped = sorted(u["row"] for u in unreadable if u.pop("utf8") and u["row"] is not None)
    frame["_row"] = _renumbered(frame["_row"].to_numpy(dtype=int), dropped)
    if "text" not in frame.columns and len(frame):
        hint = " (map one with REFIT_COLUMN_MAP=text=COLUMN or --map text=COLUMN)"
        raise InputError(f"{name} has no 'text' column{hint}")
    if not len(frame) and not unreadable:
        raise InputError(f"{name} has no rows to score")
    return frame, unreadable


def _renumbered(rows: np.ndarray, dropped: list[int]) -> np.ndarray:
    """The rows' numbers in the file: the reader numbers the rows it kept one after another, so
    each row after a dropped line (not UTF-8, numbered where it was) moves down by those before it."""
    out, skipped = rows.copy(), 0
    for i, row in enumerate(rows):  # rows are in file order
        while skipped < len(dropped) and dropped[skipped] <= row + skipped:
            skipped += 1
        out[i] = row + skipped
    return out


def _raw_id(line: str | None, fmt: str, header: list[str], column_map: dict[str, str]) -> str | None:
    """The feedback id of a row that could not be read, from its raw line when it still parses
    (a line that is not UTF-8 is kept with its bad bytes escaped), so its report names it."""
    key = column_map.get("feedback_id", "feedback_id")
    if not line:
        return None
    try:
        if fmt == "jsonl":
            value = json.loads(line).get(key)
        else:
            cells = next(csv.reader([line]))
            value = dict(zip(header, cells, strict=False)).get(key) if len(cells) == len(header) else None
    except (ValueError, AttributeError, StopIteration, csv.Error):
        return None
    return str(value) if value not in (None, "") else None


def no_champion_message(settings: Settings) -> str:
    """Why there is nothing to serve: the store that was looked in, and the setting that chooses it."""
    return (
        f"the store {settings.store_url} has no champion pointer for '{settings.model_name}' yet "
        "(REFIT_STORE_URL chooses the store): run `refit run` first, or point REFIT_STORE_URL at the store "
        'that holds one (after the demo: eval "$(refit demo --resume)")'
    )


def champion_predictor(settings: Settings, store: ObjectStore | None = None) -> Predictor:
    """The champion named by the store's pointer, downloaded once and verified."""
    store = store or store_for(settings)
    pointer = read_pointer(store, settings.model_name)
    if pointer is None:
        raise NoChampionError(no_champion_message(settings))
    predictor = Predictor(checkout(settings, pointer["version"]))
    predictor.version = pointer["version"]
    return predictor


def score_file(
    settings: Settings, path: Path, output: Path | None, as_json: bool = False, column_map: dict[str, str] | None = None
) -> dict:
    """Score every row of a feedback file with the champion, as ``/predict`` scores a request.

    Each output row carries the input's ``feedback_id`` (empty when it has none) and ``row`` (its
    line in the file, the header not counted), the fields of ``/predict`` (``satisfaction``, or
    ``label`` and ``probabilities``), ``truncated`` (the text was cut to
    ``REFIT_SERVE_MAX_TEXT_CHARS``) and ``model_version``. A row that cannot be scored (not UTF-8,
    no text) gets ``error``, its reason, and the others are scored.

    Args:
        settings: the settings (the store, the column map, the text limit).
        path: the feedback file (CSV, JSONL or Parquet).
        output: where to write (``.jsonl``/``.ndjson`` as JSON lines, else CSV); None: return it.
        as_json: with no ``output``, JSON lines instead of CSV.
        column_map: refit column -> file column, over ``REFIT_COLUMN_MAP``.

    Returns:
        ``rows``, ``scored``, ``errors`` (the unscored rows), ``model_version``, ``output``, and
        ``content`` (the scored rows as text) when ``output`` is None.
    """
    frame, unreadable = read_rows(path, {**settings.column_map, **(column_map or {})})
    predictor = champion_predictor(settings)
    limit = settings.serve_max_text_chars
    texts = frame["text"] if "text" in frame.columns else pd.Series([None] * len(frame), dtype=object)
    has_text = texts.map(_has_text)
    scorable = frame[has_text.to_numpy(dtype=bool)].reset_index(drop=True)
    cut = [str(t)[:limit] for t in scorable["text"]] if len(scorable) else []
    records = predictor.to_records(predictor.predict(cut, scorable)) if cut else []
    ids = frame["feedback_id"] if "feedback_id" in frame.columns else pd.Series([None] * len(frame), dtype=object)
    scored = iter(zip(records, scorable["text"] if len(scorable) else [], strict=True))
    rows = []
    for row_no, fid, ok in zip(frame["_row"], ids, has_text, strict=True):
        fid = None if fid is None or (isinstance(fid, float) and fid != fid) or fid == "" else str(fid)
        row = {"feedback_id": fid, "row": int(row_no)}
        if ok:
            record, text = next(scored)
            row.update(_served_fields(record, predictor.task))
            row.update({"truncated": len(str(text)) > limit, "model_version": predictor.version, "error": None})
        else:
            row.update({"model_version": None, "error": "no text"})
        rows.append(row)
    rows += [{**u, "model_version": None} for u in unreadable]
    rows.sort(key=lambda r: (r["row"] is None, r["row"] or 0))
    errors = [r for r in rows if r["error"]]
    jsonl = (output.suffix.lower() in (".jsonl", ".ndjson")) if output is not None else as_json
    content = _jsonl(rows) if jsonl else _csv(rows, predictor.task, predictor.labels)
    result = {
        "rows": len(rows),
        "scored": len(rows) - len(errors),
        "errors": [{"row": r["row"], "feedback_id": r["feedback_id"], "error": r["error"]} for r in errors],
        "model_version": predictor.version,
        "output": str(output) if output else None,
    }
    if output is None:
        result["content"] = content
    else:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(content, encoding="utf-8")
    return result


def _has_text(value) -> bool:
    """Whether a cell holds a text to score: a non-blank string, or a number read as one (JSONL)."""
    if isinstance(value, str):
        return bool(value.strip())
    return isinstance(value, int | float) and not isinstance(value, bool) and value == value  # NaN is no text


def _served_fields(record: dict, task: str) -> dict:
    """A prediction record in ``/predict``'s words: ``satisfaction``, or ``label`` and ``probabilities``."""
    if task == "regression":
        return {"satisfaction": record["prediction"]}
    return {"label": record["prediction"], "probabilities": {k[2:]: v for k, v in record.items() if k[:2] == "p_"}}


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


def _csv(rows: list[dict], task: str, labels: list[str] | None) -> str:
    """The rows as CSV: the same columns for every row, probabilities as a JSON object in one cell."""
    served = ["satisfaction"] if task == "regression" else ["label", "probabilities"]
    fields = ["feedback_id", "row", *served, "truncated", "model_version", "error"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        cells = {k: row.get(k) for k in fields}
        if isinstance(cells.get("probabilities"), dict):
            cells["probabilities"] = json.dumps(cells["probabilities"])
        writer.writerow({k: "" if v is None else v for k, v in cells.items()})
    return buffer.getvalue()
