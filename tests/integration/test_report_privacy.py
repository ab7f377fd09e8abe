"""Personal data planted in feedback never reaches a drift report's HTML (issue 16): the text is
redacted at ingest, free-text feature values are redacted and identifiers hashed where the report
is built (``refit.drift.signals.report_safe``), through the real ingest, Postgres and Evidently."""

from datetime import datetime, timedelta, timezone

from refit.data.ingest import ingest_file
from refit.data.validate import IngestRules
from refit.drift.check import check_drift
from refit.drift.policy import DriftPolicy
from refit.drift.windows import read_window

from helpers import write_csv

RULES = IngestRules(labels=("negative", "neutral", "positive"))
NOW = datetime.now(timezone.utc)
EMAIL, PHONE, HANDLE, SESSION = "jane.doe@example.com", "415-555-0134", "@janedoe_42", "sess-8f3a2b77"


def rows(n: int) -> list[dict]:
    out = []
    for i in range(n):
        planted = i % 10 == 0
        out.append(
            {
                "feedback_id": f"r{i}",
                "text": f"review {i}: " + (f"call {PHONE}, mail {EMAIL} or ping {HANDLE}" if planted else "fine stuff"),
                "created_at": (NOW - timedelta(hours=n - i)).isoformat(),
                "rating": 1 + i % 5,
                "category": "books" if i % 2 else "garden",  # an ordinary category: shown as it is
                "contact": f"write to {EMAIL}" if planted else "none given",  # free text with PII
                "reviewer": HANDLE if planted else f"@reader{i % 7}",
                "session_id": SESSION if planted else f"sess-{i:06d}",  # an identifier: hashed
            }
        )
    return out


def test_a_drift_reports_html_holds_no_planted_email_phone_handle_or_id(engine, tmp_path):
    summary = ingest_file(engine, write_csv(tmp_path / "pii.csv", rows(240)), RULES)
    assert summary.accepted == 240
    window = read_window(engine, NOW - timedelta(days=30))
    reference, current = window.iloc[:120], window.iloc[120:]
    policy = DriftPolicy(min_rows=50, sample_cap=200, embeddings_picture=False)
    html = check_drift(reference, current, policy, "regression", render=True).html
    assert html and "garden" in html  # the report does show feature values: the search below means something
    for planted in (EMAIL, PHONE, HANDLE, SESSION, "janedoe"):
        assert planted not in html, planted


def test_a_quarantined_row_keeps_no_planted_pii_outside_its_ids(engine, tmp_path):
    from dataclasses import replace

    from sqlalchemy import text

    rules = replace(RULES, column_map=(("text", "review_body"), ("user_id", "who")))
    bad = {"feedback_id": "q1", "review_body": f"mail {EMAIL}", "created_at": NOW.isoformat(), "rating": 9,
           "contact": f"call {PHONE} or {HANDLE}", "who": "user-77"}  # fmt: skip
    summary = ingest_file(engine, write_csv(tmp_path / "bad.csv", [bad]), rules)
    assert summary.quarantined == 1
    with engine.connect() as conn:
        raw = conn.execute(text("SELECT raw::text FROM quarantine WHERE feedback_id = 'q1'")).scalar_one()
    assert "user-77" in raw and "q1" in raw  # ids stay, so requeue and forget still find the row
    for planted in (EMAIL, PHONE, HANDLE):
        assert planted not in raw, planted
