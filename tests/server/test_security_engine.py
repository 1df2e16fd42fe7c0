"""Security I: no escalation through the engine, attacked for real.

Each test is an attack by a role PostgreSQL does not trust with other roles' rights (a
database owner, a CREATEDB or CREATEROLE role, a member of pgbackground_role) through the
real SQL API on a real server, and asserts that the damage it attempts did not happen:
the attacker is still no superuser, nothing of its code ran as another role, another
role's job was neither read nor stopped, launches were not stalled, and the server's own
limits held. The cluster is the module's own: the tests make databases and roles.
"""
import os
import subprocess
import time
from pathlib import Path

import psycopg
import pytest
from psycopg import sql as pgsql

from plpy_bg.dispatcher import protocol as P
from tests.fix_pg import (LIST_COLS, dispatcher_log, invariants, job_row, launch, pool_settings, result, wait,
                          wait_for)

pytestmark = pytest.mark.server

# the test's own sessions never touch the attacker's names or settings
SAFE = ("-c search_path=pg_catalog,public -c statement_timeout=0 -c default_transaction_read_only=off "
        "-c role=none -c row_security=on")


def sql(server, query, params=None, user="postgres", dbname="postgres"):
    with server.connect(user, dbname, options=SAFE) as c:
        cur = c.execute(query, params)
        return cur.fetchall() if cur.description else None


def is_superuser(server, role) -> bool:
    return sql(server, "SELECT rolsuper FROM pg_roles WHERE rolname = %s", (role,))[0][0]


def dispatcher_pid(server) -> int:
    with server.connect("alice") as c:  # the first launch starts the dispatcher
        result(c, launch(c, "SELECT '1'"))
    lock = Path(P.socket_path_for(str(server.cluster.sockdir), server.cluster.port) + ".lock")
    return int(lock.read_text().split()[0])


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def make_role(server, name, *attrs):
    """A login role that is a member of pgbackground_role (made once per cluster)."""
    ident = pgsql.Identifier(name)
    with server.connect(options=SAFE) as c:
        if not c.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone():
            c.execute(pgsql.SQL("CREATE ROLE {} LOGIN " + " ".join(attrs)).format(ident))
        c.execute(pgsql.SQL("GRANT pgbackground_role TO {}").format(ident))


def connect_as(server, name, dbname="postgres"):
    """A session of any role, whatever characters its name holds."""
    return psycopg.connect(server.cluster.dsn(dbname=dbname), user=name, autocommit=True)


# ---- the attacker's objects: every name plpy_bg could use without its schema -----------------

TYPES = ["text", "name", "oid", "int4", "int8", "bool"]
OPERATORS = [(op, t) for op in ("=", "<>", "<", ">", "<=", ">=") for t in TYPES]
OPERATORS += [("~~", "text"), ("!~~", "text"), ("||", "text")]
FUNCTIONS = [  # (name, args, returns, body returning the real answer)
    ("now", "", "pg_catalog.timestamptz", "RETURN pg_catalog.now();"),
    ("lower", "a pg_catalog.text", "pg_catalog.text", "RETURN pg_catalog.lower(a);"),
    ("upper", "a pg_catalog.text", "pg_catalog.text", "RETURN pg_catalog.upper(a);"),
    ("length", "a pg_catalog.text", "pg_catalog.int4", "RETURN pg_catalog.length(a);"),
    ("current_setting", "a pg_catalog.text", "pg_catalog.text", "RETURN pg_catalog.current_setting(a);"),
    ("current_setting", "a pg_catalog.text, b pg_catalog.bool", "pg_catalog.text",
     "RETURN pg_catalog.current_setting(a, b);"),
    ("set_config", "a pg_catalog.text, b pg_catalog.text, c pg_catalog.bool", "pg_catalog.text",
     "RETURN pg_catalog.set_config(a, b, c);"),
    ("pg_backend_pid", "", "pg_catalog.int4", "RETURN pg_catalog.pg_backend_pid();"),
    ("current_database", "", "pg_catalog.name", "RETURN pg_catalog.current_database();"),
    ("textcat", "a pg_catalog.text, b pg_catalog.text", "pg_catalog.text", "RETURN pg_catalog.textcat(a, b);"),
    ("starts_with", "a pg_catalog.text, b pg_catalog.text", "pg_catalog.bool", "RETURN pg_catalog.starts_with(a, b);"),
    ("to_regclass", "a pg_catalog.text", "pg_catalog.regclass", "RETURN pg_catalog.to_regclass(a);"),
    ("pg_has_role", "a pg_catalog.oid, b pg_catalog.oid, c pg_catalog.text", "pg_catalog.bool",
     "RETURN pg_catalog.pg_has_role(a, b, c);"),
    ("array_remove", "a anyarray, b anyelement", "anyarray", "RETURN pg_catalog.array_remove(a, b);"),
    ("unnest", "a anyarray", "SETOF anyelement", "RETURN QUERY SELECT * FROM pg_catalog.unnest(a);"),
    ("pg_blocking_pids", "a pg_catalog.int4", "pg_catalog.int4[]", "RETURN pg_catalog.pg_blocking_pids(a);"),
]


def trap_sql(schema: str, victim: str, forge: bool = False) -> str:
    """Objects in `schema` that shadow pg_catalog's. Each records who ran it and tries to make
    `victim` a superuser (which works only when run as a superuser). With `forge`, the equality
    operators answer true for everything, to forge whatever a query selects with them."""
    out = [f"""
CREATE SCHEMA {schema};
GRANT USAGE ON SCHEMA {schema} TO PUBLIC;
CREATE TABLE {schema}.calls (who pg_catalog.text, sess pg_catalog.text, what pg_catalog.text);
GRANT INSERT ON {schema}.calls TO PUBLIC;
CREATE FUNCTION {schema}.trap(what pg_catalog.text) RETURNS pg_catalog.bool LANGUAGE plpgsql AS $f$
BEGIN
    INSERT INTO {schema}.calls VALUES (current_user, session_user, what);
    BEGIN EXECUTE 'ALTER ROLE {victim} SUPERUSER'; EXCEPTION WHEN OTHERS THEN NULL; END;
    RETURN true;
END $f$;
"""]
    for i, (op, t) in enumerate(OPERATORS):
        ret = "pg_catalog.text" if op == "||" else "pg_catalog.bool"
        answer = "true" if forge and op == "=" else f"a OPERATOR(pg_catalog.{op}) b"
        out.append(f"""
CREATE FUNCTION {schema}.op{i}(a pg_catalog.{t}, b pg_catalog.{t}) RETURNS {ret} LANGUAGE plpgsql AS $f$
BEGIN PERFORM {schema}.trap('{op}({t},{t})'); RETURN {answer}; END $f$;
CREATE OPERATOR {schema}.{op} (LEFTARG = pg_catalog.{t}, RIGHTARG = pg_catalog.{t}, FUNCTION = {schema}.op{i});""")
    for name, args, ret, body in FUNCTIONS:
        out.append(f"""
CREATE FUNCTION {schema}.{name}({args}) RETURNS {ret} LANGUAGE plpgsql AS $f$
BEGIN PERFORM {schema}.trap('{name}({args})'); {body} END $f$;""")
    for t in TYPES:  # types last: the functions above name pg_catalog's
        out.append(f"CREATE DOMAIN {schema}.{t} AS pg_catalog.{t} CHECK ({schema}.trap('type {t}'));")
    return "\n".join(out)


