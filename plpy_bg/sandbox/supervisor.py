"""The seccomp supervisor: answers the syscalls a server's global filter hands it, by who calls.

    python3 -m plpy_bg.sandbox.supervisor [--socket PATH] [--user postgres]    (as root)

The preload helper loads the global filter with SECCOMP_RET_USER_NOTIF for
the syscalls that some session or job policy restricts, and for the few
that mark who a process is (access, execve, seccomp). It passes the listener
fd here and execs postgres. For each notification this process names the
calling process and answers CONTINUE or an errno:

  postmaster, PostgreSQL's auxiliary processes     the global filter only
  a client backend (it holds a client socket)       its role's session policy
  a parallel worker ("parallel worker for PID L")    its leader's policy and the filters
                                                     the leader loaded (evaluated as BPF)
  any other process                                  what its nearest known ancestor has
  an autovacuum worker (it runs table owners' code), another background worker, or a
  process no ancestor of which is known              the strictest of all policies

A process is named once per (pid, start time), at its first notification
after it left the postmaster's fork: for a backend that is at the latest its
InitPostgres access() of the database directory, before any of its user's
code can run and rewrite its title. Children and threads inherit the name.
Filters a process loads later are read from its memory when its seccomp()
call is notified, before the kernel loads them. This runs as root, not as
the server's OS user: a backend can neither signal it nor take its fds.
"""
from __future__ import annotations

import argparse
import base64
import ctypes
import errno
import json
import logging
import os
import pwd
import select
import signal
import socket
import struct
import sys
import threading
import time
from dataclasses import dataclass, field

from plpy_bg.jobs import identmap
from plpy_bg.sandbox import bpf, config, supervision
from plpy_bg.sandbox.supervision import read_proc, start_time, stat_fields

log = logging.getLogger("plpy_bg.supervisor")

# linux/seccomp.h ioctls on the listener
NOTIF_RECV = 0xC0502100
NOTIF_SEND = 0xC0182101
NOTIF_ID_VALID = 0x40082102
NOTIF_SET_FLAGS = 0x40082104
FLAG_CONTINUE = 1
FD_SYNC_WAKE_UP = 1
SECCOMP_SET_MODE_FILTER = 1
MAX_PROGRAMS = 32
MAX_REGISTRATIONS = 64
CALIBRATION_TRIES = 25  # looks at the postmaster's table, 20 ms apart
PROVISIONAL_TRIES = 40  # an unconfirmed claim is asked again this often, ever later (about 4 s in all)
MAX_REQUESTS = 32  # requests served at once; more are closed unanswered
REQUEST_TIMEOUT = 5.0
ANSWER_THREADS = 1  # RECV blocks; a second reader could wait past the server's end

_libc = ctypes.CDLL("libc.so.6", use_errno=True)
_libc.ioctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p)


def _ioctl(fd: int, req: int, buf) -> int:
    """ioctl with a pointer to `buf`, or with `buf` itself when it is an int (SET_FLAGS takes a value)."""
    r = _libc.ioctl(fd, req, buf if isinstance(buf, int) else ctypes.addressof(buf))
    if r < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return r


class Notif(ctypes.Structure):
    _fields_ = [("id", ctypes.c_uint64), ("pid", ctypes.c_uint32), ("flags", ctypes.c_uint32),
                ("nr", ctypes.c_int32), ("arch", ctypes.c_uint32), ("ip", ctypes.c_uint64),
                ("args", ctypes.c_uint64 * 6)]


class Resp(ctypes.Structure):
    _fields_ = [("id", ctypes.c_uint64), ("val", ctypes.c_int64), ("error", ctypes.c_int32),
                ("flags", ctypes.c_uint32)]


# ---- /proc, read as root -------------------------------------------------------------

def status_fields(pid: int, *names: bytes) -> dict[bytes, int]:
    """Integer fields of /proc/<pid>/status (Tgid, PPid, Seccomp, ...)."""
    out = {}
    for line in read_proc(f"/proc/{pid}/status", 8192).split(b"\n"):
        key = line.split(b":", 1)[0]
        if key in names:
            out[key] = int(line.split()[1])
    return out


def status_ids(tid: int) -> tuple[int, int]:
    """(tgid, ppid) of a thread."""
    f = status_fields(tid, b"Tgid", b"PPid")
    if len(f) != 2:
        raise ProcessLookupError(tid)
    return f[b"Tgid"], f[b"PPid"]


def caller(tid: int) -> tuple[int, int, int]:
    """(tgid, ppid, start time of the tgid) of a calling thread: one read of its stat when it is
    its process's only thread (a backend's usual case)."""
    fields = stat_fields(tid)
    if int(fields[17]) == 1:  # num_threads: the thread is the process
        return tid, int(fields[1]), int(fields[19])
    tgid, ppid = status_ids(tid)
    return tgid, ppid, start_time(tgid)


def seccomp_mode(pid: int) -> int:
    return status_fields(pid, b"Seccomp").get(b"Seccomp", 0)


def title(pid: int) -> bytes:
    return read_proc(f"/proc/{pid}/cmdline")


_libc_syscall = _libc.syscall
_libc_syscall.restype = ctypes.c_long
SYS_PIDFD_GETFD = 438
NETLINK_SOCK_DIAG, SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, NLMSG_ERROR = 4, 20, 1, 2
UDIAG_SHOW_VFS, UNIX_DIAG_VFS, TCP_ESTABLISHED = 0x2, 1, 1


