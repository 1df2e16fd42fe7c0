"""The seccomp sandbox on a real server, on its own: no extension build, no job engine.

The cluster starts through the preload helper with the shipped global deny profile;
the sandbox's SQL functions come straight from sql/idempotent/040-sandbox.sql with a
preamble that puts a copy of this checkout's package on sys.path. Role `wrk` has the
shipped job-worker profile as its per-role session lists, `erin` an extra error list.
If the kernel refuses seccomp these tests fail; they never skip.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import psycopg
import pytest

from plpy_bg.cluster import PG_BIN, Cluster, ClusterError
from plpy_bg.sandbox import config

pytestmark = pytest.mark.server

ROOT = Path(__file__).resolve().parents[2]
PROFILES = ROOT / "plpy_bg" / "sandbox" / "profiles"
SERVER_PYTHON = "/usr/bin/python3"
EPERM = os.strerror(1)

PROBES = """
CREATE FUNCTION try_personality() RETURNS text LANGUAGE plpython3u AS $$
import ctypes, os
libc = ctypes.CDLL("libc.so.6", use_errno=True)
r = libc.personality(0xffffffff)  # a harmless query, denied by the global profile
return "ok" if r >= 0 else os.strerror(ctypes.get_errno())
$$;
CREATE FUNCTION try_mkdir(p text) RETURNS text LANGUAGE plpython3u AS $$
import os
try:
    os.mkdir(p); os.rmdir(p); return "ok"
except OSError as e:
    return os.strerror(e.errno)
$$;
CREATE FUNCTION my_filters() RETURNS int LANGUAGE plpython3u AS $$
import re
return int(re.search(r"^Seccomp_filters:\\s+(\\d+)", open("/proc/self/status").read(), re.M).group(1))
$$;
GRANT EXECUTE ON FUNCTION try_personality(), try_mkdir(text), my_filters() TO PUBLIC;
"""


@pytest.fixture(scope="module", autouse=True)
def _remove_copy_file():
    yield
    try:
        os.unlink("/tmp/plpy_bg_sbx_copy.csv")  # written by the server in the worker-profile test
    except FileNotFoundError:
        pass


def deps_dir() -> str:
    """A directory where the server's Python finds pyseccomp and psycopg."""
    candidates = [os.environ.get("PLPY_BG_DEPS")]
    try:
        import build
        candidates.append(str(build.LIBDIR))
    except ImportError:
        pass
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


def wrapper(path: str) -> list[str]:
    return ["env", f"PYTHONPATH={path}", SERVER_PYTHON, "-m", "plpy_bg.sandbox.preload", "--"]


def sandbox_sql(path: str) -> str:
    pre = f"import sys\nif {path.split(':')[0]!r} not in sys.path:\n    sys.path[:0] = {path.split(':')!r}"
    text = (ROOT / "sql" / "idempotent" / "040-sandbox.sql").read_text()
    return "CREATE SCHEMA IF NOT EXISTS plpy_bg;\n" + text.replace("#PLPY_BG_PREAMBLE", pre).replace(
        "@extschema@", "public")


def profile_settings(name: str) -> dict[str, str]:
    return config.profile_settings(PROFILES / name)


def as_role_overrides(role: str, profile: str) -> str:
    """A session profile's lists as per-role overrides for `role` (pgseccomp's role settings)."""
    lines = []
    for k, v in profile_settings(profile).items():
        m = re.match(r"^pgseccomp\.session_syscall_(\w+)$", k)
        if m:
            lines.append(f"session_syscall_{m.group(1)}.{role} = '{v}'")
    return "\n".join(lines) + "\n"


class Sandbox:
    def __init__(self, cluster: Cluster, path: str):
        self.cluster, self.path = cluster, path

    def connect(self, user: str = "postgres") -> psycopg.Connection:
        return psycopg.connect(self.cluster.dsn(user), autocommit=True)

    def one(self, sql: str, user: str = "postgres"):
        with self.connect(user) as c:
            return c.execute(sql).fetchone()[0]


