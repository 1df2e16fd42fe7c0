"""The seccomp sandbox on a real server: filters in the kernel, EPERM, per-role lists, bad settings.

The session fixture starts its cluster through the preload helper with the shipped
global deny profile, so every test of the suite runs under it. If the kernel refused
seccomp, these tests fail: they never skip.
"""
import contextlib
import os
import subprocess
import time

import psycopg
import pytest

import build
from plpy_bg.cluster import Cluster, ClusterError
from tests.fix_pg import Server, Supervisor, launch, result, wait_for
from tests.server.test_seccomp_sandbox import sandbox_probes

pytestmark = pytest.mark.server

PERSONALITY = """CREATE OR REPLACE FUNCTION try_personality() RETURNS text LANGUAGE plpython3u AS $$
import ctypes, os
libc = ctypes.CDLL("libc.so.6", use_errno=True)
r = libc.personality(0xffffffff)  # a harmless query, denied by the global profile
return "ok" if r >= 0 else os.strerror(ctypes.get_errno())
$$;
CREATE OR REPLACE FUNCTION try_mkdir(p text) RETURNS text LANGUAGE plpython3u AS $$
import os
try:
    os.mkdir(p); os.rmdir(p); return "ok"
except OSError as e:
    return os.strerror(e.errno)
$$;
CREATE OR REPLACE FUNCTION my_seccomp() RETURNS text LANGUAGE plpython3u AS $$
import re
return re.search(r"^Seccomp:\\s+(\\d+)", open("/proc/self/status").read(), re.M).group(1)
$$;
GRANT EXECUTE ON FUNCTION try_personality(), try_mkdir(text), my_seccomp() TO PUBLIC;
"""


NO_PROGRAM = "could not execute command \"cat > /dev/null\""  # popen refused: the job profile allows no fork or exec


def in_server_log(c: Cluster, text: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while text not in c.logfile.read_text():
        assert time.monotonic() < deadline, c.logfile.read_text()[-3000:]
        time.sleep(0.2)


def seccomp_mode(pid: int) -> str:
    with open(f"/proc/{pid}/status") as f:
        return next(line.split()[1] for line in f if line.startswith("Seccomp:"))


@pytest.fixture(scope="module")
def sc(local_pg):
    local_pg.sql(PERSONALITY)
    return local_pg


def test_every_process_of_the_cluster_is_filtered(sc):
    pm = sc.cluster.postmaster_pid()
    assert seccomp_mode(pm) == "2"
    children = subprocess.run(["pgrep", "-P", str(pm)], capture_output=True, text=True).stdout.split()
    modes = []
    for p in children:
        with contextlib.suppress(FileNotFoundError):  # a backend that ended since pgrep saw it
            modes.append(seccomp_mode(int(p)))
    assert modes and set(modes) == {"2"}
    with sc.connect("alice") as c:
        assert seccomp_mode(c.info.backend_pid) == "2"
        h = launch(c, "SELECT my_seccomp()")
        assert seccomp_mode(h[0]) == "2"
        assert result(c, h, "m text") == [("2",)]
    ckpt = sc.sql("SELECT pid FROM pg_stat_activity WHERE backend_type = 'checkpointer'")[0][0]
    assert seccomp_mode(ckpt) == "2"


def test_denied_syscall_fails_with_eperm_and_the_session_goes_on(sc):
    with sc.connect("alice") as c:
        assert c.execute("SELECT try_personality()").fetchone()[0] == os.strerror(1)
        assert c.execute("SELECT 1").fetchone() == (1,)
        h = launch(c, "SELECT try_personality()")
        assert result(c, h, "r text") == [(os.strerror(1),)]


def test_seccomp_filter_shows_the_global_filter(sc):
    rows = sc.sql("SELECT * FROM seccomp_filter() WHERE context = 'global'")
    assert ("<default>", -1, "global->allow", "global") in rows
    assert ("ptrace", 101, "global->error", "global") in rows


def test_set_client_filter_once_and_only_tighter(sc):
    with sc.connect() as c:
        assert c.execute("SELECT try_mkdir('/tmp/plpy_bg_sc_probe')").fetchone()[0] == "ok"
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="every PostgreSQL process needs"):
            c.execute("SELECT set_client_filter('error', 'personality', NULL, NULL, NULL)")
        # pgseccomp's answer; a second call is its 0A000
        assert c.execute("SELECT set_client_filter('allow', 'personality', NULL, 'mkdir', NULL)").fetchone()[0] == "OK"
        assert c.execute("SELECT try_mkdir('/tmp/plpy_bg_sc_probe')").fetchone()[0] == os.strerror(1)
        # allowing personality in the session does not loosen the global filter
        assert c.execute("SELECT try_personality()").fetchone()[0] == os.strerror(1)
        rows = c.execute("SELECT syscall, filter_action FROM seccomp_filter() WHERE context = 'session'").fetchall()
        assert ("mkdir", "client->error") in rows and ("personality", "global->error") in rows
        with pytest.raises(psycopg.errors.FeatureNotSupported, match="only once"):
            c.execute("SELECT set_client_filter('allow', NULL, NULL, NULL, NULL)")
        assert c.execute("SELECT try_mkdir('/tmp/plpy_bg_sc_probe')").fetchone()[0] == os.strerror(1)


