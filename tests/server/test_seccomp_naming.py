"""When the supervisor names a process, and what a socket proves, on real servers.

Two clusters with supervisors of their own: `lazy` gives every role the same lists
(session: no exec; jobs: no mkdir either; sockets unrestricted, so socket() is never handed
over), so no backend is named as it starts and a new connection costs the supervisor
nothing; `eager` has a role with lists of its own (erin: no mkdir), so every backend is
named at its start. In both, a background worker registered by native code that calls
itself a client backend and holds sockets (a socketpair, connections to the server over
Unix and TCP sockets, a datagram socket bound to the server's own address and port) is not
taken for one: only a connection the postmaster accepted is a client's. If the kernel refuses seccomp these tests fail; they never skip.
"""
from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from plpy_bg.sandbox import supervision
from tests.server import test_seccomp_sandbox as S

pytestmark = pytest.mark.server

EPERM = os.strerror(1)

HOLDER_C = S.WORKER_C.replace("void probe_main(unsigned long arg) {", r"""
#include <sys/socket.h>
#include <sys/un.h>
#include <netinet/in.h>
#include <arpa/inet.h>
static int held[5];
static void hold_sockets(void) {
    struct sockaddr_un u; struct sockaddr_in in, d;
    socketpair(AF_UNIX, SOCK_STREAM, 0, held);
    held[2] = socket(AF_UNIX, SOCK_STREAM, 0);
    memset(&u, 0, sizeof u); u.sun_family = AF_UNIX; strncpy(u.sun_path, SOCKPATH, sizeof u.sun_path - 1);
    connect(held[2], (struct sockaddr *) &u, sizeof u);
    held[3] = socket(AF_INET, SOCK_STREAM, 0);
    memset(&in, 0, sizeof in); in.sin_family = AF_INET; in.sin_port = htons(PORT);
    in.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    connect(held[3], (struct sockaddr *) &in, sizeof in);
    held[4] = socket(AF_INET, SOCK_DGRAM, 0);  /* a datagram socket on the server's own address and port */
    memset(&d, 0, sizeof d); d.sin_family = AF_INET; d.sin_port = htons(PORT);
    d.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bind(held[4], (struct sockaddr *) &d, sizeof d);
    connect(held[4], (struct sockaddr *) &in, sizeof in);
}
void probe_main(unsigned long arg) {
    if (arg & (1UL << 40)) { hold_sockets(); arg &= ~(1UL << 40); }
""", 1)

RETITLE = """CREATE OR REPLACE FUNCTION retitle_then_mkdir(t text, p text) RETURNS text LANGUAGE plpython3u AS $$
import ctypes, os
fields = open("/proc/self/stat").read().rsplit(")", 1)[1].split()
a, b = int(fields[45]), int(fields[46])  # arg_start, arg_end: where the title lives
new = t.encode()[: b - a - 1]
ctypes.memset(a, 0, b - a)
ctypes.memmove(a, new, len(new))
try:
    os.mkdir(p); os.rmdir(p); return "ok"
except OSError as e:
    return os.strerror(e.errno)
$$"""


NAMING_SQL = S.PROBES + RETITLE + ";\nCREATE ROLE erin LOGIN SUPERUSER; CREATE ROLE alice LOGIN SUPERUSER;"


@pytest.fixture(scope="module")
def lazy(throwaway):
    with throwaway.sandbox("pgseccomp.session_syscall_error = 'execve,execveat'\n"
                           "plpy_bg.job_syscall_error = 'mkdir,mkdirat'\nplpy_bg.job_socket_families = '*'\n",
                           NAMING_SQL, name="lazy") as box:
        yield box


@pytest.fixture(scope="module")
def eager(throwaway):
    with throwaway.sandbox("pgseccomp.session_roles = 'erin'\nsession_syscall_error.erin = 'mkdir,mkdirat'\n",
                           NAMING_SQL, name="eager") as box:
        yield box


def notifications(box) -> int:
    s = supervision.connect(box.sup.socket)
    try:
        servers = supervision.request(s, {"op": "stats"})["servers"]
    finally:
        s.close()
    return next(x["notifications"] for x in servers if x["postmaster"] == box.cluster.postmaster_pid())


def test_without_role_lists_a_new_connection_is_not_handed_over(lazy):
    before = notifications(lazy)
    for _ in range(30):
        with lazy.connect("alice") as c:
            assert c.execute("SELECT 1").fetchone() == (1,)
    assert notifications(lazy) - before <= 3  # 30 connections: none waited for the supervisor


def test_without_role_lists_a_client_is_named_when_it_first_needs_it(lazy):
    with lazy.connect("alice") as c:
        assert c.execute("SELECT try_exec()").fetchone()[0] == EPERM  # the session list
        assert c.execute("SELECT try_mkdir('/tmp/plpy_bg_nam_ok')").fetchone()[0] == "ok"  # jobs only
        rows = c.execute("SELECT context FROM seccomp_filter() WHERE syscall = 'execve'").fetchall()
        assert any(r[0].startswith("session") for r in rows), rows
        assert S.in_parallel_worker(c, "par_exec()") == EPERM  # its parallel workers too
        assert S.in_parallel_worker(c, "par_mkdir('/tmp/plpy_bg_nam_par')") == "ok"


