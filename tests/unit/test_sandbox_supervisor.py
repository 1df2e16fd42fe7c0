"""The supervisor's pure parts: the BPF evaluator against libseccomp's own programs, policies met,
job lists, titles read into roles, and what the global filter hands over."""
import errno
import os
import tempfile

import pytest

from plpy_bg.sandbox import bpf, config, engine
from plpy_bg.sandbox.preload import Plan
from plpy_bg.sandbox.supervisor import Cluster, Identity, Notif, role_candidates

P = config.Policy
ARCH_X86_64 = 0xC000003E
SOCKET = engine.syscall_number("socket")


def exported(policy: P) -> list:
    """The program libseccomp generates for `policy`, as the kernel would get it."""
    with tempfile.TemporaryFile() as f:
        engine.build(policy).export_bpf(f)
        f.seek(0)
        return bpf.decode(f.read())


def verdict(prog, name: str, args=(0,) * 6, arch=ARCH_X86_64) -> str:
    ret = bpf.run(prog, bpf.seccomp_data(engine.syscall_number(name), arch, 0, args))
    return {bpf.RET_ALLOW: "allow", bpf.RET_LOG: "log", bpf.RET_ERRNO: "error",
            bpf.RET_KILL_PROCESS: "kill", bpf.RET_KILL_THREAD: "kill"}[ret & bpf.ACTION_FULL]


JOB = P("error", {"allow": ("read", "write", "socket", "openat", "futex"), "log": ("mkdir",), "kill": ("ptrace",)},
        families=(1,))


@pytest.mark.parametrize("name", ["read", "write", "mkdir", "ptrace", "execve", "clone", "openat", "socket"])
def test_the_evaluator_agrees_with_libseccomp_programs(name):
    prog = exported(JOB)
    assert verdict(prog, name, (1, 0, 0, 0, 0, 0)) == JOB.action_of(name, (1,))


def test_socket_families_are_compared_on_the_first_argument():
    prog = exported(JOB)
    assert verdict(prog, "socket", (1, 1, 0, 0, 0, 0)) == "allow"  # AF_UNIX
    for fam in (2, 10, 16, 45, 46, 1 << 20):
        assert verdict(prog, "socket", (fam, 1, 0, 0, 0, 0)) == "error"
        assert JOB.action_of("socket", (fam,)) == "error"
    allow_default = P("allow", {}, families=(2,))
    prog = exported(allow_default)
    assert verdict(prog, "socket", (2, 1, 0, 0, 0, 0)) == "allow"
    assert verdict(prog, "socket", (1, 1, 0, 0, 0, 0)) == "error"
    assert verdict(prog, "socket", (99, 1, 0, 0, 0, 0)) == "error"


def test_another_architecture_is_killed_as_libseccomp_says():
    prog = exported(P("allow", {}))
    assert verdict(prog, "read", arch=0x40000003) == "kill"  # i386: libseccomp's bad-arch action


def test_the_errno_travels_in_the_return_value():
    prog = exported(P("allow", {"error": ("mkdir",)}))
    ret = bpf.run(prog, bpf.seccomp_data(engine.syscall_number("mkdir"), ARCH_X86_64, 0, (0,) * 6))
    assert ret & bpf.ACTION_FULL == bpf.RET_ERRNO and ret & 0xFFFF == errno.EPERM


@pytest.mark.parametrize("raw", [b"", b"\x06\x00\x00\x00", b"\x00" * 8 * 4097])
def test_bad_programs_are_refused(raw):
    with pytest.raises(bpf.BadProgram):
        bpf.decode(raw)


def test_a_program_that_runs_off_its_end_or_reads_outside_is_bad():
    with pytest.raises(bpf.BadProgram):
        bpf.run([(0x20, 0, 0, 0)], bpf.seccomp_data(0, ARCH_X86_64, 0, (0,) * 6))  # load, no return
    with pytest.raises(bpf.BadProgram):
        bpf.run([(0x20, 0, 0, 64), (0x06, 0, 0, 0)], bpf.seccomp_data(0, ARCH_X86_64, 0, (0,) * 6))


def test_meet_takes_the_most_restrictive_of_each():
    a = P("allow", {"error": ("mkdir",), "log": ("readlink",)})
    b = P("log", {"allow": ("mkdir",), "kill": ("ptrace",)}, families=(1, 2))
    c = P("allow", {}, families=(2, 10))
    m = config.meet([a, b, c])
    assert m.default == "log"
    assert (m.action_of("mkdir"), m.action_of("readlink"), m.action_of("ptrace")) == ("error", "log", "kill")
    assert m.families == (2,)


