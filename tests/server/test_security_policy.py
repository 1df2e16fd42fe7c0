"""Security II: a provenance policy that fails closed, attacked through the SQL API.

A victim (a DBA role or a superuser) runs code an unprivileged role planted in its way; the
planted code launches a job meant to run as the victim. Each test attempts the damage (a
marker role made SUPERUSER, a secret copied out, a table dropped) and asserts it did not
happen. The cluster is the module's own.
"""
import time

import psycopg
import pytest

from tests.fix_pg import job_row, launch, result, wait_for

pytestmark = pytest.mark.server

SETUP = """
CREATE SCHEMA IF NOT EXISTS vault AUTHORIZATION admin;
CREATE TABLE IF NOT EXISTS vault.secrets (s text);
INSERT INTO vault.secrets VALUES ('the launch codes');
ALTER TABLE vault.secrets OWNER TO admin;
GRANT CREATE ON DATABASE postgres TO mallory;
GRANT pgbackground_role TO mallory;
SELECT grant_pg_background_privileges('mallory');
"""

TRAPS = """
CREATE SCHEMA trapm;
GRANT USAGE ON SCHEMA trapm TO PUBLIC;
CREATE TABLE trapm.loot (s text);
GRANT INSERT ON trapm.loot TO PUBLIC;
-- a harmless-looking helper a victim might call inside a read-only transaction it rolls back
CREATE FUNCTION trapm.report() RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    PERFORM public.pg_background_submit_v2('INSERT INTO trapm.loot SELECT s FROM vault.secrets');
    RETURN 'ok';
END $$;
GRANT EXECUTE ON FUNCTION trapm.report() TO PUBLIC;
-- a table whose trigger launches a plain INSERT as whoever writes to it
CREATE TABLE trapm.inbox (x int);
GRANT INSERT ON trapm.inbox TO PUBLIC;
CREATE FUNCTION trapm.on_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM public.pg_background_submit_v2('INSERT INTO trapm.loot VALUES (current_user)');
    RETURN NEW;
END $$;
CREATE TRIGGER t BEFORE INSERT ON trapm.inbox FOR EACH ROW EXECUTE FUNCTION trapm.on_insert();
"""


@pytest.fixture(scope="module")
def scene(own_pg):
    own_pg.sql(SETUP)
    own_pg.sql(TRAPS, user="mallory")
    return own_pg


def loot(server):
    return server.sql("SELECT s FROM trapm.loot")


def jobs_since(server, t0) -> list[str]:
    """The statements of jobs launched since `t0`: a job runs only once its row is committed, so a
    refused launch that left no row ran nothing (exact, where a sleep would only make it likely)."""
    return [r[0] for r in server.sql("SELECT sql FROM plpy_bg.jobs WHERE launched_at >= %s ORDER BY cookie", (t0,))]


def test_a_read_only_rolled_back_call_cannot_be_made_to_write_autonomously(scene):
    with scene.connect("admin") as c:
        c.execute("BEGIN READ ONLY")
        with pytest.raises(psycopg.errors.InsufficientPrivilege,
                           match='user "mallory" may not induce user "admin" to execute "INSERT"'):
            c.execute("SELECT trapm.report()")
        c.execute("ROLLBACK")
    assert loot(scene) == []


def test_a_plain_insert_is_not_induced_either(scene):
    with scene.connect("admin") as c:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="may not induce"):
            c.execute("INSERT INTO trapm.inbox VALUES (1)")
    assert loot(scene) == []


def test_the_same_code_called_by_its_owner_still_works(scene):
    with scene.connect("mallory") as c:
        c.execute("INSERT INTO trapm.inbox VALUES (1)")
    wait_for(lambda: loot(scene) == [("mallory",)])
    scene.sql("DELETE FROM trapm.loot")


def test_declared_trust_lets_the_callee_launch(scene):
    with scene.connect("admin") as c:
        c.execute("SELECT pg_background_trust('mallory')")
        try:
            c.execute("INSERT INTO trapm.inbox VALUES (2)")
            wait_for(lambda: loot(scene) == [("admin",)])
        finally:
            c.execute("SELECT pg_background_distrust('mallory')")
            scene.sql("DELETE FROM trapm.loot")


# ---- the text classified is the text run ------------------------------------------------

def test_standard_conforming_strings_off_is_refused(scene):
    """With standard_conforming_strings off the server reads 'a\\' as an unfinished string: the
    text below is one SELECT to a standard lexer and a SELECT plus an ALTER ROLE to the server."""
    scene.sql("CREATE ROLE marker_sco NOLOGIN")
    text = "SELECT 'a\\' || '; ALTER ROLE marker_sco SUPERUSER; --'"
    with scene.connect("postgres") as c:
        c.execute("SET standard_conforming_strings = off")
        with pytest.raises(psycopg.errors.FeatureNotSupported, match="standard_conforming_strings = on"):
            launch(c, text)
        c.execute("SET standard_conforming_strings = on")
        h = launch(c, text)  # now the server reads it as the policy did: one SELECT of a string
        assert result(c, h) == [("a\\; ALTER ROLE marker_sco SUPERUSER; --",)]
    assert scene.sql("SELECT rolsuper FROM pg_roles WHERE rolname = 'marker_sco'") == [(False,)]


TRICKY = [
    "SELECT E'it\\'s; DROP TABLE x' AS a",
    "SELECT $q$ ; DROP TABLE x; $q$",
    "SELECT $a$ $b$ ; $b$ $a$; SELECT 2",
    "SELECT 1 /* nested /* comment ; */ still ; */ ; SELECT 2",
    "SELECT U&'\\0041; DROP' AS u",
    "SELECT U&'!0041; DROP' UESCAPE '!' AS u",
    "SELECT 'a''b; c'",
    "SELECT 1 -- ; DROP TABLE x\n; SELECT 3",
    "SELECT e'\\\\'; SELECT 4",
    "SELECT B'1010', X'FF'; SELECT 5",
]


@pytest.mark.parametrize("text", TRICKY)
def test_the_policy_splits_statements_as_the_server_does(scene, text):
    """The statement count the policy stored with the job equals what the server ran."""
    with scene.connect("postgres") as c:
        cur = c.execute(text)
        server_count = 1
        while cur.nextset():
            server_count += 1
        h = launch(c, text, fn="pg_background_submit_v2")
        wait_for(lambda: job_row(scene, h[1])["state"] != "running")
        row = job_row(scene, h[1])
        assert row["state"] == "completed", row["last_error"]
        assert row["classification"]["statement_count"] == server_count


