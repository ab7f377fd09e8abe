"""The Postgres source (issue 16) against two real databases: the team's (its own read-only role)
and refit's. Late commits from real concurrent transactions, edits, deletes, a source that is
down or slow, and a source whose columns changed."""

from __future__ import annotations

import random
import threading
import time

import psycopg2
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from refit.core.errors import InputError, RefitError
from refit.data.db import get_engine
from refit.data.source import SourceSpec, read_cursor, sync_source
from refit.data.validate import IngestRules

from helpers import count, free_port, source_database

MAP = (
    ("feedback_id", "id"),
    ("text", "review_body"),
    ("rating", "stars"),
    ("user_id", "user_ref"),
    ("created_at", "created"),
)
RULES = IngestRules(labels=("negative", "neutral", "positive"), column_map=MAP)


@pytest.fixture
def source(pg_admin):
    """The team's database, with its table, read by refit through a read-only role."""
    with source_database(pg_admin) as db:
        yield {**db, "dsn": _dsn(db["owner_url"])}


def _dsn(url: str) -> str:
    from sqlalchemy.engine import make_url

    u = make_url(url)
    return f"host={u.host} port={u.port or 5432} user={u.username} dbname={u.database}"


def _insert(owner, rows: list[dict]) -> None:
    if not rows:
        return
    with owner.begin() as conn:
        conn.execute(
            text("INSERT INTO app_reviews (review_body, stars, user_ref, sessions) VALUES (:t, :s, :u, :n)"),
            [
                {"t": r["text"], "s": r.get("stars", 4), "u": r.get("user", "u1"), "n": r.get("sessions", 3)}
                for r in rows
            ],
        )


def _stored(engine) -> dict[str, str]:
    with engine.connect() as conn:
        return dict(conn.execute(text("SELECT feedback_id, text FROM feedback WHERE origin IS NOT NULL")).all())


def _spec(source, **kw) -> SourceSpec:
    return SourceSpec(url=source["url"], table="app_reviews", key="id", cursor=kw.pop("cursor", "id"), **kw)


def test_sync_validates_redacts_quarantines_and_then_takes_only_what_is_new(engine, source):
    _insert(
        source["owner"],
        [
            {"text": "great shoes"},
            {"text": "write me at jane@example.com or @jane_doe"},
            {"text": ""},  # quarantined: missing_text
            {"text": "too many stars", "stars": 9},  # quarantined: rating_out_of_range
            {"text": "ok"},
        ],
    )
    spec = _spec(source)
    first = sync_source(engine, spec, RULES)
    assert (first.rows_read, first.accepted, first.quarantined) == (5, 3, 2)
    assert first.reasons == {"missing_text": 1, "rating_out_of_range": 1}
    assert _stored(engine)["2"] == "write me at [EMAIL] or [HANDLE]"
    with engine.connect() as conn:
        features = conn.execute(text("SELECT features FROM feedback WHERE feedback_id = '1'")).scalar()
        origin = conn.execute(text("SELECT DISTINCT origin FROM feedback")).scalar()
    assert features == {"sessions": 3}  # a behaviour feature; updated_at is bookkeeping, not a feature
    assert origin == "pg:app_reviews"
    assert read_cursor(engine, spec.name)["cursor_value"] == "5"

    _insert(source["owner"], [{"text": "later one"}, {"text": "later two"}])
    second = sync_source(engine, spec, RULES)
    assert (second.rows_read, second.accepted, second.duplicates) == (2, 2, 0)
    third = sync_source(engine, spec, RULES)
    assert third.rows_read == 0
    assert count(engine, "feedback") == 5


