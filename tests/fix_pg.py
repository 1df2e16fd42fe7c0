"""The real-server fixture: one throwaway cluster with plpy_bg for the session.

It runs as the OS user postgres through `plpy_bg.cluster` (the path
`build.py serve` uses). A server that cannot start is a test error, never a
skip. Roles: alice, bob (application roles with pgbackground_role), admin (a
DBA role that owns SECURITY DEFINER wrappers) and mallory (no privileges).
"""
from __future__ import annotations

import os
import time

import psycopg
import pytest

import build
from plpy_bg.cluster import Cluster

def pytest_collection_finish(session) -> None:
    """The servers under test run this checkout's code: when server tests are collected, the
    checkout is installed first wherever the installed copy differs (its package's stamp, the
    extension scripts, the released versions), so `pytest` alone never tests a stale copy."""
    if any(item.get_closest_marker("server") for item in session.items):
        build.install_python()
        build.install_extension_files()
        build.install_released()


LIST_COLS = ("pid int4, cookie int8, launched_at timestamptz, user_id oid, queue_size int4, "
             "state text, sql_preview text, last_error text, consumed bool")


class Server:
    def __init__(self, cluster: Cluster):
        self.cluster = cluster

    def connect(self, user: str = "postgres", dbname: str = "postgres", autocommit: bool = True,
                **kw) -> psycopg.Connection:
        return psycopg.connect(self.cluster.dsn(user, dbname), autocommit=autocommit, **kw)

    def sql(self, query: str, params=None, user: str = "postgres", dbname: str = "postgres"):
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
    for line in server.cluster.logfile.read_text(errors="replace").splitlines():
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
    time.sleep(0.3)  # the reload reaches every backend
    server.sql("SELECT count(*) FROM plpy_bg.pool_workers()")  # makes the dispatcher read the settings now


ROLES_SQL = """
CREATE ROLE alice LOGIN;
CREATE ROLE bob LOGIN;
CREATE ROLE admin LOGIN;
CREATE ROLE mallory LOGIN;
GRANT pgbackground_role TO alice, bob, admin;
SELECT grant_pg_background_privileges('alice');
SELECT grant_pg_background_privileges('bob');
SELECT grant_pg_background_privileges('admin');
GRANT CREATE ON SCHEMA public TO alice, bob, admin;
GRANT CREATE ON DATABASE postgres TO alice, bob, admin;
"""


@pytest.fixture(scope="session")
def pg(tmp_path_factory) -> Server:
    yield from _server(tmp_path_factory)


@pytest.fixture(scope="module")
def own_pg(tmp_path_factory) -> Server:
    """A cluster of the module's own, for tests that kill or restart the server."""
    yield from _server(tmp_path_factory)


@pytest.fixture(scope="module")
def other_pg(tmp_path_factory) -> Server:
    """A second cluster of the module's own: dumped in one, restored in the other."""
    yield from _server(tmp_path_factory)


def _server(tmp_path_factory):
    base = tmp_path_factory.mktemp("cluster")
    os.chmod(base.parent, 0o755)
    os.chmod(base.parent.parent, 0o755)
    build.ensure_supervisor(replace_stale=True)  # the supervisor runs this checkout's code
    c = Cluster.create(base, settings={"max_connections": "60"})
    build.use_profile(c, "global-deny")  # the whole suite runs under both shipped profiles
    build.use_profile(c, "worker-allow")
    c.start(wrapper=build.preload_wrapper())
    s = Server(c)
    try:
        s.sql("CREATE EXTENSION plpy_bg CASCADE")
        with s.connect() as conn:
            conn.execute(ROLES_SQL)
        yield s
    finally:
        keep = os.environ.get("PLPY_BG_KEEP_LOGS")
        if keep:  # for debugging: the server's and the dispatcher's logs outlive the cluster
            import shutil
            for f in [c.logfile] + list(c.sockdir.glob("*.log")):
                shutil.copy(f, os.path.join(keep, f"{base.name}-{f.name}"))
        c.destroy()
