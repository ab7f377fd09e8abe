"""Small helpers shared by the tests."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
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
    from refit.gate.rule import GateDecision

    return GateDecision(promote, "mse", 0.01, 0.02, 0.01, 0.0, "champion", reason, reasons=[reason])


def publish_and_record(engine, store, tmp_path: Path, version: str, decision, champion_version=None, **kwargs) -> str:
    """Publish a small checkpoint as ``version`` and record the gate's decision; returns the outcome."""
    from refit.registry.promotion import record_decision
    from refit.registry.versions import publish_checkpoint

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


# --- live rollout (issue 18) -------------------------------------------------------------------
def log_prediction_rows(engine, rows: list[dict]) -> None:
    """``prediction_log`` rows shaped as ``refit serve`` writes them during a rollout: one per
    (request item, model), both models' rows of a request with the same ``request_id``, the role,
    whether it was the answer served, the rollout's id, the ids the request carried, the model
    call's ``latency_ms``, and ``error`` (prediction columns NULL) for a failed call. ``logged_at``
    defaults to now."""
    import hashlib

    columns = {
        "model_version": None,
        "text": "a review",
        "satisfaction": None,
        "label": None,
        "role": "champion",
        "served": True,
        "rollout_id": None,
        "request_id": None,
        "feedback_id": None,
        "user_id": None,
        "item_id": None,
        "latency_ms": None,
        "error": None,
        "logged_at": None,
    }
    values = []
    for row in rows:
        row = {**columns, **row}
        row["text_sha256"] = hashlib.sha256(row["text"].encode()).hexdigest()
        row["text_chars"] = len(row.pop("text"))
        if row["error"] is not None:
            row["satisfaction"] = row["label"] = None
        values.append(row)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO prediction_log (model_version, text_sha256, text_chars, satisfaction, label, role, served,"
                " rollout_id, request_id, feedback_id, user_id, item_id, latency_ms, error, logged_at)"
                " VALUES (:model_version, :text_sha256, :text_chars, :satisfaction, :label, :role, :served,"
                " :rollout_id, :request_id, :feedback_id, :user_id, :item_id, :latency_ms, :error,"
                " coalesce(CAST(:logged_at AS TIMESTAMPTZ), now()))"
            ),
            values,
        )


def scored_request(rollout: dict, request_id: str, champion, candidate, served: str = "champion", **ids) -> list[dict]:
    """Both models' rows for one request item of ``rollout``: ``champion`` and ``candidate`` are
    ``(prediction, latency_ms)``, or ``(None, latency_ms, "error text")`` for a failed call; a
    prediction is a satisfaction score, or a label name (str). ``ids`` are ``user_id``, ``item_id``,
    ``feedback_id``, ``text`` and ``logged_at``."""
    rows = []
    for role, version, scored in (
        ("champion", rollout["champion_version"], champion),
        ("candidate", rollout["version"], candidate),
    ):
        prediction, latency, *error = scored
        rows.append(
            {
                "model_version": version,
                "role": role,
                "served": role == served,
                "rollout_id": rollout["id"],
                "request_id": request_id,
                "satisfaction": prediction if isinstance(prediction, float) else None,
                "label": prediction if isinstance(prediction, str) else None,
                "latency_ms": latency,
                "error": error[0] if error else None,
                **ids,
            }
        )
    return rows