def test_job_lists_inherit_the_role_session_and_name_socket_families():
    get = config.getter({"plpy_bg.job_syscall_default": "error", "plpy_bg.job_syscall_allow": ",".join(config.ESSENTIAL) + ",socket",
                         "plpy_bg.job_syscall_error": "*", "plpy_bg.job_roles": "etl",
                         "job_socket_families.etl": "unix, inet6"})
    sess = P("allow", {"error": ("mkdir",)})
    j = config.job_policy(get, engine.known, "app", sess)
    assert j.default == "error" and j.families == () and j.action_of("mkdir") == "error"
    assert j.action_of("socket", (1,)) == "error"
    e = config.job_policy(get, engine.known, "etl", sess)
    assert e.families == (1, 10) and e.action_of("socket", (10,)) == "allow"
    unset = config.job_policy(config.getter({}), engine.known, None, sess)  # nothing said: the session's
    assert unset.action_of("mkdir") == "error" and unset.default == "allow" and unset.families == ()
    with pytest.raises(config.ConfigError, match='"plpy_bg.job_socket_families"') as ei:
        config.job_policy(config.getter({"plpy_bg.job_socket_families": "unix,carrier_pigeon"}),
                          engine.known, None, sess)
    assert "not a socket address family" in ei.value.detail


def test_titles_name_their_roles_and_every_split_counts():
    assert role_candidates("alice postgres [local] startup") == {"alice"}
    assert role_candidates("alice postgres 127.0.0.1(5432) authentication") == {"alice"}
    assert role_candidates("a b c [local] startup") == {"a", "a b"}
    assert role_candidates("walsender rep [local] startup") == {"walsender", "rep"}
    assert role_candidates("alice postgres [local] idle") == set()  # past its start: not believed
    assert role_candidates("checkpointer") == set()


def cluster(**roles) -> Cluster:
    g = P("allow", {"error": ("ptrace",)})
    return Cluster(fd=-1, pm=(1, 1), argv=["postgres"], cluster_name="15/main", glob=g, session=g,
                   session_roles=roles, job=P("error", {"allow": ("read",)}, families=()), job_roles={})


def test_a_title_that_splits_two_ways_gets_the_stricter_policy():
    c = cluster(**{"a": P("allow", {"error": ("mkdir",)}), "a b": P("allow", {"error": ("readlink",)})})
    p = c.session_of(role_candidates("a b db [local] startup"))
    assert p.action_of("mkdir") == "error" and p.action_of("readlink") == "error"


def test_a_title_of_another_shape_is_the_strictest():
    c = cluster()
    ident = c.classify(os.getpid(), b"postgres: something else\0")
    assert ident.kind == "unknown" and ident.policy == c.strictest
    assert c.strictest.action_of("write") == "error"  # the job policy takes part


def test_decide_applies_the_leaders_loaded_filters_to_a_parallel_worker():
    c = cluster()
    c.programs[(7, 7)] = [exported(P("allow", {"error": ("execve",)}))]
    ident = Identity("parallel", "parallel worker", c.session, (7, 7))
    n = Notif(nr=engine.syscall_number("execve"), arch=ARCH_X86_64)
    assert c.decide(ident, "execve", n) == ("error", errno.EPERM)
    n = Notif(nr=engine.syscall_number("mkdir"), arch=ARCH_X86_64)
    assert c.decide(ident, "mkdir", n) == ("allow", errno.EPERM)


def test_the_global_filter_hands_over_what_some_policy_restricts_and_never_a_fork():
    g = P("allow", {"error": ("ptrace",)})
    plan = Plan(g, P("allow", {"error": ("mkdir",)}), {"erin": P("allow", {"error": ("readlink", "clone")})},
                P("error", {"allow": ("read",)}, families=()), {}, "")
    n = plan.notify()
    assert {"mkdir", "readlink", "access", "execve", "socket", "openat"} <= n
    assert not n & {"clone", "clone3", "fork", "vfork", "ptrace", "seccomp", "prctl"}


def test_the_supervised_global_filter_refuses_clone_parent_and_hides_clone3():
    prog = exported_supervised(P("allow", {"error": ("ptrace",)}))
    assert verdict(prog, "clone", (0x8000 | 17, 0, 0, 0, 0, 0)) == "error"  # CLONE_PARENT | SIGCHLD
    assert verdict(prog, "clone", (0x01200011, 0, 0, 0, 0, 0)) == "allow"  # what fork() passes
    ret = bpf.run(prog, bpf.seccomp_data(engine.syscall_number("clone3"), ARCH_X86_64, 0, (0,) * 6))
    assert ret == bpf.RET_ERRNO | errno.ENOSYS  # glibc falls back to clone
    assert verdict(prog, "seccomp", (1, 8, 0, 0, 0, 0)) == "error"  # a new listener
    assert verdict(prog, "prctl", (22, 2, 0, 0, 0, 0)) == "error"  # PR_SET_SECCOMP
    assert verdict(prog, "prctl", (15, 0, 0, 0, 0, 0)) == "allow"
    assert verdict(prog, "ptrace") == "error"