def test_set_client_filter_and_seccomp_filter_are_not_for_public(sc):
    """As pgseccomp: what the sandbox denies is not for every role to read; job users may."""
    with sc.connect("mallory") as c:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute("SELECT set_client_filter('error', NULL, NULL, NULL, NULL)")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute("SELECT * FROM seccomp_filter()")
    with sc.connect("alice") as c:
        assert c.execute("SELECT count(*) FROM seccomp_filter()").fetchone()[0] > 0


def test_set_client_filter_refuses_bad_lists(sc):
    with sc.connect() as c:
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="no syscall"):
            c.execute("SELECT set_client_filter(NULL, 'not_a_syscall', NULL, NULL, NULL)")
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="default_action"):
            c.execute("SELECT set_client_filter('deny', NULL, NULL, NULL, NULL)")


JOB_PROBES = ("CREATE EXTENSION IF NOT EXISTS dblink;\n"
              + sandbox_probes("try_socket", "par_exec", replace=True)
              + "DROP TABLE IF EXISTS one_row; CREATE TABLE one_row AS SELECT 1 AS a;\n"
                "GRANT SELECT ON one_row TO PUBLIC;\n"
                "GRANT EXECUTE ON FUNCTION try_socket(int), par_exec() TO PUBLIC;\n")


def test_a_job_cannot_open_connections_and_still_reports_progress(sc):
    """dblink (a new backend the job's filter would not govern) and PL sockets fail in a job,
    even a superuser's; progress reports and child jobs use the worker's own connection."""
    sc.sql(JOB_PROBES)
    dsn = f"host={sc.cluster.sockdir} port={sc.cluster.port} user=postgres dbname=postgres"
    with sc.connect() as c:
        c.execute("DROP TABLE IF EXISTS dblink_damage; CREATE TABLE dblink_damage (i int)")
        h = launch(c, f"SELECT dblink_exec('{dsn}', 'INSERT INTO dblink_damage VALUES (1)')")
        with pytest.raises(psycopg.errors.SqlclientUnableToEstablishSqlconnection, match="could not establish connection"):
            result(c, h)
        assert c.execute("SELECT count(*) FROM dblink_damage").fetchone()[0] == 0
        h = launch(c, "SELECT try_socket(1) || ',' || try_socket(2) || ',' || try_socket(10)")
        assert result(c, h) == [(",".join([os.strerror(1)] * 3),)]
        h = launch(c, "SELECT pg_background_progress(42, 'half way'); SELECT pg_sleep(0.5); SELECT 'done'")
        deadline = time.monotonic() + 10
        while c.execute("SELECT (pg_background_get_progress_v2(%s, %s)).progress_pct", h).fetchone()[0] != 42:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert result(c, h) == [("done",)]
        assert c.execute("SELECT try_socket(1)").fetchone()[0] == "ok"  # the session itself may


