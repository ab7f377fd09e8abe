"""Reading feedback files: CSV, JSONL or Parquet, from a path or standard input, into batches of
raw values (:class:`RawBatch`). A row that cannot even be parsed becomes a ``malformed_row`` (or
``invalid_utf8``) :class:`Rejection`; the column mapping and the checks come later
(:mod:`refit.data.validate`).
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pyarrow import csv as pacsv

from refit.core.errors import InputError

FORMATS = ("csv", "jsonl", "parquet")


@dataclass
class Rejection:
    """One row that is not loaded: where it was, why, and its raw values (stored in ``quarantine``)."""

    line_no: int | None
    reason: str
    detail: str
    raw: dict[str, Any]
    feedback_id: str | None = None


@dataclass
class RawBatch:
    """Raw rows as read: a frame of the file's own columns, their line numbers, parse failures."""

    frame: pd.DataFrame
    line_no: np.ndarray
    rejections: list[Rejection] = field(default_factory=list)


def detect_format(name: str, head: bytes) -> str:
    """The format of a file, from its name's suffix, else from its first bytes (CSV by default).

    Args:
        name: the file's name (``<stdin>`` for standard input).
        head: the content's first bytes.

    Returns:
        ``csv``, ``jsonl`` or ``parquet``.
    """
    suffix = Path(name).suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if suffix in (".parquet", ".pq"):
        return "parquet"
    if suffix in (".csv", ".tsv", ".txt"):
        return "csv"
    if head.startswith(b"PAR1"):
        return "parquet"
    if head.lstrip()[:1] == b"{":
        return "jsonl"
    return "csv"