# ---- code that runs with no frame of its author --------------------------------------------

NO_FRAME = """
CREATE TABLE trapm.pol (x int);
INSERT INTO trapm.pol VALUES (1);
ALTER TABLE trapm.pol ENABLE ROW LEVEL SECURITY;
CREATE POLICY p ON trapm.pol USING (
    (public.pg_background_submit_v2('INSERT INTO trapm.loot SELECT s FROM vault.secrets')).pid IS NOT NULL);
GRANT SELECT ON trapm.pol TO PUBLIC;
CREATE TABLE trapm.pol_trust (x int);
INSERT INTO trapm.pol_trust VALUES (1);
ALTER TABLE trapm.pol_trust ENABLE ROW LEVEL SECURITY;
CREATE POLICY p ON trapm.pol_trust USING (public.pg_background_trust(pg_catalog.to_regrole('mallory')) IS NOT NULL);
GRANT SELECT ON trapm.pol_trust TO PUBLIC;
CREATE TABLE trapm.dflt (x int, y text DEFAULT (public.pg_background_trust(pg_catalog.to_regrole('mallory')))::text);
GRANT INSERT ON trapm.dflt TO PUBLIC;
CREATE DOMAIN trapm.d AS int CHECK (
    (public.pg_background_submit_v2('INSERT INTO trapm.loot SELECT s FROM vault.secrets')).pid IS NOT NULL);
CREATE TABLE trapm.dom (x trapm.d);
GRANT INSERT ON trapm.dom TO PUBLIC;
CREATE TABLE trapm.plain (x int);
INSERT INTO trapm.plain VALUES (1);
GRANT SELECT ON trapm.plain TO PUBLIC;
"""


@pytest.fixture(scope="module")
def no_frame(scene):
    scene.sql(NO_FRAME, user="mallory")
    return scene


def trusted_by_admin(server):
    return server.sql("SELECT trustee::text FROM plpy_bg.trust t JOIN pg_roles r ON r.oid = t.truster "
                      "WHERE r.rolname = 'admin'")


@pytest.mark.parametrize("sql", ["SELECT * FROM trapm.pol", "INSERT INTO trapm.dom VALUES (1)"])
def test_a_policy_or_a_domain_check_launches_nothing_for_its_victim(no_frame, sql):
    with no_frame.connect("admin") as c:
        c.execute("BEGIN READ ONLY" if sql.startswith("SELECT") else "BEGIN")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match='user "mallory" may not induce user "admin"'):
            c.execute(sql)
        c.execute("ROLLBACK")
    assert loot(no_frame) == []


@pytest.mark.parametrize("sql", ["SELECT * FROM trapm.pol_trust", "INSERT INTO trapm.dflt (x) VALUES (1)"])
def test_a_policy_or_a_default_cannot_declare_trust_for_its_victim(no_frame, sql):
    with no_frame.connect("admin") as c:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="pg_background_trust"):
            c.execute(sql)
    assert trusted_by_admin(no_frame) == []


def test_a_plain_table_of_another_role_does_not_taint_a_launch(no_frame):
    with no_frame.connect("admin") as c:
        h = c.execute("SELECT h.* FROM trapm.plain, LATERAL pg_background_launch_v2('SELECT 7') h").fetchone()
        assert result(c, h, "r int") == [(7,)]


# ---- statements below the top level, and utility statements that run a query ---------------

NESTED = """
-- a view whose column launches as whoever reads it
CREATE VIEW trapm.v AS SELECT (public.pg_background_submit_v2('INSERT INTO trapm.loot SELECT s FROM vault.secrets')).pid;
GRANT SELECT ON trapm.v TO PUBLIC;
-- a table whose rule launches as whoever writes to it
CREATE TABLE trapm.ruled (x int);
GRANT INSERT ON trapm.ruled TO PUBLIC;
CREATE RULE r AS ON INSERT TO trapm.ruled
    DO ALSO SELECT public.pg_background_submit_v2('INSERT INTO trapm.loot SELECT s FROM vault.secrets');
-- an inlinable SQL function (no frame of its own at run time)
CREATE FUNCTION trapm.fmt(x int) RETURNS int LANGUAGE sql VOLATILE
    AS $$ SELECT (public.pg_background_submit_v2('INSERT INTO trapm.loot SELECT s FROM vault.secrets')).pid + x $$;
GRANT EXECUTE ON FUNCTION trapm.fmt(int) TO PUBLIC;
-- a CHECK constraint and a domain CHECK calling that inlinable function
CREATE TABLE trapm.chk (x int CHECK (trapm.fmt(x) > 0));
GRANT INSERT ON trapm.chk TO PUBLIC;
CREATE DOMAIN trapm.dfmt AS int CHECK (trapm.fmt(VALUE) > 0);
CREATE TABLE trapm.dchk (x trapm.dfmt);
GRANT INSERT ON trapm.dchk TO PUBLIC;
-- a view that hands its text to the victim's own trusted helper
CREATE VIEW trapm.via_helper AS SELECT public.admin_launch('INSERT INTO trapm.loot SELECT s FROM vault.secrets') AS h;
GRANT SELECT ON trapm.via_helper TO PUBLIC;
"""

HELPERS = """
SET check_function_bodies = off;  -- the planted view comes after the helper it calls
CREATE FUNCTION public.admin_launch(q text) RETURNS int LANGUAGE plpgsql AS $$
BEGIN RETURN (public.pg_background_submit_v2(q)).pid; END $$;
GRANT EXECUTE ON FUNCTION public.admin_launch(text) TO PUBLIC;
CREATE FUNCTION public.admin_count(q text) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE n bigint;
BEGIN EXECUTE 'SELECT count(*) FROM ' || q INTO n; RETURN n; END $$;
CREATE FUNCTION public.admin_sql_count() RETURNS bigint LANGUAGE sql AS $$ SELECT count(*) FROM trapm.v $$;
CREATE FUNCTION public.admin_perform() RETURNS void LANGUAGE plpgsql AS $$
BEGIN PERFORM * FROM trapm.v; END $$;
CREATE FUNCTION public.admin_loop() RETURNS int LANGUAGE plpgsql AS $$
DECLARE r record; n int := 0;
BEGIN FOR r IN SELECT * FROM trapm.v LOOP n := n + 1; END LOOP; RETURN n; END $$;
"""


