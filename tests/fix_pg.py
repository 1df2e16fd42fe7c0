"""Every server the suite tests, and every recipe that makes one.

Servers run as the OS user postgres through `plpy_bg.cluster` (the path `build.py serve`
uses). A server that cannot start is a test error, never a skip. Roles of `pg`: alice, bob
(application roles with pgbackground_role), admin (a DBA role that owns SECURITY DEFINER
wrappers) and mallory (no privileges).

`pg` is shared by the session: a throwaway cluster, or with PLPY_BG_TEST_DSN (a superuser's
conninfo) an existing server, where the suite makes a database of its own and drops it at
the end. Tests that restart a server, kill its processes or read its files take a cluster of
their own from `throwaway` (directly or through own_pg, other_pg, local_pg); they are marked
`own_cluster`, so `-m "not own_cluster"` selects what runs against the existing server alone.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator

import psycopg
import psycopg.conninfo
import pytest

import build
from plpy_bg.cluster import Cluster

TEST_DSN = os.environ.get("PLPY_BG_TEST_DSN")
ROOT = Path(__file__).resolve().parents[1]
PROFILES = ROOT / "plpy_bg" / "sandbox" / "profiles"
SERVER_PYTHON = "/usr/bin/python3"


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        if "throwaway" in item.fixturenames:
            item.add_marker(pytest.mark.own_cluster)


def pytest_collection_finish(session) -> None:
    """The servers under test run this checkout's code: when tests that make clusters are
    collected, the checkout is installed first wherever the installed copy differs (its
    package's stamp, the extension scripts, the released versions), so `pytest` alone never
    tests a stale copy. An existing server (PLPY_BG_TEST_DSN) is checked instead, in `pg`."""
    items = [i for i in session.items if i.get_closest_marker("server")]
    if items and (not TEST_DSN or any(i.get_closest_marker("own_cluster") for i in items)):
        build.install_python()
        build.install_extension_files()
        build.install_released()


LIST_COLS = ("pid int4, cookie int8, launched_at timestamptz, user_id oid, queue_size int4, "
             "state text, sql_preview text, last_error text, consumed bool")


class Server:
    """A server under test: a throwaway cluster of the suite's, or an existing server (conninfo)."""

    def __init__(self, cluster: Cluster | None = None, conninfo: str | None = None):
        self.cluster = cluster
        self._info = psycopg.conninfo.conninfo_to_dict(conninfo) if conninfo else {}
        self.dbname = self._info.get("dbname", "postgres")
        self.superuser = self._info.get("user", "postgres")

    @property
    def host(self) -> str:
        return self._info.get("host", "localhost") if self.cluster is None else "127.0.0.1"

    @property
    def port(self) -> int:
        return int(self._info.get("port", 5432)) if self.cluster is None else self.cluster.port

    def dsn(self, user: str | None = None, dbname: str | None = None) -> str:
        if self.cluster is not None:
            return self.cluster.dsn(user or "postgres", dbname or self.dbname)
        return psycopg.conninfo.make_conninfo(**{**self._info, "user": user or self.superuser,
                                                 "dbname": dbname or self.dbname})

    def connect(self, user: str | None = None, dbname: str | None = None, autocommit: bool = True,
                **kw) -> psycopg.Connection:
        return psycopg.connect(self.dsn(user, dbname), autocommit=autocommit, **kw)

    def sql(self, query: str, params=None, user: str | None = None, dbname: str | None = None):
        with self.connect(user, dbname) as c:
            cur = c.execute(query, params)
            return cur.fetchall() if cur.description else None

    def restart(self) -> None:
        """Restart as the suite starts its clusters: under the seccomp preload helper."""
        self.cluster.restart(wrapper=build.preload_wrapper())


def launch(conn, sql: str, queue_size: int = 0, fn: str = "pg_background_launch_v2") -> tuple[int, int]:
    row = conn.execute(f"SELECT * FROM {fn}(%s, %s)", (sql, queue_size)).fetchone()
    return row[0], row[1]


def result(conn, h, coldef: str = "r text") -> list[tuple]:
    return conn.execute(f"SELECT * FROM pg_background_result_v2(%s, %s) AS ({coldef})", h).fetchall()


def wait(conn, h, timeout_ms: int = 30000) -> bool:
    return conn.execute("SELECT pg_background_wait_v2_timeout(%s, %s, %s)", (*h, timeout_ms)).fetchone()[0]


def job_row(server: Server, cookie: int) -> dict:
    with server.connect() as c:
        c.row_factory = psycopg.rows.dict_row
        return c.execute("SELECT * FROM plpy_bg.jobs WHERE cookie = %s", (cookie,)).fetchone()


def dispatcher_log(server: Server) -> str:
    """The dispatcher's records in the server's log (where it writes), with their continuation lines."""
    out, mine = [], False
    for line in server.cluster.logfile.read_text(errors="replace").split("\n"):  # records end at newlines only
        if line[:4].isdigit():  # a record of its own starts with a timestamp
            mine = " plpy_bg dispatcher " in line
        if mine:
            out.append(line)
    return "\n".join(out)


def wait_for(pred, timeout: float = 20.0, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met in {timeout}s")
        time.sleep(interval)


def invariants(server: Server) -> list[str]:
    return [r[0] for r in server.sql("SELECT * FROM plpy_bg.check_invariants()")]


def pool_settings(server: Server, **settings) -> None:
    """plpy_bg.* settings through an included configuration file (ALTER SYSTEM refuses
    placeholders), read by the dispatcher at once; None removes one."""
    data = server.cluster.datadir
    conf = data / "postgresql.conf"
    if "plpy_bg_test.conf" not in conf.read_text():
        with open(conf, "a") as f:
            f.write("include_if_exists 'plpy_bg_test.conf'\n")
    inc = data / "plpy_bg_test.conf"
    current = dict(line.split(" = ", 1) for line in inc.read_text().splitlines()) if inc.exists() else {}
    for k, v in settings.items():
        if v is None:
            current.pop(f"plpy_bg.{k}", None)
        else:
            current[f"plpy_bg.{k}"] = f"'{v}'"
    inc.write_text("".join(f"{k} = {v}\n" for k, v in current.items()))
    server.sql("SELECT pg_reload_conf()")
    want = {f"plpy_bg.{k}": ((None, "") if v is None else (str(v),)) for k, v in settings.items()}

    def applied():  # a backend started now reads the reloaded file (a removed one reads as unset or empty)
        with server.connect() as c:
            return all(c.execute("SELECT current_setting(%s, true)", (k,)).fetchone()[0] in v for k, v in want.items())
    wait_for(applied, timeout=10)
    server.sql("SELECT count(*) FROM plpy_bg.pool_workers()")  # makes the dispatcher read the settings now


ROLES_SQL = """
DO $roles$
DECLARE r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['alice', 'bob', 'admin', 'mallory'] LOOP
        IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = r) THEN
            EXECUTE format('CREATE ROLE %I LOGIN', r);
        END IF;
        -- an existing server's roles of these names are made the suite's ordinary login roles
        EXECUTE format('ALTER ROLE %I LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS', r);
    END LOOP;
    EXECUTE format('GRANT CREATE ON DATABASE %I TO alice, bob, admin', current_database());
END $roles$;
GRANT pgbackground_role TO alice, bob, admin;
SELECT grant_pg_background_privileges('alice');
SELECT grant_pg_background_privileges('bob');
SELECT grant_pg_background_privileges('admin');
GRANT CREATE ON SCHEMA public TO alice, bob, admin;
"""


@pytest.fixture(scope="session")
def throwaway(tmp_path_factory) -> "Throwaway":
    return Throwaway(tmp_path_factory)


@pytest.fixture(scope="session")
def pg(throwaway_if_needed) -> Iterator[Server]:
    if TEST_DSN:
        yield from _existing(TEST_DSN)
    else:
        with throwaway_if_needed.plpy_bg() as s:
            yield s


@pytest.fixture(scope="session")
def throwaway_if_needed(tmp_path_factory) -> "Throwaway":
    """The recipes, without marking a test own_cluster: `pg` makes a cluster only without a DSN."""
    return Throwaway(tmp_path_factory)


@pytest.fixture(scope="module")
def own_pg(throwaway) -> Iterator[Server]:
    """A cluster of the module's own, for tests that kill or restart the server."""
    with throwaway.plpy_bg() as s:
        yield s


@pytest.fixture(scope="module")
def other_pg(throwaway) -> Iterator[Server]:
    """A second cluster of the module's own: dumped in one, restored in the other."""
    with throwaway.plpy_bg() as s:
        yield s


@pytest.fixture(scope="module")
def local_pg(request, throwaway) -> Iterator[Server]:
    """`pg` when the suite made it; a cluster of the module's own when `pg` is an existing
    server, for tests that read a server's files or its processes' /proc entries."""
    if not TEST_DSN:
        yield request.getfixturevalue("pg")
        return
    with throwaway.plpy_bg() as s:
        yield s


def _existing(conninfo: str) -> Iterator[Server]:
    """An existing server: it must run this checkout's build; the suite works in a database of its own."""
    admin = Server(conninfo=conninfo)
    with admin.connect() as c:
        if not c.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()[0]:
            raise RuntimeError("PLPY_BG_TEST_DSN must name a superuser")
        dbname = f"plpy_bg_test_{os.getpid()}"
        c.execute(f'CREATE DATABASE "{dbname}"')
    s = Server(conninfo=psycopg.conninfo.make_conninfo(conninfo, dbname=dbname))
    try:
        with s.connect() as c:
            c.execute("CREATE EXTENSION plpy_bg CASCADE")
            notes: list[str] = []
            c.add_notice_handler(lambda d: notes.append(d.message_primary or ""))
            c.execute("DO $$ import pathlib, plpy_bg; plpy.notice((pathlib.Path(plpy_bg.__file__).resolve()"
                      ".parents[1] / '.stamp').read_text().strip()) $$ LANGUAGE plpython3u")
            if notes != [build.source_stamp()]:
                raise RuntimeError(f"the server at PLPY_BG_TEST_DSN runs another build of plpy_bg ({notes}) than "
                                   "this checkout: run `python3 build.py install` on that server's machine")
            c.execute(ROLES_SQL)
        yield s
    finally:
        with admin.connect() as c:
            c.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')


class Throwaway:
    """Every recipe for a cluster of the suite's own; each is a context manager that destroys it."""

    def __init__(self, tmp_path_factory):
        self._tmp = tmp_path_factory

    def base(self, name: str = "cluster") -> Path:
        base = self._tmp.mktemp(name)
        for d in (base, base.parent, base.parent.parent):  # the OS user postgres walks in
            os.chmod(d, 0o755)
        return base

    @contextlib.contextmanager
    def bare(self, name: str = "bare", conf: str = "") -> Iterator[Cluster]:
        """initdb only, with `conf` appended to postgresql.conf; not started."""
        c = Cluster.create(self.base(name))
        try:
            if conf:
                with open(c.datadir / "postgresql.conf", "a") as f:
                    f.write(conf)
            yield c
        finally:
            c.destroy()

    @contextlib.contextmanager
    def plpy_bg(self, name: str = "cluster", wrapper: list[str] | None = None, preload: bool = True,
                roles: bool = True) -> Iterator[Server]:
        """plpy_bg under both shipped profiles, started under the preload helper (of the shared
        supervisor unless `wrapper` names another; none if not `preload`), with the suite's roles."""
        build.ensure_supervisor(replace_stale=True)  # the supervisor runs this checkout's code
        c = Cluster.create(self.base(name), settings={"max_connections": "60"})
        try:
            build.use_profile(c, "global-deny")  # the whole suite runs under both shipped profiles
            build.use_profile(c, "worker-allow")
            c.start(wrapper=(wrapper or build.preload_wrapper()) if preload else None)
            s = Server(c)
            s.sql("CREATE EXTENSION plpy_bg CASCADE")
            if roles:
                s.sql(ROLES_SQL)
            yield s
        finally:
            keep = os.environ.get("PLPY_BG_KEEP_LOGS")
            if keep:  # for debugging: the server's and the dispatcher's logs outlive the cluster
                for f in [c.logfile] + list(c.sockdir.glob("*.log")):
                    shutil.copy(f, os.path.join(keep, f"{c.base.name}-{f.name}"))
            c.destroy()

    @contextlib.contextmanager
    def sandbox(self, conf: str, sql: str, name: str = "sbx") -> Iterator["Sandbox"]:
        """The seccomp sandbox alone: no extension build, no job engine. A copy of this checkout's
        package, a supervisor of its own (so tests may kill it), the shipped global deny profile
        and `conf`; then the sandbox's SQL functions and `sql`."""
        pkg = package_copy()
        path = f"{pkg}:{deps_dir()}"
        sup = Supervisor(path)
        c = Cluster.create(self.base(name))
        try:
            extra = c.datadir / "sandbox-test.conf"
            extra.write_text(conf)
            subprocess.run(["chown", "postgres:postgres", str(extra)], check=True)
            with open(c.datadir / "postgresql.conf", "a") as f:
                f.write(f"include '{PROFILES / 'global-deny.conf'}'\ninclude 'sandbox-test.conf'\n")
            c.start(wrapper=sandbox_wrapper(path, sup.socket))
            c.psql("CREATE EXTENSION plpython3u;\n" + sandbox_sql(path) + sql)
            yield Sandbox(c, path, sup)
        finally:
            c.destroy()
            sup.stop()
            shutil.rmtree(pkg, ignore_errors=True)


def deps_dir() -> str:
    """A directory where the server's Python finds pyseccomp and psycopg."""
    candidates = [os.environ.get("PLPY_BG_DEPS"), str(build.LIBDIR)]
    for d in filter(None, candidates):
        r = subprocess.run([SERVER_PYTHON, "-c", "import pyseccomp, psycopg"], capture_output=True,
                           env={"PYTHONPATH": d, "PATH": "/usr/bin:/bin"})
        if r.returncode == 0:
            return d
    raise RuntimeError(f"no directory with pyseccomp and psycopg for {SERVER_PYTHON} among {candidates}: "
                       "run python3 build.py install, or set PLPY_BG_DEPS")


def package_copy() -> Path:
    """This checkout's package where the OS user postgres can read it."""
    d = Path(tempfile.mkdtemp(prefix="plpy_bg_sbx_"))
    shutil.copytree(ROOT / "plpy_bg", d / "plpy_bg", ignore=shutil.ignore_patterns("__pycache__"))
    for p in [d] + list(d.rglob("*")):
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    return d


def sandbox_wrapper(path: str, supervisor: str) -> list[str]:
    return ["env", f"PYTHONPATH={path}", SERVER_PYTHON, "-m", "plpy_bg.sandbox.preload",
            "--supervisor", supervisor, "--"]


class Supervisor:
    """A seccomp supervisor (root) of a test's own, so that tests may kill it."""

    def __init__(self, path: str):
        self.dir = Path(tempfile.mkdtemp(prefix="plpy_bg_sup_"))
        os.chmod(self.dir, 0o755)
        self.socket = str(self.dir / "seccomp.sock")
        self.log = open(self.dir / "log", "ab")
        r, w = os.pipe()
        self.proc = subprocess.Popen(["env", f"PYTHONPATH={path}", SERVER_PYTHON, "-m", "plpy_bg.sandbox.supervisor",
                                      "--socket", self.socket, "--ready-fd", str(w)], pass_fds=(w,),
                                     stdout=self.log, stderr=self.log, start_new_session=True)
        os.close(w)
        with os.fdopen(r) as f:
            assert f.readline().strip() == "ready", (self.dir / "log").read_text()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.log.close()

    def text(self) -> str:
        return (self.dir / "log").read_text()


def sandbox_sql(path: str) -> str:
    pre = f"import sys\nif {path.split(':')[0]!r} not in sys.path:\n    sys.path[:0] = {path.split(':')!r}"
    text = (ROOT / "sql" / "idempotent" / "040-sandbox.sql").read_text()
    return "CREATE SCHEMA IF NOT EXISTS plpy_bg;\n" + text.replace("#PLPY_BG_PREAMBLE", pre).replace(
        "@extschema@", "public")


class Sandbox:
    def __init__(self, cluster: Cluster, path: str, sup: Supervisor):
        self.cluster, self.path, self.sup = cluster, path, sup

    def connect(self, user: str = "postgres") -> psycopg.Connection:
        return psycopg.connect(self.cluster.dsn(user), autocommit=True)

    def one(self, sql: str, user: str = "postgres"):
        with self.connect(user) as c:
            return c.execute(sql).fetchone()[0]
