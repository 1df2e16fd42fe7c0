"""Provenance capture and the launch decision inside a real backend.

Needs only a plain cluster: the policy SQL files are installed by hand and a
stand-in for the launch function (`launch_check`, plpython3u, SECURITY
INVOKER, no SET search_path, like pg_background_launch_v2) calls
capture_provenance + check and returns both as JSON.
"""
from __future__ import annotations

import json
import re

import pytest

import psycopg  # noqa: E402

import build  # noqa: E402

pytestmark = [pytest.mark.server, pytest.mark.slow]

PREAMBLE = f"import sys\nif {str(build.LIBDIR)!r} not in sys.path: sys.path.insert(0, {str(build.LIBDIR)!r})"

SETUP = """
CREATE EXTENSION plpy_bg CASCADE;
CREATE ROLE admin LOGIN CREATEROLE IN ROLE pgbackground_role;
CREATE ROLE alice LOGIN IN ROLE pgbackground_role;
CREATE ROLE bob LOGIN IN ROLE pgbackground_role;
"""

LAUNCH_CHECK = """
CREATE FUNCTION public.launch_check(sql text) RETURNS text LANGUAGE plpython3u VOLATILE AS $python$
#PLPY_BG_PREAMBLE
import json
from plpy_bg import policy
from plpy_bg.errors import PgError
prov = policy.capture_provenance(plpy)
role = plpy.execute("SELECT current_user AS u")[0]["u"]
try:
    cls = policy.check(plpy, sql, prov, role)
except PgError as e:
    e.raise_in(plpy)
return json.dumps({"provenance": prov, "classification": cls})
$python$;
GRANT EXECUTE ON FUNCTION public.launch_check(text) TO PUBLIC;
CREATE FUNCTION public.catalog_queries() RETURNS int LANGUAGE plpython3u AS $python$
#PLPY_BG_PREAMBLE
from plpy_bg.policy import catalog
return catalog.catalog(plpy).queries
$python$;
"""

SCENARIOS = """
-- admin's own objects, and a SECURITY DEFINER wrapper for alice
CREATE SCHEMA app AUTHORIZATION admin;
SET ROLE admin;
CREATE TABLE app.big (id int);
CREATE FUNCTION app.run_vacuum() RETURNS text LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS $$ BEGIN RETURN public.launch_check('VACUUM app.big'); END $$;
CREATE FUNCTION app.migrate() RETURNS text LANGUAGE plpgsql
    AS $$ BEGIN RETURN public.launch_check('CREATE INDEX CONCURRENTLY big_id ON app.big (id)'); END $$;
CREATE FUNCTION app.cleanup(integer) RETURNS int LANGUAGE sql AS $$ SELECT $1 $$;
GRANT USAGE ON SCHEMA app TO alice, bob;
GRANT EXECUTE ON FUNCTION app.run_vacuum() TO alice;
RESET ROLE;
GRANT CREATE ON SCHEMA public TO alice;
-- alice's trojans
CREATE SCHEMA trap AUTHORIZATION alice;
SET ROLE alice;
CREATE TABLE trap.t (x int);
CREATE FUNCTION trap.trg() RETURNS trigger LANGUAGE plpgsql
    AS $$ BEGIN PERFORM public.launch_check('ALTER ROLE alice CREATEDB'); RETURN NEW; END $$;
CREATE TRIGGER trojan BEFORE INSERT ON trap.t FOR EACH ROW EXECUTE FUNCTION trap.trg();
CREATE FUNCTION trap.pytrg() RETURNS trigger LANGUAGE plpgsql
    AS $$ BEGIN PERFORM public.launch_check('GRANT admin TO alice'); RETURN NEW; END $$;
CREATE VIEW trap.v AS SELECT public.launch_check('CREATE ROLE evil SUPERUSER') AS r;
CREATE FUNCTION trap.inl() RETURNS text LANGUAGE sql AS $$ SELECT public.launch_check('DROP TABLE app.big') $$;
CREATE FUNCTION trap.self_trust() RETURNS trigger LANGUAGE plpgsql
    AS $$ BEGIN PERFORM public.pg_background_trust('alice'); RETURN NEW; END $$;
CREATE TABLE trap.t2 (x int);
CREATE TRIGGER trojan2 BEFORE INSERT ON trap.t2 FOR EACH ROW EXECUTE FUNCTION trap.self_trust();
CREATE FUNCTION public.cleanup(bigint) RETURNS int LANGUAGE sql AS $$ SELECT 0 $$;
GRANT USAGE ON SCHEMA trap TO admin, bob;
GRANT INSERT ON trap.t, trap.t2 TO admin, bob;
GRANT SELECT ON trap.v TO admin;
RESET ROLE;
-- bob owns a table whose trigger launches as whoever inserts
CREATE SCHEMA bobs AUTHORIZATION bob;
SET ROLE bob;
CREATE TABLE bobs.t (x int);
CREATE FUNCTION bobs.trg() RETURNS trigger LANGUAGE plpgsql
    AS $$ BEGIN PERFORM public.launch_check('CREATE TABLE bobs_made_me (x int)'); RETURN NEW; END $$;
CREATE TRIGGER helper BEFORE INSERT ON bobs.t FOR EACH ROW EXECUTE FUNCTION bobs.trg();
GRANT USAGE ON SCHEMA bobs TO alice;
GRANT INSERT ON bobs.t TO alice;
RESET ROLE;
"""


