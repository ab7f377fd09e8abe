-- Least privilege for refit: run once per database, as an administrator, after the roles exist.
-- Not a migration (`refit db upgrade` applies only sql/NNN_*.sql): roles are the DBA's.
--
--   owner  owns the schema; the only role that runs `refit db upgrade` (at deploy time)
--   app    the flows, the CLI and workers: reads feedback, writes refit's tables, no DDL;
--          promotion_log and feature_schema are append-only (INSERT, no UPDATE, DELETE or TRUNCATE)
--   serve  `refit serve` with REFIT_SERVE_LOG_PREDICTIONS=true: appends to prediction_log only
--
--   CREATE ROLE refit_owner LOGIN PASSWORD '...';
--   CREATE ROLE refit_app   LOGIN PASSWORD '...';
--   CREATE ROLE refit_serve LOGIN PASSWORD '...';
--   ALTER DATABASE feedback OWNER TO refit_owner;        -- then, as refit_owner: refit db upgrade
--   psql -d feedback -v owner=refit_owner -v app=refit_app -v serve=refit_serve -v dbname=feedback \
--        -f sql/roles/grants.sql

-- No one but the owner creates objects in the schema (PUBLIC could before PostgreSQL 15).
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
REVOKE ALL ON DATABASE :"dbname" FROM PUBLIC;
GRANT CONNECT, TEMPORARY ON DATABASE :"dbname" TO :"app";
GRANT CONNECT ON DATABASE :"dbname" TO :"serve";
GRANT USAGE ON SCHEMA public TO :"app", :"serve";

-- app: data, not schema. Ingest's staging table is a TEMPORARY one (hence TEMPORARY above).
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO :"app";
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO :"app";
REVOKE UPDATE, DELETE, TRUNCATE ON promotion_log FROM :"app";
REVOKE UPDATE, DELETE, TRUNCATE ON feature_schema FROM :"app";
REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON schema_migrations FROM :"app";
-- Tables that later migrations add (created by the owner) get the same grants.
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" IN SCHEMA public
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO :"app";
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" IN SCHEMA public
    GRANT USAGE, SELECT ON SEQUENCES TO :"app";

-- serve: appends predictions, reads nothing else.
GRANT INSERT ON prediction_log TO :"serve";
GRANT USAGE ON SEQUENCE prediction_log_id_seq TO :"serve";