def socket_ino(pid: int, fd: int) -> int:
    """The socket inode behind a process's fd, or 0 when the fd is not a socket."""
    try:
        link = os.readlink(f"/proc/{pid}/fd/{fd}")
    except OSError:
        return 0
    return int(link[8:-1]) if link.startswith("socket:[") else 0


def socket_fds(pid: int, hint: int = 0):
    """(fd, socket inode) of each socket the process holds beyond its standard streams (which
    systemd may make a socket for every process of the server); `hint` is looked at first: a
    backend keeps its client socket at the number the postmaster's accept() gave it, much the
    same each time."""
    if hint > 2:
        ino = socket_ino(pid, hint)
        if ino:
            yield hint, ino
    with os.scandir(f"/proc/{pid}/fd") as entries:
        names = [e.name for e in entries]
    for name in names:
        fd = int(name)
        if fd > 2 and fd != hint:
            ino = socket_ino(pid, fd)
            if ino:
                yield fd, ino


def peer_fd(pid: int, fd: int) -> int:
    """A copy of another process's fd (pidfd_getfd: root may, the server's uid may not)."""
    pidfd = os.pidfd_open(pid)
    try:
        got = _libc_syscall(ctypes.c_long(SYS_PIDFD_GETFD), ctypes.c_long(pidfd), ctypes.c_long(fd),
                            ctypes.c_long(0))
        if got < 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))
        return got
    finally:
        os.close(pidfd)


def unix_bound_file(ino: int) -> tuple | None:
    """For a Unix socket: ((inode, device) of the file it is bound to, or None; whether it is
    connected). A socket that accept() returned carries its listener's file, even when that file
    was since renamed or replaced. None: not a Unix socket."""
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC, NETLINK_SOCK_DIAG)
    try:
        req = struct.pack("=BBHIIIII", socket.AF_UNIX, 0, 0, 0xFFFFFFFF, ino, UDIAG_SHOW_VFS, 0xFFFFFFFF, 0xFFFFFFFF)
        s.sendto(struct.pack("=IHHII", 16 + len(req), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, 1, 0) + req, (0, 0))
        data = s.recv(8192)
    finally:
        s.close()
    length, kind = struct.unpack_from("=IH", data)
    if kind == NLMSG_ERROR:
        return None
    connected = data[18] == TCP_ESTABLISHED  # unix_diag_msg's state
    off = 32  # nlmsghdr, then unix_diag_msg
    while off + 4 <= min(length, len(data)):
        alen, atype = struct.unpack_from("=HH", data, off)
        if alen < 4:
            break
        if atype == UNIX_DIAG_VFS:
            return struct.unpack_from("=II", data, off + 4), connected
        off += (alen + 3) & ~3
    return None, connected


def socket_name(pid: int, fd: int) -> tuple:
    """(family, address, listening, a connected stream) of a process's socket, read from a copy of it."""
    dup = peer_fd(pid, fd)
    with socket.socket(fileno=dup) as s:
        try:
            s.getpeername()
            connected = s.type == socket.SOCK_STREAM
        except OSError:
            connected = False
        return s.family, s.getsockname(), s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN), connected


def read_mem(pid: int, addr: int, n: int) -> bytes:
    fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY | os.O_CLOEXEC)
    try:
        data = os.pread(fd, n, addr)
    finally:
        os.close(fd)
    if len(data) != n:
        raise OSError(errno.EFAULT, "short read of the caller's memory")
    return data


# ---- who a process is ------------------------------------------------------------------

SERVER, FRESH, CLIENT, PARALLEL, UNKNOWN = "server", "fresh", "client", "parallel", "unknown"
STARTUP_STATES = ("authentication", "startup")  # a backend's title before its first query
# PostgreSQL's auxiliary processes run no one's SQL: the global filter alone, once the postmaster's
# own memory confirms the process is one (a background worker may take any title). An autovacuum
# worker runs table owners' code (index expressions, ANALYZE), and another background worker
# whatever its library says: the strictest policy.
SERVER_TITLES = ("checkpointer", "background writer", "walwriter", "startup", "archiver", "logger",
                 "autovacuum launcher", "walreceiver")



@dataclass(frozen=True)
class Identity:
    kind: str
    label: str
    policy: config.Policy | None = None  # None: the global filter alone
    leader: tuple | None = None  # (pid, start) whose loaded filters also count (a parallel worker's)
    roles: tuple = ()  # a client backend's login role (every candidate its title allows)


SERVER_ID = Identity(SERVER, "server process")


class Provisional(Exception):
    """A claim not (yet) borne out: answer this notification strictly, name the process later."""


def children_of(pid: int) -> list[int]:
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if int(stat_fields(int(name))[1]) == pid:
                    out.append(int(name))
            except (OSError, ValueError, IndexError):
                continue
    return out


def shared_segments(pid: int) -> set[str]:
    """The POSIX shared memory segments (PostgreSQL's DSM) a process maps."""
    out = set()
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            i = line.find("/dev/shm/PostgreSQL.")
            if i >= 0:
                out.add(line[i:].strip())
    return out


