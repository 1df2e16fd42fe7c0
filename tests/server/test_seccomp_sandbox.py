"""The seccomp sandbox on a real server, on its own: no extension build, no job engine.

The cluster starts through the preload helper with the shipped global deny profile;
the sandbox's SQL functions come straight from sql/idempotent/040-sandbox.sql with a
preamble that puts a copy of this checkout's package on sys.path, and a seccomp
supervisor of its own (root) answers its notifications. Every role's jobs have the
shipped job-worker profile; role `wrk` may open Unix sockets in jobs; `erin` has a
session error list (mkdir, readlink), applied by the supervisor from her backend's start.
If the kernel refuses seccomp these tests fail; they never skip.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg
import pytest

from plpy_bg.cluster import PG_BIN, ClusterError
from plpy_bg.sandbox import config
from tests.fix_pg import PROFILES, sandbox_wrapper, wait_for

pytestmark = pytest.mark.server

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
CREATE FUNCTION try_socket(family int) RETURNS text LANGUAGE plpython3u AS $$
import socket, os
try:
    socket.socket(family, socket.SOCK_STREAM).close(); return "ok"
except OSError as e:
    return os.strerror(e.errno)
$$;
CREATE FUNCTION try_exec() RETURNS text LANGUAGE plpython3u PARALLEL SAFE AS $$
import subprocess, os
try:
    subprocess.run(["/bin/true"], check=True); return "ok"
except OSError as e:
    return os.strerror(e.errno)
$$;
CREATE FUNCTION par_mkdir(p text) RETURNS text LANGUAGE plpython3u PARALLEL SAFE AS $$
import os
try:
    os.mkdir(p); os.rmdir(p); r = "ok"
except OSError as e:
    r = os.strerror(e.errno)
return r + " " + str(os.getpid())
$$;
CREATE FUNCTION par_exec() RETURNS text LANGUAGE plpython3u PARALLEL SAFE AS $$
import subprocess, os
try:
    subprocess.run(["/bin/true"], check=True); r = "ok"
except OSError as e:
    r = os.strerror(e.errno)
return r + " " + str(os.getpid())
$$;
CREATE TABLE one_row AS SELECT 1 AS a;
GRANT SELECT ON one_row TO PUBLIC;
GRANT EXECUTE ON FUNCTION try_personality(), try_mkdir(text), my_filters(), try_socket(int), try_exec(),
  par_mkdir(text), par_exec() TO PUBLIC;
"""
AF_UNIX, AF_INET, AF_INET6 = 1, 2, 10


def sandbox_probes(*names: str, replace: bool = False) -> str:
    """The CREATE FUNCTION statements of PROBES named (for another module's server)."""
    out = []
    for stmt in PROBES.split("$$;\n"):
        head = stmt.strip()
        if any(head.startswith(f"CREATE FUNCTION {n}(") for n in names):
            text = head + "$$;\n"
            out.append(text.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1) if replace else text)
    return "".join(out)
PARALLEL = ("SET force_parallel_mode = on; SET parallel_setup_cost = 0; SET parallel_tuple_cost = 0; "
            "SET parallel_leader_participation = off")


def in_parallel_worker(c, fn: str) -> str:
    """Run fn in a parallel worker of this session; its answer, after checking it ran elsewhere."""
    c.execute(PARALLEL)
    out = c.execute(f"SELECT {fn} FROM one_row").fetchone()[0]
    answer, pid = out.rsplit(" ", 1)
    assert int(pid) != c.info.backend_pid, "the function ran in the leader, not a parallel worker"
    return answer


@pytest.fixture(scope="module", autouse=True)
def _remove_copy_file():
    yield
    try:
        os.unlink("/tmp/plpy_bg_sbx_copy.csv")  # written by the server in the worker-profile test
    except FileNotFoundError:
        pass


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