RESTRICTED_CONF = """plpy_bg.job_roles = 'sockrole, erin'
job_socket_families.sockrole = 'unix'
job_syscall_error.erin = 'mkdir'
pgseccomp.session_roles = 'boss'
session_syscall_error.boss = 'mkdir'
"""


@pytest.fixture(scope="module")
def rs(own_pg):
    """A server of the module's own started with per-role job lists and a restricted session role."""
    with open(own_pg.cluster.datadir / "postgresql.conf", "a") as f:
        f.write(RESTRICTED_CONF)
    own_pg.restart()
    own_pg.sql(PERSONALITY + JOB_PROBES)
    for r in ("sockrole", "erin", "boss"):
        own_pg.sql(f"DROP ROLE IF EXISTS {r}; CREATE ROLE {r} LOGIN; GRANT pgbackground_role TO {r}")
        own_pg.sql(f"SELECT grant_pg_background_privileges('{r}')")
    own_pg.sql("GRANT sockrole TO boss; ALTER ROLE boss SUPERUSER")
    own_pg.sql("""CREATE OR REPLACE FUNCTION child_as_sockrole(q text) RETURNS text LANGUAGE plpgsql AS $f$
DECLARE h record; r text;
BEGIN
    SET LOCAL ROLE sockrole;
    SELECT * INTO h FROM public.pg_background_launch_v2(q);
    SELECT x INTO r FROM public.pg_background_result_v2(h.pid, h.cookie) AS (x text);
    RETURN r;
END $f$""")
    return own_pg


def test_per_role_job_lists_for_job_workers(rs):
    with rs.connect("erin") as c:
        assert result(c, launch(c, "SELECT try_mkdir('/tmp/plpy_bg_sc_erin')"), "r text") == [(os.strerror(1),)]
        # a client session of erin keeps its session policy: job lists are for jobs
        assert c.execute("SELECT try_mkdir('/tmp/plpy_bg_sc_erin')").fetchone()[0] == "ok"
    with rs.connect("sockrole") as c:
        assert result(c, launch(c, "SELECT try_mkdir('/tmp/plpy_bg_sc_sock')"), "r text") == [("ok",)]
        assert result(c, launch(c, "SELECT try_socket(1)")) == [("ok",)]  # its jobs may open Unix sockets
        assert result(c, launch(c, "SELECT try_socket(2)")) == [(os.strerror(1),)]


def test_a_child_job_is_held_to_its_parents_job_filter(rs):
    """A job that SETs ROLE to a role whose jobs may open Unix sockets and launches a child job
    there: the child runs under that role's job filter and its parent's, so no socket."""
    with rs.connect() as c:
        h = launch(c, "SELECT child_as_sockrole('SELECT try_socket(1)')")
        assert result(c, h) == [(os.strerror(1),)]


def test_a_session_cannot_escape_its_policy_through_a_job_of_another_role(rs):
    """boss's sessions may not mkdir; a job it launches as sockrole (whose jobs may) may not either."""
    with rs.connect("boss") as c:
        assert c.execute("SELECT try_mkdir('/tmp/plpy_bg_sc_boss')").fetchone()[0] == os.strerror(1)
        c.execute("SET ROLE sockrole")
        assert result(c, launch(c, "SELECT try_mkdir('/tmp/plpy_bg_sc_boss')")) == [(os.strerror(1),)]
        c.execute("RESET ROLE")
    with rs.connect("sockrole") as c:  # its own sessions' jobs may
        assert result(c, launch(c, "SELECT try_mkdir('/tmp/plpy_bg_sc_boss')")) == [("ok",)]