def role_candidates(rest: str) -> set[str]:
    """The roles a client backend's title can name: 'U D H STATE' or 'walsender U H STATE'.

    Role and database names may hold spaces, so every split is a candidate
    and the caller applies the strictest of their policies.
    """
    tokens = rest.split(" ")
    if len(tokens) < 4 or tokens[-1] not in STARTUP_STATES:
        return set()
    ud = tokens[:-2]  # the host never holds a space
    out = {" ".join(ud[:i]) for i in range(1, len(ud))}
    if ud[0] == "walsender" and len(ud) >= 2:
        out.add(" ".join(ud[1:]))
    return out


def server_title(rest: str) -> str | None:
    """The auxiliary process a title after the prefix names ("checkpointer", ...), if any."""
    return next((t for t in SERVER_TITLES if rest == t or rest.startswith(t + " ")), None)


def is_shadow(role: str) -> bool:
    """plpy_bg_job_<oid>: the login of a NOLOGIN role's jobs (identmap.SHADOW_PREFIX)."""
    return role.startswith(identmap.SHADOW_PREFIX) and role[len(identmap.SHADOW_PREFIX):].isdigit()


def client_shaped(rest: str) -> bool:
    """Whether a title after the prefix reads 'U D H ACTIVITY' (or 'walsender U H ACTIVITY'): a host
    ('[local]' or 'address(port)') after at least two words."""
    tokens = rest.split(" ")
    return any(t == "[local]" or (t.endswith(")") and "(" in t) for t in tokens[2:-1])