@pytest.fixture(scope="module")
def sbx(throwaway):
    with throwaway.sandbox(
            f"include '{PROFILES / 'worker-allow.conf'}'\n"
            "pgseccomp.session_roles = 'erin'\nsession_syscall_error.erin = 'mkdir,readlink'\n"
            "plpy_bg.job_roles = 'wrk'\njob_socket_families.wrk = 'unix'\nautovacuum_naptime = 1\n",
            PROBES + "CREATE ROLE erin LOGIN SUPERUSER; CREATE ROLE alice LOGIN SUPERUSER; CREATE ROLE mallory LOGIN;"
            "CREATE ROLE wrk LOGIN SUPERUSER;") as box:
        yield box


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


def test_a_client_session_runs_under_its_role_policy_from_its_start(sbx):
    with sbx.connect("erin") as c:
        # the first statement already runs under it; a session SET of the placeholders changes nothing
        assert c.execute("SELECT try_mkdir('/tmp/plpy_bg_sbx_erin')").fetchone()[0] == EPERM
        c.execute("SET \"session_syscall_error.erin\" = ''; SET pgseccomp.session_roles = ''")
        assert c.execute("SELECT try_mkdir('/tmp/plpy_bg_sbx_erin')").fetchone()[0] == EPERM
        rows = c.execute("SELECT * FROM seccomp_filter()").fetchall()
        assert ("mkdir", 83, "session->error", "session") in rows
        assert ("readlink", 89, "session->error", "session") in rows
        assert ("ptrace", 101, "global->error", "session") in rows
        assert c.execute("SELECT my_filters()").fetchone()[0] == 1  # applied by the supervisor, not a 2nd filter
    with sbx.connect() as c:  # ALTER ROLE ... SET is no way around it either
        c.execute("ALTER ROLE erin SET pgseccomp.session_roles = ''")
    try:
        with sbx.connect("erin") as c:
            assert c.execute("SELECT try_mkdir('/tmp/plpy_bg_sbx_erin')").fetchone()[0] == EPERM
    finally:
        with sbx.connect() as c:
            c.execute("ALTER ROLE erin RESET ALL")
    with sbx.connect("alice") as c:  # not listed: the session lists, equal to the global filter
        assert c.execute("SELECT try_mkdir('/tmp/plpy_bg_sbx_alice')").fetchone()[0] == "ok"
        assert not [r for r in c.execute("SELECT * FROM seccomp_filter()").fetchall() if r[2].startswith("session->")]


def test_the_job_filter_stacks_on_the_session_and_allows_no_socket(sbx):
    with sbx.connect("erin") as c:
        c.execute("SELECT plpy_bg.install_worker_filter()")
        c.execute("SELECT plpy_bg.install_worker_filter()")  # a second call is a no-op
        assert c.execute("SELECT my_filters()").fetchone()[0] == 2
        assert c.execute("SELECT try_mkdir('/tmp/plpy_bg_sbx_erin')").fetchone()[0] == EPERM
        assert c.execute(f"SELECT try_socket({AF_UNIX})").fetchone()[0] == EPERM
        assert c.execute(f"SELECT try_socket({AF_INET})").fetchone()[0] == EPERM
        assert c.execute("SELECT try_exec()").fetchone()[0] == EPERM
    with sbx.connect("wrk") as c:  # its profile names Unix sockets, and nothing more
        c.execute("SELECT plpy_bg.install_worker_filter()")
        assert c.execute(f"SELECT try_socket({AF_UNIX})").fetchone()[0] == "ok"
        assert c.execute(f"SELECT try_socket({AF_INET})").fetchone()[0] == EPERM
        assert c.execute(f"SELECT try_socket({AF_INET6})").fetchone()[0] == EPERM