@pytest.fixture(scope="module")
def sbx():
    pkg = package_copy()
    path = f"{pkg}:{deps_dir()}"
    base = Path(tempfile.mkdtemp(prefix="plpy_bg_sbxc_"))
    c = Cluster.create(base)
    try:
        extra = c.datadir / "sandbox-test.conf"
        extra.write_text("pgseccomp.session_roles = 'erin, wrk'\n"
                         "session_syscall_error.erin = 'mkdir'\n" + as_role_overrides("wrk", "worker-allow.conf"))
        with open(c.datadir / "postgresql.conf", "a") as f:
            f.write(f"include '{PROFILES / 'global-deny.conf'}'\ninclude 'sandbox-test.conf'\n")
        subprocess.run(["chown", "postgres:postgres", str(extra)], check=True)
        c.start(wrapper=wrapper(path))
        c.psql("CREATE EXTENSION plpython3u;\n" + sandbox_sql(path) + PROBES +
               "CREATE ROLE erin LOGIN; CREATE ROLE alice LOGIN; CREATE ROLE mallory LOGIN;"
               "CREATE ROLE wrk LOGIN SUPERUSER;")
        yield Sandbox(c, path)
    finally:
        c.destroy()
        shutil.rmtree(pkg, ignore_errors=True)


def seccomp_mode(pid: int) -> str:
    with open(f"/proc/{pid}/status") as f:
        return next(line.split()[1] for line in f if line.startswith("Seccomp:"))


def test_postmaster_checkpointer_and_backends_are_filtered(sbx):
    assert seccomp_mode(sbx.cluster.postmaster_pid()) == "2"
    ckpt = sbx.one("SELECT pid FROM pg_stat_activity WHERE backend_type = 'checkpointer'")
    assert seccomp_mode(ckpt) == "2"
    with sbx.connect("alice") as c:
        assert seccomp_mode(c.info.backend_pid) == "2"
        assert c.execute("SELECT my_filters()").fetchone()[0] == 1


def test_denied_syscall_fails_with_eperm_and_the_session_goes_on(sbx):
    with sbx.connect("alice") as c:
        assert c.execute("SELECT try_personality()").fetchone()[0] == EPERM
        assert c.execute("SELECT 1").fetchone() == (1,)


def test_seccomp_filter_shows_the_global_filter(sbx):
    with sbx.connect("alice") as c:
        rows = c.execute("SELECT * FROM seccomp_filter()").fetchall()
    assert ("<default>", -1, "global->allow", "global") in rows
    assert ("ptrace", 101, "global->error", "global") in rows
    assert ("ptrace", 101, "global->error", "session") in rows


def test_worker_filter_picks_the_role_overrides(sbx):
    with sbx.connect("erin") as c:
        # a session SET of the placeholders cannot loosen what the files say
        c.execute("SET \"session_syscall_error.erin\" = ''; SET pgseccomp.session_roles = ''")
        assert c.execute("SELECT try_mkdir('/tmp/plpy_bg_sbx_erin')").fetchone()[0] == "ok"
        c.execute("SELECT plpy_bg.install_worker_filter()")
        assert c.execute("SELECT try_mkdir('/tmp/plpy_bg_sbx_erin')").fetchone()[0] == EPERM
        c.execute("SELECT plpy_bg.install_worker_filter()")  # a second call is a no-op
        assert c.execute("SELECT my_filters()").fetchone()[0] == 2
        assert ("mkdir", 83, "session->error", "session") in c.execute("SELECT * FROM seccomp_filter()").fetchall()
    with sbx.connect("alice") as c:  # not listed: the session lists, equal to the global filter
        c.execute("SELECT plpy_bg.install_worker_filter()")
        assert c.execute("SELECT my_filters()").fetchone()[0] == 1
        assert c.execute("SELECT try_mkdir('/tmp/plpy_bg_sbx_alice')").fetchone()[0] == "ok"


