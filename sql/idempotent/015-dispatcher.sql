-- The dispatcher's own login: a plain role with exactly the rights it needs (README, "Security model").
-- It runs no SQL as a superuser: database owners can shape the sessions it opens in their databases.

DO $do$
DECLARE
    _r pg_catalog.text;
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) 'plpy_bg_dispatcher') THEN
        CREATE ROLE plpy_bg_dispatcher LOGIN NOINHERIT;
    END IF;
    -- whoever created the role, it has these attributes, no password, no settings and no memberships
    ALTER ROLE plpy_bg_dispatcher LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS
        NOINHERIT CONNECTION LIMIT -1 PASSWORD NULL VALID UNTIL 'infinity';
    ALTER ROLE plpy_bg_dispatcher RESET ALL;
    FOR _r IN SELECT m.member::pg_catalog.regrole::pg_catalog.text FROM pg_catalog.pg_auth_members m
              WHERE m.roleid OPERATOR(pg_catalog.=) 'plpy_bg_dispatcher'::pg_catalog.regrole LOOP
        RAISE NOTICE 'revoking membership of % in plpy_bg_dispatcher', _r;
        EXECUTE pg_catalog.format('REVOKE plpy_bg_dispatcher FROM %s', _r);
    END LOOP;
    FOR _r IN SELECT m.roleid::pg_catalog.regrole::pg_catalog.text FROM pg_catalog.pg_auth_members m
              WHERE m.member OPERATOR(pg_catalog.=) 'plpy_bg_dispatcher'::pg_catalog.regrole LOOP
        RAISE NOTICE 'revoking membership of plpy_bg_dispatcher in %', _r;
        EXECUTE pg_catalog.format('REVOKE %s FROM plpy_bg_dispatcher', _r);
    END LOOP;
END
$do$;
COMMENT ON ROLE plpy_bg_dispatcher IS 'plpy_bg: the job dispatcher''s login (job table writes only)';

-- the job table: the dispatcher writes every row; row-level security lets it see them all
GRANT USAGE ON SCHEMA plpy_bg TO plpy_bg_dispatcher;
GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE plpy_bg.jobs TO plpy_bg_dispatcher;
DO $do$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_policy p
                   WHERE p.polrelid OPERATOR(pg_catalog.=) 'plpy_bg.jobs'::pg_catalog.regclass
                     AND p.polname OPERATOR(pg_catalog.=) 'jobs_dispatcher') THEN
        CREATE POLICY jobs_dispatcher ON plpy_bg.jobs FOR ALL TO plpy_bg_dispatcher USING (true) WITH CHECK (true);
    END IF;
END
$do$;

-- The two server facts the dispatcher needs that only a superuser may read: where the peer map
-- lives, and whether the configuration files turn the sandbox on (a session SET cannot).
CREATE OR REPLACE FUNCTION plpy_bg.dispatcher_settings(OUT ident_file pg_catalog.text, OUT sandbox pg_catalog.text)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$ SELECT pg_catalog.current_setting('ident_file'),
             (SELECT f.setting FROM pg_catalog.pg_file_settings f
              WHERE f.name OPERATOR(pg_catalog.=) 'pgseccomp.enabled' AND f.error IS NULL
              ORDER BY f.seqno DESC LIMIT 1) $$;
REVOKE ALL ON FUNCTION plpy_bg.dispatcher_settings() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION plpy_bg.dispatcher_settings() TO plpy_bg_dispatcher;

-- How long the job table keeps what: plpy_bg.history_retention (ended jobs, default 7 days) and
-- plpy_bg.history_sql_retention (their full SQL, default 1 day; then only the literal-free
-- sql_preview). An interval, or 'forever'; a bad value is logged and the default kept.
CREATE OR REPLACE FUNCTION plpy_bg.retention(setting pg_catalog.text, fallback pg_catalog.interval)
RETURNS pg_catalog.interval
LANGUAGE plpgsql STABLE SECURITY INVOKER
SET search_path = pg_catalog, pg_temp
AS $function$
DECLARE
    _v pg_catalog.text := pg_catalog.current_setting(setting, true);
    _i pg_catalog.interval;
BEGIN
    IF _v IS NULL OR _v OPERATOR(pg_catalog.=) '' THEN
        RETURN fallback;
    ELSIF pg_catalog.lower(_v) OPERATOR(pg_catalog.=) 'forever' THEN
        RETURN NULL;  -- nothing is older than that
    END IF;
    BEGIN
        _i := _v::pg_catalog.interval;
    EXCEPTION WHEN data_exception THEN
        _i := NULL;
    END;
    IF _i IS NULL OR _i OPERATOR(pg_catalog.<) '0'::pg_catalog.interval THEN
        RAISE WARNING 'invalid value for parameter "%": "%"', setting, _v
            USING HINT = pg_catalog.format('An interval such as ''7 days'', or ''forever''; %s is used.', fallback);
        RETURN fallback;
    END IF;
    RETURN _i;
END
$function$;
REVOKE ALL ON FUNCTION plpy_bg.retention(pg_catalog.text, pg_catalog.interval) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION plpy_bg.retention(pg_catalog.text, pg_catalog.interval) TO plpy_bg_dispatcher;

-- A job whose statements run in one transaction ends with a call of this, in that transaction:
-- its outcome commits with its work, so a dispatcher that dies before writing the outcome cannot
-- make a committed job `lost`. Only the job's own worker backend changes its own running row.
CREATE OR REPLACE PROCEDURE plpy_bg.job_committed(job_cookie pg_catalog.int8)
LANGUAGE sql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $function$
UPDATE plpy_bg.jobs SET state = 'completed', finished_at = pg_catalog.now()
WHERE cookie OPERATOR(pg_catalog.=) job_cookie AND pid OPERATOR(pg_catalog.=) pg_catalog.pg_backend_pid()
  AND state OPERATOR(pg_catalog.=) 'running'
$function$;
REVOKE ALL ON PROCEDURE plpy_bg.job_committed(pg_catalog.int8) FROM PUBLIC;
GRANT EXECUTE ON PROCEDURE plpy_bg.job_committed(pg_catalog.int8) TO PUBLIC;  -- every job role; the row is its own