@pytest.fixture(scope="module")
def nested(no_frame):
    no_frame.sql(HELPERS, user="admin")
    no_frame.sql(NESTED, user="mallory")
    return no_frame


ATTACKS_ON_ADMIN = [
    "DO $$ BEGIN INSERT INTO trapm.ruled VALUES (1); END $$",
    "DO $$ BEGIN PERFORM * FROM trapm.v; END $$",
    "DO $$ DECLARE n int; BEGIN n := trapm.fmt(1); END $$",
    "DO $$ DECLARE n int := trapm.fmt(1); BEGIN END $$",
    "DO $$ BEGIN IF false THEN NULL; ELSIF trapm.fmt(1) > 0 THEN NULL; END IF; END $$",
    "DO $$ BEGIN RAISE NOTICE 'x' USING DETAIL = trapm.fmt(1)::text; END $$",
    "DO $$ BEGIN EXECUTE 'SELECT * FROM trapm.v'; END $$",
    "DO $$ BEGIN PERFORM * FROM trapm.via_helper; END $$",
    "CREATE TEMP TABLE t1 AS SELECT * FROM trapm.v",
    "SELECT * INTO TEMP t2 FROM trapm.v",
    "EXPLAIN ANALYZE SELECT * FROM trapm.v",
    "SELECT public.admin_count('trapm.v')",
    "SELECT public.admin_sql_count()",
    "SELECT public.admin_perform()",
    "SELECT public.admin_loop()",
    "SELECT * FROM trapm.via_helper",
    "INSERT INTO trapm.ruled VALUES (1)",
    "SELECT trapm.fmt(1)",
    "INSERT INTO trapm.chk VALUES (1)",
    "INSERT INTO trapm.dchk VALUES (1)",
    "DO $$ BEGIN INSERT INTO trapm.chk VALUES (1); END $$",
]


@pytest.mark.parametrize("sql", ATTACKS_ON_ADMIN)
def test_planted_code_below_the_top_level_launches_nothing(nested, sql):
    with nested.connect("admin") as c:
        c.execute("BEGIN")
        with pytest.raises(psycopg.Error) as e:
            c.execute(sql)
        assert e.value.sqlstate == "42501", e.value
        assert "may not induce" in str(e.value)
        c.execute("ROLLBACK")
    assert loot(nested) == []


def test_a_view_copied_out_launches_nothing(nested):
    with nested.connect("admin") as c:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="may not induce"):
            with c.cursor().copy("COPY (SELECT * FROM trapm.v) TO STDOUT") as cp:
                for _ in cp:
                    pass
    assert loot(nested) == []


def test_a_superuser_doing_maintenance_in_a_planted_table_makes_nobody_superuser(nested):
    t0 = nested.sql("SELECT clock_timestamp()")[0][0]
    nested.sql("CREATE ROLE marker_nested NOLOGIN")
    nested.sql("""CREATE TABLE trapm.maint (x int);
        CREATE FUNCTION trapm.mk() RETURNS int LANGUAGE sql VOLATILE
            AS $$ SELECT (public.pg_background_submit_v2('ALTER ROLE marker_nested SUPERUSER')).pid $$;
        CREATE RULE r AS ON INSERT TO trapm.maint DO ALSO SELECT trapm.mk();
        GRANT INSERT ON trapm.maint TO PUBLIC""", user="mallory")
    for sql in ("DO $$ BEGIN INSERT INTO trapm.maint VALUES (1); END $$",
                "DO LANGUAGE plpython3u $$ plpy.execute('INSERT INTO trapm.maint VALUES (1)') $$",
                "DO LANGUAGE plpython3u $$ plpy.execute(plpy.prepare('INSERT INTO trapm.maint VALUES ($1)', ['int']), [1]) $$",
                "EXPLAIN ANALYZE INSERT INTO trapm.maint VALUES (1)"):
        with nested.connect("postgres") as c:
            with pytest.raises(psycopg.Error) as e:
                c.execute(sql)
            assert e.value.sqlstate == "42501", (sql, e.value)
    assert jobs_since(nested, t0) == []  # refused: no row, so no job ran (rows commit first)
    assert nested.sql("SELECT rolsuper FROM pg_roles WHERE rolname = 'marker_nested'") == [(False,)]


LEGIT = """
CREATE FUNCTION public.own_perform() RETURNS int LANGUAGE plpgsql AS $$
DECLARE h record;
BEGIN SELECT * INTO h FROM public.pg_background_launch_v2('SELECT 1'); RETURN h.pid; END $$;
CREATE FUNCTION public.own_assign() RETURNS int LANGUAGE plpgsql AS $$
DECLARE p int;
BEGIN p := (public.pg_background_launch_v2('SELECT 2')).pid; RETURN p; END $$;
CREATE FUNCTION public.own_dynamic_text() RETURNS int LANGUAGE plpgsql AS $$
DECLARE p int;
BEGIN EXECUTE format('SELECT (public.pg_background_launch_v2(%L)).pid', 'SELECT 4') INTO p; RETURN p; END $$;
CREATE FUNCTION public.own_sql(q text) RETURNS int LANGUAGE sql AS $$ SELECT (public.pg_background_launch_v2(q)).pid $$;
CREATE PROCEDURE public.own_proc() LANGUAGE plpgsql AS $$
BEGIN PERFORM public.pg_background_submit_v2('SELECT 6'); END $$;
CREATE FUNCTION public.own_loop() RETURNS int LANGUAGE plpgsql AS $$
DECLARE r record; n int := 0;
BEGIN FOR r IN SELECT (public.pg_background_launch_v2('SELECT 7')).pid LOOP n := r.pid; END LOOP; RETURN n; END $$;
"""