def test_a_superuser_job_cannot_turn_the_sandbox_off_until_a_restart(rs):
    """ALTER SYSTEM and a reload from inside a job change nothing the running server enforces:
    policies are those the server started with."""
    try:
        with rs.connect() as c:
            h = launch(c, "ALTER SYSTEM SET pgseccomp.enabled = off")
            result(c, h)
            c.execute("ALTER SYSTEM SET plpy_bg.job_syscall_default = 'allow'")
            c.execute("SELECT pg_reload_conf()")
            time.sleep(5.5)  # past the dispatcher's settings cache
            hs = [launch(c, "SELECT pg_sleep(1)") for _ in range(3)]  # fresh workers are opened now
            h = launch(c, "COPY (SELECT 1) TO PROGRAM 'cat > /dev/null'")
            with pytest.raises(psycopg.Error, match=NO_PROGRAM):
                result(c, h)
            for x in hs:
                result(c, x, "r text")
    finally:
        with rs.connect() as c:
            c.execute("ALTER SYSTEM RESET pgseccomp.enabled")
            c.execute("ALTER SYSTEM RESET plpy_bg.job_syscall_default")
            c.execute("SELECT pg_reload_conf()")


def test_a_jobs_parallel_worker_cannot_exec(sc):
    sc.sql(JOB_PROBES)
    with sc.connect("alice") as c:
        h = launch(c, "SET force_parallel_mode = on; SET parallel_setup_cost = 0; SET parallel_tuple_cost = 0; "
                      "SET parallel_leader_participation = off; SELECT par_exec() FROM one_row")
        (out,), = result(c, h)
        answer, pid = out.rsplit(" ", 1)
        assert int(pid) != h[0], "par_exec ran in the job worker (the handle's pid), not a parallel worker"
        assert answer == os.strerror(1)


@pytest.mark.parametrize("setting, value, needle", [
    ("pgseccomp.global_syscall_error", "'ptrace,not_a_syscall'", 'no syscall "not_a_syscall"'),
    ("pgseccomp.global_syscall_default", "'deny'", "pgseccomp.global_syscall_default"),
    ("pgseccomp.global_syscall_kill", "'ptrace;mount'", "pgseccomp.global_syscall_kill"),
    ("pgseccomp.session_syscall_error", "'bpf, bpf2'", "pgseccomp.session_syscall_error"),
    ("pgseccomp.enabled", "'maybe'", "pgseccomp.enabled"),
])
def test_preload_refuses_bad_settings_before_the_server_starts(throwaway, setting, value, needle):
    with throwaway.bare("badconf", f"pgseccomp.enabled = on\n{setting} = {value}\n") as c:
        with pytest.raises(ClusterError) as ei:
            c.start(wrapper=build.preload_wrapper(), timeout=20)
        assert needle in str(ei.value) and "FATAL" in str(ei.value)
        assert c.postmaster_pid() is None


def test_a_server_started_without_the_wrapper_refuses_jobs_and_says_so(throwaway):
    """What a plain pg_ctl or pg_ctlcluster restart does: the settings say on, no process carries
    a filter. Launches refuse with the way out, seccomp_filter() says so; under the wrapper again,
    jobs run."""
    with throwaway.plpy_bg("unwrapped", preload=False, roles=False) as s:
        c = s.cluster
        assert seccomp_mode(c.postmaster_pid()) == "0"
        with s.connect() as conn:
            with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState) as e:
                launch(conn, "SELECT '1'")
            assert "runs without its seccomp filter" in e.value.diag.message_primary
            assert "wrapper" in e.value.diag.message_hint
            in_server_log(c, "WARNING:  plpy_bg: pgseccomp.enabled is on but the server was started without")
            first = conn.execute("SELECT syscall, context FROM seccomp_filter()").fetchone()
            assert first[0] == "(none)" and "without plpy_bg's wrapper" in first[1]
        c.restart(wrapper=build.preload_wrapper())
        with s.connect() as conn:
            h = launch(conn, "SELECT '1'")
            assert result(conn, h) == [("1",)]
            assert conn.execute("SELECT syscall FROM seccomp_filter()").fetchone()[0] != "(none)"