TEMP_TYPES = "\n".join(f"CREATE DOMAIN pg_temp.{t} AS pg_catalog.{t} CHECK (evil.trap('temp type {t}'));"
                       for t in TYPES)


def calls(server, dbname, schema="evil"):
    return sql(server, f"SELECT who, sess, what FROM {schema}.calls", dbname=dbname)


def hostile_database(server, dbname, owner, createdb_role=False):
    """`owner` owns `dbname` (made by a superuser, or by `owner` itself with CREATEDB from
    template1) and sets the database's search_path to its own schema first."""
    if not createdb_role:
        sql(server, f"CREATE DATABASE {dbname} OWNER {owner}")
        sql(server, "CREATE EXTENSION plpy_bg SCHEMA public CASCADE", dbname=dbname)
    else:
        sql(server, f"CREATE DATABASE {dbname}", user=owner)
    sql(server, f"SELECT grant_pg_background_privileges('{owner}')", dbname=dbname)
    sql(server, trap_sql("evil", owner), user=owner, dbname=dbname)
    sql(server, f"ALTER DATABASE {dbname} SET search_path = evil, pg_catalog, public", user=owner)


def exercise_api(server, dbname, user):
    """Every function of the API, from a session of `user` with the database's hostile path and
    the attacker's types in pg_temp; the jobs themselves use no operator."""
    t = "pg_catalog.text"
    with server.connect(user, dbname) as c:
        assert c.execute("SHOW search_path").fetchone()[0] == "evil, pg_catalog, public"
        # the owner undoes its database's settings for itself; the dispatcher's sessions ignore them
        c.execute("SET statement_timeout = 0; SET default_transaction_read_only = off; SET row_security = on")
        c.execute(TEMP_TYPES)
        h = c.execute("SELECT * FROM pg_background_launch_v2('SELECT ''1''::pg_catalog.text')").fetchone()
        assert c.execute(f"SELECT * FROM pg_background_result_v2(%s, %s) AS (r {t})", h).fetchall() == [("1",)]
        h = c.execute("SELECT * FROM pg_background_launch_v2("
                      "'SELECT pg_background_progress(40, ''mid''); SELECT pg_sleep(0.3)')").fetchone()
        c.execute("SELECT pg_background_wait_v2_timeout(%s, %s, 30000)", h)
        c.execute("SELECT * FROM pg_background_get_progress_v2(%s, %s)", h)
        c.execute(f"SELECT * FROM pg_background_list_v2() AS (pid pg_catalog.int4, cookie pg_catalog.int8, "
                  f"launched_at pg_catalog.timestamptz, user_id pg_catalog.oid, queue_size pg_catalog.int4, "
                  f"state {t}, sql_preview {t}, last_error {t}, consumed pg_catalog.bool)")
        c.execute("SELECT pg_background_detach_v2(%s, %s)", h)
        h = c.execute("SELECT * FROM pg_background_submit_v2('SELECT pg_sleep(10)')").fetchone()
        c.execute("SELECT pg_background_cancel_v2(%s, %s)", h)
        c.execute("SELECT pg_background_wait_v2(%s, %s)", h)
        pid = c.execute("SELECT pg_background_launch('SELECT ''2''::pg_catalog.text')").fetchone()[0]
        assert c.execute(f"SELECT * FROM pg_background_result(%s) AS (r {t})", (pid,)).fetchall() == [("2",)]
        c.execute("SELECT * FROM pg_background_stats_v2()")
        c.execute("SELECT pg_background_trust('alice'), pg_background_distrust('alice')")


def test_database_owner_with_hostile_search_path_runs_nothing_as_anyone_else(own_pg):
    make_role(own_pg, "dbowner")
    hostile_database(own_pg, "owned", "dbowner")
    exercise_api(own_pg, "owned", "dbowner")
    assert not is_superuser(own_pg, "dbowner")
    assert calls(own_pg, "owned") == []  # not even as the owner: plpy_bg names nothing of the caller's
    # a database owner's ways to stop the job table there: every session read-only, timed out at
    # once, or with row-level security off (which makes a policy-bound table refuse the query)
    for setting in ("default_transaction_read_only = on", "statement_timeout = 1", "row_security = off"):
        sql(own_pg, f"ALTER DATABASE owned SET {setting}", user="dbowner")
    exercise_api(own_pg, "owned", "dbowner")
    assert calls(own_pg, "owned") == []
    # and to make a superuser's job there run as the owner: a database-wide role
    sql(own_pg, "ALTER DATABASE owned SET role = 'dbowner'", user="dbowner")
    with own_pg.connect(dbname="owned", options=SAFE) as c:
        c.execute("SET ROLE postgres")
        h = launch(c, "SELECT current_user::pg_catalog.text, session_user::pg_catalog.text")
        assert result(c, h, "u pg_catalog.text, s pg_catalog.text") == [("postgres", "postgres")]
    # the dispatcher's own sessions there: its role, no superuser, writing despite the database's settings
    who = sql(own_pg, "SELECT DISTINCT a.usename::text, r.rolsuper FROM pg_stat_activity a "
                      "JOIN pg_roles r ON r.oid = a.usesysid WHERE a.datname = 'owned' "
                      "AND a.application_name = 'plpy_bg dispatcher'")
    assert who == [("plpy_bg_dispatcher", False)]
    assert sql(own_pg, "SELECT count(*) FROM plpy_bg.jobs", dbname="owned")[0][0] == 9
    assert invariants(own_pg) == []


def test_database_owner_cannot_stall_the_dispatcher_for_other_databases(own_pg):
    """The owner queues a lock on its own catalog behind an open transaction and floods the
    invalidation queue, so any session of the dispatcher there waits on that lock: launches in
    other databases must not wait with it."""
    import threading
    make_role(own_pg, "staller")
    for db in ("stalled", "flood"):
        sql(own_pg, f"CREATE DATABASE {db} OWNER staller")
    sql(own_pg, "CREATE EXTENSION plpy_bg SCHEMA public CASCADE", dbname="stalled")
    sql(own_pg, "SELECT grant_pg_background_privileges('staller')", dbname="stalled")
    pid = dispatcher_pid(own_pg)
    os.kill(pid, 15)  # the owner's database becomes the first the new dispatcher serves
    wait_for(lambda: not os.path.exists(f"/proc/{pid}"))
    with own_pg.connect("staller", "stalled") as c:
        assert result(c, launch(c, "SELECT '1'")) == [("1",)]
    holder = own_pg.connect("staller", "stalled", autocommit=False)
    holder.execute("SELECT 1 FROM pg_catalog.pg_attribute LIMIT 1")
    queued = threading.Thread(target=lambda: sql(own_pg, "VACUUM FULL pg_catalog.pg_attribute",
                                                 user="staller", dbname="stalled"))
    queued.start()
    try:
        wait_for(lambda: sql(own_pg, "SELECT 1 FROM pg_stat_activity WHERE datname = 'stalled' "
                                     "AND query LIKE 'VACUUM FULL%%' AND wait_event_type = 'Lock'"))
        sql(own_pg, "DO $$ BEGIN FOR i IN 1..3000 LOOP EXECUTE 'CREATE TEMP TABLE t' || i || ' (a int)'; "
                    "END LOOP; END $$", user="staller", dbname="flood")
        time.sleep(2.5)  # the dispatcher's housekeeping has met the lock by now
        for _ in range(3):
            start = time.monotonic()
            with own_pg.connect() as c:  # a superuser's new session, in another database
                assert result(c, launch(c, "SELECT 42"), "r int") == [(42,)]
            assert time.monotonic() - start < 4, "a launch in another database waited for the stalled one"
    finally:
        holder.rollback()
        holder.close()
        queued.join(30)
    sql(own_pg, "DROP DATABASE flood")