def test_set_client_filter_once_and_only_tighter(sbx):
    with sbx.connect() as c:
        c.execute("SELECT set_client_filter(NULL, 'personality', NULL, 'mkdir', NULL)")
        assert c.execute("SELECT try_mkdir('/tmp/plpy_bg_sbx_probe')").fetchone()[0] == EPERM
        assert c.execute("SELECT try_personality()").fetchone()[0] == EPERM  # allowing it loosens nothing
        rows = c.execute("SELECT syscall, filter_action FROM seccomp_filter() WHERE context = 'session'").fetchall()
        assert ("mkdir", "client->error") in rows and ("personality", "global->error") in rows
        with pytest.raises(psycopg.errors.FeatureNotSupported, match="only once"):
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
    with sbx.connect("wrk") as c:  # its profile names Unix sockets (py_work connects)
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
        # something the profile does not allow (no fork or exec) fails with EPERM, and the session goes on
        assert c.execute("SELECT try_exec()").fetchone()[0] == EPERM
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
def idle_cluster(throwaway):
    with throwaway.bare("sbxb", "pgseccomp.enabled = on\ninclude_if_exists 'bad.conf'\n") as c:
        yield c


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
        idle_cluster.start(wrapper=sandbox_wrapper(sbx.path, sbx.sup.socket), timeout=20)
    assert needle in str(ei.value) and "FATAL" in str(ei.value)
    assert idle_cluster.postmaster_pid() is None


# ---- every process under its policy: parallel workers, children, forged titles ----------------

def test_a_parallel_worker_gets_its_leaders_session_policy(sbx):
    with sbx.connect("erin") as c:
        assert in_parallel_worker(c, "par_mkdir('/tmp/plpy_bg_sbx_pe')") == EPERM
    with sbx.connect("alice") as c:
        assert in_parallel_worker(c, "par_mkdir('/tmp/plpy_bg_sbx_pa')") == "ok"


def test_a_parallel_worker_of_a_job_filtered_leader_cannot_exec(sbx):
    """The postmaster forks parallel workers without the leader's own filters: the supervisor
    evaluates the filters the leader loaded (its job filter denies exec)."""
    with sbx.connect("alice") as c:
        assert in_parallel_worker(c, "par_exec()") == "ok"
        c.execute("SELECT plpy_bg.install_worker_filter()")
        assert in_parallel_worker(c, "par_exec()") == EPERM
        assert c.execute("SELECT try_exec()").fetchone()[0] == EPERM


def test_a_parallel_worker_of_a_client_filtered_leader_is_denied_the_same(sbx):
    with sbx.connect("alice") as c:
        c.execute("SELECT set_client_filter(NULL, NULL, NULL, 'mkdir', NULL)")
        assert c.execute("SELECT try_mkdir('/tmp/plpy_bg_sbx_cf')").fetchone()[0] == EPERM
        assert in_parallel_worker(c, "par_mkdir('/tmp/plpy_bg_sbx_cf')") == EPERM


def test_a_program_started_by_a_backend_inherits_its_policy(sbx):
    with sbx.connect("erin") as c:
        c.execute("""CREATE OR REPLACE FUNCTION sh_mkdir(p text) RETURNS text LANGUAGE plpython3u AS $$
import subprocess
r = subprocess.run(["/bin/mkdir", p], capture_output=True, text=True)
subprocess.run(["/bin/rmdir", p])
return "ok" if r.returncode == 0 else r.stderr.strip()
$$""")
        assert "Operation not permitted" in c.execute("SELECT sh_mkdir('/tmp/plpy_bg_sbx_sh')").fetchone()[0]
    with sbx.connect("alice") as c:
        assert c.execute("SELECT sh_mkdir('/tmp/plpy_bg_sbx_sh')").fetchone()[0] == "ok"


FORGE_TITLE = """CREATE OR REPLACE FUNCTION forge_title(t text) RETURNS text LANGUAGE plpython3u AS $$
# what native code in a backend can do: overwrite its own title (argv area) with another role's
import ctypes
fields = open("/proc/self/stat").read().rsplit(")", 1)[1].split()
start, end = int(fields[45]), int(fields[46])
text = (t.encode() + b"\\0" * max(0, end - start - len(t)))[:end - start]
ctypes.memmove(start, text, len(text))
return open("/proc/self/cmdline", "rb").read().split(b"\\0")[0].decode()
$$"""


INJECT = """CREATE OR REPLACE FUNCTION try_inject(pid int) RETURNS text LANGUAGE plpython3u AS $$
# native code writing itself into another process of the server (its /proc/<pid>/mem)
import os
try:
    fd = os.open(f"/proc/{pid}/mem", os.O_RDWR)
    os.close(fd)
    return "opened"
except OSError as e:
    return os.strerror(e.errno)
$$"""


