-- The feature schema (refit/data/schema.py), as TFDV keeps one: each behaviour feature's type
-- (numeric, categorical or vector) and the domain observed (a numeric range, the categorical
-- values, the vector's length). Version 1 is inferred from the first ingest or sync that has
-- features; every later version is an explicit act (`refit schema update --reason ...`). The
-- history is append-only: updates, deletes and truncation are refused, so every version a
-- quarantine decision was made under stays readable.
CREATE TABLE feature_schema (
    version     INTEGER PRIMARY KEY CHECK (version >= 1),
    features    JSONB NOT NULL,
    reason      TEXT NOT NULL CHECK (reason <> ''),
    source      TEXT,
    actor       TEXT NOT NULL DEFAULT 'refit',
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE FUNCTION refit_refuse_schema_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'feature_schema is append-only: record a new version with refit schema update';
END;
$$;
CREATE TRIGGER feature_schema_append_only
    BEFORE UPDATE OR DELETE ON feature_schema
    FOR EACH ROW EXECUTE FUNCTION refit_refuse_schema_change();
CREATE TRIGGER feature_schema_no_truncate
    BEFORE TRUNCATE ON feature_schema
    FOR EACH STATEMENT EXECUTE FUNCTION refit_refuse_schema_change();