def test_a_view_or_a_query_is_a_source_too(engine, source):
    _insert(source["owner"], [{"text": "fine", "stars": 4}, {"text": "meh", "stars": 1}])
    with source["owner"].begin() as conn:
        conn.execute(text("CREATE VIEW good_reviews AS SELECT * FROM app_reviews WHERE stars >= 2"))
        conn.execute(text(f"GRANT SELECT ON good_reviews TO {make_url(source['url']).username}"))
    view = SourceSpec(url=source["url"], table="good_reviews", key="id", cursor="id")
    assert sync_source(engine, view, RULES).accepted == 1
    query = SourceSpec(url=source["url"], query="SELECT * FROM app_reviews WHERE review_body LIKE '%eh'", key="id")
    summary = sync_source(engine, query, RULES)
    assert (summary.accepted, summary.source) == (1, query.name) and query.name.startswith("pg:query-")


def _writer(dsn: str, stop: threading.Event, seed: int, log: list, errors: list) -> None:
    """Inserts rows in transactions of its own; some are held open, some roll back."""
    rng = random.Random(seed)
    conn = psycopg2.connect(dsn)
    try:
        while not stop.is_set():
            with conn.cursor() as cur:
                n = rng.randint(1, 3)
                cur.execute(
                    "INSERT INTO app_reviews (review_body, stars, user_ref) SELECT 'review ' || g, 1 + g %% 5, 'w'"
                    " FROM generate_series(1, %s) g RETURNING id",
                    (n,),
                )
                ids = [r[0] for r in cur.fetchall()]
                time.sleep(rng.choice([0, 0, 0.01, 0.05, 0.3]))  # some transactions are held open
                if rng.random() < 0.1:
                    conn.rollback()
                else:
                    conn.commit()
                    log.append((time.monotonic(), ids))
    except Exception as exc:  # surfaced by the test
        errors.append(exc)
    finally:
        conn.close()


@pytest.mark.parametrize("cursor", ["id", "updated_at"])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_late_commits_are_taken_exactly_once(engine, source, cursor, seed):
    spec = _spec(source, cursor=cursor)
    stop, log, errors = threading.Event(), [], []
    writers = [
        threading.Thread(target=_writer, args=(source["dsn"], stop, seed * 10 + i, log, errors)) for i in range(4)
    ]
    for w in writers:
        w.start()
    seen_at: list[tuple[float, int]] = []  # when a sync ran, and the highest id stored by then
    held = 0
    deadline = time.monotonic() + 6
    while time.monotonic() < deadline:
        summary = sync_source(engine, spec, RULES, batch_rows=50)
        held += summary.held_back
        with engine.connect() as conn:
            top = conn.execute(text("SELECT max(feedback_id::bigint) FROM feedback")).scalar() or 0
        seen_at.append((time.monotonic(), top))
        time.sleep(random.Random(seed).random() * 0.1)
    stop.set()
    for w in writers:
        w.join()
    assert not errors
    sync_source(engine, spec, RULES)

    with source["owner"].connect() as conn:
        at_source = {str(i) for i in conn.execute(text("SELECT id FROM app_reviews")).scalars()}
    stored = _stored(engine)
    assert set(stored) == at_source  # every committed row, none missing, none from a rolled-back transaction
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM feedback_history")).scalar() == 0  # none taken twice
        assert conn.execute(text("SELECT count(*) FROM quarantine")).scalar() == 0
    # the hazard was real: rows committed after a sync had already stored a higher id
    late = sum(1 for committed, ids in log if any(synced < committed and min(ids) < top for synced, top in seen_at))
    assert late > 0 and held > 0


