"""Small helpers shared by the tests."""

from __future__ import annotations

import csv
from pathlib import Path

from sqlalchemy import text


def write_csv(path: Path, rows: list[dict], fields: list[str] | None = None) -> Path:
    fields = fields or list(dict.fromkeys(k for row in rows for k in row))
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return path


def count(engine, table: str) -> int:
    with engine.connect() as conn:
        return conn.execute(text(f"SELECT count(*) FROM {table}")).scalar()


def quarantine_reasons(engine) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT reason, count(*) FROM quarantine GROUP BY reason")).all()
    return {reason: n for reason, n in rows}