@dataclass
class Cluster:
    """One registered server: its policies, its listener and what is known of its processes."""
    fd: int
    pm: tuple  # (pid, start time) of the postmaster
    argv: list
    cluster_name: str
    glob: config.Policy
    session: config.Policy
    session_roles: dict
    job: config.Policy
    job_roles: dict
    known: dict = field(default_factory=dict)  # (pid, start) -> Identity
    programs: dict = field(default_factory=dict)  # (pid, start) -> [decoded BPF programs]
    raw_programs: dict = field(default_factory=dict)  # (pid, start) -> [the same, as loaded]
    lock: threading.Lock = field(default_factory=threading.Lock)
    names: dict = field(default_factory=dict)
    notifications: int = 0
    answering: float = 0.0  # seconds spent answering notifications (stats: the supervisor's cost)
    exec_path: str = ""  # the server's execute-only binary (see preload.nondumpable)
    aux_slots: dict | None = None  # title -> address of the postmaster's pid variable (see calibrate)
    pending: dict = field(default_factory=dict)  # (pid, start) -> (tries, next try): unconfirmed claims
    socket_hint: int = 0  # the fd number of the last client socket found (see socket_fds)
    listeners: dict | None = None  # what the postmaster listens on (see learn_listeners)

    def __post_init__(self):
        self.pm_title = b"\0".join(a.encode() for a in self.argv) + b"\0"
        self.prefix = "postgres: " + (f"{self.cluster_name}: " if self.cluster_name else "")
        self.sessions_strictest = config.meet([self.session, *self.session_roles.values()])
        self.strictest = config.meet([self.sessions_strictest, self.job, *self.job_roles.values()])
        self.fresh = Identity(FRESH, "new server process", self.strictest)
        self.unconfirmed = Identity(UNKNOWN, "unconfirmed server process", self.strictest)
        self.eager = config.named_at_start(self.session_roles, self.job_roles)
        self.client = Identity(CLIENT, "client backend", self.session)  # when roles have no lists of their own
        self.naming = threading.RLock()  # one naming at a time: notifications and questions both name

    @classmethod
    def from_registration(cls, fd: int, pm_pid: int, msg: dict) -> "Cluster":
        P = config.Policy.from_dict
        pol = msg["policies"]
        return cls(fd=fd, pm=(pm_pid, start_time(pm_pid)), argv=list(msg["argv"]), exec_path=msg.get("exec_path") or "",
                   cluster_name=msg.get("cluster_name") or "", glob=P(pol["global"]),
                   session=P(pol["session"]), session_roles={r: P(p) for r, p in pol["session_roles"].items()},
                   job=P(pol["job"]), job_roles={r: P(p) for r, p in pol["job_roles"].items()})

    def session_of(self, roles: set[str]) -> config.Policy:
        if any(is_shadow(r) for r in roles):  # a NOLOGIN role's job login: whose lists, the title cannot say
            return self.sessions_strictest
        pols = [self.session_roles.get(r, self.session) for r in sorted(roles)]
        return pols[0] if len(pols) == 1 else config.meet(pols)

    def classify(self, pid: int, text: bytes) -> Identity:
        """Name a postmaster child that has left the fork, before any user code ran in it."""
        shown = text.split(b"\0", 1)[0].decode("utf-8", "replace").rstrip()
        if not shown.startswith(self.prefix):
            return Identity(UNKNOWN, f"process titled {shown[:80]!r}", self.strictest)
        rest = shown[len(self.prefix):]
        if rest.startswith("parallel worker for PID "):
            try:
                lpid = int(rest.split()[4])
                lk = (lpid, start_time(lpid))
            except (ValueError, IndexError, OSError):
                return Identity(UNKNOWN, "parallel worker of no live leader", self.strictest)
            leader = self.known.get(lk)
            if leader is None or leader.kind not in (CLIENT, PARALLEL):
                return Identity(UNKNOWN, f"parallel worker of unidentified PID {lpid}", self.strictest)
            if not self.shares_parallel_segment(pid, lpid):
                raise Provisional  # before it attached its leader's segment, or not its worker at all
            return Identity(PARALLEL, f"parallel worker of {leader.label} (PID {lpid})", leader.policy, lk)
        if not self.client_socket(pid):  # no client: a server process, autovacuum or a background worker
            title_of = server_title(rest)
            if title_of is not None:
                if self.in_postmaster_table(pid, title_of):
                    return SERVER_ID
                raise Provisional  # the postmaster has not noted it yet, or it is not what it says
            return Identity(UNKNOWN, f"server process titled {shown[:80]!r}", self.strictest)
        if not self.eager:  # every client backend runs under the same policies: no role to read
            if not client_shaped(rest):
                return Identity(UNKNOWN, f"client backend titled {shown[:80]!r}", self.strictest)
            return self.client
        roles = role_candidates(rest)
        if not roles:
            return Identity(UNKNOWN, f"client backend titled {shown[:80]!r}", self.strictest)
        if self.aux_slots is None:  # the last moment at which no client's code has run
            self.calibrate()
        label = "role " + " or ".join(json.dumps(r) for r in sorted(roles))
        return Identity(CLIENT, f"client backend of {label}", self.session_of(roles), roles=tuple(sorted(roles)))

    def client_socket(self, pid: int) -> int:
        """The fd of a connection the postmaster accepted on one of its listening sockets, or 0: a
        socket the process made (a socketpair, a connection to the server or to a listener of its
        own, even one bound where the server's socket file was) does not count."""
        if self.listeners is None:
            self.learn_listeners()
        for fd, ino in socket_fds(pid, self.socket_hint):
            if self.accepted(pid, fd, ino):
                self.socket_hint = fd
                return fd
        return 0

    def accepted(self, pid: int, fd: int, ino: int) -> bool:
        try:
            unix = unix_bound_file(ino)
            if unix is not None:  # the file its listener was bound to, whatever is at that path now
                return unix[1] and unix[0] in self.listeners["unix"]
            family, name, listening, connected = socket_name(pid, fd)
        except OSError:
            return False
        if listening or not connected or family not in (socket.AF_INET, socket.AF_INET6):
            return False  # a datagram socket may share a TCP listener's address and port
        return any(family == lf and name[1] == lport and lhost in ("0.0.0.0", "::", name[0])
                   for lf, lhost, lport in self.listeners["inet"])

    def learn_listeners(self) -> None:
        """The postmaster's listening sockets: only the postmaster opens or closes its fds."""
        out = {"unix": set(), "inet": set()}
        for fd, ino in socket_fds(self.pm[0]):
            try:
                family, name, listening, _ = socket_name(self.pm[0], fd)
                if not listening:
                    continue
                if family == socket.AF_UNIX:
                    unix = unix_bound_file(ino)
                    if unix is not None and unix[0] is not None:
                        out["unix"].add(unix[0])
                elif family in (socket.AF_INET, socket.AF_INET6):
                    out["inet"].add((family, name[0], name[1]))
            except OSError:
                continue
        self.listeners = out

    def in_postmaster_table(self, pid: int, title_of: str) -> bool:
        """Whether the postmaster's own static variable for `title_of` (CheckpointerPID, ...: no
        backend can write the postmaster's memory) holds `pid`. The variables' places are learned
        once, before any backend's code ran (see `calibrate`); a background worker's pid is kept
        in the postmaster's heap, whatever the worker calls itself."""
        if self.aux_slots is None:
            self.calibrate()
        slot = (self.aux_slots or {}).get(title_of)
        if slot is None:
            return False
        try:
            return struct.unpack("<i", read_mem(self.pm[0], slot, 4))[0] == pid
        except OSError:
            return False

    def calibrate(self) -> None:
        """Find the postmaster's static pid variables of its auxiliary processes, while only
        PostgreSQL's own code has run (before the first client backend is named): the live
        checkpointer's pid must be in exactly one place, with the background writer's and WAL
        writer's beside it as PostgreSQL 15 declares them (StartupPID, BgWriterPID,
        CheckpointerPID, WalWriterPID, WalReceiverPID, AutoVacPID, PgArchPID, SysLoggerPID, laid
        out from the highest address down). A process started while this looks (its title set
        before the postmaster noted its pid) makes it look again; anything else: no process is
        believed auxiliary."""
        why = ""
        for _ in range(CALIBRATION_TRIES):
            named = self.aux_children()
            base, words = self.postmaster_data(with_base=True)
            if named != self.aux_children():
                why = "auxiliary processes started meanwhile"
            else:
                slots, why = self.aux_layout(named, base, words)
                if slots is not None:
                    self.aux_slots = slots
                    return
            time.sleep(0.02)
        log.warning("the postmaster's table of auxiliary processes was not found (%s): none is believed", why)
        self.aux_slots = {}

    def aux_children(self) -> dict:
        """title -> pids of the postmaster's children titled as an auxiliary process."""
        named = {}
        for kid in children_of(self.pm[0]):
            try:
                shown = title(kid).split(b"\0", 1)[0].decode("utf-8", "replace").rstrip()
            except OSError:
                continue
            rest = shown[len(self.prefix):] if shown.startswith(self.prefix) else ""
            t = server_title(rest)
            if t is not None:
                named.setdefault(t, []).append(kid)
        return named

    @staticmethod
    def aux_layout(named: dict, base: int, words) -> tuple[dict | None, str]:
        ckpt = named.get("checkpointer", [])
        places = [i for i, w in enumerate(words) if len(ckpt) == 1 and w == ckpt[0]]
        if len(places) != 1:
            return None, f"the checkpointer's pid is in {len(places)} places"
        c = places[0]
        layout = {"startup": 2, "background writer": 1, "checkpointer": 0, "walwriter": -1,
                  "walreceiver": -2, "autovacuum launcher": -3, "archiver": -4, "logger": -5}
        for t, off in layout.items():
            live = named.get(t, [])
            if len(live) > 1 or (live and not 0 <= c + off < len(words)) or (live and words[c + off] != live[0]):
                return None, f"not laid out as expected ({t})"
        return {t: base + 4 * (c + off) for t, off in layout.items() if 0 <= c + off < len(words)}, ""

    def calibrate_soon(self, timeout: float = 120.0) -> None:
        """Calibrate as soon as the checkpointer and the background writer run, which PostgreSQL
        starts before it admits any client: then no client's code has run yet, whether or not a
        backend is named as it starts."""
        deadline = time.monotonic() + timeout
        while self.aux_slots is None and time.monotonic() < deadline:
            named = self.aux_children()
            if "checkpointer" in named and "background writer" in named:
                with self.naming:
                    if self.aux_slots is None:
                        self.calibrate()
                return
            time.sleep(0.01)

    def postmaster_data(self, with_base: bool = False):
        """The postmaster's writable data and bss (the binary's rw mapping and the anonymous one that
        follows it, contiguous), as 32-bit words (and the address of the first)."""
        with open(f"/proc/{self.pm[0]}/maps") as f:
            maps = f.read().splitlines()
        ranges = []
        for i, line in enumerate(maps):
            parts = line.split()
            if len(parts) >= 6 and parts[5] == self.exec_path and parts[1] == "rw-p":
                a, b = (int(x, 16) for x in parts[0].split("-"))
                ranges.append((a, b))
                nxt = maps[i + 1].split() if i + 1 < len(maps) else []
                if len(nxt) == 5 and int(nxt[0].split("-")[0], 16) == b:
                    ranges.append(tuple(int(x, 16) for x in nxt[0].split("-")))
        data = b"".join(read_mem(self.pm[0], a, b - a) for a, b in ranges)
        words = struct.unpack(f"<{len(data) // 4}i", data[:len(data) // 4 * 4])
        return (ranges[0][0] if ranges else 0, words) if with_base else words

    def shares_parallel_segment(self, pid: int, leader: int) -> bool:
        """Whether `pid` maps a shared memory segment of its claimed leader that neither the
        postmaster nor any other process of the server maps but the leader's parallel workers:
        the segment the leader made for this parallel query."""
        mine = shared_segments(pid) & shared_segments(leader)
        mine -= shared_segments(self.pm[0])
        if not mine:
            return False
        claim = f"{self.prefix}parallel worker for PID {leader}".encode()
        for other in children_of(self.pm[0]):
            if other in (pid, leader) or not mine:
                continue
            try:
                if title(other).startswith(claim):
                    continue
                mine -= shared_segments(other)
            except OSError:
                continue
        return bool(mine)

    def inherit(self, ppid: int) -> Identity:
        """A process forked by a backend (or deeper): its nearest known ancestor's identity."""
        p = ppid
        for _ in range(64):
            if p <= 1 or p == self.pm[0]:
                break
            try:
                k = (p, start_time(p))
                up = status_ids(p)[1]
            except OSError:
                break
            if k in self.known:
                return self.known[k]
            if up == self.pm[0] and not self.eager:
                return self.identify(p, up, k, asked=True)  # the backend it descends from, named now
            p = up
        return Identity(UNKNOWN, "process of no known ancestor", self.strictest)

    def identify(self, tgid: int, ppid: int, key: tuple, asked: bool = False) -> Identity:
        """The process's identity, named now if it has none. `asked`: someone asked about it (at
        a moment of their choosing): a process not yet nameable is answered strictly, and neither
        kept so nor charged a try."""
        ident = self.known.get(key)
        if ident is not None:
            return ident
        with self.naming:
            return self._identify(tgid, ppid, key, asked)

    def _identify(self, tgid: int, ppid: int, key: tuple, asked: bool) -> Identity:
        ident = self.known.get(key)
        if ident is not None:
            return ident
        if key == self.pm:
            return SERVER_ID
        if ppid == self.pm[0]:
            text = title(tgid)
            if text == self.pm_title:  # forked, not yet told what it is (or a worker pretending)
                return self.fresh
            tries, next_try = self.pending.get(key, (0, 0.0))
            if time.monotonic() < next_try:
                return self.unconfirmed  # asked again only after a pause: a claim costs a few reads of /proc
            try:
                ident = self.classify(tgid, text)
            except Provisional:
                if asked:
                    return self.unconfirmed
                if tries < PROVISIONAL_TRIES:
                    self.pending[key] = (tries + 1, time.monotonic() + 0.005 * (tries + 1))
                    return self.unconfirmed
                ident = self.unconfirmed  # never borne out: the strictest policy for good
            self.pending.pop(key, None)
        else:
            ident = self.inherit(ppid)
            if ident is self.fresh or ident is self.unconfirmed:
                return ident  # its ancestor is not nameable yet: neither is it
        with self.lock:
            return self.known.setdefault(key, ident)

    def job_of(self, ident: Identity) -> config.Policy:
        """The job policy of a login role as the server started with it (strictest of candidates;
        no role known: the strictest of all; no role with lists of its own: the job policy)."""
        if ident is self.client:
            return self.job
        if any(is_shadow(r) for r in ident.roles):
            return self.strictest
        pols = [self.job_roles.get(r, self.job) for r in ident.roles]
        return config.meet(pols) if pols else self.strictest

    def lookup(self, pid: int) -> tuple[tuple, Identity] | None:
        try:
            key = (pid, start_time(pid))
            ppid = status_ids(pid)[1]
        except OSError:
            return None
        ident = self.known.get(key)
        if ident is None and ppid == self.pm[0] and not self.eager:
            ident = self.identify(pid, ppid, key, asked=True)  # named when first asked about
        elif ident is None and ppid != self.pm[0]:
            ident = self.inherit(ppid)
            if ident.kind == UNKNOWN:
                return None
        return None if ident is None else (key, ident)

    def restrictions(self, pid: int) -> dict | None:
        """What a process runs under beyond the global filter: its policy and every filter program it
        (or, for a parallel worker, its leader) loaded, raw; a job it launches is held to them."""
        found = self.lookup(pid)
        if found is None:
            return None
        key, ident = found
        progs = list(self.raw_programs.get(key, ())) + list(self.raw_programs.get(ident.leader, ()))
        return {"policy": (ident.policy or self.glob).as_dict(),
                "programs": [base64.b64encode(p).decode() for p in progs]}

    def whoami(self, pid: int) -> dict | None:
        found = self.lookup(pid)
        if found is None:
            return None
        key, ident = found
        progs = len(self.programs.get(key, ())) + len(self.programs.get(ident.leader, ()))
        out = {"kind": ident.kind, "label": ident.label, "programs": progs, "postmaster": self.pm[0],
               "policy": (ident.policy or self.glob).as_dict(), "job": self.job_of(ident).as_dict()}
        return out

    # ---- answers ----
    def decide(self, ident: Identity, name: str, n: Notif) -> tuple[str, int]:
        """(action, errno) for one notified syscall."""
        args = tuple(n.args)
        act, err = self.glob.action_of(name, args), errno.EPERM
        if ident.policy is not None:
            act = max(act, ident.policy.action_of(name, args), key=config.RANK.__getitem__)
        if ident.leader is not None and act in ("allow", "log"):
            data = bpf.seccomp_data(n.nr, n.arch, n.ip, args)
            for prog in self.programs.get(ident.leader, ()):
                try:
                    ret = bpf.run(prog, data)
                except bpf.BadProgram:
                    ret = bpf.RET_KILL_THREAD
                a = ret & bpf.ACTION_FULL
                if a in (bpf.RET_KILL_PROCESS, bpf.RET_KILL_THREAD, bpf.RET_TRAP):
                    return "kill", errno.ENOSYS
                if a == bpf.RET_ERRNO:
                    return "error", ret & 0xFFFF
                if a in (bpf.RET_USER_NOTIF, bpf.RET_TRACE):  # no one answers these: the kernel says ENOSYS
                    return "error", errno.ENOSYS
        return act, err

    def record_filter(self, tid: int, key: tuple, n: Notif) -> bool:
        """Read the filter a seccomp(SET_MODE_FILTER) call is about to load; False: refuse the call."""
        try:
            head = read_mem(tid, n.args[2], 16)
            length, ptr = struct.unpack_from("<H6xQ", head)
            raw = read_mem(tid, ptr, length * 8)
            prog = bpf.decode(raw)
        except (OSError, bpf.BadProgram, struct.error):
            return False
        with self.lock:
            progs = self.programs.setdefault(key, [])
            if len(progs) >= MAX_PROGRAMS:
                return False
            progs.append(prog)
            self.raw_programs.setdefault(key, []).append(raw)
        return True

    def reads_own_binary(self, n: Notif) -> bool:
        """access(<the execute-only server binary>, R_OK) from a server process: PostgreSQL asks
        it of its own binary at start (find_my_exec) and refuses one it cannot read."""
        if not self.exec_path or n.args[1] != os.R_OK:
            return False
        want = self.exec_path.encode() + b"\0"
        try:
            return read_mem(n.pid, n.args[0], len(want)) == want
        except OSError:
            return False

    def answer(self, n: Notif) -> Resp | None:
        resp = Resp(id=n.id)
        try:
            tgid, ppid, start = caller(n.pid)
            key = (tgid, start)
            ident = self.identify(tgid, ppid, key)
            name = self.names.get(n.nr) or f"#{n.nr}"
            if name == "access" and ident.kind in (SERVER, FRESH) and self.reads_own_binary(n):
                _ioctl(self.fd, NOTIF_ID_VALID, ctypes.c_uint64(n.id))
                return resp  # "readable": the server checks its binary, which it may only run
            act, err = self.decide(ident, name, n)
            if act in ("allow", "log") and name == "seccomp" and n.args[0] == SECCOMP_SET_MODE_FILTER:
                if not self.record_filter(n.pid, key, n):
                    act, err = "error", errno.EPERM
            # the process may have died and its pid been reused while /proc was read
            _ioctl(self.fd, NOTIF_ID_VALID, ctypes.c_uint64(n.id))
        except OSError as e:
            if e.errno == errno.ENOENT:
                return None  # the caller is gone; its notification no longer exists
            log.warning("notification from %d: %s; refused", n.pid, e)
            act, err, ident, name = "error", errno.ENOSYS, None, f"#{n.nr}"
        if act == "kill":
            log.warning("killing pid %d (%s): syscall %s is kill-listed", n.pid, ident.label, name)
            kill(key)
            act, err = "error", errno.ENOSYS
        if act == "error":
            resp.error, resp.val = -err, -1
        else:
            if act == "log":
                log.info("pid %d (%s): %s (log)", n.pid, ident.label, name)
            resp.flags = FLAG_CONTINUE
        return resp

    def serve(self) -> None:
        buf = Notif()
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        while True:
            events = poller.poll(60_000)
            if not events:
                self.prune()
                continue
            if events[0][1] & (select.POLLHUP | select.POLLERR | select.POLLNVAL):
                return  # no process holds the filter any more (the server stopped)
            ctypes.memset(ctypes.addressof(buf), 0, ctypes.sizeof(buf))
            try:
                _ioctl(self.fd, NOTIF_RECV, buf)
            except OSError as e:
                if e.errno in (errno.ENOENT, errno.EINTR, errno.EAGAIN):
                    continue
                return  # no process holds the filter any more (the server stopped)
            self.notifications += 1
            if self.notifications % 4096 == 0:
                self.prune()
            t0 = time.perf_counter()
            try:
                resp = self.answer(buf)
            except Exception:  # never leave a backend waiting: refuse, and keep serving
                log.exception("answering a notification")
                resp = Resp(id=buf.id, val=-1, error=-errno.ENOSYS)
            self.answering += time.perf_counter() - t0  # before SEND: a sync wake-up may run the caller first
            if resp is not None:
                try:
                    _ioctl(self.fd, NOTIF_SEND, resp)
                except OSError:
                    pass  # the caller was interrupted or died meanwhile

    def prune(self) -> None:
        with self.lock:
            for key in [k for k in list(self.known) + list(self.programs) + list(self.pending) if not _alive(k)]:
                self.known.pop(key, None)
                self.programs.pop(key, None)
                self.raw_programs.pop(key, None)
                self.pending.pop(key, None)


def kill(key: tuple) -> None:
    """SIGSYS, as the kernel's kill action: through a pidfd, to the process started when its key says."""
    try:
        fd = os.pidfd_open(key[0])
    except OSError:
        return
    try:
        if start_time(key[0]) == key[1]:
            signal.pidfd_send_signal(fd, signal.SIGSYS)
    except OSError:
        pass
    finally:
        os.close(fd)


def _alive(key: tuple) -> bool:
    try:
        return start_time(key[0]) == key[1]
    except OSError:
        return False


def _stamp() -> str:
    """The installed package's stamp, so that an installer can tell a supervisor of older code."""
    try:
        with open(os.path.join(os.path.dirname(__file__), "..", "..", ".stamp")) as f:
            return f.read().strip()
    except OSError:
        return ""


def _syscall_names() -> dict[int, str]:
    from plpy_bg.sandbox import engine
    return {engine.syscall_number(n): n for n in engine.all_syscalls()}


# ---- the service ---------------------------------------------------------------------------

class Supervisor:
    def __init__(self, path: str, uids: set[int]):
        self.path = path
        self.uids = uids
        self.clusters: list[Cluster] = []
        self.lock = threading.Lock()
        self.names = _syscall_names()
        self.stamp = _stamp()

    def listen(self) -> socket.socket:
        d = os.path.dirname(self.path)
        os.makedirs(d, mode=0o755, exist_ok=True)
        st = os.stat(d)
        if st.st_uid != 0 or st.st_mode & 0o022:
            raise SystemExit(f"plpy_bg supervisor: {d} must belong to root and be writable by root only")
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            supervision.whoami(self.path).get("supervisor_pid")
            raise SystemExit(f"plpy_bg supervisor: another supervisor answers on {self.path}")
        except (OSError, ValueError):
            pass  # none answers: the path is free to take
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        s.bind(self.path)
        os.chmod(self.path, 0o666)  # who may ask is decided by peer credentials
        s.listen(64)
        return s

    def run(self, ready_fd: int | None = None) -> None:
        s = self.listen()
        log.info("listening on %s for uids %s", self.path, sorted(self.uids))
        if ready_fd is not None:
            os.write(ready_fd, b"ready\n")
            os.close(ready_fd)
        slots = threading.BoundedSemaphore(MAX_REQUESTS)
        while True:
            try:
                conn, _ = s.accept()
            except OSError as e:  # out of fds, say: the notifications go on; so does accepting
                log.warning("accept failed: %s", e.strerror)
                time.sleep(0.1)
                continue
            if not slots.acquire(blocking=False):
                conn.close()  # a flood of requests (any backend can connect) waits for none of them
                continue
            threading.Thread(target=self.handle, args=(conn, slots), daemon=True).start()

    def handle(self, conn: socket.socket, slots=None) -> None:
        conn.settimeout(REQUEST_TIMEOUT)
        try:
            pid, uid, _gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
            if uid not in self.uids and uid != 0:  # root may ask (installers check it runs)
                return self.reply(conn, error=f"uid {uid} may not use the seccomp supervisor")
            data, fd = supervision.recv_with_fd(conn)
            try:
                msg = json.loads(data.split(b"\n", 1)[0])
                op = msg.get("op")
            except (ValueError, AttributeError):
                op = None
            if op == "whoami":
                if fd is not None:
                    os.close(fd)
                return self.whoami(conn, pid)
            if op == "restrictions":  # of another process of a server (the dispatcher asks of launchers)
                if fd is not None:
                    os.close(fd)
                return self.restrictions(conn, int(msg.get("pid") or 0), msg.get("start"))
            if op == "stats" and uid == 0:
                return self.reply(conn, servers=[{"postmaster": c.pm[0], "notifications": c.notifications,
                                                  "answering_s": round(c.answering, 6),
                                                  "known": len(c.known)} for c in list(self.clusters)])
            if op == "register" and uid in self.uids:
                return self.register(conn, pid, fd, msg)
            if fd is not None:
                os.close(fd)
            self.reply(conn, error="unknown request")
        except Exception as e:  # a bad client never stops the service
            log.warning("request failed: %s", e)
        finally:
            conn.close()
            if slots is not None:
                slots.release()

    def reply(self, conn: socket.socket, **msg) -> None:
        msg.setdefault("ok", "error" not in msg)
        msg.update(supervisor_pid=os.getpid(), stamp=self.stamp)
        try:
            conn.sendall((json.dumps(msg) + "\n").encode())
        except OSError:
            pass

    def whoami(self, conn: socket.socket, pid: int) -> None:
        for c in list(self.clusters):
            info = c.whoami(pid)
            if info is not None:
                return self.reply(conn, **info)
        self.reply(conn, kind="none", label="not a process of a supervised server")

    def restrictions(self, conn: socket.socket, pid: int, start) -> None:
        try:
            if start is None or start_time(pid) != int(start):
                return self.reply(conn, error=f"process {pid} is not the one that connected")
        except (OSError, ValueError):
            return self.reply(conn, error=f"process {pid} is gone")
        for c in list(self.clusters):
            info = c.restrictions(pid)
            if info is not None:
                return self.reply(conn, **info)
        self.reply(conn, error=f"process {pid} is not a known process of a supervised server")

    def register(self, conn: socket.socket, pid: int, fd: int | None, msg: dict) -> None:
        """Two steps: the helper asks while it carries no filter yet, then sends the listener."""
        if fd is not None:
            os.close(fd)
            return self.reply(conn, error="send the listener after the first answer")
        if seccomp_mode(pid) != 0:
            return self.reply(conn, error="only a process without a seccomp filter may register a server")
        if len(self.clusters) >= MAX_REGISTRATIONS:
            return self.reply(conn, error="too many servers registered")
        self.reply(conn, ready=True)
        data, fd = supervision.recv_with_fd(conn)
        if fd is None:
            return self.reply(conn, error="no listener was sent")
        try:
            if os.readlink(f"/proc/self/fd/{fd}") != "anon_inode:seccomp notify":
                raise ValueError("the fd sent is not a seccomp listener")
            if seccomp_mode(pid) != 2:
                raise ValueError("the registering process carries no filter")
            c = Cluster.from_registration(fd, pid, json.loads(data.split(b"\n", 1)[0]))
            c.names = self.names
            try:
                _ioctl(fd, NOTIF_SET_FLAGS, FD_SYNC_WAKE_UP)
            except OSError as e:  # before Linux 6.6: answers are slower, not different
                log.info("no synchronous wake-up for this listener: %s", e.strerror)
        except Exception as e:
            os.close(fd)
            return self.reply(conn, error=f"registration refused: {e}")
        with self.lock:
            self.clusters.append(c)
        log.info("registered the server of postmaster %d (%s)", pid, c.cluster_name or " ".join(c.argv)[:120])
        for _ in range(ANSWER_THREADS):
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()
        threading.Thread(target=c.calibrate_soon, daemon=True).start()
        self.reply(conn, registered=True)

    def _serve(self, c: Cluster) -> None:
        c.serve()
        with self.lock:
            if c in self.clusters:
                self.clusters.remove(c)
                os.close(c.fd)
                log.info("the server of postmaster %d is gone", c.pm[0])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m plpy_bg.sandbox.supervisor")
    ap.add_argument("--socket", default=supervision.DEFAULT_SOCKET)
    ap.add_argument("--user", action="append", default=None,
                    help="OS user whose servers and backends may use it (default postgres)")
    ap.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s plpy_bg supervisor: %(levelname)s:  %(message)s")
    if os.geteuid() != 0:
        print("plpy_bg supervisor: FATAL:  must run as root (a supervisor with the server's uid could "
              "be killed or robbed of its listener by a backend)", file=sys.stderr)
        return 1
    uids = {pwd.getpwnam(u).pw_uid for u in (args.user or ["postgres"])}
    Supervisor(args.socket, uids).run(args.ready_fd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