def test_launches_from_the_victims_own_code_still_work(nested):
    nested.sql(LEGIT, user="admin")
    calls = ["SELECT public.own_perform()", "SELECT public.own_assign()", "SELECT public.own_dynamic_text()", "SELECT public.own_sql('SELECT 5')", "SELECT public.own_loop()",
             "DO $$ DECLARE p int; BEGIN p := (public.pg_background_launch_v2('SELECT 8')).pid; END $$",
             "DO $$ BEGIN PERFORM public.pg_background_submit_v2('SELECT 9'); END $$"]
    launch = "(public.pg_background_launch_v2('SELECT 1')).pid"  # in every place a PL/pgSQL expression goes
    calls += [f"DO $$ DECLARE h int := {launch}; BEGIN END $$",
              f"DO $$ BEGIN IF {launch} > 0 THEN NULL; END IF; END $$",
              f"DO $$ BEGIN IF false THEN NULL; ELSIF {launch} > 0 THEN NULL; END IF; END $$",
              f"DO $$ BEGIN RAISE NOTICE '%', {launch}; END $$",
              f"DO $$ BEGIN CASE WHEN {launch} > 0 THEN NULL; END CASE; END $$",
              f"DO $$ BEGIN FOR i IN 1..{launch} % 2 + 1 LOOP NULL; END LOOP; END $$",
              f"DO $$ BEGIN RAISE NOTICE 'x' USING DETAIL = {launch}::text; END $$",
              f"DO $$ BEGIN ASSERT {launch} > 0; END $$"]
    with nested.connect("admin") as c:
        for sql in calls:
            c.execute(sql)
        c.execute("CALL public.own_proc()")
    with nested.connect("postgres") as c:
        c.execute("DO LANGUAGE plpython3u $$ plpy.execute(\"SELECT public.pg_background_submit_v2('SELECT 12')\") $$")
        c.execute("DO LANGUAGE plpython3u $$ plpy.execute(plpy.prepare("
                  "'SELECT public.pg_background_submit_v2($1)', ['text']), ['SELECT 13']) $$")


@pytest.mark.parametrize("sql, what", [
    ("CREATE TEMP TABLE t3 AS SELECT (public.pg_background_launch_v2('SELECT 1')).pid", "CREATE TABLE AS (or SELECT INTO)"),
    ("DO $$ DECLARE p int; BEGIN EXECUTE 'SELECT (public.pg_background_launch_v2($1)).pid' INTO p USING 'SELECT 1'; END $$",
     "takes parameters")])
def test_what_the_policy_cannot_read_is_refused_with_a_hint(nested, sql, what):
    """Fail closed: a query run by a utility statement, a dynamic statement with parameters."""
    with nested.connect("admin") as c:
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as e:
            c.execute(sql)
        assert what in e.value.diag.message_detail
        assert "format()" in e.value.diag.message_hint


# ---- which functions a job calls is the server's answer -------------------------------------

RESOLUTION_VICTIM = """
CREATE DOMAIN public.dtext AS text;
CREATE TABLE public.acct (c varchar, n name, d public.dtext);
INSERT INTO public.acct VALUES ('ABC', 'nm', 'dd');
"""
# planted in a public schema anyone may create in (the pre-15 default): each copies the secrets
RESOLUTION_TRAPS = """
SET check_function_bodies = off;  -- mallory cannot read the secrets; the victim running them can
CREATE FUNCTION public.lower(varchar) RETURNS text LANGUAGE sql
    AS $$ INSERT INTO trapm.loot SELECT s FROM vault.secrets; SELECT 'trojan'::text $$;
CREATE FUNCTION public.concat_ws(text, VARIADIC text[]) RETURNS text LANGUAGE sql
    AS $$ INSERT INTO trapm.loot SELECT s FROM vault.secrets; SELECT 'trojan'::text $$;
CREATE FUNCTION public.eq_trap(text, public.dtext) RETURNS bool LANGUAGE sql
    AS $$ INSERT INTO trapm.loot SELECT s FROM vault.secrets; SELECT true $$;
CREATE OPERATOR public.= (LEFTARG = text, RIGHTARG = public.dtext, FUNCTION = public.eq_trap);
CREATE FUNCTION public.length(anyelement) RETURNS int LANGUAGE sql
    AS $$ INSERT INTO trapm.loot SELECT s FROM vault.secrets; SELECT 42 $$;
CREATE FUNCTION public.lower(integer) RETURNS text LANGUAGE sql
    AS $$ INSERT INTO trapm.loot SELECT s FROM vault.secrets; SELECT 'trojan'::text $$;
"""


@pytest.fixture
def resolution(scene):
    scene.sql("GRANT CREATE ON SCHEMA public TO mallory")
    try:
        scene.sql(RESOLUTION_VICTIM, user="admin")
        scene.sql(RESOLUTION_TRAPS, user="mallory")
        yield scene
    finally:
        scene.sql("DROP FUNCTION IF EXISTS public.lower(varchar), public.concat_ws(text, text[]), "
                  "public.length(anyelement), public.lower(integer), public.eq_trap(text, public.dtext) CASCADE",
                  user="mallory")
        scene.sql("DROP TABLE IF EXISTS public.acct; DROP DOMAIN IF EXISTS public.dtext CASCADE; "
                  "REVOKE CREATE ON SCHEMA public FROM mallory")


@pytest.mark.parametrize("job, picked", [
    ("SELECT lower(c) FROM public.acct", "public.lower(character varying)"),       # an exact type match
    ("SELECT concat_ws(',', 'a', 'b')", "public.concat_ws(text, VARIADIC text[])"),  # variadic
    ("SELECT count(*) FROM public.acct WHERE 'x'::text = d", "public.eq_trap(text, dtext)"),  # a domain operand
])
def test_a_planted_overload_the_server_would_pick_is_refused(resolution, job, picked):
    t0 = resolution.sql("SELECT clock_timestamp()")[0][0]
    with resolution.connect("admin") as c:
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as e:
            launch(c, job)
        assert picked in e.value.diag.message_primary
    assert jobs_since(resolution, t0) == []  # refused: no row, so no job ran (rows commit first)
    assert loot(resolution) == []


@pytest.mark.parametrize("job, cols, expected", [
    ("SELECT length(n) FROM public.acct", "r int", [(2,)]),  # polymorphic: pg_catalog.length(text) wins
    ("SELECT lower('ABC'::text)", "r text", [("abc",)]),     # an overload for another type
])
def test_a_planted_overload_the_server_would_not_pick_does_not_refuse(resolution, job, cols, expected):
    with resolution.connect("admin") as c:
        h = launch(c, job)
        assert result(c, h, cols) == expected
    assert loot(resolution) == []