@pytest.fixture(scope="module")
def cluster(throwaway):
    with throwaway.bare("prov") as c:
        c.start()
        with psycopg.connect(c.dsn(), autocommit=True) as conn:
            conn.execute(SETUP)
            conn.execute(LAUNCH_CHECK.replace("#PLPY_BG_PREAMBLE", PREAMBLE))
            conn.execute(SCENARIOS)
        yield c


@pytest.fixture
def as_role(cluster):
    conns = []

    def connect(role: str):
        conn = psycopg.connect(cluster.dsn(role), autocommit=True)
        conns.append(conn)
        return conn
    yield connect
    for c in conns:
        c.close()


def run(conn, sql: str, *args) -> dict:
    return json.loads(conn.execute(sql, args).fetchone()[0])


def refused(conn, sql: str, *args) -> psycopg.errors.Error:
    with pytest.raises(psycopg.errors.InsufficientPrivilege) as ei:
        conn.execute(sql, args)
    return ei.value


def primary(err) -> str:
    """The message without PL/Python's "<exception class>: " prefix (plpy_bg's is "plpy_bg: ")."""
    return re.sub(r"^[\w.]+: ", "", err.diag.message_primary)


def kinds(prov: dict) -> list[tuple]:
    return [(e["kind"], e.get("role"), e.get("name"), e.get("effective")) for e in prov["chain"]]


def test_top_level_call_records_session_and_launcher(as_role):
    out = run(as_role("alice"), "SELECT public.launch_check('CREATE TABLE mine (x int)')")
    prov = out["provenance"]
    assert prov["session_user"] == "alice" and prov["current_user"] == "alice"
    assert kinds(prov) == [("session", "alice", None, True),
                           ("function", "postgres", "public.launch_check(sql text)", True)]
    assert prov["chain"][1]["language"] == "plpython3u"
    assert prov["complete"] and prov["parent_job"] is None
    assert out["classification"]["chain_trusted"] is True
    assert out["classification"]["kinds"] == ["ddl"]


def test_security_definer_wrapper_shows_both_and_is_allowed(as_role):
    out = run(as_role("alice"), "SELECT app.run_vacuum()")
    prov = out["provenance"]
    assert prov["session_user"] == "alice" and prov["current_user"] == "admin"
    assert kinds(prov) == [("session", "alice", None, False),
                           ("function", "admin", "app.run_vacuum()", True),
                           ("function", "postgres", "public.launch_check(sql text)", True)]
    assert prov["chain"][1]["security_definer"] is True and prov["chain"][1]["language"] == "plpgsql"
    assert out["classification"]["kinds"] == ["maintenance"]