def test_no_server_process_can_write_into_another(sbx):
    """The server runs as an execute-only binary, so none of its processes is dumpable: the
    checkpointer, another session and the postmaster are out of a backend's reach."""
    with sbx.connect("alice") as other, sbx.connect("erin") as c:
        c.execute(INJECT)
        ckpt = c.execute("SELECT pid FROM pg_stat_activity WHERE backend_type = 'checkpointer'").fetchone()[0]
        for pid in (ckpt, other.info.backend_pid, sbx.cluster.postmaster_pid()):
            assert c.execute("SELECT try_inject(%s)", (pid,)).fetchone()[0] == os.strerror(13)  # EACCES
        assert c.execute("SELECT try_inject(pg_backend_pid())").fetchone()[0] == os.strerror(13)


def test_a_forged_title_changes_nothing(sbx):
    with sbx.connect("erin") as c:
        c.execute(FORGE_TITLE)
        shown = c.execute("SELECT forge_title('postgres: alice postgres [local] startup')").fetchone()[0]
        assert shown.startswith("postgres: alice")
        assert c.execute("SELECT try_mkdir('/tmp/plpy_bg_sbx_forge')").fetchone()[0] == EPERM
        assert "Operation not permitted" in c.execute("SELECT sh_mkdir('/tmp/plpy_bg_sbx_forge')").fetchone()[0]
        assert in_parallel_worker(c, "par_mkdir('/tmp/plpy_bg_sbx_forge')") == EPERM


NEW_LISTENER = """CREATE OR REPLACE FUNCTION try_own_listener(use_prctl bool) RETURNS text LANGUAGE plpython3u AS $$
# a backend that could answer its own notifications would allow itself anything
import ctypes, os, struct
libc = ctypes.CDLL("libc.so.6", use_errno=True)
allow = struct.pack("<HBBI", 0x06, 0, 0, 0x7fff0000)  # BPF_RET | BPF_K, SECCOMP_RET_ALLOW
buf = ctypes.create_string_buffer(allow)
prog = struct.pack("<H6xQ", 1, ctypes.addressof(buf))
pbuf = ctypes.create_string_buffer(prog)
libc.prctl(38, 1, 0, 0, 0)  # no_new_privs
if use_prctl:
    r = libc.prctl(22, 2, ctypes.addressof(pbuf), 0, 0)  # PR_SET_SECCOMP, SECCOMP_MODE_FILTER
else:
    r = libc.syscall(317, 1, 8, ctypes.addressof(pbuf))  # seccomp(SET_MODE_FILTER, NEW_LISTENER)
return "ok" if r >= 0 else os.strerror(ctypes.get_errno())
$$"""


def test_no_backend_can_take_a_listener_or_load_a_filter_unseen(sbx):
    with sbx.connect("erin") as c:
        c.execute(NEW_LISTENER)
        assert c.execute("SELECT try_own_listener(false)").fetchone()[0] == EPERM
        assert c.execute("SELECT try_own_listener(true)").fetchone()[0] == EPERM
        assert c.execute("SELECT try_mkdir('/tmp/plpy_bg_sbx_nl')").fetchone()[0] == EPERM
        assert c.execute("SELECT my_filters()").fetchone()[0] == 1


AUTOVACUUM_RUNS_OWNER_CODE = """CREATE OR REPLACE FUNCTION av_probe(i int) RETURNS int LANGUAGE plpython3u
IMMUTABLE AS $$
import os, subprocess
if "autovacuum" in open("/proc/self/cmdline", "rb").read().decode(errors="replace"):
    try:
        subprocess.run(["/bin/touch", "/tmp/plpy_bg_sbx_av_ran_a_program"], check=True)
    except OSError:
        pass
return i
$$;
CREATE TABLE IF NOT EXISTS av2 (i int);
CREATE INDEX IF NOT EXISTS av2_probe ON av2 (av_probe(i));
ALTER TABLE av2 SET (autovacuum_analyze_threshold = 1, autovacuum_analyze_scale_factor = 0);
"""