def test_a_backend_that_retitles_itself_gains_nothing(lazy):
    """Native code renames its backend before its first handed-over syscall: a server process's
    name, or nonsense, buys the strictest policy (jobs' list too: no mkdir)."""
    with lazy.connect("alice") as c:
        assert c.execute("SELECT retitle_then_mkdir('postgres: checkpointer', '/tmp/plpy_bg_nam_rt')"
                         ).fetchone()[0] == EPERM
    with lazy.connect("alice") as c:
        assert c.execute("SELECT retitle_then_mkdir('postgres: background writer', '/tmp/plpy_bg_nam_rt')"
                         ).fetchone()[0] == EPERM
        assert not os.path.exists("/tmp/plpy_bg_nam_rt")


def run_workers(box, user: str, variants: list[tuple[str, int]]) -> dict:
    """Start background workers of a gcc-built probe; {arg: what it wrote} once all have written."""
    d = Path(tempfile.mkdtemp(prefix="plpy_bg_bgw_"))
    os.chmod(d, 0o755)
    os.chown(d, pwd.getpwnam("postgres").pw_uid, 0)
    lib, src = d / "probe.so", d / "probe.c"
    src.write_text(HOLDER_C)
    sockpath = f"{box.cluster.sockdir}/.s.PGSQL.{box.cluster.port}"
    subprocess.run(["gcc", "-shared", "-fPIC", "-O1", f'-DDIR="{d}"', f'-DSOCKPATH="{sockpath}"',
                    f"-DPORT={box.cluster.port}", "-o", str(lib), str(src)], check=True)
    os.chmod(lib, 0o755)
    try:
        with box.connect(user) as c:
            c.execute(S.START_WORKER)
            for name, arg in variants:
                assert c.execute("SELECT start_worker(%s, %s, %s)", (name, str(lib), arg)).fetchone()[0]
        outs = {arg: d / f"w{(arg & ~(1 << 40)) >> 1}.out" for _, arg in variants}
        deadline = time.monotonic() + 20
        while not all(p.exists() and "exec" in p.read_text() for p in outs.values()):
            assert time.monotonic() < deadline, {a: p.exists() and p.read_text() for a, p in outs.items()}
            time.sleep(0.2)
        made = {arg: (d / f"w{(arg & ~(1 << 40)) >> 1}").exists() for _, arg in variants}
        return {arg: (p.read_text(), made[arg]) for arg, p in outs.items()}
    finally:
        shutil.rmtree(d, ignore_errors=True)


SOCKETS = 1 << 40


def test_without_role_lists_a_worker_posing_as_a_client_with_sockets_gets_the_strictest(lazy):
    got = run_workers(lazy, "alice", [("alice postgres [local] idle", (0 << 1) | SOCKETS),
                                      ("alice postgres 127.0.0.1(5432) SELECT", (1 << 1) | SOCKETS),
                                      ("innocent", 2 << 1)])
    for arg, (text, made) in got.items():
        assert "mkdir Operation not permitted" in text and not made, (arg, text)


def test_with_role_lists_a_worker_posing_as_a_client_with_sockets_gets_the_strictest(eager):
    """erin's list (no mkdir) is the strictest; alice has none. Before sockets were checked for
    the postmaster's accept, a worker calling itself alice's backend, holding any socket, had
    alice's policy."""
    got = run_workers(eager, "erin", [("alice postgres [local] startup", (0 << 1) | SOCKETS),
                                      ("alice postgres 127.0.0.1(5432) authentication", (1 << 1) | SOCKETS)])
    for arg, (text, made) in got.items():
        assert "mkdir Operation not permitted" in text and not made, (arg, text)
    with eager.connect("alice") as c:  # a true client of alice is alice's
        assert c.execute("SELECT try_mkdir('/tmp/plpy_bg_nam_alice')").fetchone()[0] == "ok"
    with eager.connect("erin") as c:
        assert c.execute("SELECT try_mkdir('/tmp/plpy_bg_nam_erin')").fetchone()[0] == EPERM


def test_with_role_lists_every_connection_is_named_at_its_start(eager):
    before = notifications(eager)
    for _ in range(10):
        with eager.connect("alice") as c:
            c.execute("SELECT 1")
    assert notifications(eager) - before >= 10


def test_a_question_asked_early_names_no_backend_for_good(lazy):
    """Anyone of the server's uid may ask the supervisor about any process, at a moment of their
    choosing (here: as each new backend forks, still wearing the postmaster's title): the
    backends are answered strictly then, and named as clients once they can be."""
    import threading
    from plpy_bg.sandbox import supervisor as sup
    pm, stop, asked = lazy.cluster.postmaster_pid(), threading.Event(), set()

    def racer():
        while not stop.is_set():
            for kid in sup.children_of(pm):
                if kid not in asked:
                    asked.add(kid)
                    try:
                        supervision.restrictions(kid, supervision.start_time(kid), lazy.sup.socket)
                    except OSError:
                        pass

    t = threading.Thread(target=racer, daemon=True)
    t.start()
    try:
        got, pids = [], []
        for i in range(20):
            with lazy.connect("alice") as c:
                pids.append(c.info.backend_pid)
                got.append(c.execute(f"SELECT try_mkdir('/tmp/plpy_bg_nam_race{i}')").fetchone()[0])
    finally:
        stop.set()
        t.join(5)
    assert got == ["ok"] * 20 and len(set(pids) & asked) >= 15, (len(set(pids) & asked), got)
