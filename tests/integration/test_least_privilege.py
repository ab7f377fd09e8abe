"""Least privilege on the real Postgres: sql/roles/grants.sql gives the flows' role what a real
ingest, snapshot and registry write need, and nothing that changes the schema; serving's role can
only append predictions. Serving reads the store with read-only access."""

import re
import uuid
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from refit.data.ingest import ingest_file
from refit.data.snapshots import SplitConfig, take_snapshot
from refit.data.validate import IngestRules
from refit.ops.synth import generate_feedback, write_feedback
from refit.registry.store import open_store

from helpers import gate_decision, publish_and_record

pytestmark = pytest.mark.integration
GRANTS = Path(__file__).resolve().parents[2] / "sql" / "roles" / "grants.sql"


def psql_script(path: Path, variables: dict[str, str]) -> list[str]:
    """The statements of a psql script with its :"name" variables as quoted identifiers (what
    `psql -v name=value` does), split on the semicolons that end lines."""
    body = "\n".join(line for line in path.read_text().splitlines() if not line.lstrip().startswith("--"))
    body = re.sub(r':"(\w+)"', lambda m: '"' + variables[m.group(1)].replace('"', '""') + '"', body)
    return [s.strip() for s in re.split(r";\s*\n", body) if s.strip()]


@pytest.fixture
def roles(pg_admin, db_url):
    """A fresh app role and serve role (unique names) with the grants applied to this test's
    database; their engines. Dropped afterwards."""
    suffix = uuid.uuid4().hex[:8]
    names = {"app": f"refit_app_{suffix}", "serve": f"refit_serve_{suffix}"}
    database = make_url(db_url).database
    with pg_admin.connect() as conn:
        for name in names.values():
            conn.execute(text(f"CREATE ROLE \"{name}\" LOGIN PASSWORD 'not-checked-under-trust'"))
    admin_here = create_engine(db_url, isolation_level="AUTOCOMMIT")
    with admin_here.connect() as conn:
        for statement in psql_script(GRANTS, {**names, "owner": "postgres", "dbname": database}):
            conn.execute(text(statement))
    engines = {role: create_engine(make_url(db_url).set(username=name)) for role, name in names.items()}
    yield engines
    for engine in engines.values():
        engine.dispose()
    with admin_here.connect() as conn:
        for name in names.values():
            conn.execute(text(f'DROP OWNED BY "{name}"'))
    admin_here.dispose()
    with pg_admin.connect() as conn:
        for name in names.values():
            conn.execute(text(f'DROP ROLE IF EXISTS "{name}"'))


def refused(engine, statement: str) -> str:
    """The SQLSTATE with which ``statement`` is refused (it must be)."""
    with pytest.raises(DBAPIError) as info, engine.begin() as conn:
        conn.execute(text(statement))
    return info.value.orig.pgcode


def test_the_flow_role_does_a_real_cycle_but_cannot_change_the_schema(roles, tmp_path):
    app = roles["app"]
    with app.connect() as conn:
        assert conn.execute(text("SELECT current_user")).scalar().startswith("refit_app_")

    rows = generate_feedback(300, seed=7)
    rows[3]["rating"] = 11  # a quarantined row too
    summary = ingest_file(app, write_feedback(rows, tmp_path / "f.csv"), IngestRules(labels=("neg", "mid", "pos")))
    assert (summary.accepted, summary.quarantined) == (299, 1)
    assert summary.schema_version == 1  # the app role records the first feature schema
    snapshot = take_snapshot(app, SplitConfig())
    assert snapshot is not None and snapshot.total_rows == 299
    store = open_store((tmp_path / "store").as_uri())
    assert publish_and_record(app, store, tmp_path, "v1", gate_decision(True), None) == "promoted"
    assert publish_and_record(app, store, tmp_path, "v2", gate_decision(True), "v1") == "promoted"

    insufficient_privilege = "42501"
    for ddl in (
        "CREATE TABLE stray (id int)",
        "CREATE TEMP TABLE fine_but_then (id int); ALTER TABLE feedback ADD COLUMN stray int",
        "DROP TABLE feedback",
        "ALTER TABLE promotion_log DISABLE TRIGGER promotion_log_append_only",
        "CREATE INDEX stray_idx ON feedback (text)",
        "TRUNCATE feedback",
        "CREATE FUNCTION stray() RETURNS int LANGUAGE sql AS 'SELECT 1'",
        "DROP TRIGGER promotion_log_append_only ON promotion_log",
        "UPDATE promotion_log SET reason = 'rewritten'",
        "DELETE FROM promotion_log",
        "TRUNCATE promotion_log",
        "DELETE FROM schema_migrations",
        "UPDATE feature_schema SET reason = 'rewritten'",
        "DELETE FROM feature_schema",
        "TRUNCATE feature_schema",
    ):
        assert refused(app, ddl) == insufficient_privilege, ddl
    with app.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM promotion_log")).scalar() == 2
        assert conn.execute(text("SELECT count(*) FROM feature_schema")).scalar() == 1


def test_the_serve_role_only_appends_predictions(roles):
    from refit.serving.predlog import PredictionLog

    serve = roles["serve"]
    log = PredictionLog(serve, flush_s=60)
    log.add("v1", ["fine", "bad"], [{"prediction": 0.8}, {"prediction": 0.1}])
    assert log.flush() == 2
    for statement in ("SELECT * FROM feedback", "SELECT * FROM prediction_log", "DELETE FROM prediction_log"):
        assert refused(serve, statement) == "42501", statement


def test_serving_needs_only_read_access_to_the_store(tiny_model, tmp_path):
    """A champion served from a store folder it cannot write (as with the GetObject/ListBucket
    policy in the README): it loads, verifies and scores. The server runs in its own process; as
    root (which ignores file permissions) without the capabilities that override them."""
    import os
    import shutil
    import subprocess
    import sys

    from refit.models.saving import save_checkpoint
    from refit.models.train import train
    from refit.registry.pointer import write_pointer
    from refit.registry.versions import publish_checkpoint

    from model_helpers import review_data, tiny_config

    folder = save_checkpoint(
        train(tiny_config(tiny_model, epochs=1), review_data(80)), tmp_path / "ckpt", {"version": "v1"}
    )
    root = tmp_path / "store"
    store = open_store(root.as_uri())
    write_pointer(store, publish_checkpoint(store, folder, "v1"), None)
    for path in [root, *root.rglob("*")]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    work = tmp_path / "work"
    work.mkdir()
    code = (
        "from refit.core.settings import load_settings; from refit.serving.follower import Champion;"
        f"s = load_settings(store_url={root.as_uri()!r}, work_dir={str(work)!r});"
        "c = Champion(s); c.refresh(); print(c.current.version, c.current.predictor.predict(['works well']).shape)"
    )
    unprivileged = []
    if os.geteuid() == 0:
        if not shutil.which("setpriv"):
            pytest.skip("running as root without setpriv: file permissions cannot be enforced")
        unprivileged = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search,-fowner", "--"]
    run = subprocess.run(
        [*unprivileged, sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=work
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "v1 (1,)"
    denied = subprocess.run(
        [*unprivileged, sys.executable, "-c", f"open({str(root / 'models' / 'x')!r}, 'w')"], capture_output=True
    )
    assert denied.returncode != 0  # the store really is read-only for that process