def test_a_cursor_value_drawn_before_the_snapshot_and_written_after_it_is_taken(engine, source, monkeypatch):
    """A statement draws its row's id before the write gives its transaction an id: at the
    snapshot that transaction is not open yet, and a higher id is already visible."""
    import refit.data.source as source_module

    monkeypatch.setattr(source_module, "SETTLE_S", 1.0)
    _insert(source["owner"], [{"text": "first"}, {"text": "second"}])
    with source["owner"].connect() as conn:
        early = conn.execute(text("SELECT nextval('app_reviews_id_seq')")).scalar()  # drawn, not yet written
        conn.commit()
    _insert(source["owner"], [{"text": "drawn later, written first"}])
    describe, written = source_module._describe, []

    def write_once_the_snapshot_is_taken(cur, spec):
        # _describe runs on the sync's transaction right after its snapshot: the write lands
        # after the snapshot, exactly (polling pg_stat_activity also caught the connection's
        # set-up queries, and wrote before it).
        if not written:
            with source["owner"].connect() as conn:
                conn.execute(
                    text(
                        "INSERT INTO app_reviews (id, review_body, stars, user_ref) VALUES (:i, 'drawn early', 4, 'u')"
                    ),
                    {"i": early},
                )
                conn.commit()
            written.append(early)
        return describe(cur, spec)

    monkeypatch.setattr(source_module, "_describe", write_once_the_snapshot_is_taken)
    first = sync_source(engine, _spec(source), RULES)
    assert written == [early]
    assert str(early) not in _stored(engine) and first.rows_read == 3  # the snapshot could not see it
    sync_source(engine, _spec(source), RULES)
    assert set(_stored(engine)) == {"1", "2", "3", "4"}


def test_an_edit_replaces_the_row_and_the_old_model_still_names_the_old_version(engine, source):
    from refit.data.snapshots import SplitConfig, snapshot_rows, superseded_rows, take_snapshot

    _insert(source["owner"], [{"text": "battery died after a week", "stars": 1}, {"text": "fine"}])
    spec = _spec(source, cursor="updated_at")
    sync_source(engine, spec, RULES)
    config = SplitConfig()
    old = take_snapshot(engine, config)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO model_versions (version, snapshot_id, task, uri, manifest_sha256, metrics, status)"
                " VALUES ('v1', :s, 'regression', 'file:///x', 'abc', '{}', 'candidate')"
            ),
            {"s": old.id},
        )
        old_hash = conn.execute(text("SELECT content_hash FROM feedback WHERE feedback_id = '1'")).scalar()

    with source["owner"].begin() as conn:  # the user edits the review
        conn.execute(
            text("UPDATE app_reviews SET review_body = 'battery fine after a swap', stars = 4,"
                 " updated_at = clock_timestamp() WHERE id = 1")
        )  # fmt: skip
    summary = sync_source(engine, spec, RULES)
    assert (summary.rows_read, summary.edited, summary.accepted) == (1, 1, 1)
    assert _stored(engine)["1"] == "battery fine after a swap"
    assert count(engine, "feedback") == 2

    new = take_snapshot(engine, config)
    assert new is not None and new.new_rows == 1  # the next snapshot carries the new version
    trained = snapshot_rows(engine, new, config)
    assert "battery fine after a swap" in set(trained["text"]) and "battery died after a week" not in set(
        trained["text"]
    )
    # the model trained on the old version is still traceable to it
    [row] = superseded_rows(engine, old)
    assert (row["feedback_id"], row["content_hash"], row["text"]) == ("1", old_hash, "battery died after a week")


