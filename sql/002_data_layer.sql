-- The data layer: quarantine deduplication, snapshot windows, the versioned dev set, slices,
-- and the record of forgotten users.

-- A re-run of an interrupted ingest must not quarantine the same raw row twice.
ALTER TABLE quarantine ADD COLUMN raw_hash TEXT;
UPDATE quarantine SET raw_hash = encode(sha256(convert_to(reason || raw::text, 'UTF8')), 'hex');
ALTER TABLE quarantine ALTER COLUMN raw_hash SET NOT NULL;
CREATE UNIQUE INDEX quarantine_source_raw_idx ON quarantine (source, raw_hash);
ALTER TABLE quarantine ADD COLUMN requeued_at TIMESTAMPTZ;

-- The window a snapshot covers, in feedback time, next to its watermark range.
ALTER TABLE dataset_snapshots ADD COLUMN window_start TIMESTAMPTZ;
ALTER TABLE dataset_snapshots ADD COLUMN window_end TIMESTAMPTZ;
ALTER TABLE dataset_snapshots ADD COLUMN label_counts JSONB NOT NULL DEFAULT '{}'::jsonb;

-- The gate's frozen dev set: the dev-split rows with id <= watermark. It grows only through
-- `refit devset refresh`, which adds a version; the gate always names the version it used.
CREATE TABLE dev_sets (
    version       INTEGER PRIMARY KEY,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    watermark     BIGINT NOT NULL,
    rows          INTEGER NOT NULL,
    content_hash  TEXT NOT NULL,
    reason        TEXT NOT NULL
);

CREATE INDEX feedback_user_idx ON feedback (user_id);

-- `refit forget --user`: what was deleted, when, and which models had trained on it.
CREATE TABLE forget_log (
    id                BIGSERIAL PRIMARY KEY,
    forgotten_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    user_hash         TEXT NOT NULL,
    rows_deleted      INTEGER NOT NULL,
    affected_versions JSONB NOT NULL
);
