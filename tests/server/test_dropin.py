"""pg_background users' habits on a cluster of the module's own: the executor role's helper."""
import psycopg
import pytest

pytestmark = pytest.mark.server


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