def test_rows_deleted_at_the_source_are_forgotten_by_the_reconciliation_and_recorded(engine, source, tmp_path):
    from refit.data.ingest import ingest_file

    from helpers import write_csv

    _insert(source["owner"], [{"text": f"review {i}", "user": f"u{i}"} for i in range(6)])
    spec = _spec(source, reconcile_hours=24)
    first = sync_source(engine, spec, RULES)  # the first sync reconciles (never done before)
    assert first.reconciled and first.deleted == 0
    # a file's rows are not the source's: the reconciliation leaves them alone
    path = write_csv(tmp_path / "f.csv", [{"text": "from a file", "rating": 3, "created_at": "2024-01-01T00:00:00Z"}])
    ingest_file(engine, path, IngestRules(labels=RULES.labels))
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO dataset_snapshots (watermark_from, watermark_to, new_rows, total_rows, split_counts,"
                " content_hash, split_config) VALUES (0, 100, 6, 6, '{}', 'h', '{}')"
            )
        )
        conn.execute(
            text(
                "INSERT INTO model_versions (version, snapshot_id, task, uri, manifest_sha256, metrics, status)"
                " VALUES ('v1', 1, 'regression', 'file:///x', 'abc', '{}', 'candidate')"
            )
        )
    with source["owner"].begin() as conn:
        conn.execute(text("DELETE FROM app_reviews WHERE id IN (2, 5)"))

    assert not sync_source(engine, spec, RULES).reconciled  # not due: reconciled under 24 h ago
    assert count(engine, "feedback") == 7
    summary = sync_source(engine, spec, RULES, reconcile=True)
    assert summary.reconciled and summary.deleted == 2
    assert set(_stored(engine)) == {"1", "3", "4", "6"}
    assert count(engine, "feedback") == 5  # the file's row stays
    with engine.connect() as conn:
        log = conn.execute(
            text("SELECT reason, rows_deleted, affected_versions, user_hash, keys_hash FROM forget_log")
        ).one()
    assert (log.reason, log.rows_deleted, log.affected_versions, log.user_hash) == ("source_delete", 2, ["v1"], None)
    assert log.keys_hash and "2" not in log.keys_hash.split()


def test_a_source_that_is_down_or_too_slow_fails_clearly_and_moves_nothing(engine, source):
    _insert(source["owner"], [{"text": "one"}, {"text": "two"}])
    spec = _spec(source)
    sync_source(engine, spec, RULES)
    before = read_cursor(engine, spec.name)
    _insert(source["owner"], [{"text": "three"}, {"text": "four"}, {"text": "five"}])

    down = SourceSpec(
        url=f"postgresql+psycopg2://nobody@127.0.0.1:{free_port()}/x", table="app_reviews", key="id", cursor="id"
    )
    with pytest.raises(RefitError, match="cannot reach the source") as info:
        sync_source(engine, down, RULES)
    assert not info.value.permanent  # the task retries it

    slow = SourceSpec(
        url=source["url"],
        query="SELECT * FROM app_reviews t WHERE (SELECT true FROM pg_sleep(0.3 + 0 * t.id))",  # 0.3 s a row
        key="id",
        cursor="id",
        timeout_s=1,
    )
    with pytest.raises(RefitError, match="statement timeout") as info:
        sync_source(engine, slow, RULES)
    assert not info.value.permanent
    assert read_cursor(engine, slow.name) is None
    assert read_cursor(engine, spec.name) == before
    assert count(engine, "feedback") == 2  # nothing half-synced


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ("ALTER TABLE app_reviews RENAME COLUMN sessions TO sessions_7d", "source column 'sessions' is gone"),
        ("ALTER TABLE app_reviews DROP COLUMN user_ref", "source column 'user_ref' is gone"),
        ("ALTER TABLE app_reviews ALTER COLUMN sessions TYPE TEXT", "'sessions' changed type from integer to text"),
    ],
)
def test_a_changed_source_is_a_one_line_error_and_nothing_is_synced(engine, source, change, needle):
    _insert(source["owner"], [{"text": "one"}])
    spec = _spec(source)
    sync_source(engine, spec, RULES)
    with source["owner"].begin() as conn:
        conn.execute(text(change))
        conn.execute(text("INSERT INTO app_reviews (review_body, stars) VALUES ('two', 4)"))
    with pytest.raises(InputError) as info:
        sync_source(engine, spec, RULES)
    message = str(info.value)
    assert needle in message and "\n" not in message
    assert count(engine, "feedback") == 1


