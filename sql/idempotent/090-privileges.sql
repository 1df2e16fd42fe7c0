-- Privilege helpers, internal functions and the grants; runs last.

-- the peer-map line that lets the dispatcher log in as a job role; runs as the extension's owner
DROP FUNCTION IF EXISTS plpy_bg.register_role(pg_catalog.text);  -- 0.1.0's, without `present`
CREATE OR REPLACE FUNCTION plpy_bg.register_role(role_name pg_catalog.text, present pg_catalog.bool DEFAULT true)
RETURNS pg_catalog.void
LANGUAGE plpython3u VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $python$
#PLPY_BG_PREAMBLE
from plpy_bg import api
return api.register_role(plpy, GD, role_name, present)
$python$;
COMMENT ON FUNCTION plpy_bg.register_role(pg_catalog.text, pg_catalog.bool) IS
'Adds (or with present = false removes) the pg_ident.conf line that lets job workers log in as the role (peer map plpy_bg)';

CREATE OR REPLACE FUNCTION plpy_bg.check_invariants()
RETURNS SETOF pg_catalog.text
LANGUAGE plpython3u VOLATILE SECURITY INVOKER
SET search_path = pg_catalog, pg_temp
AS $python$
#PLPY_BG_PREAMBLE
from plpy_bg import api
return api.invariants(plpy, GD)
$python$;

CREATE OR REPLACE FUNCTION plpy_bg.pool_workers(
    OUT pid pg_catalog.int4, OUT database pg_catalog.text, OUT role pg_catalog.text, OUT profile pg_catalog.text,
    OUT state pg_catalog.text, OUT job_cookie pg_catalog.int8, OUT jobs_run pg_catalog.int4,
    OUT idle_seconds pg_catalog.float8, OUT seccomp_filters pg_catalog.int4)
RETURNS SETOF record
LANGUAGE plpython3u VOLATILE SECURITY INVOKER
SET search_path = pg_catalog, pg_temp
AS $python$
#PLPY_BG_PREAMBLE
from plpy_bg import api
return api.pool_workers(plpy, GD)
$python$;
COMMENT ON FUNCTION plpy_bg.pool_workers() IS
'Every job worker connection of the dispatcher: idle in the pool, running a job, or opening';

-- where the dispatcher listens: superuser-only settings, read for the launching role
DROP FUNCTION IF EXISTS plpy_bg.cluster_context(OUT pg_catalog.text, OUT pg_catalog.int4, OUT pg_catalog.text);
CREATE OR REPLACE FUNCTION plpy_bg.cluster_context(OUT dirs pg_catalog.text, OUT port pg_catalog.int4)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$ SELECT pg_catalog.current_setting('unix_socket_directories'),
             pg_catalog.current_setting('port')::pg_catalog.int4 $$;

-- the objects a role needs to use background jobs, as format() patterns
CREATE OR REPLACE FUNCTION plpy_bg.api_objects()
RETURNS SETOF pg_catalog.text
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT unnest(ARRAY[
    'FUNCTION plpy_bg.cluster_context()',
    'FUNCTION %I.pg_background_launch(pg_catalog.text, pg_catalog.int4)',
    'FUNCTION %I.pg_background_result(pg_catalog.int4)',
    'FUNCTION plpy_bg.result_columns(pg_catalog.int4, pg_catalog.int8, pg_catalog.bool)',
    'FUNCTION plpy_bg.result_rows(pg_catalog.int4, pg_catalog.int8, pg_catalog.bool)',
    'FUNCTION %I.pg_background_detach(pg_catalog.int4)',
    'TYPE %I.pg_background_handle',
    'TYPE %I.pg_background_stats',
    'TYPE %I.pg_background_progress',
    'FUNCTION %I.pg_background_launch_v2(pg_catalog.text, pg_catalog.int4)',
    'FUNCTION %I.pg_background_submit_v2(pg_catalog.text, pg_catalog.int4)',
    'FUNCTION %I.pg_background_result_v2(pg_catalog.int4, pg_catalog.int8)',
    'FUNCTION %I.pg_background_detach_v2(pg_catalog.int4, pg_catalog.int8)',
    'FUNCTION %I.pg_background_cancel_v2(pg_catalog.int4, pg_catalog.int8)',
    'FUNCTION %I.pg_background_cancel_v2_grace(pg_catalog.int4, pg_catalog.int8, pg_catalog.int4)',
    'FUNCTION %I.pg_background_wait_v2(pg_catalog.int4, pg_catalog.int8)',
    'FUNCTION %I.pg_background_wait_v2_timeout(pg_catalog.int4, pg_catalog.int8, pg_catalog.int4)',
    'FUNCTION %I.pg_background_list_v2()',
    'FUNCTION %I.pg_background_stats_v2()',
    'FUNCTION %I.pg_background_progress(pg_catalog.int4, pg_catalog.text)',
    'FUNCTION %I.pg_background_get_progress_v2(pg_catalog.int4, pg_catalog.int8)',
    'ROUTINE %I.pg_background_await(pg_catalog.int4, pg_catalog.int8, pg_catalog.int4)',
    'FUNCTION plpy_bg.job_login(pg_catalog.oid)'
]) $$;

