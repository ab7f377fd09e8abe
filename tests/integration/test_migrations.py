"""Migrations: ordered, recorded, idempotent, all-or-nothing."""

import pytest
from sqlalchemy import text

from refit.core.errors import RefitError
from refit.data.db import applied_migrations, get_engine, load_migrations, upgrade

TABLES = {"feedback", "quarantine", "dataset_snapshots", "drift_reports", "model_versions", "promotion_log"}


def test_upgrade_twice_is_a_no_op(empty_db_url):
    engine = get_engine(empty_db_url)
    first = upgrade(engine)
    assert first == [m.name for m in load_migrations()]
    assert upgrade(engine) == []
    assert applied_migrations(engine) == first
    with engine.connect() as conn:
        tables = set(conn.execute(text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")).scalars())
    assert tables >= TABLES


def test_failing_migration_rolls_back_whole(empty_db_url, tmp_path):
    engine = get_engine(empty_db_url)
    folder = tmp_path / "sql"
    folder.mkdir()
    (folder / "001_ok.sql").write_text("CREATE TABLE good (id INT);")
    (folder / "002_bad.sql").write_text("CREATE TABLE half (id INT);\nSELECT * FROM no_such_table;")
    with pytest.raises(RefitError, match="002_bad failed and was rolled back"):
        upgrade(engine, folder)
    assert applied_migrations(engine) == ["001_ok"]
    with engine.connect() as conn:
        assert conn.execute(text("SELECT to_regclass('half')")).scalar() is None
        assert conn.execute(text("SELECT to_regclass('good')")).scalar() == "good"


def test_promotion_log_is_append_only(engine):
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO promotion_log (challenger_version, decision, metric, reason)"
                " VALUES ('v1', 'rejected', 'mse', 'test')"
            )
        )
    with pytest.raises(Exception, match="append-only"), engine.begin() as conn:
        conn.execute(text("DELETE FROM promotion_log"))
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM promotion_log")).scalar() == 1


def test_incremental_pull_is_an_index_range_scan(engine):
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO feedback (feedback_id, text, satisfaction, label, content_hash, created_at)"
                " SELECT 'f' || g, 'text ' || g, 0.5, 'neutral', md5(g::text), now()"
                " FROM generate_series(1, 20000) g"
            )
        )
        conn.execute(text("ANALYZE feedback"))
        plan = "\n".join(conn.execute(text("EXPLAIN SELECT * FROM feedback WHERE id > 19900 ORDER BY id")).scalars())
    assert "Index Scan using feedback_pkey" in plan
