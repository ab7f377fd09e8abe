"""Small helpers shared by the tests."""

from __future__ import annotations

import csv
import json
import os
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


def checkpoint(tmp_path: Path, name: str) -> Path:
    """A small folder with the files a checkpoint must have (the registry never loads weights)."""
    folder = tmp_path / name
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"name": name}))
    (folder / "model.safetensors").write_bytes(os.urandom(4096))
    (folder / "refit.json").write_text(json.dumps({"task": "regression", "version": name}))
    return folder


def gate_decision(promote: bool, reason: str = "test decision"):
    """A gate decision as the gate returns it (for registry tests that need no model)."""
    from refit.gate import GateDecision

    return GateDecision(promote, "mse", 0.01, 0.02, 0.01, 0.0, "champion", reason, reasons=[reason])


def publish_and_record(engine, store, tmp_path: Path, version: str, decision, champion_version=None, **kwargs) -> str:
    """Publish a small checkpoint as ``version`` and record the gate's decision; returns the outcome."""
    from refit.registry import publish_checkpoint, record_decision

    published = publish_checkpoint(store, checkpoint(tmp_path, version), version)
    return record_decision(
        engine,
        store,
        published,
        snapshot_id=None,
        task="regression",
        metrics={"dev": {"mse": 0.01}},
        decision=decision,
        champion_version=champion_version,
        **kwargs,
    )
