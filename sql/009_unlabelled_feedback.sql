-- Unlabelled feedback: a row with text and no target (no satisfaction, rating or label) is stored
-- after the same validation and redaction as any row. It is what the model is served on, and the
-- drift check's input signals read it; it never enters a split (train, dev, test). A label that
-- arrives later replaces it as an edit does, the unlabelled version moving to feedback_history.

-- The base schema refused a row without a target; validation now decides what a row needs.
ALTER TABLE feedback DROP CONSTRAINT feedback_check;

-- How many unlabelled rows a snapshot covers: all of them up to watermark_to (beside total_rows),
-- and those of its new window (beside new_rows). Snapshots taken before this hold none.
ALTER TABLE dataset_snapshots ADD COLUMN unlabelled_rows INTEGER NOT NULL DEFAULT 0;
ALTER TABLE dataset_snapshots ADD COLUMN new_unlabelled_rows INTEGER NOT NULL DEFAULT 0;
