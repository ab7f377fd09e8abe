-- The registry: candidate/champion/rejected/retired/archived versions, one champion always,
-- promotion by compare-and-swap, and an append-only promotion log.

ALTER TABLE model_versions DROP CONSTRAINT model_versions_status_check;
UPDATE model_versions SET status = 'candidate' WHERE status = 'challenger';
ALTER TABLE model_versions ADD CONSTRAINT model_versions_status_check
    CHECK (status IN ('candidate', 'champion', 'rejected', 'retired', 'archived'));
ALTER TABLE model_versions ADD COLUMN config_hash TEXT;
ALTER TABLE model_versions ADD COLUMN flow_run_id TEXT;
-- is_champion and status must agree (the partial unique index already allows one champion).
ALTER TABLE model_versions ADD CONSTRAINT model_versions_champion_status
    CHECK (is_champion = (status = 'champion'));

-- The one row that says who the champion is. Promotion is a conditional UPDATE of this row on
-- the expected current champion: two concurrent promotions serialize on its row lock, and the
-- second finds the champion changed and is recorded as superseded.
CREATE TABLE registry_head (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    champion    TEXT REFERENCES model_versions (version),
    changed_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
INSERT INTO registry_head (id, champion)
    SELECT 1, (SELECT version FROM model_versions WHERE is_champion);

-- The log says who or what acted, and records rollbacks and superseded promotions too.
ALTER TABLE promotion_log DROP CONSTRAINT promotion_log_decision_check;
ALTER TABLE promotion_log ADD CONSTRAINT promotion_log_decision_check
    CHECK (decision IN ('promoted', 'rejected', 'superseded', 'rolled_back'));
ALTER TABLE promotion_log ADD COLUMN actor TEXT NOT NULL DEFAULT 'refit';
ALTER TABLE promotion_log ADD COLUMN flow_run_id TEXT;
ALTER TABLE promotion_log ALTER COLUMN metric DROP NOT NULL;

-- Row triggers refuse UPDATE and DELETE (001); TRUNCATE needs a statement trigger.
CREATE TRIGGER promotion_log_no_truncate
    BEFORE TRUNCATE ON promotion_log
    FOR EACH STATEMENT EXECUTE FUNCTION refit_refuse_change();