def test_createdb_role_with_plpy_bg_in_template1(own_pg):
    sql(own_pg, "CREATE EXTENSION IF NOT EXISTS plpy_bg SCHEMA public CASCADE", dbname="template1")
    try:
        make_role(own_pg, "creator", "CREATEDB")
        hostile_database(own_pg, "created", "creator", createdb_role=True)
        assert sql(own_pg, "SELECT pg_get_userbyid(datdba)::text FROM pg_database WHERE datname = 'created'") \
            == [("creator",)]
        exercise_api(own_pg, "created", "creator")
        assert not is_superuser(own_pg, "creator")
        assert calls(own_pg, "created") == []
    finally:
        sql(own_pg, "DROP EXTENSION plpy_bg", dbname="template1")


def psql_bytes(server, dbname: bytes, query: str) -> subprocess.CompletedProcess:
    """psql into a database named by raw bytes (psycopg sends names as UTF-8)."""
    return subprocess.run([b"/usr/lib/postgresql/15/bin/psql", b"-X", b"-At", b"-v", b"ON_ERROR_STOP=1",
                           b"-h", b"127.0.0.1", b"-p", str(server.cluster.port).encode(), b"-U", b"postgres",
                           b"-d", dbname, b"-c", query.encode()],
                          capture_output=True, env={**os.environ, "PGCLIENTENCODING": "UTF8"})


DECOY = """
CREATE SCHEMA plpy_bg;
CREATE TABLE public.calls (who text, what text);
GRANT INSERT ON public.calls TO PUBLIC;
GRANT USAGE ON SCHEMA plpy_bg TO PUBLIC;
CREATE TABLE plpy_bg.jobs (LIKE pg_catalog.pg_class);
CREATE FUNCTION plpy_bg.dispatcher_settings(OUT ident_file text, OUT sandbox text) LANGUAGE sql
AS $$ INSERT INTO public.calls VALUES (current_user, 'settings') RETURNING '/tmp/decoy_ident', 'off' $$;
CREATE FUNCTION plpy_bg.install_worker_filter() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO public.calls VALUES (current_user, 'filter');
    BEGIN EXECUTE 'ALTER ROLE encoder SUPERUSER'; EXCEPTION WHEN OTHERS THEN NULL; END;
END $$;
GRANT ALL ON ALL TABLES IN SCHEMA plpy_bg TO PUBLIC;
"""


def test_a_database_name_converted_to_utf8_never_reaches_another_database(own_pg):
    """A LATIN1 database's name reaches the dispatcher converted to UTF-8; a CREATEDB role makes a
    database with that UTF-8 name and waits there for the jobs of the first."""
    make_role(own_pg, "encoder", "CREATEDB")
    sql(own_pg, "CREATE DATABASE lat ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0",
        user="encoder")
    sql(own_pg, "CREATE DATABASE \"xé\" ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0",
        user="encoder", dbname="lat")  # name bytes 78 e9
    sql(own_pg, "CREATE DATABASE \"xé\"", user="encoder")  # name bytes 78 c3 a9: the decoy
    sql(own_pg, DECOY, user="encoder", dbname="xé")
    r = psql_bytes(own_pg, b"x\xe9", "CREATE EXTENSION plpy_bg SCHEMA public CASCADE")
    assert r.returncode == 0, r.stderr
    r = psql_bytes(own_pg, b"x\xe9", "SELECT * FROM pg_background_launch_v2('SELECT current_database()')")
    assert r.returncode != 0 and b"cannot be served by plpy_bg" in r.stderr, r.stdout + r.stderr
    time.sleep(0.5)  # an absence window: a visit of the dispatcher to the decoy database would have come
    assert not is_superuser(own_pg, "encoder")
    assert sql(own_pg, "SELECT * FROM public.calls", dbname="xé") == []
    assert not os.path.exists("/tmp/decoy_ident")


FORGE_TROJAN = """
CREATE FUNCTION public.mallory_report() RETURNS pg_background_handle LANGUAGE sql
SET search_path = forge, pg_catalog, public
AS $$ SELECT * FROM public.pg_background_launch_v2('ALTER ROLE mallory SUPERUSER') $$;
"""


def test_shadowed_equality_forges_neither_owner_nor_trust(own_pg):
    """mallory's `=` says every row matches: the launcher must not record another owner for
    mallory's job, nor take mallory's trojan for a superuser's code when a superuser calls it."""
    make_role(own_pg, "mallory")
    sql(own_pg, "SELECT grant_pg_background_privileges('mallory'); GRANT CREATE ON SCHEMA public TO mallory; "
                "GRANT CREATE ON DATABASE postgres TO mallory")
    sql(own_pg, trap_sql("forge", "mallory", forge=True), user="mallory")
    mallory_oid = sql(own_pg, "SELECT 'mallory'::regrole::oid")[0][0]
    with own_pg.connect("mallory") as c:
        c.execute("SET search_path = forge, pg_catalog, public")
        h = launch(c, "SELECT current_user::pg_catalog.text")
        assert result(c, h, "r pg_catalog.text") == [("mallory",)]
    row = job_row(own_pg, h[1])
    assert row["user_id"] == mallory_oid and row["launcher_user_id"] == mallory_oid
    sql(own_pg, FORGE_TROJAN, user="mallory")
    with own_pg.connect() as c:  # a superuser runs mallory's function
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match='may not induce user "postgres"'):
            c.execute("SELECT public.mallory_report()")
    time.sleep(0.5)  # an absence window: a job that slipped through would have run by now
    assert not is_superuser(own_pg, "mallory")
    assert [r for r in sql(own_pg, "SELECT who, what FROM forge.calls") if r[0] != "mallory"] == []


# ---- role checks on every call ------------------------------------------------------------