def exported_supervised(policy: P) -> list:
    with tempfile.TemporaryFile() as f:
        engine.build(policy, frozenset({"access", "execve"})).export_bpf(f)
        f.seek(0)
        return bpf.decode(f.read())


def test_a_server_title_is_believed_only_at_its_own_slot_of_the_postmasters_table(monkeypatch):
    import struct
    import plpy_bg.sandbox.supervisor as S
    c = cluster()
    # the postmaster's static data: WalWriterPID, CheckpointerPID, BgWriterPID side by side at 40..42;
    # a setting someone made equal to a worker's pid (777) sits a few words away
    words = [0] * 64
    words[40], words[41], words[42], words[36] = 103, 101, 102, 777
    titles = {101: "checkpointer", 102: "background writer", 103: "walwriter", 777: "checkpointer"}
    monkeypatch.setattr(Cluster, "client_socket", lambda self, pid: 0)
    monkeypatch.setattr(S, "children_of", lambda pid: [101, 102, 103])  # at calibration: no worker yet
    monkeypatch.setattr(S, "title", lambda pid: f"postgres: 15/main: {titles[pid]}\0".encode())
    monkeypatch.setattr(Cluster, "postmaster_data", lambda self, with_base=False: (1000, tuple(words)))
    monkeypatch.setattr(S, "read_mem", lambda pid, addr, n: struct.pack("<i", words[(addr - 1000) // 4]))
    assert c.classify(101, b"postgres: 15/main: checkpointer\0").kind == "server"
    assert c.aux_slots["checkpointer"] == 1000 + 4 * 41 and c.aux_slots["walreceiver"] == 1000 + 4 * 39
    with pytest.raises(S.Provisional):
        c.classify(777, b"postgres: 15/main: checkpointer\0")  # a worker naming itself so
    with pytest.raises(S.Provisional):
        c.classify(102, b"postgres: 15/main: walwriter\0")  # a real pid, in another process's slot
    assert c.classify(303, b"postgres: 15/main: logical replication launcher\0").policy == c.strictest


def test_a_table_not_laid_out_as_expected_believes_no_one(monkeypatch):
    import plpy_bg.sandbox.supervisor as S
    c = cluster()
    words = [0] * 64
    words[41], words[20] = 101, 102  # the background writer is not beside the checkpointer
    titles = {101: "checkpointer", 102: "background writer"}
    monkeypatch.setattr(Cluster, "client_socket", lambda self, pid: 0)
    monkeypatch.setattr(S, "children_of", lambda pid: [101, 102])
    monkeypatch.setattr(S, "title", lambda pid: f"postgres: 15/main: {titles[pid]}\0".encode())
    monkeypatch.setattr(Cluster, "postmaster_data", lambda self, with_base=False: (1000, tuple(words)))
    with pytest.raises(S.Provisional):
        c.classify(101, b"postgres: 15/main: checkpointer\0")
    assert c.aux_slots == {}


def test_meet_keeps_a_family_limited_socket_in_its_list():
    j = P("error", {"allow": ("read", "socket")}, families=(1,))
    m = config.meet([j])
    assert m.listed_action("socket") == "allow" and m.families == (1,)
    assert m.action_of("socket", (1,)) == "allow" and m.action_of("socket", (2,)) == "error"


def test_accept_is_not_handed_over_for_a_policy_that_refuses_every_socket():
    g = P("allow", {})
    no_sockets = P("error", {"allow": ("read", "socket")}, families=())
    assert "accept4" not in Plan(g, g, {}, no_sockets, {}, "").notify()
    # a policy that lets socket() through but not accept: the supervisor must see accept
    listener_denied = P("allow", {"error": ("accept4",)})
    assert "accept4" in Plan(g, listener_denied, {}, no_sockets, {}, "").notify()


def test_only_a_connection_a_listener_accepted_is_a_client_socket(tmp_path):
    """A socketpair, a connection the process made, a listener of its own bound where the
    server's socket file was: none is a client socket; what the listener accepted is."""
    import subprocess
    import sys
    import plpy_bg.sandbox.supervisor as S
    path = str(tmp_path / "srv.sock")
    code = f"""import os, socket, sys, time
srv = socket.socket(socket.AF_UNIX); srv.bind({path!r}); srv.listen()
pair = socket.socketpair()
out = socket.socket(socket.AF_UNIX); out.connect({path!r}); acc, _ = srv.accept()
tcp = socket.socket(); tcp.bind(("127.0.0.1", 0)); tcp.listen()
tout = socket.create_connection(tcp.getsockname()); tacc, _ = tcp.accept()
os.rename({path!r}, {path!r} + ".orig")
fake = socket.socket(socket.AF_UNIX); fake.bind({path!r}); fake.listen()
fout = socket.socket(socket.AF_UNIX); fout.connect({path!r}); facc, _ = fake.accept()
print(srv.fileno(), tcp.fileno(), pair[0].fileno(), out.fileno(), acc.fileno(), tout.fileno(), tacc.fileno(),
      fout.fileno(), facc.fileno(), flush=True)
time.sleep(600)  # holds its sockets open until the test kills it
"""
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        srv, tcp, pair, out, acc, tout, tacc, fout, facc = map(int, holder.stdout.readline().split())
        c = cluster()
        c.pm = (holder.pid, 0)  # the holder's listeners stand for the postmaster's: only srv and tcp listen
        c.learn_listeners()
        assert len(c.listeners["unix"]) == 2 and len(c.listeners["inet"]) == 1  # srv's file, and fake's
        c.listeners["unix"] = {S.unix_bound_file(S.socket_ino(holder.pid, srv))[0]}  # as learned before the swap
        fds = dict(S.socket_fds(holder.pid))
        verdicts = {fd: c.accepted(holder.pid, fd, fds[fd]) for fd in (srv, tcp, pair, out, acc, tout, tacc, fout, facc)}
        assert verdicts == {srv: False, tcp: False, pair: False, out: False, acc: True, tout: False, tacc: True,
                            fout: False, facc: False}
        assert [fd for fd, _ in S.socket_fds(holder.pid, acc)][0] == acc  # the hint first
        assert c.client_socket(holder.pid) == acc and c.socket_hint == acc
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()


def test_lazy_naming_only_without_role_lists():
    assert not cluster().eager  # no role has lists of its own
    assert cluster(erin=P("allow", {"error": ("mkdir",)})).eager
    lazy = Cluster(fd=-1, pm=(1, 0), argv=["postgres"], cluster_name="", glob=P("allow", {}),
                   session=P("allow", {"error": ("execve",)}), session_roles={}, job=P("error", {"allow": ("read",)}),
                   job_roles={})
    assert not lazy.eager and lazy.job_of(lazy.client) == lazy.job
    lazy.listeners = {"unix": set(), "inet": set()}
    assert lazy.classify(5, b"postgres: innocent\0").policy == lazy.strictest


def test_a_question_never_names_a_process_for_good_before_it_can_be_named(monkeypatch):
    """Anyone may ask about a process at a moment of their choosing: one still wearing the
    postmaster's title, or claiming what the postmaster has not confirmed yet, is answered
    strictly, and neither kept so nor charged a try; named once it can be."""
    import plpy_bg.sandbox.supervisor as S
    c = cluster()
    c.eager = False
    shown = {"t": c.pm_title}
    monkeypatch.setattr(S, "title", lambda pid: shown["t"])
    monkeypatch.setattr(Cluster, "client_socket", lambda self, pid: 7)
    c.aux_slots = {}  # calibrated
    for _ in range(S.PROVISIONAL_TRIES + 5):
        assert c.identify(42, c.pm[0], (42, 9), asked=True).policy == c.strictest
    assert (42, 9) not in c.known and (42, 9) not in c.pending
    shown["t"] = b"postgres: 15/main: alice db [local] idle\0"
    assert c.identify(42, c.pm[0], (42, 9), asked=True).kind == "client"
    monkeypatch.setattr(Cluster, "client_socket", lambda self, pid: 0)
    shown["t"] = b"postgres: 15/main: checkpointer\0"  # not in the postmaster's table (yet)
    for _ in range(S.PROVISIONAL_TRIES + 5):
        assert c.identify(43, c.pm[0], (43, 9), asked=True).policy == c.strictest
    assert (43, 9) not in c.known and (43, 9) not in c.pending


def test_a_nologin_roles_job_login_gets_the_strictest_policies_when_roles_have_lists():
    """plpy_bg_job_<oid> logs in for a NOLOGIN role: its title cannot say whose lists apply."""
    import plpy_bg.sandbox.supervisor as S
    c = cluster(**{"erin": P("allow", {"error": ("mkdir",)})})
    assert c.session_of({"plpy_bg_job_16384"}) == c.sessions_strictest
    ident = S.Identity(S.CLIENT, "client backend", c.session_of({"plpy_bg_job_16384"}), roles=("plpy_bg_job_16384",))
    assert c.job_of(ident) == c.strictest
    assert c.session_of({"plpy_bg_job_x"}) == c.session  # only the exact shape is one
