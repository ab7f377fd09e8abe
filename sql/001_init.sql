-- refit's base schema. Applied once by `refit db upgrade`, inside one transaction.

-- Feedback as it lands. `id` is the ingest sequence: it is the watermark that incremental pulls
-- follow (ingests are serialized by an advisory lock, so ids commit in order). `created_at` is
-- when the user left the feedback and may arrive late; it is never used as a watermark.
CREATE TABLE feedback (
    id            BIGSERIAL PRIMARY KEY,
    feedback_id   TEXT NOT NULL UNIQUE,
    user_id       TEXT,
    item_id       TEXT,
    text          TEXT NOT NULL,
    satisfaction  DOUBLE PRECISION CHECK (satisfaction BETWEEN 0 AND 1),
    label         TEXT,
    features      JSONB NOT NULL DEFAULT '{}'::jsonb,
    content_hash  TEXT NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL,
    ingested_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK (satisfaction IS NOT NULL OR label IS NOT NULL)
);
CREATE INDEX feedback_created_at_idx ON feedback (created_at);
CREATE INDEX feedback_item_idx ON feedback (item_id);

-- Rows that failed validation, with the raw row and the reason. Nothing is dropped silently.
CREATE TABLE quarantine (
    id            BIGSERIAL PRIMARY KEY,
    source        TEXT NOT NULL,
    line_no       INTEGER,
    feedback_id   TEXT,
    reason        TEXT NOT NULL,
    detail        TEXT,
    raw           JSONB NOT NULL,
    quarantined_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX quarantine_reason_idx ON quarantine (reason);

-- One row per ingest run: what came in and what happened to it.
CREATE TABLE ingest_runs (
    id            BIGSERIAL PRIMARY KEY,
    source        TEXT NOT NULL,
    rows_read     INTEGER NOT NULL,
    accepted      INTEGER NOT NULL,
    duplicates    INTEGER NOT NULL,
    quarantined   INTEGER NOT NULL,
    started_at    TIMESTAMPTZ NOT NULL,
    finished_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- A snapshot names the exact rows a run saw: everything with id <= watermark_to, and the new
-- window (watermark_from, watermark_to].
CREATE TABLE dataset_snapshots (
    id              BIGSERIAL PRIMARY KEY,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    watermark_from  BIGINT NOT NULL,
    watermark_to    BIGINT NOT NULL,
    new_rows        INTEGER NOT NULL,
    total_rows      INTEGER NOT NULL,
    split_counts    JSONB NOT NULL,
    content_hash    TEXT NOT NULL,
    split_config    JSONB NOT NULL,
    CHECK (watermark_to >= watermark_from)
);

CREATE TABLE drift_reports (
    id                BIGSERIAL PRIMARY KEY,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    snapshot_id       BIGINT REFERENCES dataset_snapshots (id),
    champion_version  TEXT,
    reference_rows    INTEGER NOT NULL,
    current_rows      INTEGER NOT NULL,
    drift_share       DOUBLE PRECISION,
    signals           JSONB NOT NULL,
    decision          TEXT NOT NULL CHECK (decision IN ('retrain', 'no_drift', 'insufficient_data')),
    reasons           JSONB NOT NULL,
    html_uri          TEXT,
    json_uri          TEXT
);

-- The registry. Exactly one row may be the champion (the partial unique index holds that).
CREATE TABLE model_versions (
    version          TEXT PRIMARY KEY,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    snapshot_id      BIGINT REFERENCES dataset_snapshots (id),
    parent_version   TEXT REFERENCES model_versions (version),
    task             TEXT NOT NULL,
    uri              TEXT NOT NULL,
    manifest_sha256  TEXT NOT NULL,
    metrics          JSONB NOT NULL,
    status           TEXT NOT NULL CHECK (status IN ('challenger', 'champion', 'rejected', 'retired')),
    is_champion      BOOLEAN NOT NULL DEFAULT FALSE,
    promoted_at      TIMESTAMPTZ
);
CREATE UNIQUE INDEX model_versions_one_champion ON model_versions (is_champion) WHERE is_champion;

-- Every gate decision, append-only: updates and deletes are refused by a trigger.
CREATE TABLE promotion_log (
    id                 BIGSERIAL PRIMARY KEY,
    decided_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    challenger_version TEXT NOT NULL,
    champion_version   TEXT,
    decision           TEXT NOT NULL CHECK (decision IN ('promoted', 'rejected')),
    metric             TEXT NOT NULL,
    challenger_score   DOUBLE PRECISION,
    champion_score     DOUBLE PRECISION,
    reason             TEXT NOT NULL,
    details            JSONB NOT NULL DEFAULT '{}'::jsonb
);

CREATE FUNCTION refit_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'promotion_log is append-only';
END;
$$;
CREATE TRIGGER promotion_log_append_only
    BEFORE UPDATE OR DELETE ON promotion_log
    FOR EACH ROW EXECUTE FUNCTION refit_refuse_change();