def test_same_session_other_role_cannot_touch_a_job(own_pg):
    """A pooled session switches tenants with SET ROLE: tenant b reads, stops and sees nothing
    of tenant a's job, though the same session launched it."""
    for r in ("tenant_a", "tenant_b"):
        make_role(own_pg, r)
        sql(own_pg, f"SELECT grant_pg_background_privileges('{r}')")
    make_role(own_pg, "pooler", "NOINHERIT")
    sql(own_pg, "GRANT tenant_a, tenant_b TO pooler")
    with own_pg.connect("pooler") as c:
        c.execute("SET ROLE tenant_a")
        h = launch(c, "SELECT 'secret of a', pg_sleep(0.5)")
        v1 = c.execute("SELECT pg_background_launch(%s)", ("SELECT 'v1 secret of a'",)).fetchone()[0]
        c.execute("SET ROLE tenant_b")
        for q in ("SELECT * FROM pg_background_result_v2(%s, %s) AS (s text, z text)",
                  "SELECT pg_background_cancel_v2(%s, %s)",
                  "SELECT pg_background_cancel_v2_grace(%s, %s, 0)",
                  "SELECT pg_background_wait_v2(%s, %s)",
                  "SELECT pg_background_wait_v2_timeout(%s, %s, 10)",
                  "SELECT * FROM pg_background_get_progress_v2(%s, %s)",
                  "SELECT pg_background_detach_v2(%s, %s)"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied for background job"):
                c.execute(q, h)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute("SELECT * FROM pg_background_result(%s) AS (s text)", (v1,))
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute("SELECT pg_background_detach(%s)", (v1,))
        assert c.execute(f"SELECT * FROM pg_background_list_v2() AS ({LIST_COLS})").fetchall() == []
        c.execute("SET ROLE tenant_a")
        listed = sorted(r[0] for r in c.execute(f"SELECT * FROM pg_background_list_v2() AS ({LIST_COLS})"))
        assert listed == sorted({h[0], v1})
        assert result(c, h, "s text, z text") == [("secret of a", "")]  # untouched, and read once
        got = c.execute("SELECT * FROM pg_background_result(%s) AS (s text)", (v1,)).fetchall()
        assert got == [("v1 secret of a",)]
    assert job_row(own_pg, h[1])["state"] == "completed"


PEEK = """
CREATE OR REPLACE FUNCTION public.peeker_peek(pid int, cookie bigint) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_catalog AS $$
DECLARE got text := '';
BEGIN
    BEGIN SELECT s INTO got FROM pg_background_result_v2(pid, cookie) AS (s text);
          RETURN 'read: ' || got; EXCEPTION WHEN insufficient_privilege THEN NULL; END;
    BEGIN PERFORM pg_background_cancel_v2(pid, cookie); RETURN 'canceled';
          EXCEPTION WHEN insufficient_privilege THEN NULL; END;
    BEGIN PERFORM pg_background_detach_v2(pid, cookie); RETURN 'detached';
          EXCEPTION WHEN insufficient_privilege THEN NULL; END;
    SELECT count(*)::text INTO got FROM pg_background_list_v2() AS (pid int4, cookie int8,
        launched_at timestamptz, user_id oid, queue_size int4, state text, sql_preview text,
        last_error text, consumed bool);
    RETURN 'listed ' || got;
END $$;
GRANT EXECUTE ON FUNCTION public.peeker_peek(int, bigint) TO PUBLIC;
"""


def test_security_definer_code_of_another_role_cannot_touch_the_callers_job(own_pg):
    make_role(own_pg, "peeker")
    sql(own_pg, "SELECT grant_pg_background_privileges('peeker'); GRANT CREATE ON SCHEMA public TO peeker")
    sql(own_pg, PEEK, user="peeker")
    with own_pg.connect("admin") as c:
        h = launch(c, "SELECT 'admin secret' FROM pg_sleep(0.5)")
        assert c.execute("SELECT public.peeker_peek(%s, %s)", h).fetchone()[0] == "listed 0"
        assert result(c, h) == [("admin secret",)]
    assert job_row(own_pg, h[1])["state"] == "completed"


def test_detach_needs_a_job_attached_to_this_session(own_pg):
    with own_pg.connect("alice") as a, own_pg.connect("alice") as a2, own_pg.connect("bob") as b:
        hb = launch(b, "SELECT pg_sleep(0.3)")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):  # another role's
            a.execute("SELECT pg_background_detach_v2(%s, %s)", hb)
        ha = launch(a, "SELECT '1'")
        with pytest.raises(psycopg.errors.UndefinedObject, match=f"PID {ha[0]} is not attached to this session"):
            a2.execute("SELECT pg_background_detach_v2(%s, %s)", ha)  # another session's
        result(a, ha)
        with pytest.raises(psycopg.errors.UndefinedObject, match=f"PID {ha[0]} is not attached to this session"):
            a.execute("SELECT pg_background_detach_v2(%s, %s)", ha)  # already read
        assert wait(b, hb)
        assert result(b, hb) == [("",)]  # bob's job was not detached by alice


# ---- identity by oid ---------------------------------------------------------------------

def test_rename_swap_never_reaches_the_old_roles_worker(own_pg):
    """A CREATEROLE role swaps names: the new holder of the name gets a worker of its own."""
    for r in ("swap_a", "swap_b"):
        make_role(own_pg, r)
        sql(own_pg, f"SELECT grant_pg_background_privileges('{r}')")
    make_role(own_pg, "renamer", "CREATEROLE")
    oid_b = sql(own_pg, "SELECT 'swap_b'::regrole::oid")[0][0]
    with own_pg.connect("swap_a") as c:
        olds = set()
        for _ in range(3):
            h = launch(c, "SELECT '1'")
            result(c, h)
            olds.add(h[0])
    wait_for(lambda: olds & {r[0] for r in sql(own_pg, "SELECT pid FROM plpy_bg.pool_workers() "
                                                       "WHERE state = 'idle'")})
    sql(own_pg, "ALTER ROLE swap_a RENAME TO swap_old; ALTER ROLE swap_b RENAME TO swap_a", user="renamer")
    try:
        with own_pg.connect("swap_a") as c:  # the old swap_b, under the old swap_a's name
            for _ in range(3):
                h = launch(c, "SELECT session_user::text, (SELECT oid FROM pg_roles WHERE rolname = session_user)")
                assert result(c, h, "s text, o oid") == [("swap_a", oid_b)]
                assert h[0] not in olds
    finally:
        sql(own_pg, "ALTER ROLE swap_a RENAME TO swap_b; ALTER ROLE swap_old RENAME TO swap_a", user="renamer")
    assert invariants(own_pg) == []


# ---- the peer map ---------------------------------------------------------------------------

def ident_problems(server):
    return sql(server, "SELECT line_number, error FROM pg_ident_file_mappings WHERE error IS NOT NULL")


def mapped(server, role) -> bool:
    return bool(sql(server, "SELECT 1 FROM pg_ident_file_mappings WHERE map_name = 'plpy_bg' "
                            "AND sys_name = 'postgres' AND pg_username = %s", (role,)))