def test_migration_function_of_the_caller_is_allowed(as_role):
    out = run(as_role("admin"), "SELECT app.migrate()")
    assert out["classification"]["chain_trusted"]
    assert [e["name"] for e in out["provenance"]["chain"][1:]] == ["app.migrate()", "public.launch_check(sql text)"]


def test_migration_from_do_block_with_many_statements(as_role):
    conn = as_role("admin")
    conn.execute("""DO $$ BEGIN PERFORM public.launch_check(
        'CREATE TABLE app.m1 (id int); CREATE INDEX CONCURRENTLY ON app.big (id); VACUUM app.big;'
        || 'ALTER TABLE app.big ADD COLUMN y int; ANALYZE app.big'); END $$""")


def test_trigger_trojan_is_refused(as_role):
    err = refused(as_role("admin"), "INSERT INTO trap.t VALUES (1)")
    d = err.diag
    assert primary(err) == 'user "alice" may not induce user "admin" to execute "ALTER ROLE"'
    assert "trigger function trap.trg() owned by \"alice\"" in d.message_detail
    assert re.search(r"trap\.trg\(\).*<-- not trusted by \"admin\"", d.message_detail)
    assert "pg_background_trust('alice')" in d.message_hint


def test_view_trojan_is_refused(as_role):
    err = refused(as_role("admin"), "SELECT * FROM trap.v")
    assert primary(err) == 'user "alice" may not induce user "admin" to execute "CREATE ROLE"'
    assert 'view trap.v owned by "alice"' in err.diag.message_detail


def test_inlined_sql_function_trojan_is_refused(as_role):
    err = refused(as_role("admin"), "SELECT trap.inl()")
    assert primary(err) == 'user "alice" may not induce user "admin" to execute "DROP"'
    assert "trap.inl()" in err.diag.message_detail


def test_search_path_hijack_is_refused(as_role):
    conn = as_role("admin")
    conn.execute("SET search_path = app, public")
    # the server's own resolution: cleanup(1) is app.cleanup(integer), an exact match, and alice's
    # public.cleanup(bigint) is never called; cleanup(1::bigint) is hers
    out = run(conn, "SELECT public.launch_check('SELECT cleanup(1)')")
    assert out["classification"]["decision"] == "allowed"
    assert [f["name"] for f in out["classification"]["resolved"]] == ["app.cleanup(integer)"]
    err = refused(conn, "SELECT public.launch_check('SELECT cleanup(1::bigint)')")
    assert primary(err) == 'user "alice" may not induce user "admin" to execute "public.cleanup(bigint)"'
    out = run(conn, "SELECT public.launch_check('SELECT app.cleanup(1)')")
    assert out["classification"]["decision"] == "allowed"
    conn.execute("SET search_path = app")
    run(conn, "SELECT public.launch_check('SELECT cleanup(1::bigint)')")
    err = refused(conn, "SELECT public.launch_check('SET search_path = public, app; SELECT cleanup(1::bigint)')")
    assert "public.cleanup(bigint)" in primary(err)


def test_identity_change_is_always_refused(as_role):
    for sql in ("SET ROLE admin", "RESET SESSION AUTHORIZATION", "SELECT set_config('role', 'admin', false)",
                "DISCARD ALL", "RESET ALL"):
        err = refused(as_role("admin"), "SELECT public.launch_check(%s)", sql)
        assert primary(err).startswith("background job may not execute")


def test_explicit_trust_and_withdrawal(as_role):
    admin = as_role("admin")
    refused(admin, "INSERT INTO trap.t VALUES (1)")
    admin.execute("SELECT public.pg_background_trust('alice')")
    admin.execute("INSERT INTO trap.t VALUES (1)")
    assert admin.execute("SELECT truster::text, trustee::text FROM public.pg_background_trusted()").fetchall() \
        == [("admin", "alice")]
    admin.execute("SELECT public.pg_background_distrust('alice')")
    refused(admin, "INSERT INTO trap.t VALUES (1)")


def test_nobody_declares_trust_for_another(as_role):
    alice = as_role("alice")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        alice.execute("INSERT INTO plpy_bg.trust (truster, trustee) SELECT 'admin'::regrole, 'alice'::regrole")
    assert alice.execute("SELECT count(*) FROM plpy_bg.trust").fetchone()[0] == 0


