-- The size of the model call that scored each logged row: with it, the rollout's latency guard
-- compares the two models per item and on calls of the same size (a shadow call of four items is
-- not set against a live call of one). Rows logged before this hold NULL and count as one item.
ALTER TABLE prediction_log ADD COLUMN call_items INTEGER CHECK (call_items > 0);