def test_launches_refuse_when_the_supervisor_does_not_answer(throwaway):
    sup = Supervisor(str(build.LIBDIR))
    try:
        with throwaway.plpy_bg("nosup", wrapper=build.preload_wrapper(sup.socket), roles=False) as s:
            with s.connect() as conn:
                assert result(conn, launch(conn, "SELECT '1'")) == [("1",)]
                sup.stop()

                def refused():  # the dispatcher asks the supervisor at most once a second
                    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState) as ei:
                        launch(conn, "SELECT '1'")  # refused at once, if not yet for this reason
                    return ei.value if "does not answer" in ei.value.diag.message_primary else None
                e = wait_for(refused, timeout=10)
                assert "supervisor of this server does not answer" in e.diag.message_primary
                assert "build.py supervisor" in e.diag.message_hint
                # and the server's log says so, where DBAs look
                in_server_log(s.cluster, "WARNING:  plpy_bg: background jobs are refused: the seccomp supervisor "
                                         "of this server does not answer")
    finally:
        sup.stop()


def test_a_served_cluster_sandboxes_jobs_by_default(throwaway):
    """build.py serve (and the demo) include the job-worker profile: a superuser's job cannot run
    a program, though a superuser's own session can."""
    c = build.serve(str(throwaway.base("served") / "c"), None)
    try:
        s = Server(c)
        with s.connect() as conn:
            h = launch(conn, "COPY (SELECT 1) TO PROGRAM 'cat > /dev/null'")
            with pytest.raises(psycopg.Error, match=NO_PROGRAM):
                result(conn, h)
            conn.execute("COPY (SELECT 1) TO PROGRAM 'cat > /dev/null'")  # the session itself may
    finally:
        c.destroy()


def test_a_debian_cluster_keeps_its_filter_across_pg_ctlcluster_restarts():
    """pg_createcluster, build.py debian, pg_ctlcluster start and restart: the postmaster and a
    backend carry the global filter each time, and a listed role's sessions get its list (the
    config in /etc/postgresql, cluster_name '15/<name>' in every title)."""
    name, port = "plpytest", "5477"
    subprocess.run(["pg_dropcluster", "--stop", "15", name], capture_output=True)
    subprocess.run(["pg_createcluster", "15", name, "-p", port], check=True, capture_output=True)
    build.ensure_supervisor()
    try:
        with open(f"/etc/postgresql/15/{name}/postgresql.conf", "a") as f:
            f.write(f"include '{build.PROFILES / 'global-deny.conf'}'\npgseccomp.session_roles = 'postgres'\n"
                    "session_syscall_error.postgres = 'mknod,mknodat'\n")
        build.debian_cluster(f"15/{name}")
        for action in ("start", "restart"):
            subprocess.run(["pg_ctlcluster", "15", name, action], check=True, capture_output=True)
            with open(f"/var/lib/postgresql/15/{name}/postmaster.pid") as f:
                pm = int(f.readline())
            assert seccomp_mode(pm) == "2"
            children = subprocess.run(["pgrep", "-P", str(pm)], capture_output=True, text=True).stdout.split()
            assert children  # checkpointer, background writer, WAL writer, autovacuum launcher ...
            assert {seccomp_mode(int(c)) for c in children} == {"2"}
            out = subprocess.run(["runuser", "-u", "postgres", "--", "psql", "-p", port, "-Atc", "SELECT 1"],
                                 check=True, capture_output=True, text=True)
            assert out.stdout.strip() == "1"  # and it serves
        probe = ("CREATE EXTENSION IF NOT EXISTS plpython3u; CREATE OR REPLACE FUNCTION mknod_probe() "
                 "RETURNS text LANGUAGE plpython3u AS $$\nimport os\ntry:\n    os.mkfifo('/tmp/plpy_bg_deb_fifo')\n"
                 "    os.unlink('/tmp/plpy_bg_deb_fifo'); return 'ok'\nexcept OSError as e:\n"
                 "    return os.strerror(e.errno)\n$$; SELECT mknod_probe()")
        out = subprocess.run(["runuser", "-u", "postgres", "--", "psql", "-p", port, "-Atc", probe],
                             check=True, capture_output=True, text=True)
        assert out.stdout.strip().splitlines()[-1] == os.strerror(1)  # mkfifo is mknodat: denied
    finally:
        subprocess.run(["pg_dropcluster", "--stop", "15", name], capture_output=True)