# ---- SECURITY DEFINER wrappers: what an untrusted caller passes stays data ------------------

WRAPPERS = """
CREATE TABLE public.keep (x int);
CREATE TABLE public.reports (owner text, n int);
INSERT INTO public.reports VALUES ('alice', 1), ('o''brien', 2);
CREATE FUNCTION public.report_concat(p text) RETURNS int LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN RETURN (public.pg_background_submit_v2('SELECT count(*) FROM public.reports WHERE owner = ''' || p || '''')).pid; END $$;
CREATE FUNCTION public.report_dollar(p text) RETURNS int LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN RETURN (public.pg_background_submit_v2('SELECT $d$' || p || '$d$')).pid; END $$;
CREATE FUNCTION public.report_comment(p text) RETURNS int LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN RETURN (public.pg_background_submit_v2('SELECT 1 -- note: ' || p)).pid; END $$;
CREATE FUNCTION public.run_sql(p text) RETURNS int LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN RETURN (public.pg_background_submit_v2(p)).pid; END $$;
CREATE FUNCTION public.report_n_text(p text) RETURNS SETOF text LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE h record;
BEGIN
    SELECT * INTO h FROM public.pg_background_launch_v2('SELECT owner FROM public.reports WHERE n = ' || p);
    RETURN QUERY SELECT r FROM public.pg_background_result_v2(h.pid, h.cookie) AS (r text);
END $$;
CREATE FUNCTION public.report_format(p text, t text) RETURNS int LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN RETURN (public.pg_background_submit_v2(format('SELECT count(*) FROM public.%I WHERE owner = %L', t, p))).pid; END $$;
CREATE FUNCTION public.report_quote(p text) RETURNS int LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN RETURN (public.pg_background_submit_v2('SELECT count(*) FROM public.reports WHERE owner = ' || quote_literal(p))).pid; END $$;
CREATE FUNCTION public.report_const() RETURNS int LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN RETURN (public.pg_background_submit_v2('SELECT count(*) FROM public.reports')).pid; END $$;
CREATE FUNCTION public.report_n(n int) RETURNS int LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN RETURN (public.pg_background_submit_v2('SELECT count(*) FROM public.reports WHERE n > ' || n)).pid; END $$;
CREATE FUNCTION public.report_sql(p text) RETURNS int LANGUAGE sql SECURITY DEFINER
    AS $$ SELECT (public.pg_background_submit_v2(format('SELECT count(*) FROM public.reports WHERE owner = %L', p))).pid $$;
"""
PY_WRAPPER = """
CREATE FUNCTION public.report_py(p text) RETURNS int LANGUAGE plpython3u SECURITY DEFINER AS $py$
q = "SELECT count(*) FROM public.reports WHERE owner = %s" % plpy.quote_literal(p)
return plpy.execute(plpy.prepare("SELECT (public.pg_background_submit_v2($1)).pid AS pid", ["text"]), [q])[0]["pid"]
$py$;
ALTER FUNCTION public.report_py(text) OWNER TO admin;
"""


@pytest.fixture(scope="module")
def wrappers(scene):
    scene.sql(WRAPPERS, user="admin")
    scene.sql(PY_WRAPPER)
    return scene


def intact(server) -> bool:
    time.sleep(0.3)  # a job that slipped through would have run by now
    return loot(server) == [] and server.sql("SELECT to_regclass('public.keep') IS NOT NULL") == [(True,)]


INJECTIONS = [
    ("SELECT public.report_concat(%s)", "x'; INSERT INTO trapm.loot SELECT s FROM vault.secrets; --"),
    ("SELECT public.report_concat(%s)", "x' OR owner IN (SELECT s FROM vault.secrets) OR 'a' = 'b"),
    ("SELECT public.report_dollar(%s)", "x$d$; DROP TABLE public.keep; SELECT $d$"),
    ("SELECT public.report_comment(%s)", "x\n; INSERT INTO trapm.loot SELECT s FROM vault.secrets"),
    ("SELECT public.run_sql(%s)", "SELECT 1; INSERT INTO trapm.loot SELECT s FROM vault.secrets"),
    ("SELECT public.run_sql(%s)", "DO $$ BEGIN EXECUTE 'DROP TABLE public.keep'; END $$"),
    ("SELECT public.report_n_text(%s)", "0 UNION SELECT s FROM vault.secrets"),
]


@pytest.mark.parametrize("call, arg", INJECTIONS)
def test_an_untrusted_caller_cannot_inject_into_a_wrapper(wrappers, call, arg):
    with wrappers.connect("mallory") as c:
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as e:
            c.execute(call, (arg,))
        assert e.value.diag.message_primary == \
            'plpy_bg: text supplied by user "mallory" changes the statement launched by "admin"'
        assert "format()" in e.value.diag.message_hint
    assert intact(wrappers)


@pytest.mark.parametrize("call, args", [
    ("SELECT public.report_format(%s, %s)", ("o'brien; DROP TABLE public.keep", "reports")),
    ("SELECT public.report_format(%s, %s)", ("alice", "Odd Name; DROP")),
    ("SELECT public.report_quote(%s)", ("x'; DROP TABLE public.keep; --",)),
    ("SELECT public.report_const()", ()),
    ("SELECT public.report_n(%s)", (5,)),
    ("SELECT public.report_n(%s)", (-3,)),
    ("SELECT public.report_sql(%s)", ("$$; DROP TABLE public.keep; --",)),
    ("SELECT public.report_py(%s)", ("x'; DROP TABLE public.keep; --",)),
])
def test_wrappers_that_quote_their_input_keep_working_for_untrusted_callers(wrappers, call, args):
    with wrappers.connect("mallory") as c:
        pid = c.execute(call, args).fetchone()[0]
        assert pid
    assert intact(wrappers)


def test_a_trusted_caller_may_pass_a_whole_statement(wrappers):
    wrappers.sql("SELECT pg_background_trust('alice')", user="admin")
    try:
        with wrappers.connect("alice") as c:
            assert c.execute("SELECT public.run_sql('SELECT 1; SELECT 2')").fetchone()[0]
    finally:
        wrappers.sql("SELECT pg_background_distrust('alice')", user="admin")
    with wrappers.connect("alice") as c:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="changes the statement"):
            c.execute("SELECT public.run_sql('SELECT 1; SELECT 2')")


