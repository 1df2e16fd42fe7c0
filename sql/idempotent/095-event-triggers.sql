-- Event triggers last, once every function they call exists.
DO $do$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_event_trigger WHERE evtname OPERATOR(pg_catalog.=) 'plpy_bg_policy_ddl_guard') THEN
        CREATE EVENT TRIGGER plpy_bg_policy_ddl_guard ON ddl_command_start
            EXECUTE FUNCTION plpy_bg.policy_ddl_guard();
    END IF;
END
$do$;
-- also under session_replication_role = replica: a job's DDL checks and the drop guard hold there too
ALTER EVENT TRIGGER plpy_bg_policy_ddl_guard ENABLE ALWAYS;
