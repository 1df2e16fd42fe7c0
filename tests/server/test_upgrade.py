"""Versioned upgrades on a real server: each released version, rebuilt from git history by
`build.py install`, is installed and upgraded with ALTER EXTENSION plpy_bg UPDATE."""
import os
import re
import shutil
import signal
import subprocess

import psycopg
import pytest

import build
from tests.fix_pg import launch, pool_settings, result, wait_for

pytestmark = pytest.mark.server

MEMBERS = """
SELECT pg_catalog.pg_describe_object(d.classid, d.objid, 0) AS obj,
       pg_catalog.md5(COALESCE(p.prosrc, '') || COALESCE(p.proconfig::text, '') || COALESCE(l.lanname, '')) AS body
FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_extension e ON e.oid = d.refobjid
LEFT JOIN pg_catalog.pg_proc p ON d.classid = 'pg_catalog.pg_proc'::regclass AND p.oid = d.objid
LEFT JOIN pg_catalog.pg_language l ON l.oid = p.prolang
WHERE d.refclassid = 'pg_catalog.pg_extension'::regclass AND d.deptype = 'e' AND e.extname = 'plpy_bg'
ORDER BY 1
"""


def test_every_released_version_has_a_one_step_path_to_this_one(own_pg):
    rows = own_pg.sql("SELECT source, target, path FROM pg_extension_update_paths('plpy_bg') "
                      "WHERE path IS NOT NULL")
    assert {(s, t) for s, t, _ in rows} == {(v, build.VERSION) for v in build.RELEASED}
    for source, target, path in rows:
        assert path == f"{source}--{target}"  # the full script, which every install runs


@pytest.mark.parametrize("released", sorted(build.RELEASED))
def test_a_released_install_keeps_its_jobs_and_trust_through_the_update(own_pg, released):
    db = "up_from_" + released.replace(".", "_")
    own_pg.sql(f"CREATE DATABASE {db}")
    with own_pg.connect(dbname=db) as c:
        c.execute(f"CREATE EXTENSION plpy_bg VERSION '{released}' CASCADE")
        c.execute("SELECT grant_pg_background_privileges('alice'); SELECT grant_pg_background_privileges('bob')")
        c.execute("CREATE TABLE kept (v text); GRANT ALL ON kept TO alice")
    with own_pg.connect("alice", dbname=db) as c:
        c.execute("SELECT pg_background_trust('bob')")
        h = launch(c, "INSERT INTO kept VALUES ('before') RETURNING v")
        assert result(c, h, "v text") == [("before",)]
    jobs = "SELECT cookie, state, sql, user_id FROM plpy_bg.jobs ORDER BY cookie"
    wait_for(lambda: own_pg.sql("SELECT state FROM plpy_bg.jobs", dbname=db) == [("completed",)])  # written after
    trust = "SELECT truster::regrole::text, trustee::regrole::text FROM plpy_bg.trust ORDER BY 1, 2"
    before = own_pg.sql(jobs, dbname=db), own_pg.sql(trust, dbname=db)
    assert before[0] and before[1] == [("alice", "bob")]

    with own_pg.connect(dbname=db) as c:
        c.execute("ALTER EXTENSION plpy_bg UPDATE")
        assert c.execute("SELECT extversion FROM pg_extension WHERE extname = 'plpy_bg'").fetchone()[0] == build.VERSION
        applied = dict(c.execute("SELECT name, applied_at_version FROM plpy_bg.migration").fetchall())
    assert applied == {f.name: build.FROZEN.get(f.name, (build.VERSION,))[0] for f in build.incremental_files()}
    assert (own_pg.sql(jobs, dbname=db), own_pg.sql(trust, dbname=db)) == before

    with own_pg.connect("alice", dbname=db) as c:  # a new session runs the new version
        h = launch(c, "INSERT INTO kept VALUES ('after') RETURNING v")
        with pytest.raises(psycopg.errors.DatatypeMismatch):
            result(c, h, "v int")  # 0.2.0 checks the column list before any row
        assert result(c, h, "v text") == [("after",)]
    assert own_pg.sql("SELECT v FROM kept ORDER BY v", dbname=db) == [("after",), ("before",)]
    # the upgraded database and a fresh install of this version hold the same objects
    assert own_pg.sql(MEMBERS, dbname=db) == own_pg.sql(MEMBERS)