# a line break PostgreSQL sees, or one that a rewrite of the file by Python's splitlines() would make
HOSTILE_NAMES = ["x\nplpy_bg /^someone$ admin", "cr\rx", "x\x0bplpy_bg someone postgres\x0b#",
                 "y\u2028plpy_bg someone postgres", "tab\tx"]
ODD_NAMES = ["a,b", "sp ace", 'q"uote', "ha#sh", "back\\slash", "+pgbackground_role", "/^.*$", "all",
             "endsback\\"]


def test_hostile_role_names_cannot_write_the_peer_map(own_pg):
    make_role(own_pg, "rolemaker", "CREATEROLE")
    before = (own_pg.cluster.datadir / "pg_ident.conf").read_text()
    for name in HOSTILE_NAMES:
        make_role(own_pg, name)
        with connect_as(own_pg, name) as c:
            with pytest.raises(psycopg.errors.InvalidName, match="cannot be written to pg_ident.conf"):
                launch(c, "SELECT '1'")
        with own_pg.connect() as c:
            with pytest.raises(psycopg.errors.InvalidName):
                c.execute("SELECT grant_pg_background_privileges(%s)", (name,))
            c.execute(pgsql.SQL("DROP ROLE {}").format(pgsql.Identifier(name)))
    assert (own_pg.cluster.datadir / "pg_ident.conf").read_text() == before
    make_role(own_pg, "after_hostile")  # its line makes the dispatcher rewrite the file
    with own_pg.connect("after_hostile") as c:
        assert result(c, launch(c, "SELECT 'ok'")) == [("ok",)]
    assert ident_problems(own_pg) == []
    assert not sql(own_pg, "SELECT 1 FROM pg_ident_file_mappings WHERE sys_name LIKE '%someone%'")


def test_odd_role_names_are_written_so_that_the_file_stays_readable(own_pg):
    for name in ODD_NAMES:
        make_role(own_pg, name)
        with connect_as(own_pg, name) as c:
            h = launch(c, "SELECT session_user::text")
            assert result(c, h) == [(name,)]
        assert ident_problems(own_pg) == [] and mapped(own_pg, name)
    # a later role still logs in: the file was never left unreadable
    make_role(own_pg, "after_odd")
    with own_pg.connect("after_odd") as c:
        assert result(c, launch(c, "SELECT 'ok'")) == [("ok",)]
    sql(own_pg, "SELECT revoke_pg_background_privileges('after_odd')")
    wait_for(lambda: not mapped(own_pg, "after_odd"))
    assert ident_problems(own_pg) == []


# ---- no lock or resource exhaustion by an unprivileged role ---------------------------------