def test_refit_sync_from_settings_alone(db_url, source):
    """The README's setup: REFIT_* settings, then `refit sync`; a missing source is one line."""
    import json

    from helpers import SOURCE_MAP, assert_one_line_error
    from helpers import refit_cli as refit

    _insert(source["owner"], [{"text": "from the app"}, {"text": "@handle says hi"}])
    env = {"REFIT_DATABASE_URL": db_url}
    assert_one_line_error(refit("sync", env=env), "REFIT_SOURCE_URL is not set")
    env.update(REFIT_SOURCE_URL=source["url"], REFIT_SOURCE_TABLE="app_reviews", REFIT_COLUMN_MAP=SOURCE_MAP)
    done = refit("sync", "--json", env=env)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert (summary["accepted"], summary["source"], summary["reconciled"]) == (2, "pg:app_reviews", True)
    assert _stored(get_engine(db_url))["2"] == "[HANDLE] says hi"
    again = refit("sync", "--no-reconcile", env=env)
    assert again.returncode == 0 and "0 rows read" in again.stdout


def _synced(engine) -> dict:
    with engine.connect() as conn:
        return {
            "feedback": conn.execute(
                text(
                    "SELECT feedback_id, user_id, text, satisfaction, label, features::text, content_hash, created_at,"
                    " origin FROM feedback ORDER BY id"
                )
            ).all(),
            "quarantine": conn.execute(
                text("SELECT source, feedback_id, reason, raw::text, raw_hash FROM quarantine ORDER BY id")
            ).all(),
            "cursor": read_cursor(engine, "pg:app_reviews")["cursor_value"],
        }


def test_a_first_sync_copied_straight_into_feedback_equals_the_staged_one(new_database, source, monkeypatch):
    from refit.data import load

    rows = [{"text": f"review {i}, call +44 20 7946 0958" if i % 7 == 0 else f"review {i}"} for i in range(300)]
    rows[3]["stars"] = 9  # quarantined
    _insert(source["owner"], rows)
    direct, staged = get_engine(new_database()), get_engine(new_database())
    first = sync_source(direct, _spec(source), RULES, batch_rows=100)
    with monkeypatch.context() as forced:
        forced.setattr(load, "_any_stored", lambda conn, ids: True)  # every batch through staging
        sync_source(staged, _spec(source), RULES, batch_rows=100)
    assert first.accepted == 299
    assert _synced(direct) == _synced(staged)

    before = _synced(direct)
    with direct.begin() as conn:  # read every row again: nothing may be added or replaced
        conn.execute(text("UPDATE source_cursors SET cursor_value = NULL, cursor_key = NULL, marks = '[]'"))
    again = sync_source(direct, _spec(source), RULES, batch_rows=100)
    assert (again.rows_read, again.accepted, again.edited) == (300, 0, 0)
    assert _synced(direct) == before


def test_a_first_sync_needs_no_key_scan_but_a_restarted_one_still_finds_deletes(engine, source):
    _insert(source["owner"], [{"text": f"review {i}"} for i in range(6)])
    first = sync_source(engine, _spec(source), RULES)
    assert (first.reconciled, first.deleted) == (True, 0)  # marked done: nothing could be gone yet
    assert read_cursor(engine, "pg:app_reviews")["reconciled_at"] is not None

    with source["owner"].begin() as conn:
        conn.execute(text("DELETE FROM app_reviews WHERE id = 2"))
    with engine.begin() as conn:  # a cursor lost (or reset) while refit holds the source's rows
        conn.execute(text("DELETE FROM source_cursors"))
    again = sync_source(engine, _spec(source), RULES)
    assert (again.reconciled, again.deleted) == (True, 1)
    assert "2" not in _stored(engine) and len(_stored(engine)) == 5


def test_texts_with_newlines_and_quotes_survive_the_spool_cut_into_blocks(engine, source, monkeypatch):
    from refit.data import source as source_module

    monkeypatch.setattr(source_module, "_SPOOL_BLOCK", 64)  # a block boundary inside most records
    texts = [f'line one\nline "two", {i}\n\n"quoted"\r\nend {"x" * (i % 90)}' for i in range(40)]
    _insert(source["owner"], [{"text": t} for t in texts])
    summary = sync_source(engine, _spec(source), RULES, batch_rows=7)
    assert (summary.rows_read, summary.accepted) == (40, 40)
    assert sorted(_stored(engine).values()) == sorted(t.strip() for t in texts)