def test_a_superusers_wrapper_makes_nobody_superuser(wrappers):
    t0 = wrappers.sql("SELECT clock_timestamp()")[0][0]
    wrappers.sql("""CREATE ROLE marker_wrap NOLOGIN;
        CREATE FUNCTION public.su_report(p text) RETURNS int LANGUAGE plpgsql SECURITY DEFINER AS $$
        BEGIN RETURN (public.pg_background_submit_v2('SELECT count(*) FROM pg_roles WHERE rolname = ''' || p || '''')).pid; END $$""")
    with wrappers.connect("mallory") as c:
        assert c.execute("SELECT public.su_report('marker_wrap')").fetchone()[0]  # data: allowed
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="changes the statement launched by"):
            c.execute("SELECT public.su_report(%s)", ("x'; ALTER ROLE marker_wrap SUPERUSER; CREATE ROLE x2 SUPERUSER; --",))
    assert jobs_since(wrappers, t0) == ["SELECT count(*) FROM pg_roles WHERE rolname = 'marker_wrap'"]  # the allowed job only
    assert wrappers.sql("SELECT rolsuper FROM pg_roles WHERE rolname = 'marker_wrap'") == [(False,)]
    assert wrappers.sql("SELECT 1 FROM pg_roles WHERE rolname = 'x2'") == []


def test_a_locked_relation_makes_the_launch_fail_not_guess(scene):
    """Analysis that cannot lock a relation the job names is not replaced by a guess by name: a
    session holding the lock must not downgrade how the victim's job is checked."""
    scene.sql("CREATE TABLE public.locked_t (x int); GRANT SELECT ON public.locked_t TO admin", user="admin")
    with scene.connect("admin", autocommit=False) as holder, scene.connect("admin") as c:
        holder.execute("LOCK TABLE public.locked_t IN ACCESS EXCLUSIVE MODE")
        t = time.monotonic()
        with pytest.raises(psycopg.errors.LockNotAvailable, match="locked by another session"):
            launch(c, "SELECT * FROM public.locked_t")
        assert time.monotonic() - t < 5
        holder.rollback()
        h = launch(c, "SELECT count(*) FROM public.locked_t")
        assert result(c, h, "n bigint") == [(0,)]


STORED = """
CREATE FUNCTION trapm.report_cursor() RETURNS refcursor LANGUAGE plpgsql AS $$
DECLARE c refcursor;
BEGIN OPEN c FOR SELECT 'ok' WHERE public.pg_background_submit_v2('ALTER ROLE marker_stored SUPERUSER') IS NOT NULL;
      RETURN c; END $$;
CREATE FUNCTION trapm.hello() RETURNS int LANGUAGE plpgsql AS $$
BEGIN EXECUTE 'PREPARE planted AS SELECT 1 WHERE public.pg_background_submit_v2(''ALTER ROLE marker_stored SUPERUSER'') IS NOT NULL';
      RETURN 1; END $$;
"""


def test_a_cursor_or_prepared_statement_planted_earlier_launches_nothing(scene):
    """Mallory's function leaves a cursor or a prepared statement in the victim's session; the
    victim fetches or executes it later, with nothing of mallory's on the stack."""
    t0 = scene.sql("SELECT clock_timestamp()")[0][0]
    scene.sql("CREATE ROLE marker_stored NOLOGIN")
    scene.sql(STORED, user="mallory")
    with scene.connect("postgres") as c:
        c.execute("BEGIN")
        name = c.execute("SELECT trapm.report_cursor()").fetchone()[0]
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="made earlier"):
            c.execute(f'FETCH ALL FROM "{name}"')
        c.execute("ROLLBACK")
        c.execute("BEGIN READ ONLY")
        c.execute("SELECT trapm.hello()")
        c.execute("ROLLBACK")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="made earlier"):
            c.execute("EXECUTE planted")
    assert jobs_since(scene, t0) == []  # refused: no row, so no job ran (rows commit first)
    assert scene.sql("SELECT rolsuper FROM pg_roles WHERE rolname = 'marker_stored'") == [(False,)]


def test_a_launch_in_a_cursor_declared_at_the_top_level_is_refused_with_the_reason(scene):
    """Fail closed: a cursor or prepared statement of an earlier top-level statement is not
    told apart from one a function made (documented; launch from the statement itself)."""
    with scene.connect("admin") as c:
        c.execute("BEGIN")
        c.execute("DECLARE cur CURSOR FOR SELECT (public.pg_background_launch_v2('SELECT 11')).pid")
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as e:
            c.execute("FETCH ALL FROM cur")
        assert "no code on the stack" in e.value.diag.message_detail
        c.execute("ROLLBACK")


def test_the_job_path_is_the_path_the_server_will_use(scene):
    """A quoted schema name keeps its case, and a path a transaction block of the job sets and
    then ends is unknown: neither hides mallory's function from the job's own check."""
    t0 = scene.sql("SELECT clock_timestamp()")[0][0]
    scene.sql("""CREATE SCHEMA "Tools"; GRANT USAGE ON SCHEMA "Tools" TO PUBLIC;
        CREATE FUNCTION "Tools".report() RETURNS int LANGUAGE plpgsql AS $$
        BEGIN INSERT INTO trapm.loot SELECT s FROM vault.secrets; RETURN 1; END $$;
        CREATE FUNCTION trapm.summary() RETURNS int LANGUAGE plpgsql AS $$
        BEGIN INSERT INTO trapm.loot SELECT s FROM vault.secrets; RETURN 1; END $$""", user="mallory")
    with scene.connect("admin") as c:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match='may not induce user "admin"'):
            launch(c, 'SET search_path = "Tools"; SELECT report()')
        c.execute("SET search_path = trapm, public")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="search_path the policy cannot know"):
            launch(c, "BEGIN; SET LOCAL search_path = public; COMMIT; SELECT summary()")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="search_path the policy cannot know"):
            launch(c, "BEGIN; SET search_path = public; ROLLBACK; SELECT summary()")
        h = launch(c, "BEGIN; SET LOCAL search_path = public; SELECT lower('A'); COMMIT")
        assert result(c, h) == [("a",)]
    assert jobs_since(scene, t0) == ["BEGIN; SET LOCAL search_path = public; SELECT lower('A'); COMMIT"]  # the allowed job only
    assert loot(scene) == []