def test_trust_table_cannot_be_locked_or_written_directly(own_pg):
    with own_pg.connect("alice", autocommit=False) as a:
        for mode in ("ACCESS EXCLUSIVE", "EXCLUSIVE", "SHARE ROW EXCLUSIVE", "SHARE", "ROW EXCLUSIVE"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                a.execute(f"LOCK TABLE plpy_bg.trust IN {mode} MODE")
            a.rollback()
        for q in ("INSERT INTO plpy_bg.trust VALUES ('alice'::regrole, 'bob'::regrole)",
                  "DELETE FROM plpy_bg.trust", "SELECT plpy_bg.trust_write()"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                a.execute(q)
            a.rollback()
        a.execute("LOCK TABLE plpy_bg.trust IN ACCESS SHARE MODE")  # all reading allows: it blocks nobody
        with own_pg.connect("bob") as b:
            b.execute("SET statement_timeout = '5s'")
            assert result(b, launch(b, "SELECT 'not stalled'")) == [("not stalled",)]
            b.execute("SELECT pg_background_trust('alice')")
            assert b.execute("SELECT trustee::text FROM pg_background_trusted() WHERE truster = 'bob'::regrole"
                             ).fetchall() == [("alice",)]
            b.execute("SELECT pg_background_distrust('alice')")
        a.rollback()


def spool_fds(server):
    pid = dispatcher_pid(server)
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.endswith("(deleted)"):  # spooled rows live in unlinked files
            out.append(target)
    return out


def test_spool_obeys_the_roles_temp_file_limit(own_pg):
    make_role(own_pg, "spooler")
    sql(own_pg, "SELECT grant_pg_background_privileges('spooler'); ALTER ROLE spooler SET temp_file_limit = '1MB'")
    big_last_set = "SELECT 1; SELECT repeat('x', 1000) FROM generate_series(1, 20000)"  # 20 MB, spooled
    with own_pg.connect("spooler") as c:
        h = launch(c, big_last_set)
        with pytest.raises(psycopg.errors.ConfigurationLimitExceeded,
                           match=r"temporary file size exceeds temp_file_limit \(1024kB\)"):
            result(c, h, "r text")
        # a streaming job that is waited for spills too: the same bound
        h = launch(c, "SELECT repeat('x', 1000) FROM generate_series(1, 20000)")
        c.execute("SELECT pg_background_wait_v2(%s, %s)", h)
        with pytest.raises(psycopg.errors.ConfigurationLimitExceeded):
            result(c, h, "r text")
        # within the limit, spooled rows live in the server's own 0700 directory, unnamed
        h = launch(c, "SELECT 1; SELECT repeat('y', 1000), pg_sleep(0.002) FROM generate_series(1, 500)")
        fds = wait_for(lambda: spool_fds(own_pg), timeout=10, interval=0.01)
        tmp = own_pg.cluster.datadir / "base" / "pgsql_tmp"
        for target in fds:
            assert target.startswith(str(tmp) + "/") and target.endswith("(deleted)"), target
        st = os.stat(tmp)
        assert st.st_mode & 0o777 == 0o700 and st.st_uid == os.stat(own_pg.cluster.datadir).st_uid
        assert len(result(c, h, "r text, z text")) == 500
    assert spool_fds(own_pg) == []
    assert invariants(own_pg) == []


def test_spool_limit_counts_all_of_a_sessions_unread_rows(own_pg):
    make_role(own_pg, "spooler")
    sql(own_pg, "SELECT grant_pg_background_privileges('spooler'); ALTER ROLE spooler SET temp_file_limit = '1MB'")
    half = "SELECT 1; SELECT repeat('h', 1000) FROM generate_series(1, 700)"  # 0.7 MB spooled, unread
    with own_pg.connect("spooler") as c:
        h1 = launch(c, half)
        c.execute("SELECT pg_background_wait_v2(%s, %s)", h1)
        h2 = launch(c, half)
        with pytest.raises(psycopg.errors.ConfigurationLimitExceeded):
            result(c, h2, "r text")
        assert len(result(c, h1, "r text")) == 700  # the first job's rows were kept


def test_huge_rows_hold_one_row_per_job(own_pg):
    """Rows larger than the queue and the session budget wait one at a time, not by libpq chunks."""
    pid = dispatcher_pid(own_pg)
    before = rss_kb(pid)
    peak = before
    with own_pg.connect("alice") as c:
        hs = [launch(c, "SELECT repeat('x', 50000000) FROM generate_series(1, 6)", 4096) for _ in range(3)]
        for _ in range(20):  # 900 MB of rows would be produced if nothing held them back
            time.sleep(0.25)
            peak = max(peak, rss_kb(pid))
        for h in hs:
            c.execute("SELECT pg_background_cancel_v2(%s, %s)", h)
    grown = (peak - before) / 1024
    assert grown < 450, f"dispatcher grew {grown:.0f} MB for three jobs of 50 MB rows"
    assert invariants(own_pg) == []


def test_huge_statements_do_not_wedge_other_roles_launches(own_pg):
    import threading
    text = "SELECT 1 /*" + "s" * 100_000_000 + "*/"
    done = []

    def submit():
        with own_pg.connect("alice") as c:
            done.append(c.execute("SELECT * FROM pg_background_submit_v2(%s)", (text,)).fetchone())

    ts = [threading.Thread(target=submit) for _ in range(2)]
    for t in ts:
        t.start()
    slowest = 0.0
    with own_pg.connect("bob") as b:
        while any(t.is_alive() for t in ts):
            start = time.monotonic()
            assert result(b, launch(b, "SELECT 'bob'")) == [("bob",)]
            slowest = max(slowest, time.monotonic() - start)
            time.sleep(0.2)
    for t in ts:
        t.join()
    assert len(done) == 2 and slowest < 5, f"a launch of bob's took {slowest:.1f} s"
    for h in done:
        wait_for(lambda: job_row(own_pg, h[1])["state"] == "completed", timeout=60)
        stored = job_row(own_pg, h[1])["sql"]
        assert len(stored.encode()) < (1 << 20) + 200 and stored.endswith("bytes of this text")
    assert invariants(own_pg) == []


def test_session_memory_is_bounded(own_pg):
    """Rows nobody reads wait in the dispatcher up to the session's budget, not each job's queue."""
    pid = dispatcher_pid(own_pg)
    before = rss_kb(pid)
    with own_pg.connect("alice") as c:
        hs = [launch(c, "SELECT repeat('m', 8000) FROM generate_series(1, 1500)", 256 << 20) for _ in range(15)]
        time.sleep(3)  # 180 MB of rows produced if nothing held them back
        grown = (rss_kb(pid) - before) / 1024
        for h in hs:
            c.execute("SELECT pg_background_cancel_v2(%s, %s)", h)
    assert grown < 120, f"dispatcher grew {grown:.0f} MB for one session's unread rows"
    assert invariants(own_pg) == []


def test_ten_thousand_large_progress_messages(own_pg):
    pid = dispatcher_pid(own_pg)
    before = rss_kb(pid)
    with own_pg.connect("alice") as c:
        h = launch(c, "SELECT count(pg_background_progress(i % 100, repeat('p', 100000))) "
                      "FROM generate_series(1, 10000) i")
        assert result(c, h, "n int8") == [(10000,)]
        h2 = launch(c, "SELECT pg_background_progress(7, repeat('é', 1000)); SELECT pg_sleep(1)")
        wait_for(lambda: c.execute("SELECT progress_pct FROM pg_background_get_progress_v2(%s, %s)", h2)
                 .fetchone()[0] == 7)
        pct, msg = c.execute("SELECT * FROM pg_background_get_progress_v2(%s, %s)", h2).fetchone()
        assert len(msg.encode()) <= 63 and msg == "é" * 31
        wait(c, h2)
    grown = (rss_kb(pid) - before) / 1024
    assert grown < 30, f"dispatcher grew {grown:.0f} MB"
    wait_for(lambda: len(job_row(own_pg, h2[1])["progress_msg"] or "") == 31)
    assert len(job_row(own_pg, h[1])["progress_msg"].encode()) <= 63


def test_databases_made_and_dropped_leave_nothing_behind(own_pg):
    """A CREATEDB role churns databases with a job in each: the dispatcher keeps no thread,
    connection or table entry for a database it no longer serves."""
    make_role(own_pg, "churner", "CREATEDB")
    pid = dispatcher_pid(own_pg)
    threads = lambda: len(os.listdir(f"/proc/{pid}/task"))
    before = threads()
    for i in range(8):
        db = f"churn_{i}"
        sql(own_pg, f"CREATE DATABASE {db} OWNER churner")
        sql(own_pg, "CREATE EXTENSION plpy_bg SCHEMA public CASCADE", dbname=db)
        sql(own_pg, "SELECT grant_pg_background_privileges('churner')", dbname=db)
        with own_pg.connect("churner", db) as c:
            assert result(c, launch(c, "SELECT '1'")) == [("1",)]
        sql(own_pg, f"DROP DATABASE {db}")  # no FORCE: the dispatcher lets go of it at once
    wait_for(lambda: threads() <= before + 2, timeout=20)
    assert not sql(own_pg, "SELECT 1 FROM pg_stat_activity WHERE datname LIKE 'churn_%'")


def test_many_busy_databases_do_not_take_everyones_connection_slots(own_pg):
    """Each database with jobs holds sessions of the dispatcher, charged to no role: a CREATEDB
    role keeping many databases busy gets launches refused before the server's slots run out."""
    make_role(own_pg, "spreader", "CREATEDB")
    pid = dispatcher_pid(own_pg)
    os.kill(pid, 15)  # a fresh dispatcher: no idle workers of earlier tests in the slots' count
    wait_for(lambda: not os.path.exists(f"/proc/{pid}"))
    dbs = [f"spread_{i}" for i in range(9)]
    for db in dbs:
        sql(own_pg, f"CREATE DATABASE {db} OWNER spreader")
        sql(own_pg, "CREATE EXTENSION plpy_bg SCHEMA public CASCADE", dbname=db)
        sql(own_pg, "SELECT grant_pg_background_privileges('spreader')", dbname=db)
    conns = [own_pg.connect("spreader", db) for db in dbs]
    try:
        for c in conns:  # first a quick job in each: the databases are held, none is busy
            try:
                result(c, launch(c, "SELECT '1'"))
            except psycopg.errors.TooManyConnections:
                pass
        refused = 0
        for c in conns:  # a running job in each: none of these databases can be let go
            try:
                launch(c, "SELECT pg_sleep(5)", fn="pg_background_submit_v2")
            except psycopg.errors.TooManyConnections as e:
                assert "running jobs in" in str(e)
                refused += 1
        assert refused > 0
        ours = sql(own_pg, "SELECT count(*) FROM pg_stat_activity WHERE usename = 'plpy_bg_dispatcher'")[0][0]
        max_conn = int(sql(own_pg, "SHOW max_connections")[0][0])
        assert ours <= 2 * max(2, max_conn // 8)
        with own_pg.connect("bob") as b:  # everyone else still logs in and gets jobs
            assert result(b, launch(b, "SELECT 'room'")) == [("room",)]
    finally:
        for c in conns:
            c.close()
    for db in dbs:  # their jobs end before a DROP without FORCE
        wait_for(lambda: sql(own_pg, "SELECT count(*) FROM plpy_bg.jobs WHERE state = 'running'", dbname=db)
                 == [(0,)], timeout=30)
        sql(own_pg, f"DROP DATABASE {db}")


def test_a_database_that_refuses_the_dispatcher_takes_no_room(own_pg):
    """The owner lets the dispatcher in, then sets CONNECTION LIMIT 0 with a write of ours
    pending: the write waits, but the database holds no session of ours, so it takes no place
    among the databases served, and other roles' launches go on."""
    make_role(own_pg, "limiter", "CREATEDB")
    dbs = [f"limit_{i}" for i in range(8)]  # more than the fixture's max_connections / 8
    pending = []
    for db in dbs:
        sql(own_pg, f"CREATE DATABASE {db} OWNER limiter")
        sql(own_pg, "CREATE EXTENSION plpy_bg SCHEMA public CASCADE", dbname=db)
        sql(own_pg, "SELECT grant_pg_background_privileges('limiter')", dbname=db)
        c = own_pg.connect("limiter", db)
        h = launch(c, "SELECT '1'")
        wait(c, h)
        sql(own_pg, f"ALTER DATABASE {db} CONNECTION LIMIT 0", user="limiter")
        sql(own_pg, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s "
                    "AND application_name IN ('plpy_bg dispatcher', 'plpy_bg worker')", (db,))
        wait_for(lambda: not sql(own_pg, "SELECT 1 FROM pg_stat_activity WHERE datname = %s "
                                         "AND application_name LIKE 'plpy_bg %%'", (db,)))
        c.execute("SELECT pg_background_detach_v2(%s, %s)", h)  # a job-table write that cannot be made
        pending.append(c)
    try:
        for user, db in (("bob", "postgres"), ("alice", "postgres")):
            with own_pg.connect(user, db) as b:
                start = time.monotonic()
                assert result(b, launch(b, "SELECT 'still room'")) == [("still room",)]
                assert time.monotonic() - start < 3
    finally:
        for c in pending:
            c.close()
        for db in dbs:
            sql(own_pg, f"ALTER DATABASE {db} CONNECTION LIMIT -1")
            sql(own_pg, f"DROP DATABASE {db}")


def test_an_owner_keeping_its_database_busy_cannot_hide_drop_database_elsewhere(own_pg):
    """The dispatcher asks one of its open sessions whether a DROP DATABASE waits; the owner of the
    first database it would ask keeps that session busy behind a lock of its own."""
    import threading
    make_role(own_pg, "hider", "CREATEDB")
    for db in ("aaa_hide", "elsewhere"):
        sql(own_pg, f"CREATE DATABASE {db} OWNER hider")
        sql(own_pg, "CREATE EXTENSION plpy_bg SCHEMA public CASCADE", dbname=db)
        sql(own_pg, "SELECT grant_pg_background_privileges('hider')", dbname=db)
    pid = dispatcher_pid(own_pg)
    os.kill(pid, 15)  # the owner's database becomes the one the new dispatcher asks first
    wait_for(lambda: not os.path.exists(f"/proc/{pid}"))
    a = own_pg.connect("hider", "aaa_hide")
    h = a.execute("SELECT * FROM pg_background_submit_v2('SELECT pg_sleep(2); "
                  "SELECT pg_background_progress(1, ''x''); SELECT pg_sleep(60)')").fetchone()
    reader = own_pg.connect("hider", "aaa_hide", autocommit=False)
    reader.execute("SELECT 1 FROM plpy_bg.jobs LIMIT 1")
    vac = threading.Thread(target=lambda: sql(own_pg, "VACUUM FULL plpy_bg.jobs", user="hider", dbname="aaa_hide"))
    vac.start()
    try:
        wait_for(lambda: sql(own_pg, "SELECT 1 FROM pg_stat_activity WHERE datname = 'aaa_hide' "
                                     "AND query LIKE 'VACUUM FULL%%' AND wait_event_type = 'Lock'"))
        # the progress write now waits behind the queued VACUUM FULL (5 s lock timeout, then again)
        wait_for(lambda: sql(own_pg, "SELECT 1 FROM pg_stat_activity WHERE datname = 'aaa_hide' "
                                     "AND application_name = 'plpy_bg dispatcher' AND wait_event_type = 'Lock'"),
                 timeout=15)
        with own_pg.connect("alice", "elsewhere") as c:
            assert result(c, launch(c, "SELECT '1'")) == [("1",)]
        start = time.monotonic()
        sql(own_pg, "DROP DATABASE elsewhere")
        assert time.monotonic() - start < 5
    finally:
        reader.rollback()
        reader.close()
        vac.join(30)
        a.execute("SELECT pg_background_cancel_v2(%s, %s)", h)
        a.close()


def test_drop_database_with_force_while_jobs_are_launched_there(own_pg):
    """Launchers waiting on the dispatcher still act on the termination FORCE sends them."""
    import threading
    sql(own_pg, "CREATE DATABASE racedb")
    sql(own_pg, "CREATE EXTENSION plpy_bg SCHEMA public CASCADE", dbname="racedb")
    sql(own_pg, "SELECT grant_pg_background_privileges('alice')", dbname="racedb")
    stop = threading.Event()

    def loop():
        while not stop.is_set():
            try:
                with own_pg.connect("alice", "racedb") as c:
                    while not stop.is_set():
                        c.execute("SELECT * FROM pg_background_submit_v2('SELECT 1')")
            except psycopg.Error:
                time.sleep(0.05)

    ts = [threading.Thread(target=loop) for _ in range(3)]
    for t in ts:
        t.start()
    try:
        wait_for(lambda: sql(own_pg, "SELECT count(*) FROM plpy_bg.jobs", dbname="racedb")[0][0] >= 10)  # launching
        start = time.monotonic()
        sql(own_pg, "DROP DATABASE racedb WITH (FORCE)")
        assert time.monotonic() - start < 5
    finally:
        stop.set()
        for t in ts:
            t.join(10)


def test_one_huge_row_is_held_about_once(own_pg):
    pid = dispatcher_pid(own_pg)
    before = peak = rss_kb(pid)
    with own_pg.connect("alice") as c:
        h = launch(c, "SELECT repeat('\"', 100000000)")  # a 200 MB record literal: quotes double
        for _ in range(40):
            time.sleep(0.1)
            peak = max(peak, rss_kb(pid))
        c.execute("SELECT pg_background_cancel_v2(%s, %s)", h)
    grown = (peak - before) / 1024
    assert grown < 650, f"dispatcher grew {grown:.0f} MB for one row of 200 MB"


def test_results_outlive_the_release_of_their_database(own_pg):
    """The dispatcher lets go of an idle database; unread results of jobs there stay readable, and
    a session that ends with unread rows gives all of them back."""
    pool_settings(own_pg, pool_idle_timeout="2s")
    try:
        with own_pg.connect("alice") as keep, own_pg.connect("alice") as leave:
            h = launch(keep, "SELECT g FROM generate_series(1, 5) g")
            big = [launch(leave, "SELECT repeat('x', 100000) FROM generate_series(1, 50)", 64 << 20)
                   for _ in range(3)]
            for x in big:
                wait(leave, x)
            wait(keep, h)
            wait_for(lambda: not sql(own_pg, "SELECT 1 FROM pg_stat_activity "
                                             "WHERE application_name LIKE 'plpy_bg %%' AND datname = 'postgres'"),
                     timeout=20)  # released: no session of the dispatcher is left there
            assert result(keep, h, "g int") == [(i,) for i in range(1, 6)]
        assert "Traceback" not in dispatcher_log(own_pg)
    finally:
        pool_settings(own_pg, pool_idle_timeout=None)


def test_a_greeting_claims_no_database_name(own_pg):
    """A role that only says hello in another role's database does not pin its name: the database
    dropped and made again is served."""
    make_role(own_pg, "greeter")
    sql(own_pg, "CREATE DATABASE renewed OWNER greeter")
    sql(own_pg, "CREATE EXTENSION plpy_bg SCHEMA public CASCADE", dbname="renewed")
    sql(own_pg, "SELECT grant_pg_background_privileges('alice')", dbname="renewed")
    with own_pg.connect("alice", "renewed") as c:
        c.execute(f"SELECT count(*) FROM pg_background_list_v2() AS ({LIST_COLS})")
    sql(own_pg, "DROP DATABASE renewed")
    sql(own_pg, "CREATE DATABASE renewed OWNER greeter")
    sql(own_pg, "CREATE EXTENSION plpy_bg SCHEMA public CASCADE", dbname="renewed")
    sql(own_pg, "SELECT grant_pg_background_privileges('greeter')", dbname="renewed")
    with own_pg.connect("greeter", "renewed") as c:
        assert result(c, launch(c, "SELECT 'served'")) == [("served",)]
    sql(own_pg, "DROP DATABASE renewed")


def test_a_write_racing_a_failed_drop_leaves_no_session_behind(own_pg):
    """An owner's DROP DATABASE that fails holds the database's lock for 5 s, so a job-table
    session of ours opening meanwhile waits; the dispatcher must not give that store up while it
    opens, or its session would stay, unseen, for ever (and the owner's next DROP fail)."""
    import threading
    make_role(own_pg, "owen")
    sql(own_pg, "CREATE DATABASE owendb OWNER owen")
    sql(own_pg, "CREATE EXTENSION plpy_bg SCHEMA public CASCADE", dbname="owendb")
    sql(own_pg, "SELECT grant_pg_background_privileges('owen')", dbname="owendb")
    pool_settings(own_pg, pool_idle_timeout="2s")
    try:
        s = own_pg.connect("owen", "owendb")
        h = launch(s, "SELECT 42")
        wait(s, h)
        failed = []

        def drop():
            try:
                sql(own_pg, "DROP DATABASE owendb", user="owen")
            except psycopg.errors.ObjectInUse:
                failed.append(True)
        t = threading.Thread(target=drop)
        t.start()
        ours = "SELECT count(*) FROM pg_stat_activity WHERE datname = 'owendb' AND application_name LIKE 'plpy_bg %%'"
        wait_for(lambda: sql(own_pg, ours) == [(0,)], timeout=4)  # the dispatcher has let go of owendb
        assert t.is_alive()  # and the DROP still holds its lock
        assert result(s, h, "x int") == [(42,)]  # queues a write whose session waits for that lock
        t.join(20)
        assert failed
        s.close()
        ours = "SELECT count(*) FROM pg_stat_activity WHERE datname = 'owendb' AND application_name LIKE 'plpy_bg %'"
        wait_for(lambda: sql(own_pg, ours)[0][0] == 0, timeout=30)
        sql(own_pg, "DROP DATABASE owendb", user="owen")
    finally:
        pool_settings(own_pg, pool_idle_timeout=None)


def test_drop_database_right_after_a_job(own_pg):
    for db in ("dropme", "tmpl"):
        sql(own_pg, f"CREATE DATABASE {db}")
        sql(own_pg, "CREATE EXTENSION plpy_bg SCHEMA public CASCADE", dbname=db)
        sql(own_pg, "SELECT grant_pg_background_privileges('alice')", dbname=db)
        with own_pg.connect("alice", db) as c:
            for _ in range(3):
                assert result(c, launch(c, "SELECT 'here'")) == [("here",)]
            assert wait(c, c.execute("SELECT * FROM pg_background_submit_v2('SELECT 1')").fetchone())
    start = time.monotonic()
    sql(own_pg, "DROP DATABASE dropme")  # waits up to 5 s for other sessions: the dispatcher's leave
    sql(own_pg, "CREATE DATABASE copied TEMPLATE tmpl")  # a template must have no sessions either
    assert time.monotonic() - start < 10
    sql(own_pg, "DROP DATABASE copied")
    with own_pg.connect("alice", "tmpl") as c:  # and the database is served again afterwards
        assert result(c, launch(c, "SELECT 'back'")) == [("back",)]
    assert invariants(own_pg) == []


def test_a_dispatcher_that_cannot_log_in_refuses_jobs_with_the_line_to_add(own_pg):
    """Fail closed: without its peer-map line the dispatcher has no login, and says which line."""
    ident = own_pg.cluster.datadir / "pg_ident.conf"
    kept = ident.read_text()
    pid = dispatcher_pid(own_pg)
    ident.write_text("".join(ln + "\n" for ln in kept.splitlines() if "plpy_bg_dispatcher" not in ln))
    sql(own_pg, "SELECT pg_reload_conf()")
    try:
        os.kill(pid, 15)  # a new dispatcher must log in again
        wait_for(lambda: not os.path.exists(f"/proc/{pid}"))
        with own_pg.connect("alice") as c:
            start = time.monotonic()
            with pytest.raises(psycopg.errors.ConnectionFailure,
                               match='cannot log in as "plpy_bg_dispatcher"') as e:
                launch(c, "SELECT '1'")
            assert time.monotonic() - start < 10
            assert 'plpy_bg postgres "plpy_bg_dispatcher"' in (e.value.diag.message_hint or "")
    finally:
        ident.write_text(kept)
        sql(own_pg, "SELECT pg_reload_conf()")
    with own_pg.connect("alice") as c:
        assert result(c, launch(c, "SELECT 'back'")) == [("back",)]


def test_smart_shutdown_completes_after_jobs(own_pg):
    """Last in the module: stops the cluster, then starts it again."""
    import build
    with own_pg.connect("alice") as c:
        for _ in range(3):
            result(c, launch(c, "SELECT '1'"))
        h = c.execute("SELECT * FROM pg_background_submit_v2('SELECT pg_sleep(2)')").fetchone()
    c = own_pg.cluster
    start = time.monotonic()
    r = subprocess.run(["runuser", "-u", "postgres", "--", "/usr/lib/postgresql/15/bin/pg_ctl",
                        "stop", "-D", str(c.datadir), "-m", "smart", "-t", "30", "-w"], capture_output=True, text=True)
    took = time.monotonic() - start
    assert r.returncode == 0, r.stdout + r.stderr
    assert took < 30
    c.proc.wait(10)
    c.start(wrapper=build.preload_wrapper())
    row = job_row(own_pg, h[1])
    assert row["state"] == "completed", row  # the running job finished and was recorded first