def test_a_fresh_install_records_every_incremental_file_as_its_own(own_pg):
    assert dict(own_pg.sql("SELECT name, applied_at_version FROM plpy_bg.migration")) == {
        f.name: build.VERSION for f in build.incremental_files()}


def test_a_schema_a_database_owner_planted_makes_the_install_fail(own_pg):
    """A database owner makes schema plpy_bg with a migration table that lists every file, so an
    install would skip them and put a superuser's functions in the owner's schema (which it may
    drop and replace). Only the extension's own tables count: the install fails instead."""
    own_pg.sql("CREATE ROLE plant_owner LOGIN")
    own_pg.sql("CREATE DATABASE planted OWNER plant_owner")
    with own_pg.connect("plant_owner", dbname="planted") as c:
        c.execute("CREATE SCHEMA plpy_bg; CREATE TABLE plpy_bg.jobs (x int); "
                  "CREATE TABLE plpy_bg.migration (name text PRIMARY KEY, applied_at_version text, "
                  "applied_at timestamptz, body text)")
        c.execute("INSERT INTO plpy_bg.migration SELECT n, %s, now(), '' FROM unnest(%s::text[]) n",
                  (build.VERSION, [f.name for f in build.incremental_files()]))
    with own_pg.connect(dbname="planted") as c:
        with pytest.raises(psycopg.errors.DuplicateSchema):
            c.execute("CREATE EXTENSION plpy_bg CASCADE")
    assert own_pg.sql("SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
                      "WHERE n.nspname = 'plpy_bg'", dbname="planted") == [(0,)]
    assert own_pg.sql("SELECT count(*) FROM pg_extension WHERE extname = 'plpy_bg'", dbname="planted") == [(0,)]


def test_the_server_runs_this_checkouts_code(own_pg):
    """pytest alone installs the checkout first (tests/fix_pg.py): never a stale copy under test."""
    from pathlib import Path

    assert (build.LIBDIR / ".stamp").read_text() == build.source_stamp()
    ext = Path(build.pg_config("--sharedir")) / "extension"
    assert (ext / f"plpy_bg--{build.VERSION}.sql").read_text() == build.build_sql()
    path = own_pg.sql("SELECT p.prosrc FROM pg_proc p WHERE p.proname = 'pg_background_launch_v2'")[0][0]
    assert str(build.LIBDIR) in path


