-- The job table, the handle types and the executor role.
CREATE SCHEMA plpy_bg;
COMMENT ON SCHEMA plpy_bg IS 'plpy_bg internals: the job table and helper functions';

DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'pgbackground_role') THEN
    CREATE ROLE pgbackground_role NOLOGIN INHERIT;
  END IF;
END
$$;

CREATE TYPE @extschema@.pg_background_handle AS (
  pid    pg_catalog.int4,
  cookie pg_catalog.int8
);

CREATE TYPE @extschema@.pg_background_stats AS (
  workers_launched   pg_catalog.int8,
  workers_completed  pg_catalog.int8,
  workers_failed     pg_catalog.int8,
  workers_canceled   pg_catalog.int8,
  workers_active     pg_catalog.int4,
  avg_execution_ms   pg_catalog.float8,
  max_workers        pg_catalog.int4
);

CREATE TYPE @extschema@.pg_background_progress AS (
  progress_pct  pg_catalog.int4,
  progress_msg  pg_catalog.text
);

-- One row per job, written only by the dispatcher; roles read their own rows.
CREATE TABLE plpy_bg.jobs (
  cookie            pg_catalog.int8 PRIMARY KEY,
  pid               pg_catalog.int4 NOT NULL,
  user_id           pg_catalog.oid NOT NULL,
  launcher_pid      pg_catalog.int4,
  launcher_user_id  pg_catalog.oid,
  mode              pg_catalog.text NOT NULL CHECK (mode IN ('v1', 'launch', 'submit')),
  queue_size        pg_catalog.int4 NOT NULL,
  state             pg_catalog.text NOT NULL
                    CHECK (state IN ('running', 'completed', 'failed', 'canceled', 'lost')),
  sql               pg_catalog.text NOT NULL,
  sql_preview       pg_catalog.text,
  launched_at       pg_catalog.timestamptz NOT NULL,
  finished_at       pg_catalog.timestamptz,
  command_tag       pg_catalog.text,
  rows_returned     pg_catalog.int8,
  last_error        pg_catalog.text,
  error             pg_catalog.jsonb,
  consumed          pg_catalog.bool NOT NULL DEFAULT false,
  detached          pg_catalog.bool NOT NULL DEFAULT false,
  progress_pct      pg_catalog.int4,
  progress_msg      pg_catalog.text,
  progress_at       pg_catalog.timestamptz,
  provenance        pg_catalog.jsonb,
  classification    pg_catalog.jsonb,
  parent_cookie     pg_catalog.int8,
  dispatcher_epoch  pg_catalog.text NOT NULL
);
CREATE INDEX jobs_pid_idx ON plpy_bg.jobs (pid);
CREATE INDEX jobs_user_idx ON plpy_bg.jobs (user_id, launched_at);
CREATE INDEX jobs_running_idx ON plpy_bg.jobs (dispatcher_epoch) WHERE state = 'running';

ALTER TABLE plpy_bg.jobs ENABLE ROW LEVEL SECURITY;
-- a role sees its own jobs; superusers bypass row-level security and see all
CREATE POLICY jobs_own ON plpy_bg.jobs FOR SELECT
  USING (user_id = (SELECT r.oid FROM pg_catalog.pg_roles r WHERE r.rolname = CURRENT_USER));

-- Monitoring: every job the caller may see, from any session.
CREATE VIEW @extschema@.pg_background_jobs WITH (security_invoker = true) AS
SELECT j.pid, j.cookie, j.launched_at, j.finished_at, j.user_id,
       r.rolname AS role_name, j.state, j.mode, j.queue_size, j.sql_preview,
       CASE WHEN r.rolname = CURRENT_USER THEN j.sql END AS sql,
       j.command_tag, j.rows_returned, j.last_error, j.consumed, j.detached,
       j.progress_pct, j.progress_msg, j.launcher_pid, j.parent_cookie,
       CASE WHEN r.rolname = CURRENT_USER THEN j.provenance END AS provenance
FROM plpy_bg.jobs j LEFT JOIN pg_catalog.pg_roles r ON r.oid = j.user_id;

REVOKE ALL ON SCHEMA plpy_bg FROM PUBLIC;
REVOKE ALL ON plpy_bg.jobs FROM PUBLIC;
REVOKE ALL ON @extschema@.pg_background_jobs FROM PUBLIC;
REVOKE ALL ON TYPE @extschema@.pg_background_handle FROM PUBLIC;
REVOKE ALL ON TYPE @extschema@.pg_background_stats FROM PUBLIC;
REVOKE ALL ON TYPE @extschema@.pg_background_progress FROM PUBLIC;