def test_autovacuum_runs_owners_code_under_the_strictest_policy(sbx):
    """ANALYZE of an expression index calls the owner's function in an autovacuum worker: that
    worker gets the strictest policy (here the job profile: no exec), not the global filter."""
    try:
        os.unlink("/tmp/plpy_bg_sbx_av_ran_a_program")
    except FileNotFoundError:
        pass
    with sbx.connect() as c:
        c.execute(AUTOVACUUM_RUNS_OWNER_CODE)
        before = c.execute("SELECT coalesce(autoanalyze_count, 0) FROM pg_stat_user_tables "
                           "WHERE relname = 'av2'").fetchone()[0]
        c.execute("INSERT INTO av2 SELECT generate_series(1, 500)")
        deadline = time.monotonic() + 60
        while c.execute("SELECT coalesce(autoanalyze_count, 0) FROM pg_stat_user_tables "
                        "WHERE relname = 'av2'").fetchone()[0] <= before:
            assert time.monotonic() < deadline, "autovacuum did not analyze the table"
            time.sleep(0.5)
    assert not os.path.exists("/tmp/plpy_bg_sbx_av_ran_a_program")


def test_server_processes_keep_working(sbx):
    """Checkpoints, autovacuum, a crash restart after a SIGKILLed backend: the supervisor answers
    server processes, and names the new processes afterwards."""
    with sbx.connect() as c:
        c.execute("CREATE TABLE IF NOT EXISTS av (i int) WITH (autovacuum_vacuum_threshold = 1, "
                  "autovacuum_vacuum_scale_factor = 0)")
        c.execute("INSERT INTO av SELECT generate_series(1, 1000); DELETE FROM av")
        c.execute("CHECKPOINT")
        before = c.execute("SELECT autovacuum_count FROM pg_stat_user_tables WHERE relname = 'av'").fetchone()[0]
        assert seccomp_mode(c.execute("SELECT pid FROM pg_stat_activity WHERE backend_type = 'checkpointer'")
                            .fetchone()[0]) == "2"
    seen = sbx.cluster.logfile.stat().st_size
    with sbx.connect("alice") as victim:
        os.kill(victim.info.backend_pid, 9)

    def restarted():
        with open(sbx.cluster.logfile, "rb") as f:
            f.seek(seen)
            return b"database system is ready to accept connections" in f.read()
    wait_for(restarted, timeout=30)
    with sbx.connect("erin") as c:
        assert c.execute("SELECT try_mkdir('/tmp/plpy_bg_sbx_cr')").fetchone()[0] == EPERM
    with sbx.connect() as c:  # autovacuum works under the strictest policy (it runs owners' code)
        c.execute("INSERT INTO av SELECT generate_series(1, 1000); DELETE FROM av")
        deadline = time.monotonic() + 60
        while c.execute("SELECT coalesce(autovacuum_count, 0) FROM pg_stat_user_tables "
                        "WHERE relname = 'av'").fetchone()[0] <= (before or 0):
            assert time.monotonic() < deadline, "autovacuum did not vacuum the table"
            time.sleep(0.5)
        c.execute("CHECKPOINT")
    assert seccomp_mode(sbx.cluster.postmaster_pid()) == "2"


def test_the_wrapper_refuses_to_start_without_a_supervisor(sbx, idle_cluster):
    (idle_cluster.datadir / "bad.conf").write_text("")
    with pytest.raises(ClusterError) as ei:
        idle_cluster.start(wrapper=sandbox_wrapper(sbx.path, "/tmp/plpy_bg_no_such_dir/seccomp.sock"), timeout=20)
    assert "the seccomp supervisor is not running" in str(ei.value) and "FATAL" in str(ei.value)
    assert idle_cluster.postmaster_pid() is None


