"""Ingestion from every source, with column mapping, configured features, PII, requeue, and an
interrupted ingest that is run again."""

import io
import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
from sqlalchemy import text

from refit.core.errors import InputError
from refit.core.settings import load_settings
from refit.data.db import get_engine
from refit.data.ingest import ingest
from refit.data.quarantine import quarantine_report, requeue_quarantine
from refit.data.validate import IngestRules
from refit.ops.synth import generate_feedback, write_feedback

from helpers import count, quarantine_reasons, write_csv

RULES = IngestRules(labels=("negative", "neutral", "positive"))


def stored(engine) -> set[tuple[str, str]]:
    with engine.connect() as conn:
        return set(conn.execute(text("SELECT feedback_id, content_hash FROM feedback")).tuples())


def test_parquet_jsonl_and_csv_give_the_same_rows(new_database, tmp_path):
    rows = generate_feedback(120, seed=11)
    frame = pd.DataFrame(rows)
    frame.to_parquet(tmp_path / "f.parquet")
    results = []
    for path in (
        write_feedback(rows, tmp_path / "f.csv"),
        write_feedback(rows, tmp_path / "f.jsonl"),
        tmp_path / "f.parquet",
    ):
        engine = get_engine(new_database())
        assert ingest(engine, path, RULES).accepted == 120
        results.append(stored(engine))
    assert results[0] == results[1] == results[2]


def test_standard_input_with_explicit_format(engine, tmp_path):
    data = write_feedback(generate_feedback(30, seed=2), tmp_path / "f.jsonl").read_bytes()
    summary = ingest(engine, "-", RULES, stdin=io.BytesIO(data))
    assert summary.source == "<stdin>" and summary.accepted == 30


def test_column_mapping_loads_a_teams_own_export(engine, tmp_path):
    rows = [
        {"review_id": f"r{i}", "review_body": f"great kettle {i}", "ts": "2026-01-02T03:04:05Z", "stars": 5}
        for i in range(5)
    ]
    path = write_csv(tmp_path / "export.csv", rows)
    mapped = IngestRules(
        labels=RULES.labels,
        column_map=(("feedback_id", "review_id"), ("text", "review_body"), ("created_at", "ts"), ("rating", "stars")),
    )
    assert ingest(engine, path, mapped).accepted == 5
    with engine.connect() as conn:
        assert conn.execute(text("SELECT min(feedback_id), max(satisfaction) FROM feedback")).one() == ("r0", 1.0)


def test_mapping_a_missing_column_is_one_line(engine, tmp_path):
    path = write_feedback(generate_feedback(3, seed=1), tmp_path / "f.csv")
    with pytest.raises(InputError, match="review_body"):
        ingest(engine, path, IngestRules(labels=RULES.labels, column_map=(("text", "review_body"),)))


def test_configured_feature_types_quarantine_a_wrong_type(engine, tmp_path):
    rows = generate_feedback(4, seed=1)
    rows[2]["sessions_7d"] = "lots"
    typed = IngestRules(labels=RULES.labels, feature_types=(("sessions_7d", "numeric"), ("device", "categorical")))
    summary = ingest(engine, write_csv(tmp_path / "f.csv", rows), typed)
    assert summary.accepted == 3 and summary.reasons == {"bad_feature": 1}
    with engine.connect() as conn:
        features = conn.execute(text("SELECT features FROM feedback LIMIT 1")).scalar()
    assert set(features) == {"sessions_7d", "device"}  # only the configured features are kept


@pytest.mark.parametrize("content", [b"PAR1 truncated parquet", b"PAR1" + b"\x00" * 50 + b"PAR1"])
def test_truncated_parquet_is_one_line_and_changes_nothing(engine, tmp_path, content):
    path = tmp_path / "broken.parquet"
    path.write_bytes(content)
    with pytest.raises(InputError, match="Parquet") as info:
        ingest(engine, path, RULES)
    assert "\n" not in str(info.value)
    assert count(engine, "feedback") == count(engine, "quarantine") == 0


