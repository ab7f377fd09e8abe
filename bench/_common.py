"""Shared pieces of the benchmarks: a scratch database and realistic feedback files."""

from __future__ import annotations

import os
import uuid
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone

import numpy as np

from refit.ops.synth import FILLER, SENTIMENT, generate_feedback

ADMIN_URL = os.environ.get("REFIT_BENCH_ADMIN_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")


@contextmanager
def scratch_database(migrate: bool = True):
    """A new database on the benchmark's Postgres, migrated, dropped afterwards."""
    from sqlalchemy import create_engine, text

    from refit.data.db import get_engine, upgrade

    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"refit_bench_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    engine = get_engine(url)
    try:
        if migrate:
            upgrade(engine)
        yield engine
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextmanager
def source_database():
    """A team's database on the benchmark's Postgres, read by refit through a read-only role of
    its own (as tests/helpers.py's ``source_database``), dropped afterwards.

    Yields:
        ``(owner, url, reader)``: an engine that writes, the read-only role's URL, its name.
    """
    from sqlalchemy import create_engine, make_url, text

    from refit.data.db import get_engine

    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    name, reader = f"refit_source_{uuid.uuid4().hex[:8]}", f"reader_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
        conn.execute(text(f"CREATE ROLE {reader} LOGIN"))
    owner = get_engine(make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False))
    try:
        yield owner, make_url(ADMIN_URL).set(database=name, username=reader).render_as_string(False), reader
    finally:
        owner.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            conn.execute(text(f"DROP ROLE IF EXISTS {reader}"))
        admin.dispose()


def long_feedback(n: int, seed: int = 0, median_chars: int = 400, pii_share: float = 0.02) -> list[dict]:
    """Feedback rows whose texts have a median length of about ``median_chars``, some with PII."""
    rng = np.random.default_rng(seed)
    # the generator spaces rows about 7 minutes apart; all of them must lie in the past
    start = datetime.now(timezone.utc) - timedelta(minutes=8 * n + 60)
    rows = generate_feedback(n, seed=seed, start=start)
    phrases = [p for words in SENTIMENT.values() for p in words] + FILLER
    targets = np.exp(rng.normal(np.log(median_chars), 0.45, size=n)).astype(int)
    for row, target in zip(rows, targets, strict=True):
        parts = [row["text"]]
        length = len(row["text"])
        while length < target:
            phrase = str(rng.choice(phrases))
            parts.append(phrase)
            length += len(phrase) + 2
        if rng.random() < pii_share:
            parts.append(str(rng.choice(["write to me at jo.doe@example.com", "call +44 20 7946 0958"])))
        row["text"] = ", ".join(parts) + "."
    return rows