def test_a_dead_supervisor_fails_closed(throwaway):
    """Its own supervisor and cluster: once the supervisor is gone, what it would have answered
    fails (ENOSYS), new sessions cannot start, and the postmaster lives on."""
    with throwaway.sandbox("pgseccomp.session_roles = 'erin'\nsession_syscall_error.erin = 'mkdir'\n",
                           PROBES + "CREATE ROLE erin LOGIN SUPERUSER", name="sbxd") as box:
        c = box.cluster
        with box.connect("erin") as k:
            assert k.execute("SELECT try_mkdir('/tmp/plpy_bg_sbx_dead')").fetchone()[0] == EPERM
            box.sup.stop()
            assert k.execute("SELECT try_mkdir('/tmp/plpy_bg_sbx_dead')").fetchone()[0] == os.strerror(38)  # ENOSYS
            first = k.execute("SELECT syscall, context FROM seccomp_filter() LIMIT 1").fetchone()
            assert first[0] == "(supervisor)" and "does not answer" in first[1]
        with pytest.raises(psycopg.OperationalError):
            box.connect().close()
        assert c.postmaster_pid() is not None and seccomp_mode(c.postmaster_pid()) == "2"


CLONE_PARENT = """CREATE OR REPLACE FUNCTION try_clone_parent(d text) RETURNS text LANGUAGE plpython3u AS $$
# a child made the postmaster's (CLONE_PARENT) would pass for a server process: refused
import ctypes, os, time
libc = ctypes.CDLL("libc.so.6", use_errno=True)
libc.syscall.restype = ctypes.c_long
pid = libc.syscall(56, ctypes.c_ulong(0x8000 | 17), ctypes.c_ulong(0), None, None, ctypes.c_ulong(0))
if pid == 0:
    try:
        os.mkdir(d)
    finally:
        os._exit(0)
if pid < 0:
    return os.strerror(ctypes.get_errno())
time.sleep(1)
return "cloned; made it" if os.path.isdir(d) else "cloned"
$$"""


def test_no_process_can_make_itself_the_postmasters_child(sbx):
    with sbx.connect("erin") as c:
        c.execute(CLONE_PARENT)
        assert c.execute("SELECT try_clone_parent('/tmp/plpy_bg_sbx_cp')").fetchone()[0] == EPERM
        assert not os.path.isdir("/tmp/plpy_bg_sbx_cp")
        assert c.execute("SELECT try_exec()").fetchone()[0] == "ok"  # fork and spawn still work (clone3 falls back)


# A background worker registered by native code in a backend runs the library it names before
# any notified syscall: it may take any title, or copy the postmaster's. Compiled at test time
# (no PostgreSQL headers: the magic block is written out) and loaded by the worker itself.
WORKER_C = r"""
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
typedef struct { int len, version, funcmaxargs, indexmaxkeys, namedatalen, float8byval; char abi[32]; } magic;
extern void proc_exit(int code) __attribute__((noreturn));  /* the server's: a clean exit, no crash restart */
const magic *Pg_magic_func(void) {
    static const magic m = {sizeof(magic), 1500, 100, 32, 64, 1, "PostgreSQL"};
    return &m;
}
static void take_postmaster_title(void) {
    char buf[4096], path[64]; unsigned long a = 0, b = 0; int fd; ssize_t n; char *p;
    fd = open("/proc/self/stat", O_RDONLY); n = read(fd, buf, sizeof buf - 1); close(fd); buf[n] = 0;
    p = strrchr(buf, ')') + 2;
    for (int i = 3; i < 48; i++) p = strchr(p, ' ') + 1;
    sscanf(p, "%lu %lu", &a, &b);
    snprintf(path, sizeof path, "/proc/%d/cmdline", (int) getppid());
    fd = open(path, O_RDONLY); n = read(fd, buf, sizeof buf); close(fd);
    if (n > 0 && (unsigned long) n <= b - a) { memset((char *) a, 0, b - a); memcpy((char *) a, buf, n); }
}
void probe_main(unsigned long arg) {
    char dir[256], out[300], cmd[600]; int r, e, st = 0; FILE *f; pid_t c;
    if (arg & 1) take_postmaster_title();
    snprintf(dir, sizeof dir, "%s/w%lu", DIR, arg >> 1);
    r = mkdir(dir, 0755); e = errno;
    snprintf(out, sizeof out, "%s.out", dir);
    f = fopen(out, "w");
    fprintf(f, "mkdir %s\n", r ? strerror(e) : "ok");
    fflush(f);
    snprintf(cmd, sizeof cmd, "mkdir %s.sh", dir);
    c = fork();
    if (c == 0) { execl("/bin/sh", "sh", "-c", cmd, (char *) 0); _exit(126); }
    waitpid(c, &st, 0);
    fprintf(f, "exec %d\n", WEXITSTATUS(st));
    fclose(f);
    proc_exit(0);
}
"""

