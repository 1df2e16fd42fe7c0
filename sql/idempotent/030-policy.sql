-- Provenance policy: trust declarations and the runtime DDL guard for job workers.

CREATE OR REPLACE FUNCTION @extschema@.pg_background_trust(trustee pg_catalog.regrole)
RETURNS pg_catalog.void LANGUAGE plpython3u VOLATILE SECURITY INVOKER
SET search_path = pg_catalog, pg_temp
AS $python$
#PLPY_BG_PREAMBLE
from plpy_bg.policy import sql_api
return sql_api.trust(plpy, trustee)
$python$;
COMMENT ON FUNCTION @extschema@.pg_background_trust(pg_catalog.regrole) IS
    'let jobs that run as the current role be launched through code of trustee';

CREATE OR REPLACE FUNCTION @extschema@.pg_background_distrust(trustee pg_catalog.regrole)
RETURNS pg_catalog.void LANGUAGE plpython3u VOLATILE SECURITY INVOKER
SET search_path = pg_catalog, pg_temp
AS $python$
#PLPY_BG_PREAMBLE
from plpy_bg.policy import sql_api
return sql_api.distrust(plpy, trustee)
$python$;
COMMENT ON FUNCTION @extschema@.pg_background_distrust(pg_catalog.regrole) IS
    'withdraw trust declared with pg_background_trust()';

CREATE OR REPLACE FUNCTION @extschema@.pg_background_trusted(
    OUT truster pg_catalog.regrole, OUT trustee pg_catalog.regrole, OUT declared_at pg_catalog.timestamptz)
RETURNS SETOF pg_catalog.record LANGUAGE sql STABLE SECURITY INVOKER
SET search_path = pg_catalog, pg_temp
AS $sql$
SELECT t.truster::pg_catalog.regrole, t.trustee::pg_catalog.regrole, t.declared_at
FROM plpy_bg.trust t ORDER BY 1, 2
$sql$;
COMMENT ON FUNCTION @extschema@.pg_background_trusted() IS
    'trust declared by or in the current role';

-- The only writer of plpy_bg.trust, as its owner: nobody else has DML on it (so nobody can LOCK it
-- against every launch). It writes only what pg_background_trust() or pg_background_distrust(),
-- running in this backend as the declaring role, handed it for this one call; called any other way it refuses.
CREATE OR REPLACE FUNCTION plpy_bg.trust_write()
RETURNS pg_catalog.void LANGUAGE plpython3u VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $python$
#PLPY_BG_PREAMBLE
from plpy_bg.policy import sql_api
return sql_api.trust_write(plpy)
$python$;

DROP TRIGGER IF EXISTS trust_guard ON plpy_bg.trust;
DROP FUNCTION IF EXISTS plpy_bg.trust_guard();

-- PL/Python cannot be an event trigger: a PL/pgSQL shell passes the tag to the Python check.
CREATE OR REPLACE FUNCTION plpy_bg.policy_ddl_check(tag pg_catalog.text)
RETURNS pg_catalog.void LANGUAGE plpython3u VOLATILE SECURITY INVOKER
SET search_path = pg_catalog, pg_temp
AS $python$
#PLPY_BG_PREAMBLE
from plpy_bg.policy import sql_api
return sql_api.ddl_check(plpy, GD, tag)
$python$;

-- SECURITY DEFINER so that issuing DDL needs no privilege on schema plpy_bg; it reads the job table.
-- Only backends that run a job (a row only the dispatcher writes) pay for the Python check.
-- A DROP that may take the extension (and the job table its running jobs end in) with it is
-- refused while other jobs run in this database: at ddl_command_start an event trigger cannot see
-- which objects a DROP names, and after the drop the extension's own triggers are gone.
CREATE OR REPLACE FUNCTION plpy_bg.policy_ddl_guard()
RETURNS event_trigger LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $plpgsql$
DECLARE
    _pids pg_catalog.text;
BEGIN
    IF TG_TAG OPERATOR(pg_catalog.=) ANY (ARRAY['DROP EXTENSION', 'DROP SCHEMA', 'DROP OWNED']) THEN
        SELECT pg_catalog.string_agg(j.pid::pg_catalog.text, ', ' ORDER BY j.pid) INTO _pids
        FROM plpy_bg.jobs j JOIN pg_catalog.pg_stat_activity a ON a.pid OPERATOR(pg_catalog.=) j.pid
        WHERE j.state OPERATOR(pg_catalog.=) 'running' AND j.pid OPERATOR(pg_catalog.<>) pg_catalog.pg_backend_pid()
          AND a.backend_start OPERATOR(pg_catalog.<=) j.launched_at  -- a live worker, not a reused pid
          AND a.datname OPERATOR(pg_catalog.=) pg_catalog.current_database();
        IF _pids IS NOT NULL THEN
            RAISE EXCEPTION '% is not allowed while background jobs run in this database', TG_TAG
                USING ERRCODE = '55006',
                      DETAIL = pg_catalog.format('Background jobs of plpy_bg run in workers with pids %s; their outcomes '
                                                 'are recorded in plpy_bg.jobs, which the command may drop.', _pids),
                      HINT = 'Wait for the jobs (pg_background_wait_v2) or cancel them (pg_background_cancel_v2, '
                             'pg_cancel_backend), then run the command again. Every DROP EXTENSION, DROP SCHEMA '
                             'and DROP OWNED is refused then: what it drops is not known before it is gone.';
        END IF;
    END IF;
    IF EXISTS (SELECT FROM plpy_bg.jobs j WHERE j.pid OPERATOR(pg_catalog.=) pg_catalog.pg_backend_pid()
                                              AND j.state OPERATOR(pg_catalog.=) 'running') THEN
        PERFORM plpy_bg.policy_ddl_check(TG_TAG);
    END IF;
END
$plpgsql$;

-- privileges
REVOKE ALL ON TABLE plpy_bg.trust FROM PUBLIC;
REVOKE ALL ON TABLE plpy_bg.trust FROM pgbackground_role;
-- reading allows at most ACCESS SHARE, which blocks no launch and no declaration
GRANT SELECT ON TABLE plpy_bg.trust TO pgbackground_role;
REVOKE ALL ON FUNCTION @extschema@.pg_background_trust(pg_catalog.regrole) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.pg_background_distrust(pg_catalog.regrole) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.pg_background_trusted() FROM PUBLIC;
REVOKE ALL ON FUNCTION plpy_bg.policy_ddl_check(pg_catalog.text) FROM PUBLIC;
REVOKE ALL ON FUNCTION plpy_bg.policy_ddl_guard() FROM PUBLIC;
REVOKE ALL ON FUNCTION plpy_bg.trust_write() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION plpy_bg.trust_write() TO pgbackground_role;
GRANT EXECUTE ON FUNCTION @extschema@.pg_background_trust(pg_catalog.regrole) TO pgbackground_role;
GRANT EXECUTE ON FUNCTION @extschema@.pg_background_distrust(pg_catalog.regrole) TO pgbackground_role;
GRANT EXECUTE ON FUNCTION @extschema@.pg_background_trusted() TO pgbackground_role;

-- Called once per backend through SPI by the provenance capture, to find SPI's frames on the stack.
CREATE OR REPLACE FUNCTION plpy_bg.stack_probe()
RETURNS pg_catalog.void LANGUAGE plpython3u VOLATILE SECURITY INVOKER
SET search_path = pg_catalog, pg_temp
AS $python$
#PLPY_BG_PREAMBLE
from plpy_bg.policy import native
native.note_spi_callback(plpy)
$python$;
GRANT EXECUTE ON FUNCTION plpy_bg.stack_probe() TO PUBLIC;
