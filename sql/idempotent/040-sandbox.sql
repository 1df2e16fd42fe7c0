-- The seccomp sandbox: job filters for job workers, client filters, and what is in force.

-- job workers call this before any job SQL (the dispatcher does); it can only tighten, and a
-- second call returns at once. SECURITY DEFINER to read pg_file_settings, never SET values.
CREATE OR REPLACE FUNCTION plpy_bg.install_worker_filter()
RETURNS pg_catalog.void
LANGUAGE plpython3u VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $python$
#PLPY_BG_PREAMBLE
from plpy_bg.sandbox import sql_api
return sql_api.install_worker_filter(plpy, GD)
$python$;
COMMENT ON FUNCTION plpy_bg.install_worker_filter() IS
'Loads the seccomp job filter of session_user''s role into this backend (once; only tightens)';

-- pgseccomp declared this IMMUTABLE, so planning a query could load a filter; it is VOLATILE here.
-- It answers 'OK' as pgseccomp's does (an earlier build returned void: dropped first).
DROP FUNCTION IF EXISTS @extschema@.set_client_filter(pg_catalog.text, pg_catalog.text, pg_catalog.text,
    pg_catalog.text, pg_catalog.text);
CREATE FUNCTION @extschema@.set_client_filter(
    default_action pg_catalog.text, allow_list pg_catalog.text, log_list pg_catalog.text,
    error_list pg_catalog.text, kill_list pg_catalog.text)
RETURNS pg_catalog.text
LANGUAGE plpython3u VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $python$
#PLPY_BG_PREAMBLE
from plpy_bg.sandbox import sql_api
return sql_api.set_client_filter(plpy, default_action, allow_list, log_list, error_list, kill_list)
$python$;
COMMENT ON FUNCTION @extschema@.set_client_filter(pg_catalog.text, pg_catalog.text, pg_catalog.text,
    pg_catalog.text, pg_catalog.text) IS
'Adds a seccomp filter to this session, once: NULL = the session setting, ''*'' = the global list';

CREATE OR REPLACE FUNCTION @extschema@.seccomp_filter()
RETURNS TABLE(syscall pg_catalog.text, syscallnum pg_catalog.int4, filter_action pg_catalog.text,
              context pg_catalog.text)
LANGUAGE plpython3u VOLATILE SECURITY INVOKER
SET search_path = pg_catalog, pg_temp
AS $python$
#PLPY_BG_PREAMBLE
from plpy_bg.sandbox import sql_api
return sql_api.seccomp_filter(plpy)
$python$;
COMMENT ON FUNCTION @extschema@.seccomp_filter() IS
'The seccomp filters in force: the global filter and this session''s, with the action of each syscall';

-- installing a filter can only tighten the caller's own backend: safe for anyone
GRANT USAGE ON SCHEMA plpy_bg TO PUBLIC;
GRANT EXECUTE ON FUNCTION plpy_bg.install_worker_filter() TO PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.set_client_filter(pg_catalog.text, pg_catalog.text, pg_catalog.text,
    pg_catalog.text, pg_catalog.text) FROM PUBLIC;
-- as pgseccomp: what the sandbox denies is not for everyone to read; users of background jobs may
REVOKE ALL ON FUNCTION @extschema@.seccomp_filter() FROM PUBLIC;
DO $grant$
BEGIN
    IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) 'pgbackground_role') THEN
        GRANT EXECUTE ON FUNCTION @extschema@.seccomp_filter() TO pgbackground_role;
    END IF;
END
$grant$;