CREATE OR REPLACE FUNCTION @extschema@.grant_pg_background_privileges(
    role_name pg_catalog.text, print_commands pg_catalog.bool DEFAULT false)
RETURNS pg_catalog.bool
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $function$
DECLARE
    _sql pg_catalog.text;
    _obj pg_catalog.text;
    _schema pg_catalog.text;
BEGIN
    IF role_name IS NULL THEN
        RAISE EXCEPTION 'role_name must not be null' USING ERRCODE = '22004';
    END IF;
    -- outside the catch-all below: a name pg_ident.conf cannot hold is refused before anything is granted
    IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) role_name AND rolcanlogin) THEN
        PERFORM plpy_bg.register_role(role_name);
    ELSIF role_name OPERATOR(pg_catalog.<>) 'pgbackground_role' THEN  -- a group, not a job's role
        PERFORM plpy_bg.make_job_login((SELECT r.oid FROM pg_catalog.pg_roles r
                                        WHERE r.rolname OPERATOR(pg_catalog.=) role_name));
    END IF;
    BEGIN
    SELECT n.nspname INTO _schema FROM pg_catalog.pg_extension e
      JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) e.extnamespace
      WHERE e.extname OPERATOR(pg_catalog.=) 'plpy_bg';
    FOR _obj IN SELECT plpy_bg.api_objects() LOOP
        _sql := pg_catalog.format('GRANT %s TO %I',
                  pg_catalog.format(_obj, _schema),
                  role_name);
        _sql := pg_catalog.replace(_sql, 'GRANT TYPE', 'GRANT USAGE ON TYPE');
        _sql := pg_catalog.replace(_sql, 'GRANT FUNCTION', 'GRANT EXECUTE ON FUNCTION');
        _sql := pg_catalog.replace(_sql, 'GRANT ROUTINE', 'GRANT EXECUTE ON ROUTINE');
        EXECUTE _sql; IF print_commands THEN RAISE INFO '%', _sql; END IF;
    END LOOP;
    _sql := pg_catalog.format('GRANT USAGE ON SCHEMA plpy_bg TO %I', role_name);
    EXECUTE _sql; IF print_commands THEN RAISE INFO '%', _sql; END IF;
    _sql := pg_catalog.format('GRANT SELECT ON plpy_bg.jobs TO %I', role_name);
    EXECUTE _sql; IF print_commands THEN RAISE INFO '%', _sql; END IF;
    -- a launch reads the trust its wrappers' owners declared (row-level security: what it may see)
    _sql := pg_catalog.format('GRANT SELECT ON plpy_bg.trust TO %I', role_name);
    EXECUTE _sql; IF print_commands THEN RAISE INFO '%', _sql; END IF;
    _sql := pg_catalog.format('GRANT SELECT ON %I.pg_background_jobs TO %I', _schema, role_name);
    EXECUTE _sql; IF print_commands THEN RAISE INFO '%', _sql; END IF;
    RETURN true;
    EXCEPTION WHEN OTHERS THEN
        RAISE NOTICE 'error granting plpy_bg privileges to %: %', role_name, SQLERRM;
        RETURN false;
    END;