def test_a_job_does_not_run_code_of_a_role_its_owner_does_not_trust_through_a_table(scene):
    """Rule 2 for what a job's statement runs beyond its plan: triggers of the relations it writes,
    and defaults, constraints and policies of the relations it touches."""
    t0 = scene.sql("SELECT clock_timestamp()")[0][0]
    scene.sql("""CREATE TABLE trapm.guestbook (s text); GRANT INSERT ON trapm.guestbook TO PUBLIC;
        CREATE FUNCTION trapm.gb() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN INSERT INTO trapm.loot SELECT s FROM vault.secrets; RETURN NEW; END $$;
        CREATE TRIGGER t AFTER INSERT ON trapm.guestbook FOR EACH ROW EXECUTE FUNCTION trapm.gb();
        CREATE FUNCTION trapm.visible(text) RETURNS bool LANGUAGE plpgsql AS $$
        BEGIN INSERT INTO trapm.loot SELECT s FROM vault.secrets; RETURN true; END $$;
        CREATE TABLE trapm.board (s text); INSERT INTO trapm.board VALUES ('hello');
        ALTER TABLE trapm.board ENABLE ROW LEVEL SECURITY;
        CREATE POLICY p ON trapm.board USING (trapm.visible(s)); GRANT SELECT ON trapm.board TO PUBLIC""",
              user="mallory")
    scene.sql("""CREATE TABLE public.own_log (s text);
        CREATE FUNCTION public.own_trg() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;
        CREATE TRIGGER t BEFORE INSERT ON public.own_log FOR EACH ROW EXECUTE FUNCTION public.own_trg()""",
              user="admin")
    with scene.connect("admin") as c:
        for job in ("INSERT INTO trapm.guestbook VALUES ('hi')", "SELECT count(*) FROM trapm.board"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match='may not induce user "admin"'):
                launch(c, job)
        h = launch(c, "INSERT INTO public.own_log VALUES ('fine')")
        wait_for(lambda: job_row(scene, h[1])["state"] != "running")
        assert job_row(scene, h[1])["state"] == "completed"
    assert jobs_since(scene, t0) == ["INSERT INTO public.own_log VALUES ('fine')"]  # the allowed job only
    assert loot(scene) == []


def test_caller_data_in_a_string_the_job_runs_as_sql_is_refused(wrappers):
    """ts_rewrite (built in) and crosstab (tablefunc, any schema) run a string argument as SQL:
    a quoted value there is code."""
    wrappers.sql("CREATE EXTENSION IF NOT EXISTS tablefunc SCHEMA public")
    wrappers.sql("""CREATE TABLE public.synonyms (target tsquery, substitute tsquery, grp text);
        CREATE FUNCTION public.expand(grp text) RETURNS int LANGUAGE plpgsql SECURITY DEFINER AS $f$
        BEGIN RETURN (public.pg_background_submit_v2('SELECT ts_rewrite(to_tsquery(''simple'', ''foo''), '
            || '''SELECT target, substitute FROM public.synonyms WHERE grp = ''''' || grp || ''''''')::text')).pid; END $f$;
        CREATE FUNCTION public.pivot(region text) RETURNS int LANGUAGE plpgsql SECURITY DEFINER AS $f$
        BEGIN RETURN (public.pg_background_submit_v2('SELECT * FROM public.crosstab(''SELECT owner, owner, n::text '
            || 'FROM public.reports WHERE owner = ''''' || region || ''''' ORDER BY 1'') AS ct(a text, b text)')).pid; END $f$;
        CREATE FUNCTION public.atomic_note(v text) RETURNS int LANGUAGE sql SECURITY DEFINER
        BEGIN ATOMIC SELECT (public.pg_background_submit_v2(format('SELECT count(*) FROM public.reports WHERE owner = %L', v))).pid; END""",
                 user="admin")
    with wrappers.connect("mallory") as c:
        for call in ("SELECT public.expand(%s)", "SELECT public.pivot(%s)"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="changes the statement"):
                c.execute(call, ("x'' UNION ALL SELECT s, s, s FROM vault.secrets --",))
        assert c.execute("SELECT public.atomic_note(%s)", ("o'brien; DROP TABLE public.keep",)).fetchone()[0]
    assert intact(wrappers)


DOMAIN_TRAPS = """
CREATE DOMAIN trapm.dd AS text CHECK ((public.pg_background_submit_v2('ALTER ROLE marker_dom SUPERUSER')).pid IS NOT NULL);
CREATE TABLE trapm.dchk2 (e text CHECK ((e::trapm.dd) IS NOT NULL));
CREATE TABLE trapm.didx (e text); CREATE INDEX ON trapm.didx ((e::trapm.dd));
CREATE TABLE trapm.dpart (e text) PARTITION BY LIST ((e::trapm.dd));
CREATE TABLE trapm.dpart_d PARTITION OF trapm.dpart DEFAULT;
CREATE TYPE trapm.dr AS RANGE (subtype = trapm.dd);
CREATE TABLE trapm.drange (r trapm.dr);
CREATE TABLE trapm.dsrc (e text); INSERT INTO trapm.dsrc VALUES ('a');
CREATE TYPE trapm.dc AS (e trapm.dd);
GRANT ALL ON trapm.dchk2, trapm.didx, trapm.dpart, trapm.dpart_d, trapm.drange TO PUBLIC;
GRANT SELECT ON trapm.dsrc TO PUBLIC;
"""