def read_source(source: str | Path, fmt: str | None = None, stdin=None) -> tuple[str, bytes, str]:
    """``(name, content, format)`` of a path, or of standard input when ``source`` is ``-``."""
    if str(source) == "-":
        content = (stdin or sys.stdin.buffer).read()
        name = "<stdin>"
    else:
        path = Path(source)
        try:
            content = path.read_bytes()
        except OSError as exc:
            raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
        name = str(path)
    if fmt is not None and fmt not in FORMATS:
        raise InputError(f"unknown format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if not content.strip():
        raise InputError(f"{name} is empty")
    return name, content, fmt or detect_format(name, content[:64])


def iter_batches(name: str, content: bytes, fmt: str, batch_rows: int = 50_000) -> Iterator[RawBatch]:
    """Batches of raw rows; see :class:`RawBatch`. Unreadable files raise :class:`InputError`."""
    if fmt == "parquet":
        yield from _parquet_batches(name, content, batch_rows)
    elif fmt == "jsonl":
        yield from _jsonl_batches(name, content, batch_rows)
    else:
        yield from _csv_batches(name, content, batch_rows)


def _split_invalid_utf8(content: bytes) -> tuple[bytes, list[Rejection]]:
    """Drop the lines that are not valid UTF-8 (each a rejection); the rest is left as it was."""
    try:
        content.decode("utf-8")
        return content, []
    except UnicodeDecodeError:
        pass
    kept, rejections = [], []
    for number, line in enumerate(content.split(b"\n"), start=1):
        try:
            line.decode("utf-8")
            kept.append(line)
        except UnicodeDecodeError:
            shown = line.decode("utf-8", "backslashreplace")[:2000]
            rejections.append(Rejection(number, "invalid_utf8", "the row is not valid UTF-8", {"_line": shown}))
    return b"\n".join(kept), rejections


def _csv_batches(name: str, content: bytes, batch_rows: int) -> Iterator[RawBatch]:
    if content.count(b"\x00") > len(content) // 10:
        raise InputError(f"{name} looks binary, not CSV")
    content, utf8_rejections = _split_invalid_utf8(content)
    content = content.removeprefix(b"\xef\xbb\xbf")
    header_line = content.split(b"\n", 1)[0].decode("utf-8").rstrip("\r")
    try:
        header = next(csv.reader([header_line], delimiter="\t" if name.endswith(".tsv") else ","))
    except StopIteration:
        raise InputError(f"{name} has no header row") from None
    if len(set(header)) != len(header) or any(not h.strip() for h in header):
        raise InputError(f"{name}: the header has empty or repeated column names")
    malformed: list[Rejection] = []

    def on_invalid(row) -> str:
        malformed.append(
            Rejection(
                row.number,
                "malformed_row",
                f"{row.actual_columns} fields where the header has {row.expected_columns}",
                {"_line": (row.text or "")[:2000]},
            )
        )
        return "skip"

    try:
        reader = pacsv.open_csv(
            io.BytesIO(content),
            read_options=pacsv.ReadOptions(block_size=8 << 20, use_threads=True),
            parse_options=pacsv.ParseOptions(
                delimiter="\t" if name.endswith(".tsv") else ",",
                newlines_in_values=True,
                invalid_row_handler=on_invalid,
            ),
            convert_options=pacsv.ConvertOptions(
                column_types={h: pa.string() for h in header},
                strings_can_be_null=True,
                quoted_strings_can_be_null=False,
            ),
        )
        first_line = 2
        pending_rejections = utf8_rejections
        for record_batch in reader:
            frame = record_batch.to_pandas()
            lines = np.arange(first_line, first_line + len(frame))
            first_line += len(frame)
            for start in range(0, len(frame), batch_rows):
                part = frame.iloc[start : start + batch_rows].reset_index(drop=True)
                yield RawBatch(part, lines[start : start + batch_rows], pending_rejections + malformed)
                pending_rejections, malformed[:] = [], []
        if pending_rejections or malformed:
            yield RawBatch(pd.DataFrame(columns=header), np.array([], dtype=int), pending_rejections + malformed)
    except pa.ArrowInvalid as exc:
        raise InputError(f"{name}: not a readable CSV file ({str(exc).splitlines()[0]})") from None


def _jsonl_batches(name: str, content: bytes, batch_rows: int) -> Iterator[RawBatch]:
    content, utf8_rejections = _split_invalid_utf8(content)
    rows: list[dict] = []
    lines: list[int] = []
    rejections: list[Rejection] = list(utf8_rejections)
    parsed_any = False
    for number, line in enumerate(content.decode("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            rejections.append(Rejection(number, "malformed_row", f"not valid JSON: {exc.msg}", {"_line": line[:2000]}))
            continue
        if not isinstance(value, dict):
            rejections.append(
                Rejection(number, "malformed_row", "a JSONL row must be an object", {"_line": line[:2000]})
            )
            continue
        parsed_any = True
        rows.append(value)
        lines.append(number)
        if len(rows) >= batch_rows:
            yield RawBatch(pd.DataFrame.from_records(rows), np.array(lines), rejections)
            rows, lines, rejections = [], [], []
    if not parsed_any:
        raise InputError(f"{name}: no line is a JSON object; is it really JSONL?")
    if rows or rejections:
        yield RawBatch(pd.DataFrame.from_records(rows), np.array(lines, dtype=int), rejections)


def _parquet_batches(name: str, content: bytes, batch_rows: int) -> Iterator[RawBatch]:
    try:
        parquet = pq.ParquetFile(io.BytesIO(content))
        # Decode every row group once before the first batch commits: a file damaged further on
        # is refused whole rather than half loaded (decoding costs little next to loading).
        for group in range(parquet.num_row_groups):
            parquet.read_row_group(group)
        line = 1
        for record_batch in parquet.iter_batches(batch_size=batch_rows):
            frame = record_batch.to_pandas()
            yield RawBatch(frame, np.arange(line, line + len(frame)))
            line += len(frame)
    except (pa.ArrowException, OSError) as exc:
        raise InputError(f"{name}: not a readable Parquet file ({str(exc).splitlines()[0]})") from None