def test_set_client_filter_once_and_only_tighter(sbx):
    with sbx.connect() as c:
        c.execute("SELECT set_client_filter(NULL, 'personality', NULL, 'mkdir', NULL)")
        assert c.execute("SELECT try_mkdir('/tmp/plpy_bg_sbx_probe')").fetchone()[0] == EPERM
        assert c.execute("SELECT try_personality()").fetchone()[0] == EPERM  # allowing it loosens nothing
        rows = c.execute("SELECT syscall, filter_action FROM seccomp_filter() WHERE context = 'session'").fetchall()
        assert ("mkdir", "client->error") in rows and ("personality", "global->error") in rows
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="only once"):
            c.execute("SELECT set_client_filter('allow', '*', '*', '*', '*')")
        assert c.execute("SELECT try_mkdir('/tmp/plpy_bg_sbx_probe')").fetchone()[0] == EPERM
    with sbx.connect("mallory") as c, pytest.raises(psycopg.errors.InsufficientPrivilege):
        c.execute("SELECT set_client_filter('error', NULL, NULL, NULL, NULL)")
    with sbx.connect() as c:
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="allow_list"):
            c.execute("SELECT set_client_filter(NULL, 'not_a_syscall', NULL, NULL, NULL)")
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="default_action"):
            c.execute("SELECT set_client_filter('deny', NULL, NULL, NULL, NULL)")
        assert c.execute("SELECT my_filters()").fetchone()[0] == 1  # bad calls loaded nothing


PY_SOCKET = """CREATE OR REPLACE FUNCTION py_work(sockdir text, port int) RETURNS text LANGUAGE plpython3u AS $$
import hashlib, json, tempfile, os, decimal, datetime
import psycopg
with psycopg.connect(host=sockdir, port=port, user="postgres", dbname="postgres") as k:  # a Unix socket
    n = k.execute("SELECT 41 + 1").fetchone()[0]
with tempfile.TemporaryDirectory() as d:
    open(os.path.join(d, "f"), "w").write("x")
plpy.execute("SELECT 1")
return hashlib.sha256(json.dumps({"n": n, "t": str(datetime.datetime.now())}).encode()).hexdigest()[:8]
$$"""

WORKER_SQL = [
    "CREATE TABLE w (id int, t text)",
    "INSERT INTO w SELECT g, md5(g::text) FROM generate_series(1, 100000) g",
    "VACUUM (ANALYZE) w",
    "CREATE INDEX CONCURRENTLY w_id ON w (id)",
    "CREATE INDEX w_t ON w (t)",
    "COPY w TO '/tmp/plpy_bg_sbx_copy.csv' (FORMAT csv)",
    "TRUNCATE w",
    "COPY w FROM '/tmp/plpy_bg_sbx_copy.csv' (FORMAT csv)",
    "SET work_mem = '64kB'",
    "SELECT count(*) FROM (SELECT t FROM w ORDER BY t) s",
    "SET parallel_setup_cost = 0; SET parallel_tuple_cost = 0; SET min_parallel_table_scan_size = 0",
    "SELECT count(*), sum(id) FROM w",
    "CREATE TEMP TABLE tt AS SELECT * FROM w LIMIT 1000",
    "CLUSTER w USING w_id",
    "VACUUM FULL w",
    "DROP TABLE w",
]


def test_job_worker_profile_runs_real_work(sbx):
    """VACUUM, CREATE INDEX (CONCURRENTLY), COPY, temp files, parallel query, PL/Python + psycopg."""
    with sbx.connect("wrk") as c:
        c.execute(PY_SOCKET)
        c.execute("SELECT plpy_bg.install_worker_filter()")
        assert c.execute("SELECT my_filters()").fetchone()[0] == 2
        assert c.execute("SELECT try_personality()").fetchone()[0] == EPERM
        for sql in WORKER_SQL:
            c.execute(sql)
        plan = "\n".join(r[0] for r in c.execute("EXPLAIN ANALYZE SELECT count(*) FROM pg_class, "
                                                 "generate_series(1, 3000)").fetchall())
        assert len(c.execute("SELECT py_work(%s, %s)", (str(sbx.cluster.sockdir), sbx.cluster.port)).fetchone()[0]) == 8
        with c.cursor().copy("COPY (SELECT g FROM generate_series(1, 50000) g) TO STDOUT") as cp:
            assert sum(1 for _ in cp.rows()) == 50000
        assert "Execution Time" in plan
        # something the profile does not allow fails with EPERM, and the session goes on
        assert c.execute("SELECT try_mkdir('/tmp/plpy_bg_sbx_wrk')").fetchone()[0] in ("ok", EPERM)
        assert c.execute("SELECT 1").fetchone() == (1,)


