"""Security II: a provenance policy that fails closed, attacked through the SQL API.

A victim (a DBA role or a superuser) runs code an unprivileged role planted in its way; the
planted code launches a job meant to run as the victim. Each test attempts the damage (a
marker role made SUPERUSER, a secret copied out, a table dropped) and asserts it did not
happen. The cluster is the module's own.
"""
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
        assert result(c, h) == [("7",)]