START_WORKER = """CREATE OR REPLACE FUNCTION start_worker(name text, lib text, arg bigint) RETURNS bool
LANGUAGE plpython3u AS $$
import ctypes
class BGW(ctypes.Structure):
    _fields_ = [("bgw_name", ctypes.c_char * 96), ("bgw_type", ctypes.c_char * 96), ("bgw_flags", ctypes.c_int),
                ("bgw_start_time", ctypes.c_int), ("bgw_restart_time", ctypes.c_int),
                ("bgw_library_name", ctypes.c_char * 96), ("bgw_function_name", ctypes.c_char * 96),
                ("bgw_main_arg", ctypes.c_uint64), ("bgw_extra", ctypes.c_char * 128), ("bgw_notify_pid", ctypes.c_int)]
w = BGW(bgw_name=name.encode(), bgw_type=b"probe", bgw_flags=1, bgw_start_time=2, bgw_restart_time=-1,
        bgw_library_name=lib.encode(), bgw_function_name=b"probe_main", bgw_main_arg=arg)
pg = ctypes.CDLL(None)
pg.RegisterDynamicBackgroundWorker.restype = ctypes.c_bool
return bool(pg.RegisterDynamicBackgroundWorker(ctypes.byref(w), None))
$$"""


def test_a_background_worker_native_code_registers_gets_the_strictest_policy(sbx):
    """Named after a running auxiliary process, after another session's parallel worker, after
    nothing, or wearing the postmaster's own title: no name buys it more than the strictest
    policy (here: no mkdir, as erin's list says, and no exec, as the job profile says)."""
    d = Path(tempfile.mkdtemp(prefix="plpy_bg_bgw_"))
    os.chmod(d, 0o755)
    import pwd
    os.chown(d, pwd.getpwnam("postgres").pw_uid, 0)
    lib = d / "probe.so"
    src = d / "probe.c"
    src.write_text(WORKER_C)
    subprocess.run(["gcc", "-shared", "-fPIC", "-O1", f'-DDIR="{d}"', "-o", str(lib), str(src)], check=True)
    os.chmod(lib, 0o755)
    with sbx.connect("alice") as other, sbx.connect("erin") as c:
        c.execute(START_WORKER)
        names = ["checkpointer", "walwriter", f"parallel worker for PID {other.info.backend_pid}", "innocent",
                 "logical replication launcher"]
        variants = [(n, i << 1) for i, n in enumerate(names)] + [("innocent", (9 << 1) | 1)]
        for name, arg in variants:
            assert c.execute("SELECT start_worker(%s, %s, %s)", (name, str(lib), arg)).fetchone()[0]
        deadline = time.monotonic() + 20
        outs = {arg: d / f"w{arg >> 1}.out" for _, arg in variants}
        while not all(p.exists() and "exec" in p.read_text() for p in outs.values()):
            assert time.monotonic() < deadline, {a: p.exists() and p.read_text() for a, p in outs.items()}
            time.sleep(0.2)
    try:
        for (name, arg), p in zip(variants, outs.values()):
            text = p.read_text()
            assert "mkdir Operation not permitted" in text, (name, text)
            assert not (d / f"w{arg >> 1}").exists() and not (d / f"w{arg >> 1}.sh").exists(), (name, text)
    finally:
        shutil.rmtree(d, ignore_errors=True)
