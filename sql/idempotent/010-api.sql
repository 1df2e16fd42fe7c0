-- The pg_background 1.8 API. Bodies are thin: all logic is in plpy_bg.api.
-- Not STRICT: a NULL argument is an error (22004), not a silent NULL result.

CREATE OR REPLACE FUNCTION @extschema@.pg_background_launch(sql pg_catalog.text, queue_size pg_catalog.int4 DEFAULT 0)
RETURNS pg_catalog.int4
LANGUAGE plpython3u VOLATILE SECURITY INVOKER
-- no SET search_path: the job inherits the caller's search_path and settings,
-- so every name used inside plpy_bg.api is schema-qualified instead
AS $python$
#PLPY_BG_PREAMBLE
from plpy_bg import api
return api.launch_v1(plpy, GD, sql, queue_size)
$python$;

-- A job's rows travel as record literals of the job's own column types: result_columns names
-- them once known (reading no row), and PL/pgSQL's RETURN QUERY checks them against the caller's
-- column list before result_rows reads a row (42804 on a mismatch; the rows stay readable). The
-- rows are read under the DateStyle and IntervalStyle they were written under (the SET clauses
-- keep those changes to the call). Both internal functions go to the roles that may read results.
CREATE OR REPLACE FUNCTION plpy_bg.result_columns(pid pg_catalog.int4, cookie pg_catalog.int8, v2 pg_catalog.bool,
    OUT cols pg_catalog.text, OUT datestyle pg_catalog.text, OUT intervalstyle pg_catalog.text)
LANGUAGE plpython3u VOLATILE SECURITY INVOKER
SET search_path = pg_catalog, pg_temp
AS $python$
#PLPY_BG_PREAMBLE
from plpy_bg import api
return api.result_columns(plpy, GD, pid, cookie, v2)
$python$;

CREATE OR REPLACE FUNCTION plpy_bg.result_rows(pid pg_catalog.int4, cookie pg_catalog.int8, v2 pg_catalog.bool)
RETURNS SETOF pg_catalog.record
LANGUAGE plpython3u VOLATILE SECURITY INVOKER
SET search_path = pg_catalog, pg_temp
AS $python$
#PLPY_BG_PREAMBLE
from plpy_bg import api
return api.result_rows(plpy, GD, pid, cookie, v2)
$python$;

CREATE OR REPLACE FUNCTION @extschema@.pg_background_result(pid pg_catalog.int4)
RETURNS SETOF pg_catalog.record
LANGUAGE plpgsql VOLATILE SECURITY INVOKER
SET search_path = pg_catalog, pg_temp
SET datestyle = 'ISO, MDY'
SET intervalstyle = 'postgres'
AS $function$
DECLARE
    d record := plpy_bg.result_columns(pid, NULL, false);
BEGIN
    PERFORM pg_catalog.set_config('datestyle', d.datestyle, true) WHERE d.datestyle IS NOT NULL;
    PERFORM pg_catalog.set_config('intervalstyle', d.intervalstyle, true) WHERE d.intervalstyle IS NOT NULL;
    RETURN QUERY EXECUTE 'SELECT * FROM plpy_bg.result_rows($1, NULL, false) AS r(' || d.cols || ')' USING pid;
END
$function$;

CREATE OR REPLACE FUNCTION @extschema@.pg_background_detach(pid pg_catalog.int4)
RETURNS pg_catalog.void
LANGUAGE plpython3u VOLATILE SECURITY INVOKER
SET search_path = pg_catalog, pg_temp
AS $python$
#PLPY_BG_PREAMBLE
from plpy_bg import api
return api.detach_v1(plpy, GD, pid)
$python$;

CREATE OR REPLACE FUNCTION @extschema@.pg_background_launch_v2(sql pg_catalog.text, queue_size pg_catalog.int4 DEFAULT 0)
RETURNS @extschema@.pg_background_handle
LANGUAGE plpython3u VOLATILE SECURITY INVOKER
-- no SET search_path: the job inherits the caller's search_path and settings,
-- so every name used inside plpy_bg.api is schema-qualified instead
AS $python$
#PLPY_BG_PREAMBLE
from plpy_bg import api
return api.launch_v2(plpy, GD, sql, queue_size)
$python$;

CREATE OR REPLACE FUNCTION @extschema@.pg_background_submit_v2(sql pg_catalog.text, queue_size pg_catalog.int4 DEFAULT 0)
RETURNS @extschema@.pg_background_handle
LANGUAGE plpython3u VOLATILE SECURITY INVOKER
-- no SET search_path: the job inherits the caller's search_path and settings,
-- so every name used inside plpy_bg.api is schema-qualified instead
AS $python$
#PLPY_BG_PREAMBLE
from plpy_bg import api
return api.submit_v2(plpy, GD, sql, queue_size)
$python$;

CREATE OR REPLACE FUNCTION @extschema@.pg_background_result_v2(pid pg_catalog.int4, cookie pg_catalog.int8)
RETURNS SETOF pg_catalog.record
LANGUAGE plpgsql VOLATILE SECURITY INVOKER
SET search_path = pg_catalog, pg_temp
SET datestyle = 'ISO, MDY'
SET intervalstyle = 'postgres'
AS $function$
DECLARE
    d record := plpy_bg.result_columns(pid, cookie, true);
