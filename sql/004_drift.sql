-- Drift checks that an operator can trust: the decision may also be "unconfirmed" (drift seen,
-- but not in N of the last M checks) or "cooldown" (too soon after a retrain), and each row keeps
-- what the next check's confirmation and cooldown need.

ALTER TABLE drift_reports DROP CONSTRAINT drift_reports_decision_check;
ALTER TABLE drift_reports ADD CONSTRAINT drift_reports_decision_check
    CHECK (decision IN ('retrain', 'no_drift', 'insufficient_data', 'unconfirmed', 'cooldown'));

-- This check's own verdict, before confirmation and cooldown (NULL: nothing was measured).
ALTER TABLE drift_reports ADD COLUMN drift_detected BOOLEAN;
-- The operator forced a retrain.
ALTER TABLE drift_reports ADD COLUMN forced BOOLEAN NOT NULL DEFAULT FALSE;
-- The policy the decision followed, and the rows measured per side after sampling.
ALTER TABLE drift_reports ADD COLUMN policy JSONB NOT NULL DEFAULT '{}'::jsonb;
ALTER TABLE drift_reports ADD COLUMN sampled_rows JSONB NOT NULL DEFAULT '{}'::jsonb;

-- The history a decision reads: the latest checks against one champion, and the latest retrain.
CREATE INDEX drift_reports_champion_idx ON drift_reports (champion_version, id DESC);
CREATE INDEX drift_reports_retrain_idx ON drift_reports (created_at) WHERE decision = 'retrain';