END;
$function$;

CREATE OR REPLACE FUNCTION @extschema@.revoke_pg_background_privileges(
    role_name pg_catalog.text, print_commands pg_catalog.bool DEFAULT false)
RETURNS pg_catalog.bool
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $function$
DECLARE
    _sql pg_catalog.text;
    _obj pg_catalog.text;
    _schema pg_catalog.text;
BEGIN
    IF role_name IS NULL THEN
        RAISE EXCEPTION 'role_name must not be null' USING ERRCODE = '22004';
    END IF;
    SELECT n.nspname INTO _schema FROM pg_catalog.pg_extension e
      JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) e.extnamespace
      WHERE e.extname OPERATOR(pg_catalog.=) 'plpy_bg';
    FOR _obj IN SELECT plpy_bg.api_objects() LOOP
        _sql := pg_catalog.format('REVOKE %s FROM %I', pg_catalog.format(_obj, _schema), role_name);
        _sql := pg_catalog.replace(_sql, 'REVOKE TYPE', 'REVOKE USAGE ON TYPE');
        _sql := pg_catalog.replace(_sql, 'REVOKE FUNCTION', 'REVOKE EXECUTE ON FUNCTION');
        _sql := pg_catalog.replace(_sql, 'REVOKE ROUTINE', 'REVOKE EXECUTE ON ROUTINE');
        EXECUTE _sql; IF print_commands THEN RAISE INFO '%', _sql; END IF;
    END LOOP;
    _sql := pg_catalog.format('REVOKE SELECT ON %I.pg_background_jobs FROM %I', _schema, role_name);
    EXECUTE _sql; IF print_commands THEN RAISE INFO '%', _sql; END IF;
    _sql := pg_catalog.format('REVOKE SELECT ON plpy_bg.jobs FROM %I', role_name);
    EXECUTE _sql; IF print_commands THEN RAISE INFO '%', _sql; END IF;
    _sql := pg_catalog.format('REVOKE SELECT ON plpy_bg.trust FROM %I', role_name);
    EXECUTE _sql; IF print_commands THEN RAISE INFO '%', _sql; END IF;
    _sql := pg_catalog.format('REVOKE USAGE ON SCHEMA plpy_bg FROM %I', role_name);
    EXECUTE _sql; IF print_commands THEN RAISE INFO '%', _sql; END IF;
    PERFORM plpy_bg.register_role(role_name, false);
    -- the login its jobs ran under, if it was NOLOGIN
    _obj := 'plpy_bg_job_' OPERATOR(pg_catalog.||) (SELECT r.oid FROM pg_catalog.pg_roles r
                                                    WHERE r.rolname OPERATOR(pg_catalog.=) role_name)::pg_catalog.text;
    IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) _obj) THEN
        PERFORM plpy_bg.register_role(_obj, false);
        EXECUTE pg_catalog.format('DROP ROLE %I', _obj);
        IF print_commands THEN RAISE INFO 'DROP ROLE %', _obj; END IF;
    END IF;
    RETURN true;
EXCEPTION WHEN OTHERS THEN
    RAISE NOTICE 'error revoking plpy_bg privileges from %: %', role_name, SQLERRM;
    RETURN false;
END;
$function$;

-- The login a NOLOGIN role's jobs run under: plpy_bg_job_<oid>, LOGIN and nothing else,
-- NOINHERIT, a member of that role only and of nothing else, made by
-- grant_pg_background_privileges (committed before any launch needs it: a worker logs in on a
-- connection of its own) and dropped by revoke_pg_background_privileges. A job's worker logs
-- in as it and SETs ROLE to the role, so RESET ROLE in a job leaves it with no privileges of
-- its own. By itself it lets no one in: only the server's OS user may log in as it (peer map).
CREATE OR REPLACE FUNCTION plpy_bg.make_job_login(target pg_catalog.oid)
RETURNS pg_catalog.void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $function$
DECLARE
    _r pg_catalog.pg_roles;
    _name pg_catalog.text := 'plpy_bg_job_' OPERATOR(pg_catalog.||) target::pg_catalog.text;