def add_feedback(engine, rows: list[dict]) -> None:
    """Feedback rows as ingest stores them (``feedback_id``, ``user_id``, ``item_id``,
    ``satisfaction`` or ``label``, ``created_at``)."""
    if not rows:
        return
    values = [
        {
            "feedback_id": None,
            "user_id": None,
            "item_id": None,
            "satisfaction": None,
            "label": None,
            "text": "later feedback",
            **row,
        }
        for row in rows
    ]
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO feedback (feedback_id, user_id, item_id, text, satisfaction, label, content_hash,"
                " created_at) VALUES (:feedback_id, :user_id, :item_id, :text, :satisfaction, :label,"
                " md5(:feedback_id), :created_at)"
            ),
            values,
        )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def refit_cli(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the ``refit`` command in a subprocess, with ``env`` added to this process's environment."""
    return subprocess.run(
        [sys.executable, "-m", "refit.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=timeout,
    )


@contextmanager
def serving(app) -> Iterator[str]:
    """Serve the ASGI ``app`` with real uvicorn on a free port in a thread; yields its base URL
    once ``/healthz`` answers, and stops the server on exit."""
    import httpx
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def assert_one_line_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("refit: error:")
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0]


# A gate decision as the notifications receive it (tests of the gate message).
GATE = {
    "promote": False,
    "metric": "mse",
    "challenger_score": 0.0123,
    "champion_score": 0.0119,
    "improvement": -0.0004,
    "min_improvement": 0.0,
    "against": "champion",
    "reason": "the 95% interval of the improvement reaches below 0",
    "reasons": ["mse improvement -0.0004, 95% interval -0.0021 to +0.0013: not above 0"],
    "interval": (-0.0021, 0.0013),
    "comparisons": {
        "champion": {
            "challenger": 0.0123,
            "reference": 0.0119,
            "point": -0.0004,
            "low": -0.0021,
            "high": 0.0013,
            "passed": False,
        },
    },  # fmt: skip
    "failed_slices": ["category=books"],
    "slice_checks": {
        "category=books": {"rows": 61, "challenger": 0.031, "champion": 0.012, "improvement": -0.019, "passed": False}
    },
    "dev_set": 1,
    "dev_rows": 240,
    "confidence": 0.95,
}


# --- the Postgres source (issue 16) ------------------------------------------------------------
SOURCE_TABLE = """
CREATE TABLE app_reviews (
    id           BIGSERIAL PRIMARY KEY,
    review_body  TEXT,
    stars        INTEGER,
    user_ref     TEXT,
    sessions     INTEGER,
    created      TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at   TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX app_reviews_updated_idx ON app_reviews (updated_at, id);
"""
# The source's column names for refit's columns, as REFIT_COLUMN_MAP says it.
SOURCE_MAP = "feedback_id=id,text=review_body,rating=stars,user_id=user_ref,created_at=created"


@contextmanager
def source_database(pg_admin) -> Iterator[dict]:
    """A team's database with its ``app_reviews`` table, read through a read-only role of its own.

    Yields:
        ``owner`` (an engine that writes), ``url`` (the read-only role's URL) and ``name``.
    """
    import uuid

    from refit.data.db import get_engine

    name = f"refit_source_{uuid.uuid4().hex[:8]}"
    reader = f"reader_{uuid.uuid4().hex[:8]}"
    with pg_admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
        conn.execute(text(f"CREATE ROLE {reader} LOGIN"))
    owner_url = pg_admin.url.set(database=name).render_as_string(hide_password=False)
    owner = get_engine(owner_url)
    with owner.begin() as conn:
        conn.exec_driver_sql(SOURCE_TABLE)
        conn.execute(text(f"GRANT SELECT ON app_reviews TO {reader}"))
    url = pg_admin.url.set(database=name, username=reader).render_as_string(hide_password=False)
    try:
        yield {"owner": owner, "url": url, "name": name, "owner_url": owner_url}
    finally:
        owner.dispose()
        with pg_admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            conn.execute(text(f"DROP ROLE IF EXISTS {reader}"))


# --- drift ---------------------------------------------------------------------------------------
def ingest_rows(settings, rows: list[dict], path: Path):
    """Write ``rows`` to ``path`` and ingest them with the settings' rules, as ``refit ingest`` does."""
    from refit.data.db import get_engine
    from refit.data.ingest import ingest_file
    from refit.data.validate import IngestRules
    from refit.ops.synth import write_feedback

    return ingest_file(
        get_engine(settings.database_url), write_feedback(rows, path), IngestRules.from_settings(settings)
    )


def dev_split_rows(n: int, split, start=None, seed: int = 31) -> list[dict]:
    """Base-regime rows of the drift scenarios whose ids fall in the dev split, so the gate's dev set
    is large enough for the quality signals' intervals."""
    from refit.data.snapshots import split_of
    from refit.sim.scenarios import base_rows

    rows = []
    for row in base_rows(n, seed, id_prefix="dev", start=start):
        suffix = 0
        while split_of(f"{row['feedback_id']}-{suffix}", split) != "dev":
            suffix += 1
        rows.append({**row, "feedback_id": f"{row['feedback_id']}-{suffix}"})
    return rows