@pytest.mark.parametrize("sql", [
    "INSERT INTO trapm.dchk2 VALUES ('x')",
    "INSERT INTO trapm.didx VALUES ('x')",
    "INSERT INTO trapm.dpart VALUES ('x')",
    "INSERT INTO trapm.drange SELECT pg_catalog.format('[%s,%s]', 'a', 'b')::trapm.dr",
    "SELECT e::trapm.dd FROM trapm.dsrc",
    "SELECT * FROM json_populate_record(NULL::trapm.dc, json_build_object('e', current_user))",
])
def test_a_domain_check_reached_without_a_frame_makes_nobody_superuser(scene, sql):
    """A domain's CHECK runs as whoever makes a value of it: through a cast in a stored
    expression, a partition key, a range's bounds, the victim's own cast or a record's input."""
    t0 = scene.sql("SELECT clock_timestamp()")[0][0]
    if not scene.sql("SELECT 1 FROM pg_roles WHERE rolname = 'marker_dom'"):
        scene.sql("CREATE ROLE marker_dom NOLOGIN")
        scene.sql(DOMAIN_TRAPS, user="mallory")
    with scene.connect("postgres") as c:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="may not induce"):
            c.execute(sql)
    assert jobs_since(scene, t0) == []  # refused: no row, so no job ran (rows commit first)
    assert scene.sql("SELECT rolsuper FROM pg_roles WHERE rolname = 'marker_dom'") == [(False,)]


ROUND3_TRAPS = """
CREATE DOMAIN trapm.dom3 AS text CHECK (public.pg_background_submit_v2('ALTER ROLE marker_r3 SUPERUSER') IS NOT NULL);
CREATE TYPE trapm.comp3 AS (a trapm.dom3);
CREATE DOMAIN trapm.inner3 AS text CHECK (public.pg_background_submit_v2('ALTER ROLE marker_r3 SUPERUSER') IS NOT NULL);
CREATE DOMAIN trapm.outer3 AS text CHECK ((VALUE::trapm.inner3) IS NOT NULL);
CREATE TABLE trapm.inbox3 (msg trapm.outer3); GRANT INSERT, SELECT ON trapm.inbox3 TO PUBLIC;
CREATE FUNCTION trapm.evil3(t text) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN INSERT INTO trapm.loot SELECT s FROM vault.secrets; RETURN true; EXCEPTION WHEN others THEN RETURN true; END $$;
CREATE DOMAIN trapm.inner4 AS text CHECK (trapm.evil3(VALUE));
CREATE DOMAIN trapm.outer4 AS text CHECK ((VALUE::trapm.inner4) IS NOT NULL);
CREATE TABLE trapm.inbox4 (msg trapm.outer4); GRANT INSERT ON trapm.inbox4 TO PUBLIC;
"""


@pytest.fixture(scope="module")
def round3(scene):
    scene.sql("CREATE ROLE marker_r3 NOLOGIN")
    scene.sql(ROUND3_TRAPS, user="mallory")
    scene.sql("""CREATE FUNCTION public.helper3(int) RETURNS int LANGUAGE sql AS $$ SELECT $1 + 1 $$;
                 CREATE VIEW public.inbox3_v AS SELECT * FROM trapm.inbox3""")
    return scene


@pytest.mark.parametrize("sql", [
    "SELECT 'x'::trapm.dom3, r.rolname FROM pg_roles r WHERE r.rolname = 'postgres'",  # a trusted view beside
    "SELECT (json_populate_record(NULL::trapm.comp3, '{\"a\": \"x\"}')).a, public.helper3(1)",  # a trusted function
    "SELECT public.pg_background_submit_v2('SELECT 1') IS NOT NULL, 'x'::trapm.dom3",  # the victim's own launch
    "SELECT public.pg_background_submit_v2('SELECT 1') IS NOT NULL, CAST('x' AS trapm.dom3)",
    "INSERT INTO public.inbox3_v VALUES ('via a view')",  # a cast inside a domain's CHECK
])
def test_a_domain_check_cannot_hide_behind_trusted_code_in_the_same_statement(round3, sql):
    t0 = round3.sql("SELECT clock_timestamp()")[0][0]
    with round3.connect("postgres") as c:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="may not induce"):
            c.execute(sql)
    assert jobs_since(round3, t0) == []  # refused: no row, so no job ran (rows commit first)
    assert round3.sql("SELECT rolsuper FROM pg_roles WHERE rolname = 'marker_r3'") == [(False,)]


def test_a_jobs_table_reaching_a_function_through_a_cast_in_a_domain_check(round3):
    t0 = round3.sql("SELECT clock_timestamp()")[0][0]
    with round3.connect("admin") as c:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="trapm.evil3"):
            launch(c, "INSERT INTO trapm.inbox4 VALUES ('hi')")
    assert jobs_since(round3, t0) == []  # refused: no row, so no job ran (rows commit first)
    assert loot(round3) == []


def test_a_call_the_server_reads_as_a_cast_to_a_planted_domain(round3):
    """mallory names a schema after the victim ("$user" comes first on the default path) and puts a
    domain there named like a function: upper('x') becomes a cast whose CHECK launches."""
    t0 = round3.sql("SELECT clock_timestamp()")[0][0]
    round3.sql("CREATE SCHEMA postgres; GRANT USAGE ON SCHEMA postgres TO PUBLIC;"
               "CREATE DOMAIN postgres.upper AS text CHECK ("
               "(public.pg_background_launch_v2('ALTER ROLE marker_r3 SUPERUSER')).pid IS NOT NULL)", user="mallory")
    try:
        with round3.connect("postgres") as c:
            for sql in ("SELECT public.pg_background_launch_v2('SELECT 1'), upper('x')",
                        "SELECT set_config('search_path', 'public', false), "
                        "public.pg_background_launch_v2('SELECT 1'), 'x'::upper"):
                c.execute("RESET search_path")
                with pytest.raises(psycopg.errors.InsufficientPrivilege, match='domain postgres.upper owned by "mallory"'):
                    c.execute(sql)
        assert jobs_since(round3, t0) == []  # refused: no row, so no job ran (rows commit first)
        assert round3.sql("SELECT rolsuper FROM pg_roles WHERE rolname = 'marker_r3'") == [(False,)]
    finally:
        round3.sql("DROP SCHEMA postgres CASCADE")


@pytest.mark.parametrize("job", ["SELECT 'x'::trapm.inner4", "SELECT trapm.inner4('x')",
                                 "SELECT 'x'::trapm.outer4"])
def test_a_job_casting_to_a_domain_whose_check_runs_untrusted_code(round3, job):
    """Rule 2 for domains a job's own text makes values of (PostgreSQL 15 plans do not list them)."""
    t0 = round3.sql("SELECT clock_timestamp()")[0][0]
    with round3.connect("admin") as c:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="trapm.evil3"):
            launch(c, job)
    assert jobs_since(round3, t0) == []  # refused: no row, so no job ran (rows commit first)
    assert loot(round3) == []