BEGIN
    SELECT * INTO _r FROM pg_catalog.pg_roles WHERE oid OPERATOR(pg_catalog.=) target;
    IF NOT FOUND OR _r.rolcanlogin THEN
        RETURN;  -- a role that logs in needs none
    END IF;
    IF _r.rolsuper THEN
        -- a login that is no superuser but may SET ROLE to one: any CREATEROLE role could grant it
        RAISE NOTICE 'role "%" gets no job login: it is a superuser that cannot log in', _r.rolname
            USING HINT = 'Its jobs cannot run; launch them from a role that can log in.';
        RETURN;
    END IF;
    IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) _name) THEN
        PERFORM plpy_bg.job_login(target);  -- one made before, or by someone else: it must be as made here
        RETURN;
    END IF;
    -- VALID UNTIL epoch: a password the job's own RESET ROLE; ALTER ROLE CURRENT_USER PASSWORD sets is
    -- expired at once (a role may change its own password, not that); peer login is not affected
    EXECUTE pg_catalog.format('CREATE ROLE %I LOGIN NOINHERIT NOSUPERUSER NOCREATEDB NOCREATEROLE '
                              'NOREPLICATION NOBYPASSRLS VALID UNTIL %L', _name, 'epoch');
    EXECUTE pg_catalog.format('GRANT %I TO %I', _r.rolname, _name);
    EXECUTE pg_catalog.format('COMMENT ON ROLE %I IS %L', _name,
                              'plpy_bg: the login of background jobs of role oid ' OPERATOR(pg_catalog.||) target);
    PERFORM plpy_bg.register_role(_name);
END;
$function$;

-- at each launch of a NOLOGIN role: the name of its job login, checked to be as made above
CREATE OR REPLACE FUNCTION plpy_bg.job_login(target pg_catalog.oid)
RETURNS pg_catalog.text
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $function$
DECLARE
    _r pg_catalog.pg_roles;
    _s pg_catalog.pg_roles;
    _name pg_catalog.text := 'plpy_bg_job_' OPERATOR(pg_catalog.||) target::pg_catalog.text;
BEGIN
    SELECT * INTO _r FROM pg_catalog.pg_roles WHERE oid OPERATOR(pg_catalog.=) target;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'role with oid % does not exist', target USING ERRCODE = '42704';
    END IF;
    IF _r.rolcanlogin THEN
        RETURN _r.rolname;
    END IF;
    IF _r.rolsuper THEN
        RAISE EXCEPTION 'role "%" cannot run background jobs: it is a superuser that cannot log in', _r.rolname
            USING ERRCODE = '42501', HINT = 'Launch from a role that can log in.';
    END IF;
    SELECT * INTO _s FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) _name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'role "%" cannot run background jobs: it cannot log in and has no job login', _r.rolname
            USING ERRCODE = '42501',
            DETAIL = 'Jobs run on a connection that logs in; a NOLOGIN role''s jobs log in as a role made for it.',
            HINT = pg_catalog.format('As a superuser: SELECT grant_pg_background_privileges(%L); it makes %I.',
                                     _r.rolname, _name);
    END IF;
    -- what the name holds must be a job login as made, whoever touched it since
    IF NOT _s.rolcanlogin OR _s.rolinherit OR _s.rolsuper OR _s.rolcreatedb OR _s.rolcreaterole
       OR _s.rolreplication OR _s.rolbypassrls OR _s.rolconfig IS NOT NULL
       OR _s.rolvaliduntil IS NULL OR _s.rolvaliduntil OPERATOR(pg_catalog.>) 'epoch'::pg_catalog.timestamptz
       OR EXISTS (SELECT FROM pg_catalog.pg_db_role_setting d WHERE d.setrole OPERATOR(pg_catalog.=) _s.oid)
       OR EXISTS (SELECT FROM pg_catalog.pg_auth_members m WHERE m.roleid OPERATOR(pg_catalog.=) _s.oid)
       OR (SELECT pg_catalog.array_agg(m.roleid) FROM pg_catalog.pg_auth_members m
           WHERE m.member OPERATOR(pg_catalog.=) _s.oid) IS DISTINCT FROM ARRAY[target]
       OR EXISTS (SELECT FROM pg_catalog.pg_authid a WHERE a.oid OPERATOR(pg_catalog.=) _s.oid
                  AND a.rolpassword IS NOT NULL) THEN
        RAISE EXCEPTION 'role "%" is not the job login plpy_bg made for role "%"', _name, _r.rolname
            USING ERRCODE = '42501',
            DETAIL = 'It must be LOGIN, NOINHERIT, without other attributes, settings or password, valid until epoch, a member of that role only, with no members.',
            HINT = pg_catalog.format('DROP ROLE %I; then, as a superuser, SELECT grant_pg_background_privileges(%L).',
                                     _name, _r.rolname);
    END IF;
    RETURN _name;