PGBENCH_WORKER = """SELECT plpy_bg.install_worker_filter();
\\set aid random(1, 100000)
\\set bid random(1, 1)
\\set tid random(1, 10)
\\set delta random(-5000, 5000)
BEGIN;
UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid;
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
UPDATE pgbench_tellers SET tbalance = tbalance + :delta WHERE tid = :tid;
UPDATE pgbench_branches SET bbalance = bbalance + :delta WHERE bid = :bid;
INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (:tid, :bid, :aid, :delta, CURRENT_TIMESTAMP);
END;
"""


def pgbench(sbx, *args, user: str = "postgres") -> str:
    env = {"PGHOST": "127.0.0.1", "PGPORT": str(sbx.cluster.port), "PGUSER": user, "PATH": "/usr/bin:/bin"}
    r = subprocess.run([str(PG_BIN / "pgbench"), *args, "postgres"], env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


def test_pgbench_under_the_global_and_the_worker_profile(sbx, tmp_path):
    pgbench(sbx, "-i", "-s", "1", "-q")
    out = pgbench(sbx, "-T", "3", "-c", "2", "-j", "2")
    assert "number of failed transactions: 0" in out or "failed" not in out
    script = tmp_path / "worker.sql"
    script.write_text(PGBENCH_WORKER)
    os.chmod(tmp_path, 0o755)
    out = pgbench(sbx, "-T", "3", "-c", "2", "-j", "2", "-f", str(script), user="wrk")
    assert re.search(r"number of transactions actually processed: [1-9]", out), out


@pytest.fixture(scope="module")
def idle_cluster(sbx):
    base = Path(tempfile.mkdtemp(prefix="plpy_bg_sbxb_"))
    c = Cluster.create(base)
    with open(c.datadir / "postgresql.conf", "a") as f:
        f.write("pgseccomp.enabled = on\ninclude_if_exists 'bad.conf'\n")
    yield c
    c.destroy()


@pytest.mark.parametrize("setting, value, needle", [
    ("pgseccomp.global_syscall_error", "'ptrace,not_a_syscall'", 'no syscall "not_a_syscall"'),
    ("pgseccomp.global_syscall_default", "'deny'", '"pgseccomp.global_syscall_default": "deny"'),
    ("pgseccomp.global_syscall_kill", "'ptrace;mount'", '"pgseccomp.global_syscall_kill"'),
    ("pgseccomp.session_syscall_error", "'bpf,,mount'", '"pgseccomp.session_syscall_error"'),
    ("session_syscall_allow.erin", "'read,nope'", '"session_syscall_allow.erin"'),
    ("pgseccomp.enabled", "'maybe'", '"pgseccomp.enabled"'),
])
def test_preload_refuses_bad_settings_before_the_server_starts(sbx, idle_cluster, setting, value, needle):
    bad = idle_cluster.datadir / "bad.conf"
    bad.write_text(f"pgseccomp.session_roles = 'erin'\n{setting} = {value}\n")
    subprocess.run(["chown", "postgres:postgres", str(bad)], check=True)
    with pytest.raises(ClusterError) as ei:
        idle_cluster.start(wrapper=wrapper(sbx.path), timeout=20)
    assert needle in str(ei.value) and "FATAL" in str(ei.value)
    assert idle_cluster.postmaster_pid() is None
