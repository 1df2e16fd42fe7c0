"""pg_background users' habits on a cluster of the module's own: its settings, NOLOGIN owners'
jobs, the executor role's helper (last: it drops the role)."""
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


NOLOGIN_SETUP = """
CREATE ROLE app_owner NOLOGIN;
SELECT grant_pg_background_privileges('app_owner');  -- enough by itself: no pgbackground_role
CREATE TABLE owner_t (v text);
ALTER TABLE owner_t OWNER TO app_owner;
CREATE TABLE secret_t (v text);
INSERT INTO secret_t VALUES ('s3cret');
CREATE FUNCTION owner_job(n int) RETURNS text LANGUAGE plpgsql SECURITY DEFINER
SET search_path = public, pg_catalog AS $f$
DECLARE h pg_background_handle; out text;
BEGIN
    CASE n
    WHEN 1 THEN h := pg_background_launch_v2('INSERT INTO public.owner_t SELECT current_user || ''/'' || session_user');
    WHEN 2 THEN h := pg_background_launch_v2('RESET ROLE; INSERT INTO public.owner_t VALUES (''after reset'')');
    WHEN 3 THEN h := pg_background_launch_v2('RESET ROLE; SELECT v FROM public.secret_t');
    ELSE h := pg_background_launch_v2('SET ROLE postgres; SELECT v FROM public.secret_t');
    END CASE;
    SELECT string_agg(r, ',') INTO out FROM pg_background_result_v2(h.pid, h.cookie) AS (r text);
    RETURN out;
END $f$;
ALTER FUNCTION owner_job(int) OWNER TO app_owner;
GRANT EXECUTE ON FUNCTION owner_job(int) TO alice;
"""


def test_a_nologin_owners_wrapper_runs_jobs_as_that_role_and_no_more(own_pg):
    """DBAs make owners NOLOGIN: their SECURITY DEFINER wrappers' jobs run as the owner, on a
    login made for it (plpy_bg_job_<oid>) that holds nothing itself: RESET ROLE in the job
    reaches no more than the owner, SET ROLE to anyone else fails."""
    own_pg.sql(NOLOGIN_SETUP)
    oid = own_pg.sql("SELECT 'app_owner'::regrole::oid")[0][0]
    shadow = f"plpy_bg_job_{oid}"
    with own_pg.connect("alice") as c:
        assert c.execute("SELECT owner_job(1)").fetchone()[0] == "INSERT 0 1"
        for n in (2, 3, 4):  # the job tries: RESET ROLE then write, RESET ROLE then read, SET ROLE postgres
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                c.execute("SELECT owner_job(%s)", (n,))
    assert own_pg.sql("SELECT v FROM owner_t") == [(f"app_owner/{shadow}",)]  # nothing after RESET ROLE
    assert own_pg.sql("SELECT rolcanlogin, rolinherit, rolsuper, rolcreaterole, rolcreatedb, rolbypassrls "
                      "FROM pg_roles WHERE rolname = %s", (shadow,)) == [(True, False, False, False, False, False)]
    # a shadow someone widened is refused until it is made again
    own_pg.sql(f"GRANT pg_read_all_data TO {shadow}")
    with own_pg.connect("alice") as c:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="is not the job login"):
            c.execute("SELECT owner_job(1)")
    own_pg.sql(f"DROP ROLE {shadow}")
    with own_pg.connect("alice") as c:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="has no job login") as ei:
            c.execute("SELECT owner_job(1)")
        assert "grant_pg_background_privileges" in ei.value.diag.message_hint
    own_pg.sql("SELECT grant_pg_background_privileges('app_owner')")  # makes it again
    with own_pg.connect("alice") as c:
        assert c.execute("SELECT owner_job(1)").fetchone()[0] == "INSERT 0 1"
    # revoking the owner's privileges drops its job login
    own_pg.sql("SELECT revoke_pg_background_privileges('app_owner')")
    assert own_pg.sql("SELECT count(*) FROM pg_roles WHERE rolname = %s", (shadow,))[0][0] == 0
    with own_pg.connect("mallory") as m:  # no one else makes or reads job logins
        for fn in ("plpy_bg.job_login", "plpy_bg.make_job_login"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                m.execute(f"SELECT {fn}(%s)", (oid,))


PLANT_PASSWORD = ("DO $d$BEGIN EXECUTE 'RESET ROLE'; "
                  "EXECUTE 'ALTER ROLE CURRENT_USER PASSWORD ' || quote_literal('bd'); END$d$")


def test_a_job_login_cannot_be_turned_into_a_way_in(own_pg):
    """Attacks on job logins (fresh eyes): a job that resets its role and sets its login's
    password gets an expired one (no password login; later launches are refused until it is
    made again); a NOLOGIN superuser gets no job login (a CREATEROLE role could grant one to
    itself); a name someone made first is refused loudly."""
    own_pg.sql("CREATE ROLE keeper NOLOGIN; GRANT pgbackground_role TO keeper; "
               "SELECT grant_pg_background_privileges('keeper'); GRANT keeper TO bob")
    oid = own_pg.sql("SELECT 'keeper'::regrole::oid")[0][0]
    shadow = f"plpy_bg_job_{oid}"
    with own_pg.connect("bob") as c:
        c.execute("SET ROLE keeper")
        h = c.execute("SELECT * FROM pg_background_launch_v2(%s)", (PLANT_PASSWORD,)).fetchone()
        c.execute("SELECT * FROM pg_background_result_v2(%s, %s) AS (r text)", h).fetchall()
    assert own_pg.sql("SELECT rolpassword IS NOT NULL FROM pg_authid WHERE rolname = %s", (shadow,)) == [(True,)]
    hba = own_pg.cluster.datadir / "pg_hba.conf"
    text = hba.read_text()
    hba.write_text(f"host all {shadow} 127.0.0.1/32 scram-sha-256\n" + text)
    own_pg.sql("SELECT pg_reload_conf()")
    try:
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(own_pg.cluster.dsn(shadow) + " password=bd").close()
    finally:
        hba.write_text(text)
        own_pg.sql("SELECT pg_reload_conf()")
    with own_pg.connect("bob") as c:
        c.execute("SET ROLE keeper")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="is not the job login"):
            c.execute("SELECT pg_background_launch_v2('SELECT 1')")
    own_pg.sql("CREATE ROLE su_nl NOLOGIN SUPERUSER")
    with own_pg.connect("postgres") as c:
        c.execute("SELECT grant_pg_background_privileges('su_nl')")
        assert c.execute("SELECT count(*) FROM pg_roles WHERE rolname = 'plpy_bg_job_' || 'su_nl'::regrole::oid"
                         ).fetchone()[0] == 0
        c.execute("SET ROLE su_nl")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="superuser that cannot log in"):
            c.execute("SELECT pg_background_launch_v2('SELECT 1')")
    own_pg.sql("CREATE ROLE squatted NOLOGIN; CREATE ROLE cr LOGIN CREATEROLE")
    sq = own_pg.sql("SELECT 'squatted'::regrole::oid")[0][0]
    with own_pg.connect("cr") as c:
        c.execute(f"CREATE ROLE plpy_bg_job_{sq} LOGIN")  # made first, by someone else
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="is not the job login"):
        own_pg.sql("SELECT grant_pg_background_privileges('squatted')")


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