END;
$function$;

-- pg_background 1.8's helper: DROP EXTENSION leaves the executor role. Everything this
-- extension granted it in this database is revoked first; what it holds elsewhere is the
-- DBA's to revoke (the error says where).
CREATE OR REPLACE FUNCTION @extschema@.pg_background_drop_executor_role()
RETURNS pg_catalog.void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $function$
DECLARE
    _sql pg_catalog.text;
    _detail pg_catalog.text;
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) 'pgbackground_role') THEN
        RETURN;
    END IF;
    FOR _sql IN
        SELECT CASE d.classid
                 WHEN 'pg_catalog.pg_proc'::pg_catalog.regclass
                   THEN pg_catalog.format('REVOKE ALL ON ROUTINE %s FROM pgbackground_role', d.objid::pg_catalog.regprocedure)
                 WHEN 'pg_catalog.pg_class'::pg_catalog.regclass
                   THEN pg_catalog.format('REVOKE ALL ON %s %s FROM pgbackground_role',
                          CASE c.relkind WHEN 'S' THEN 'SEQUENCE' ELSE 'TABLE' END, d.objid::pg_catalog.regclass)
                 WHEN 'pg_catalog.pg_type'::pg_catalog.regclass
                   THEN pg_catalog.format('REVOKE ALL ON TYPE %s FROM pgbackground_role', d.objid::pg_catalog.regtype)
                 ELSE pg_catalog.format('REVOKE ALL ON SCHEMA %I FROM pgbackground_role', n.nspname)
               END
        FROM pg_catalog.pg_depend d
        JOIN pg_catalog.pg_extension e ON e.oid OPERATOR(pg_catalog.=) d.refobjid
        LEFT JOIN pg_catalog.pg_class c ON d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass
             AND c.oid OPERATOR(pg_catalog.=) d.objid
        LEFT JOIN pg_catalog.pg_namespace n ON d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_namespace'::pg_catalog.regclass
             AND n.oid OPERATOR(pg_catalog.=) d.objid
        LEFT JOIN pg_catalog.pg_type t ON d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_type'::pg_catalog.regclass
             AND t.oid OPERATOR(pg_catalog.=) d.objid
        WHERE d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_extension'::pg_catalog.regclass
          AND e.extname OPERATOR(pg_catalog.=) 'plpy_bg' AND d.deptype OPERATOR(pg_catalog.=) 'e'
          AND (d.classid OPERATOR(pg_catalog.=) ANY (ARRAY['pg_catalog.pg_proc', 'pg_catalog.pg_class']::pg_catalog.regclass[])
               OR n.oid IS NOT NULL OR t.oid IS NOT NULL)
    LOOP
        EXECUTE _sql;
    END LOOP;
    DROP ROLE pgbackground_role;
