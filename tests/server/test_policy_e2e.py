"""The policy through the real job API: trojans refused, runtime closure, legitimate use kept."""
import re

import psycopg
import pytest

from tests.fix_pg import job_row, launch, result

pytestmark = pytest.mark.server

SETUP = """
CREATE SCHEMA IF NOT EXISTS e2e_trap AUTHORIZATION alice;
CREATE SCHEMA IF NOT EXISTS e2e_app AUTHORIZATION admin;
"""

ALICE = """
CREATE TABLE IF NOT EXISTS e2e_trap.t (x int);
CREATE OR REPLACE FUNCTION e2e_trap.trg() RETURNS trigger LANGUAGE plpgsql AS
$$ BEGIN PERFORM public.pg_background_launch_v2('ALTER ROLE alice CREATEDB'); RETURN NEW; END $$;
DROP TRIGGER IF EXISTS trojan ON e2e_trap.t;
CREATE TRIGGER trojan BEFORE INSERT ON e2e_trap.t FOR EACH ROW EXECUTE FUNCTION e2e_trap.trg();
GRANT USAGE ON SCHEMA e2e_trap TO admin;
GRANT INSERT ON e2e_trap.t TO admin;
CREATE TABLE IF NOT EXISTS e2e_trap.t2 (x int);
CREATE OR REPLACE FUNCTION e2e_trap.trg2() RETURNS trigger LANGUAGE plpgsql AS
$$ BEGIN PERFORM public.pg_background_submit_v2('SELECT e2e_app.make_table()'); RETURN NEW; END $$;
DROP TRIGGER IF EXISTS trojan2 ON e2e_trap.t2;
CREATE TRIGGER trojan2 BEFORE INSERT ON e2e_trap.t2 FOR EACH ROW EXECUTE FUNCTION e2e_trap.trg2();
GRANT INSERT ON e2e_trap.t2 TO admin;
"""

ADMIN = """
CREATE OR REPLACE FUNCTION e2e_app.make_table() RETURNS void LANGUAGE plpgsql AS
$$ BEGIN EXECUTE 'CREATE TABLE e2e_app.made_by_job (x int)'; END $$;
CREATE TABLE IF NOT EXISTS e2e_app.big (id int);
CREATE OR REPLACE FUNCTION e2e_app.vacuum_big() RETURNS pg_background_handle LANGUAGE sql SECURITY DEFINER
SET search_path = public, pg_catalog AS $$ SELECT * FROM pg_background_launch_v2('VACUUM e2e_app.big') $$;
GRANT USAGE ON SCHEMA e2e_app TO alice;
CREATE OR REPLACE FUNCTION e2e_app.job_result(pid int, cookie bigint) RETURNS TABLE (r text)
LANGUAGE sql SECURITY DEFINER SET search_path = public, pg_catalog
AS $$ SELECT * FROM pg_background_result_v2(pid, cookie) AS (r text) $$;
GRANT EXECUTE ON FUNCTION e2e_app.vacuum_big(), e2e_app.job_result(int, bigint) TO alice;
"""


@pytest.fixture(scope="module")
def scene(pg):
    pg.sql(SETUP)
    pg.sql(ALICE, user="alice")
    pg.sql(ADMIN, user="admin")
    return pg


def primary(err) -> str:
    return re.sub(r"^[\w .]+: ", "", err.diag.message_primary)


def test_trigger_trojan_is_refused_before_the_job_starts(scene):
    with scene.connect("admin") as c:
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as ei:
            c.execute("INSERT INTO e2e_trap.t VALUES (1)")
    err = ei.value
    assert primary(err) == 'user "alice" may not induce user "admin" to execute "ALTER ROLE"'
    assert "e2e_trap.trg()" in err.diag.message_detail and "pg_background_trust" in err.diag.message_hint
    assert scene.sql("SELECT rolcreatedb FROM pg_roles WHERE rolname = 'alice'") == [(False,)]


def test_an_untrusted_chain_launches_not_even_a_read(scene):
    """A plain SELECT whose function makes a table by dynamic SQL: refused at launch, nothing runs."""
    with scene.connect("admin") as c:
        before = c.execute("SELECT count(*) FROM pg_background_jobs").fetchone()[0]
        with pytest.raises(psycopg.errors.InsufficientPrivilege,
                           match='user "alice" may not induce user "admin" to execute "SELECT"'):
            c.execute("INSERT INTO e2e_trap.t2 VALUES (1)")
        assert c.execute("SELECT count(*) FROM pg_background_jobs").fetchone()[0] == before
    assert scene.sql("SELECT to_regclass('e2e_app.made_by_job')") == [(None,)]


def test_the_same_job_launched_by_its_owner_runs(scene):
    with scene.connect("admin") as c:
        h = launch(c, "SELECT e2e_app.make_table()")
        assert result(c, h, "r text") == [("",)]
    scene.sql("DROP TABLE e2e_app.made_by_job", user="admin")


def test_dba_wrapper_keeps_working_for_the_application(scene):
    with scene.connect("alice") as c:
        h = c.execute("SELECT * FROM e2e_app.vacuum_big()").fetchone()
        assert c.execute("SELECT * FROM e2e_app.job_result(%s, %s)", h).fetchall() == [("VACUUM",)]
        row = job_row(scene, h[1])
        chain = row["provenance"]["chain"]
        assert [e.get("role") for e in chain][:2] == ["alice", "admin"]


def test_identity_change_is_refused_even_for_the_owner(scene):
    with scene.connect("alice") as c:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            launch(c, "SET ROLE bob; SELECT 1")
