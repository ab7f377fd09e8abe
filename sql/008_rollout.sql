-- Live rollout (issue 18): a challenger that passed the gate is tried on live traffic before it
-- becomes champion. One row per rollout; its stage moves shadow -> canary -> promoted, or it
-- ends rolled back with the reason. The champion does not change until the last stage, and then
-- by the same compare-and-swap as a promotion.
CREATE TABLE rollouts (
    id                BIGSERIAL PRIMARY KEY,
    version           TEXT NOT NULL REFERENCES model_versions (version),
    champion_version  TEXT REFERENCES model_versions (version),
    stage             TEXT NOT NULL CHECK (stage IN ('shadow', 'canary', 'promoted', 'rolled_back', 'superseded')),
    started_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    stage_started_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    ended_at          TIMESTAMPTZ,
    reason            TEXT,
    evidence          JSONB
);
-- At most one rollout is live at a time.
CREATE UNIQUE INDEX rollouts_one_live ON rollouts ((true)) WHERE ended_at IS NULL;

-- Each logged prediction says which model made it, in which role, whether it was the answer
-- returned, and (when the request carried them) the ids that later feedback joins on.
ALTER TABLE prediction_log ADD COLUMN role TEXT NOT NULL DEFAULT 'champion'
    CHECK (role IN ('champion', 'candidate'));
ALTER TABLE prediction_log ADD COLUMN served BOOLEAN NOT NULL DEFAULT TRUE;
ALTER TABLE prediction_log ADD COLUMN rollout_id BIGINT;
ALTER TABLE prediction_log ADD COLUMN request_id TEXT;
ALTER TABLE prediction_log ADD COLUMN feedback_id TEXT;
ALTER TABLE prediction_log ADD COLUMN user_id TEXT;
ALTER TABLE prediction_log ADD COLUMN item_id TEXT;
ALTER TABLE prediction_log ADD COLUMN latency_ms REAL;
ALTER TABLE prediction_log ADD COLUMN error TEXT;
ALTER TABLE prediction_log ALTER COLUMN text_sha256 DROP NOT NULL;  -- a failed call has no prediction
CREATE INDEX prediction_log_rollout_idx ON prediction_log (rollout_id, role) WHERE rollout_id IS NOT NULL;
CREATE INDEX prediction_log_feedback_idx ON prediction_log (feedback_id) WHERE feedback_id IS NOT NULL;
CREATE INDEX prediction_log_user_item_idx ON prediction_log (user_id, item_id) WHERE user_id IS NOT NULL;

-- The promotion log records each stage a rollout enters and how it ended.
ALTER TABLE promotion_log DROP CONSTRAINT promotion_log_decision_check;
ALTER TABLE promotion_log ADD CONSTRAINT promotion_log_decision_check
    CHECK (decision IN ('promoted', 'rejected', 'superseded', 'rolled_back', 'shadow', 'canary', 'rollout_stopped'));
