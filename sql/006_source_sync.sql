-- Pulling feedback from a team's own Postgres table (`refit sync`): where each row came from, the
-- cursor of each source, the earlier versions of edited rows, and deletes found at the source.

-- Which source a row came from ('pg:<table>' or 'pg:query-<hash>'); NULL for files. The delete
-- reconciliation compares a source's keys with exactly the rows that came from it.
ALTER TABLE feedback ADD COLUMN origin TEXT;
CREATE INDEX feedback_origin_idx ON feedback (origin, feedback_id) WHERE origin IS NOT NULL;

-- One row per source. The cursor moves in the same transaction as the rows of each batch, so it
-- never runs ahead of what is stored. `horizon` is the source snapshot's xmin
-- (pg_snapshot_xmin(pg_current_snapshot())) at the last sync; `marks` holds, for recent syncs, the
-- snapshot's xmax and the highest cursor it saw: the cursor moves to the mark of the latest sync
-- that every transaction still open began after (see refit/data/source.py). `columns`: the
-- source's columns and types as first synced (a renamed, dropped or retyped column is refused).
CREATE TABLE source_cursors (
    source         TEXT PRIMARY KEY,
    cursor_value   TEXT,
    cursor_key     TEXT,
    horizon        BIGINT,
    marks          JSONB NOT NULL DEFAULT '[]'::jsonb,
    columns        JSONB NOT NULL DEFAULT '{}'::jsonb,
    synced_at      TIMESTAMPTZ,
    reconciled_at  TIMESTAMPTZ
);

-- An edited source row replaces its stored version; the old version moves here, with the `id`
-- it had in feedback, so a snapshot (an id range) that covered it still names it. Deletes
-- (forget, or a row deleted at the source) remove a row's history too.
CREATE TABLE feedback_history (
    id             BIGSERIAL PRIMARY KEY,
    feedback_pk    BIGINT NOT NULL,
    feedback_id    TEXT NOT NULL,
    user_id        TEXT,
    item_id        TEXT,
    text           TEXT NOT NULL,
    satisfaction   DOUBLE PRECISION,
    label          TEXT,
    features       JSONB NOT NULL,
    content_hash   TEXT NOT NULL,
    created_at     TIMESTAMPTZ NOT NULL,
    ingested_at    TIMESTAMPTZ NOT NULL,
    origin         TEXT,
    superseded_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX feedback_history_feedback_id_idx ON feedback_history (feedback_id);
CREATE INDEX feedback_history_pk_idx ON feedback_history (feedback_pk);

-- forget_log records rows deleted at a source too: reason 'source_delete', with a hash of the
-- deleted keys instead of a user's.
ALTER TABLE forget_log ADD COLUMN reason TEXT NOT NULL DEFAULT 'user';
ALTER TABLE forget_log ALTER COLUMN user_hash DROP NOT NULL;
ALTER TABLE forget_log ADD COLUMN keys_hash TEXT;
