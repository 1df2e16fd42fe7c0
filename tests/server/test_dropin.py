"""pg_background users' habits on a cluster of the module's own: its settings, the executor
role's helper."""
import psycopg
import pytest

pytestmark = pytest.mark.server


def test_pg_background_settings_are_defined_as_its_library_defines_them(own_pg):
    with own_pg.connect("alice") as c:  # defined at the session's first plpy_bg call
        c.execute("SELECT * FROM pg_background_stats_v2()")
        assert [c.execute(f"SHOW pg_background.{n}").fetchone()[0]
                for n in ("max_workers", "default_queue_size", "worker_timeout")] == ["16", "64kB", "0"]
        with pytest.raises(psycopg.errors.InvalidParameterValue):
            c.execute("SET pg_background.max_workers = 0")  # 1 .. 1000, checked by the server
        c.execute("SET pg_background.worker_timeout = '5s'")
        assert c.execute("SELECT current_setting('pg_background.worker_timeout')").fetchone()[0] == "5s"
        assert c.execute("SELECT max_workers FROM pg_background_stats_v2()").fetchone()[0] == 16
    with own_pg.connect("postgres") as c:
        c.execute("SELECT * FROM pg_background_stats_v2()")
        c.execute("ALTER SYSTEM SET pg_background.max_workers = 3")  # README's way
        c.execute("SELECT pg_reload_conf()")
    try:
        with own_pg.connect("alice") as c:  # a fresh session: the server's file names it
            assert c.execute("SHOW pg_background.max_workers").fetchone()[0] == "3"
            assert c.execute("SELECT max_workers FROM pg_background_stats_v2()").fetchone()[0] == 3
    finally:
        with own_pg.connect("postgres") as c:
            c.execute("SELECT * FROM pg_background_stats_v2()")
            c.execute("ALTER SYSTEM RESET pg_background.max_workers")
            c.execute("SELECT pg_reload_conf()")


def test_drop_executor_role_revokes_then_drops_and_says_what_holds_it(own_pg):
    with own_pg.connect("mallory") as c:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute("SELECT pg_background_drop_executor_role()")
    own_pg.sql("CREATE DATABASE dropin_other")
    with psycopg.connect(own_pg.cluster.dsn("postgres", dbname="dropin_other"), autocommit=True) as o:
        o.execute("CREATE EXTENSION plpy_bg CASCADE")
        with pytest.raises(psycopg.errors.DependentObjectsStillExist) as ei:
            o.execute("SELECT pg_background_drop_executor_role()")  # granted in the first database too
        assert "pgbackground_role" in ei.value.diag.message_primary and ei.value.diag.message_hint
        assert own_pg.sql("SELECT count(*) FROM pg_roles WHERE rolname = 'pgbackground_role'")[0][0] == 1
        assert o.execute("SELECT has_function_privilege('pgbackground_role', "
                         "'pg_background_launch_v2(text, int4)', 'EXECUTE')").fetchone()[0]  # nothing half-done
        o.execute("DROP EXTENSION plpy_bg")
    own_pg.sql("SELECT pg_background_drop_executor_role()")
    assert own_pg.sql("SELECT count(*) FROM pg_roles WHERE rolname = 'pgbackground_role'")[0][0] == 0
    own_pg.sql("SELECT pg_background_drop_executor_role()")  # none left: nothing to do
    with own_pg.connect("alice") as c:  # alice's own grants (grant_pg_background_privileges) remain
        assert c.execute("SELECT (pg_background_launch_v2('SELECT 1')).pid").fetchone()[0] > 0
    own_pg.sql("DROP DATABASE dropin_other")
