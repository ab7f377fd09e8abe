"""The sync flow (issue 16) on a real Prefect API, against a real source database: it pulls, the
drift check syncs before it snapshots, and a source that is down is retried, then alerts once,
with the cursor unmoved."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from refit.data.db import get_engine

from helpers import SOURCE_MAP, count, free_port, source_database


@pytest.fixture
def source(pg_admin):
    with source_database(pg_admin) as db:
        yield db


@pytest.fixture
def sync_env(monkeypatch, tmp_path, db_url, slack, source):
    values = {
        "REFIT_DATABASE_URL": db_url,
        "REFIT_STORE_URL": f"file://{tmp_path / 'store'}",
        "REFIT_WORK_DIR": str(tmp_path / "work"),
        "REFIT_SLACK_WEBHOOK_URL": slack.url,
        "REFIT_SOURCE_URL": source["url"],
        "REFIT_SOURCE_TABLE": "app_reviews",
        "REFIT_SOURCE_CURSOR": "updated_at",
        "REFIT_COLUMN_MAP": SOURCE_MAP,
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    return values


def _add(source, n: int) -> None:
    with source["owner"].begin() as conn:
        conn.execute(
            text("INSERT INTO app_reviews (review_body, stars, user_ref) SELECT 'review ' || g, 1 + g % 5, 'u'"
                 " FROM generate_series(1, :n) g"),
            {"n": n},
        )  # fmt: skip


def test_sync_then_drift_check_starts_from_what_the_sync_brought_in(prefect_api, sync_env, source):
    from refit.flows.drift_check import drift_check_flow
    from refit.flows.sync import sync_flow

    engine = get_engine(sync_env["REFIT_DATABASE_URL"])
    _add(source, 5)
    summary = sync_flow()
    assert (summary["rows_read"], summary["accepted"], summary["source"]) == (5, 5, "pg:app_reviews")
    _add(source, 3)  # arrives after the scheduled sync: the drift check syncs it before its snapshot
    drift_check_flow()
    with engine.connect() as conn:
        snapshot_rows = conn.execute(text("SELECT total_rows FROM dataset_snapshots")).scalar()
    assert snapshot_rows == 8 == count(engine, "feedback")


def test_a_source_that_is_down_is_retried_then_alerts_once_and_the_cursor_stays(
    prefect_api, sync_env, source, slack, monkeypatch
):
    from refit.data.source import read_cursor
    from refit.flows.sync import sync_flow

    engine = get_engine(sync_env["REFIT_DATABASE_URL"])
    _add(source, 2)
    sync_flow()
    before = read_cursor(engine, "pg:app_reviews")
    slack.messages.clear()
    monkeypatch.setenv("REFIT_SOURCE_URL", f"postgresql://nobody@127.0.0.1:{free_port()}/gone")
    state = sync_flow(return_state=True)
    assert state.is_failed()
    assert "cannot reach the source" in str(state.result(raise_on_failure=False))
    failures = [m for m in slack.messages if m.get("refit", {}).get("kind") == "failure"]
    assert len(failures) == 1 and "cannot reach the source" in str(failures[0])
    assert read_cursor(engine, "pg:app_reviews") == before
    assert count(engine, "feedback") == 2