BEGIN
    PERFORM pg_catalog.set_config('datestyle', d.datestyle, true) WHERE d.datestyle IS NOT NULL;
    PERFORM pg_catalog.set_config('intervalstyle', d.intervalstyle, true) WHERE d.intervalstyle IS NOT NULL;
    RETURN QUERY EXECUTE 'SELECT * FROM plpy_bg.result_rows($1, $2, true) AS r(' || d.cols || ')' USING pid, cookie;
END
$function$;

CREATE OR REPLACE FUNCTION @extschema@.pg_background_detach_v2(pid pg_catalog.int4, cookie pg_catalog.int8)
RETURNS pg_catalog.void
LANGUAGE plpython3u VOLATILE SECURITY INVOKER
SET search_path = pg_catalog, pg_temp
AS $python$
#PLPY_BG_PREAMBLE
from plpy_bg import api
return api.detach_v2(plpy, GD, pid, cookie)
$python$;

CREATE OR REPLACE FUNCTION @extschema@.pg_background_cancel_v2(pid pg_catalog.int4, cookie pg_catalog.int8)
RETURNS pg_catalog.void
LANGUAGE plpython3u VOLATILE SECURITY INVOKER
SET search_path = pg_catalog, pg_temp
AS $python$
#PLPY_BG_PREAMBLE
from plpy_bg import api
return api.cancel_v2(plpy, GD, pid, cookie)
$python$;

CREATE OR REPLACE FUNCTION @extschema@.pg_background_cancel_v2_grace(pid pg_catalog.int4, cookie pg_catalog.int8, grace_ms pg_catalog.int4)
RETURNS pg_catalog.void
LANGUAGE plpython3u VOLATILE SECURITY INVOKER
SET search_path = pg_catalog, pg_temp
AS $python$
#PLPY_BG_PREAMBLE
from plpy_bg import api
return api.cancel_v2_grace(plpy, GD, pid, cookie, grace_ms)
$python$;

CREATE OR REPLACE FUNCTION @extschema@.pg_background_wait_v2(pid pg_catalog.int4, cookie pg_catalog.int8)
RETURNS pg_catalog.void
LANGUAGE plpython3u VOLATILE SECURITY INVOKER
SET search_path = pg_catalog, pg_temp
AS $python$
#PLPY_BG_PREAMBLE
from plpy_bg import api
return api.wait_v2(plpy, GD, pid, cookie)
$python$;

CREATE OR REPLACE FUNCTION @extschema@.pg_background_wait_v2_timeout(pid pg_catalog.int4, cookie pg_catalog.int8, timeout_ms pg_catalog.int4)
RETURNS pg_catalog.bool
LANGUAGE plpython3u VOLATILE SECURITY INVOKER
SET search_path = pg_catalog, pg_temp
AS $python$
#PLPY_BG_PREAMBLE
from plpy_bg import api
return api.wait_v2_timeout(plpy, GD, pid, cookie, timeout_ms)
$python$;

-- A procedure, so that it may commit between checks; no SET clause (a procedure with one
-- cannot commit), so every name inside plpy_bg.api is schema-qualified
CREATE OR REPLACE PROCEDURE @extschema@.pg_background_await(pid pg_catalog.int4, cookie pg_catalog.int8,
                                                           timeout_ms pg_catalog.int4 DEFAULT NULL)
LANGUAGE plpython3u
AS $python$
#PLPY_BG_PREAMBLE
from plpy_bg import api
api.await_job(plpy, GD, pid, cookie, timeout_ms)
$python$;

CREATE OR REPLACE FUNCTION @extschema@.pg_background_list_v2()
RETURNS SETOF pg_catalog.record
LANGUAGE plpython3u VOLATILE SECURITY INVOKER
SET search_path = pg_catalog, pg_temp
AS $python$
#PLPY_BG_PREAMBLE
from plpy_bg import api
return api.list_v2(plpy, GD)
$python$;

CREATE OR REPLACE FUNCTION @extschema@.pg_background_stats_v2()
RETURNS @extschema@.pg_background_stats
LANGUAGE plpython3u VOLATILE SECURITY INVOKER
SET search_path = pg_catalog, pg_temp
AS $python$
#PLPY_BG_PREAMBLE
from plpy_bg import api
return api.stats_v2(plpy, GD)
$python$;

CREATE OR REPLACE FUNCTION @extschema@.pg_background_progress(pct pg_catalog.int4, msg pg_catalog.text DEFAULT NULL)
RETURNS pg_catalog.void
LANGUAGE plpython3u VOLATILE SECURITY INVOKER
SET search_path = pg_catalog, pg_temp
AS $python$
#PLPY_BG_PREAMBLE
from plpy_bg.jobs import progress
return progress.report(plpy, GD, pct, msg)
$python$;

CREATE OR REPLACE FUNCTION @extschema@.pg_background_get_progress_v2(pid pg_catalog.int4, cookie pg_catalog.int8)
RETURNS @extschema@.pg_background_progress
LANGUAGE plpython3u VOLATILE SECURITY INVOKER
SET search_path = pg_catalog, pg_temp
AS $python$
#PLPY_BG_PREAMBLE
from plpy_bg import api
return api.get_progress_v2(plpy, GD, pid, cookie)
$python$;