def test_pii_is_redacted_before_storage_and_in_quarantine(engine, tmp_path):
    rows = generate_feedback(3, seed=1)
    rows[0]["text"] = "email me at bob@example.com or call +1 202 555 0143"
    rows[1]["text"] = "reach me at bob@example.com"
    rows[1]["rating"] = 9  # quarantined: its raw row must not keep the address either
    ingest(engine, write_csv(tmp_path / "f.csv", rows), RULES)
    with engine.connect() as conn:
        texts = conn.execute(text("SELECT text FROM feedback")).scalars().all()
        raw = conn.execute(text("SELECT raw::text FROM quarantine")).scalar_one()
    assert "email me at [EMAIL] or call [PHONE]" in texts
    assert "bob@example.com" not in " ".join(texts) + raw


def test_unparseable_rows_are_redacted_in_quarantine(engine, tmp_path):
    path = tmp_path / "f.jsonl"
    good = json.dumps({"text": "fine", "created_at": "2026-01-01T00:00:00Z", "rating": 4})
    path.write_text(good + "\n" + '{"text": "mail bob@example.com", broken\n')
    assert ingest(engine, path, RULES).reasons == {"malformed_row": 1}
    with engine.connect() as conn:
        raw = conn.execute(text("SELECT raw::text FROM quarantine")).scalar_one()
    assert "[EMAIL]" in raw and "bob@example.com" not in raw


def test_pii_drop_mode_quarantines_the_row(engine, tmp_path):
    rows = generate_feedback(3, seed=1)
    rows[0]["text"] = "email me at bob@example.com"
    drop = IngestRules(labels=RULES.labels, pii_mode="drop")
    summary = ingest(engine, write_csv(tmp_path / "f.csv", rows), drop)
    assert summary.accepted == 2 and summary.reasons == {"contains_pii": 1}


def test_requeue_after_a_config_change(engine, tmp_path, monkeypatch):
    rows = generate_feedback(6, seed=1)
    rows[0]["rating"] = 7
    rows[1]["rating"] = 10
    ingest(engine, write_csv(tmp_path / "f.csv", rows), RULES)
    assert quarantine_report(engine)["counts"] == {"rating_out_of_range": 2}
    monkeypatch.setenv("REFIT_RATING_MAX", "10")  # the scale was 1..10 all along
    result = requeue_quarantine(engine, load_settings())
    assert result == {"requeued": 2, "accepted": 2, "still_quarantined": 0}
    assert count(engine, "feedback") == 6
    assert quarantine_report(engine)["counts"] == {}


def test_killed_ingest_then_rerun_equals_one_clean_run(new_database, tmp_path):
    rows = generate_feedback(12_000, seed=5)
    for row in rows[::500]:
        row["rating"] = 42  # some quarantine traffic too
    path = write_feedback(rows, tmp_path / "big.csv")
    clean, interrupted = new_database(), new_database()
    env = {**os.environ, "REFIT_INGEST_BATCH_ROWS": "500"}

    subprocess.run(
        [sys.executable, "-m", "refit.cli", "ingest", str(path)],
        env={**env, "REFIT_DATABASE_URL": clean},
        check=True,
        capture_output=True,
    )

    engine = get_engine(interrupted)
    proc = subprocess.Popen(
        [sys.executable, "-m", "refit.cli", "ingest", str(path)],
        env={**env, "REFIT_DATABASE_URL": interrupted},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while count(engine, "feedback") < 2000 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = count(engine, "feedback")
    assert 0 < partial < len(rows) - 24, "the kill must land mid-file"

    rerun = subprocess.run(
        [sys.executable, "-m", "refit.cli", "ingest", str(path), "--json"],
        env={**env, "REFIT_DATABASE_URL": interrupted},
        check=True,
        capture_output=True,
        text=True,
    )
    assert json.loads(rerun.stdout)["duplicates"] >= partial
    clean_engine = get_engine(clean)
    assert stored(engine) == stored(clean_engine)
    assert quarantine_reasons(engine) == quarantine_reasons(clean_engine) == {"rating_out_of_range": 24}


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("utf16.csv", "text,created_at,rating\nhello,2026-01-01,4\n".encode("utf-16")),
        ("random.csv", bytes(range(256)) * 40),
    ],
    ids=["wrong-encoding", "not-csv"],
)
def test_unreadable_file_is_one_line_and_changes_nothing(engine, tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(InputError) as info:
        ingest(engine, path, RULES)
    assert "\n" not in str(info.value)
    assert count(engine, "feedback") == count(engine, "quarantine") == count(engine, "ingest_runs") == 0