EXCEPTION WHEN dependent_objects_still_exist THEN
    GET STACKED DIAGNOSTICS _detail = PG_EXCEPTION_DETAIL;
    RAISE EXCEPTION 'role "pgbackground_role" cannot be dropped because some objects depend on it'
        USING ERRCODE = '2BP01', DETAIL = _detail,
              HINT = 'Drop plpy_bg (or revoke what the role holds) in the other databases named, and REASSIGN '
                     'OWNED BY pgbackground_role where it owns something; then call this again.';
END;
$function$;

-- nothing is granted to PUBLIC; the executor role gets the API
REVOKE ALL ON FUNCTION @extschema@.pg_background_launch(pg_catalog.text, pg_catalog.int4) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.pg_background_result(pg_catalog.int4) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.pg_background_detach(pg_catalog.int4) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.pg_background_launch_v2(pg_catalog.text, pg_catalog.int4) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.pg_background_submit_v2(pg_catalog.text, pg_catalog.int4) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.pg_background_result_v2(pg_catalog.int4, pg_catalog.int8) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.pg_background_detach_v2(pg_catalog.int4, pg_catalog.int8) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.pg_background_cancel_v2(pg_catalog.int4, pg_catalog.int8) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.pg_background_cancel_v2_grace(pg_catalog.int4, pg_catalog.int8, pg_catalog.int4) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.pg_background_wait_v2(pg_catalog.int4, pg_catalog.int8) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.pg_background_wait_v2_timeout(pg_catalog.int4, pg_catalog.int8, pg_catalog.int4) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.pg_background_list_v2() FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.pg_background_stats_v2() FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.pg_background_progress(pg_catalog.int4, pg_catalog.text) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.pg_background_get_progress_v2(pg_catalog.int4, pg_catalog.int8) FROM PUBLIC;
REVOKE ALL ON PROCEDURE @extschema@.pg_background_await(pg_catalog.int4, pg_catalog.int8, pg_catalog.int4) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.grant_pg_background_privileges(pg_catalog.text, pg_catalog.bool) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.revoke_pg_background_privileges(pg_catalog.text, pg_catalog.bool) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.pg_background_drop_executor_role() FROM PUBLIC;
REVOKE ALL ON FUNCTION plpy_bg.register_role(pg_catalog.text, pg_catalog.bool) FROM PUBLIC;
REVOKE ALL ON FUNCTION plpy_bg.result_columns(pg_catalog.int4, pg_catalog.int8, pg_catalog.bool) FROM PUBLIC;
REVOKE ALL ON FUNCTION plpy_bg.result_rows(pg_catalog.int4, pg_catalog.int8, pg_catalog.bool) FROM PUBLIC;
REVOKE ALL ON FUNCTION plpy_bg.job_login(pg_catalog.oid) FROM PUBLIC;
REVOKE ALL ON FUNCTION plpy_bg.make_job_login(pg_catalog.oid) FROM PUBLIC;
REVOKE ALL ON FUNCTION plpy_bg.check_invariants() FROM PUBLIC;
REVOKE ALL ON FUNCTION plpy_bg.pool_workers() FROM PUBLIC;
REVOKE ALL ON FUNCTION plpy_bg.cluster_context() FROM PUBLIC;
SELECT @extschema@.grant_pg_background_privileges('pgbackground_role', false);

-- the dispatcher's own peer-map line; a file the server cannot let us write is the DBA's to edit
DO $do$
BEGIN
    PERFORM plpy_bg.register_role('plpy_bg_dispatcher');
EXCEPTION WHEN OTHERS THEN
    RAISE WARNING 'could not add the plpy_bg_dispatcher line to pg_ident.conf: %', SQLERRM
        USING HINT = 'Add the line  plpy_bg postgres "plpy_bg_dispatcher"  to pg_ident.conf and reload.';
END
$do$;

-- pg_background's settings, defined in this session at once (SHOW, ALTER SYSTEM); every other
-- backend defines them at its first plpy_bg call, as a C library does when it loads
DO LANGUAGE plpython3u $python$
#PLPY_BG_PREAMBLE
from plpy_bg import api
api.define_settings(plpy)
$python$;
