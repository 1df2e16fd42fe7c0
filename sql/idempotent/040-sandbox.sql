-- The seccomp sandbox: session filters for job workers and clients, and what is in force.

-- job workers call this first thing (the dispatcher does); it only ever tightens, once
CREATE OR REPLACE FUNCTION plpy_bg.install_worker_filter()
RETURNS pg_catalog.void
LANGUAGE plpython3u VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $python$
#PLPY_BG_PREAMBLE
from plpy_bg.sandbox import sql_api
return sql_api.install_worker_filter(plpy, GD)
$python$;

CREATE OR REPLACE FUNCTION @extschema@.set_client_filter(
    default_action pg_catalog.text, allow_list pg_catalog.text, log_list pg_catalog.text,
    error_list pg_catalog.text, kill_list pg_catalog.text)
RETURNS pg_catalog.void
LANGUAGE plpython3u VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $python$
#PLPY_BG_PREAMBLE
from plpy_bg.sandbox import sql_api
return sql_api.set_client_filter(plpy, GD, default_action, allow_list, log_list, error_list, kill_list)
$python$;

CREATE OR REPLACE FUNCTION @extschema@.seccomp_filter(
    OUT syscall pg_catalog.text, OUT syscallnum pg_catalog.int4,
    OUT filter_action pg_catalog.text, OUT context pg_catalog.text)
RETURNS SETOF record
LANGUAGE plpython3u VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $python$
#PLPY_BG_PREAMBLE
from plpy_bg.sandbox import sql_api
return sql_api.seccomp_filter(plpy, GD)
$python$;

-- anyone may only tighten their own worker filter; the schema is usable, its tables are not
GRANT USAGE ON SCHEMA plpy_bg TO PUBLIC;
GRANT EXECUTE ON FUNCTION plpy_bg.install_worker_filter() TO PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.set_client_filter(pg_catalog.text, pg_catalog.text, pg_catalog.text,
    pg_catalog.text, pg_catalog.text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.seccomp_filter() TO PUBLIC;
