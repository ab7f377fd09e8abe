-- What `refit serve` predicted, written in batches, so live prediction distributions can be
-- compared with the champion's. The text itself is not kept (feedback may hold personal data):
-- only its SHA-256 and length.
CREATE TABLE prediction_log (
    id             BIGSERIAL PRIMARY KEY,
    logged_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    model_version  TEXT NOT NULL,
    text_sha256    TEXT NOT NULL,
    text_chars     INTEGER NOT NULL,
    satisfaction   DOUBLE PRECISION,
    label          TEXT,
    probabilities  JSONB
);
CREATE INDEX prediction_log_time_idx ON prediction_log (logged_at);
CREATE INDEX prediction_log_version_idx ON prediction_log (model_version, logged_at);