def test_trojan_cannot_declare_trust_on_the_victims_behalf(as_role):
    err = refused(as_role("admin"), "INSERT INTO trap.t2 VALUES (1)")
    assert primary(err) == 'user "alice" may not induce user "admin" to execute "pg_background_trust"'


def test_trust_through_membership_is_one_way(as_role, cluster):
    with psycopg.connect(cluster.dsn(), autocommit=True) as su:
        su.execute("GRANT alice TO bob")
    try:
        # bob can become alice: alice trusts bob's trigger
        run(as_role("alice"), "WITH x AS (INSERT INTO bobs.t VALUES (1) RETURNING 1) SELECT '{}'::text FROM x")
        # alice cannot become bob: bob does not trust alice's trigger
        err = refused(as_role("bob"), "INSERT INTO trap.t VALUES (1)")
        assert primary(err) == 'user "alice" may not induce user "bob" to execute "ALTER ROLE"'
    finally:
        with psycopg.connect(cluster.dsn(), autocommit=True) as su:
            su.execute("REVOKE alice FROM bob")


def test_superuser_code_is_trusted(as_role):
    out = run(as_role("alice"), "SELECT public.launch_check('ALTER TABLE mine2 ADD COLUMN y int')")
    assert out["classification"]["chain_trusted"]


def test_catalog_cache_makes_repeat_captures_query_free(as_role):
    conn = as_role("alice")
    run(conn, "SELECT public.launch_check('SELECT 1')")
    before = conn.execute("SELECT public.catalog_queries()").fetchone()[0]
    run(conn, "SELECT public.launch_check('SELECT 1')")
    after = conn.execute("SELECT public.catalog_queries()").fetchone()[0]
    assert after == before


def test_catalog_cache_sees_ownership_change(as_role, cluster):
    conn = as_role("admin")
    conn.execute("SELECT app.migrate()")
    with psycopg.connect(cluster.dsn(), autocommit=True) as su:
        su.execute("ALTER FUNCTION app.migrate() OWNER TO alice")
    try:
        err = refused(conn, "SELECT app.migrate()")
        assert 'function app.migrate() owned by "alice"' in err.diag.message_detail
    finally:
        with psycopg.connect(cluster.dsn(), autocommit=True) as su:
            su.execute("ALTER FUNCTION app.migrate() OWNER TO admin")


def test_nested_launch_inherits_parent_chain(cluster):
    with psycopg.connect(cluster.dsn(), autocommit=True) as su:
        alice = su.execute("SELECT 'alice'::regrole::oid::int").fetchone()[0]
        parent = {"pid": 1, "cookie": 2, "role": "admin",
                  "provenance": {"chain": [{"kind": "trigger", "role": "alice", "role_oid": alice,
                                            "name": "trap.trg()", "effective": True}]}}
        su.execute("""CREATE FUNCTION pg_temp.nested(p text, s text) RETURNS text LANGUAGE plpython3u AS $python$
#PLPY_BG_PREAMBLE
import json
from plpy_bg import policy
from plpy_bg.errors import PgError
prov = policy.capture_provenance(plpy, parent_job=json.loads(p) if p else None)
try:
    return json.dumps({"provenance": prov, "classification": policy.check(plpy, s, prov, "admin")})
except PgError as e:
    e.raise_in(plpy)
$python$""".replace("#PLPY_BG_PREAMBLE", PREAMBLE))
        run(su, "SELECT pg_temp.nested(NULL, 'CREATE TABLE nested_ok (x int)')")
        # the parent's untrusted entry comes along: the nested job launches nothing, not even a read
        for sql, command in (("SELECT 1", "SELECT"), ("CREATE TABLE nested_bad (x int)", "CREATE TABLE")):
            err = refused(su, "SELECT pg_temp.nested(%s, %s)", json.dumps(parent), sql)
            assert primary(err) == f'user "alice" may not induce user "admin" to execute "{command}"'
            assert "(inherited from the parent job)" in err.diag.message_detail