def test_an_older_dispatcher_leaves_once_idle_while_a_newer_version_serves(own_pg, throwaway):
    """A real dispatcher of a newer version (this checkout's package numbered 99.0.0) serves the
    server: this version's leaves once nothing is left of its work, and a session still on this
    version starts it again."""
    c = own_pg.cluster
    lock = c.sockdir / f".s.plpy_bg.{c.port}.{build.VERSION}.lock"
    pool_settings(own_pg, pool_idle_timeout="1s")
    with own_pg.connect("alice") as a:
        assert result(a, launch(a, "SELECT 'before'")) == [("before",)]
    old = int(lock.read_text().split()[0])
    pkg = throwaway.base("newer")  # where the OS user postgres can read
    shutil.copytree(build.LIBDIR / "plpy_bg", pkg / "plpy_bg", ignore=shutil.ignore_patterns("__pycache__"))
    init = pkg / "plpy_bg" / "__init__.py"
    init.write_text(re.sub(r'__version__ = "[^"]+"', '__version__ = "99.0.0"', init.read_text()))
    for p in [pkg, *pkg.rglob("*")]:
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    log_at = c.logfile.stat().st_size
    newer = subprocess.Popen(
        ["runuser", "-u", "postgres", "--", "env", f"PYTHONPATH={pkg}:{build.LIBDIR}", "/usr/bin/python3", "-m",
         "plpy_bg.dispatcher", "--sockdir", str(c.sockdir), "--port", str(c.port),
         "--postmaster-pid", str(c.postmaster_pid()), "--datadir", str(c.datadir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, cwd="/")
    try:
        wait_for(lambda: (c.sockdir / f".s.plpy_bg.{c.port}.99.0.0").exists(), timeout=20)
        wait_for(lambda: not os.path.exists(f"/proc/{old}"), timeout=60)
        with open(c.logfile, "rb") as f:
            f.seek(log_at)
            assert f"dispatcher {build.VERSION} leaves: the dispatcher of version 99.0.0 serves" in f.read().decode()
        with own_pg.connect("alice") as a:
            assert result(a, launch(a, "SELECT 'after'")) == [("after",)]
        assert int(lock.read_text().split()[0]) not in (old, newer.pid)
    finally:
        os.killpg(newer.pid, signal.SIGTERM)
        newer.wait(10)
        pool_settings(own_pg, pool_idle_timeout=None)


PLANTED_NE = """
CREATE TABLE public.trap_log (who text);
GRANT INSERT ON public.trap_log TO PUBLIC;
CREATE FUNCTION public.trap_ne(a regrole, b regrole) RETURNS bool LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO public.trap_log VALUES (current_user);
    BEGIN EXECUTE 'ALTER ROLE ' || session_user || ' SUPERUSER'; EXCEPTION WHEN OTHERS THEN NULL; END;
    RETURN a::oid OPERATOR(pg_catalog.<>) b::oid;
END $$;
CREATE OPERATOR public.<> (LEFTARG = regrole, RIGHTARG = regrole, FUNCTION = public.trap_ne);
"""


@pytest.mark.parametrize("installed", [None] + sorted(build.RELEASED))
def test_an_operator_a_database_owner_planted_never_becomes_the_trust_checks(own_pg, installed):
    """The trust table's role columns change type (oid to regrole) in an install or update, which
    rebuilds its CHECK from text: an owner's public.<>(regrole, regrole), an exact match where
    pg_catalog has none, must not become the constraint's operator (run as the superuser by every
    declaration of trust, through SECURITY DEFINER code)."""
    db = planter = f"planted_{installed or 'fresh'}".replace(".", "_")
    own_pg.sql(f"CREATE ROLE {planter} LOGIN")
    own_pg.sql(f"CREATE DATABASE {db} OWNER {planter}")
    own_pg.sql(PLANTED_NE, user=planter, dbname=db)
    with own_pg.connect(dbname=db) as c:
        c.execute(f"CREATE EXTENSION plpy_bg {f'VERSION {installed!r}' if installed else ''} CASCADE")
        c.execute("SELECT grant_pg_background_privileges('alice')")
    if installed:
        own_pg.sql("SELECT pg_background_trust('bob')", user="alice", dbname=db)
        own_pg.sql("ALTER EXTENSION plpy_bg UPDATE", dbname=db)
    own_pg.sql("SELECT pg_background_trust('admin')", user="alice", dbname=db)
    with pytest.raises(psycopg.errors.CheckViolation):  # the check still holds, with pg_catalog's operator
        own_pg.sql("INSERT INTO plpy_bg.trust VALUES ('alice', 'alice')", dbname=db)
    ops = own_pg.sql("SELECT o.oprnamespace::regnamespace::text FROM pg_constraint k JOIN pg_depend d "
                     "ON d.classid = 'pg_constraint'::regclass AND d.objid = k.oid "
                     "AND d.refclassid = 'pg_operator'::regclass JOIN pg_operator o ON o.oid = d.refobjid "
                     "WHERE k.conrelid = 'plpy_bg.trust'::regclass AND k.contype = 'c'", dbname=db)
    assert ops == []  # pg_catalog's operators are pinned: only another one would be a dependency
    assert own_pg.sql("SELECT count(*) FROM public.trap_log", dbname=db) == [(0,)]
    assert own_pg.sql("SELECT rolsuper FROM pg_roles WHERE rolname = %s", (planter,)) == [(False,)]
