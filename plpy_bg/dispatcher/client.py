"""The backend's side of the dispatcher socket: one connection per session.

The connection lives in PL/Python's GD for the life of the backend; the
dispatcher ties the session's jobs to it, so when the backend exits the jobs
are detached and run on. Every request gets exactly one reply (ending in an
A, E or Z frame), so an error raised between requests never desynchronizes
the stream. The first backend that finds no dispatcher starts one.
"""
from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import sys
import time

from plpy_bg.dispatcher import protocol as P
from plpy_bg.errors import ConnectionFailure, PgError
from plpy_bg.sandbox import supervision

GD_KEY = "plpy_bg.client"
CTX_KEY = "plpy_bg.cluster"
NOT_WORKER_KEY = "plpy_bg.not_worker"
NEED_PRIVS = b'{"need_privs":'
SPAWN_TIMEOUT = 15.0


class Identity:
    """The caller of a request that touches a job: `uid` is sent with every such request; the
    dispatcher asks `privs_of` only about jobs of other roles, and the answer is kept for the call."""

    uid: int
    privs: list[int] | None = None

    def privs_of(self, uids: list[int]) -> list[int]:
        raise NotImplementedError


class Client:
    """One backend's connection to the dispatcher.

    Waiting for a reply is interruptible: every quarter second the backend is
    given the chance to act on a cancel or a termination (`interrupts`), so a
    slow dispatcher never keeps a backend from pg_terminate_backend or from
    DROP DATABASE ... WITH (FORCE). A reply left unread by an interrupted call,
    even half a frame, is read and dropped before the next request.
    """

    WAIT_SLICE = 0.25

    def __init__(self, path: str, interrupts=lambda: None):
        self.path = path
        self.interrupts = interrupts
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.broken = False
        self.pending = False  # a request whose reply is not read to its end
        self.rbuf = bytearray()

    def _fill(self, n: int) -> None:
        while len(self.rbuf) < n:
            # select, not a socket timeout: that takes ioctl(FIONBIO), which a job worker's filter denies
            if not select.select([self.sock], [], [], self.WAIT_SLICE)[0]:
                self.interrupts()  # may raise: what was received stays in rbuf
                continue
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise EOFError("the dispatcher closed the connection")
            self.rbuf += chunk

    def _frame(self) -> tuple[bytes, bytes]:
        self._fill(P.HEADER.size)
        ln, kind = P.HEADER.unpack_from(self.rbuf)
        if ln > P.MAX_FRAME:
            raise P.ProtocolError(f"frame of {ln} bytes exceeds the limit")
        self._fill(P.HEADER.size + ln)
        payload = bytes(self.rbuf[P.HEADER.size:P.HEADER.size + ln])
        del self.rbuf[:P.HEADER.size + ln]
        return bytes([kind]), payload

    def _reply(self) -> list[tuple[bytes, bytes]]:
        frames = []
        while True:
            kind, payload = self._frame()
            frames.append((kind, payload))
            if kind in (b"A", b"E", b"Z"):
                self.pending = False
                return frames

    def call(self, op: str, **kw) -> list[tuple[bytes, bytes]]:
        """Send one request; return its reply frames, the last being A, E or Z."""
        if self.broken:
            raise ConnectionFailure("connection to the plpy_bg dispatcher was lost")
        kw["op"] = op
        try:
            if self.pending:
                self._reply()  # of a call that was interrupted: nobody reads it now
            self.sock.sendall(P.pack_json(b"Q", kw))
            self.pending = True
            return self._reply()
        except (OSError, EOFError, P.ProtocolError) as e:
            self.broken = True
            raise ConnectionFailure("connection to the plpy_bg dispatcher was lost",
                                    detail=str(e),
                                    hint="Jobs of this session were detached; they run on.") from None

    def call_as(self, who: Identity, op: str, **kw) -> list[tuple[bytes, bytes]]:
        """`call` with the caller's role; when the job is another role's, the dispatcher names that
        role and the call is repeated with the roles whose privileges the caller has."""
        if who.privs is not None:
            kw["privs_of"] = who.privs
        frames = self.call(op, uid=who.uid, **kw)
        kind, payload = frames[-1]
        if kind == b"A" and payload.startswith(NEED_PRIVS) and who.privs is None:
            who.privs = who.privs_of(json.loads(payload)["need_privs"])
            frames = self.call(op, uid=who.uid, privs_of=who.privs, **kw)
        return frames

    def request_as(self, who: Identity, op: str, **kw) -> dict:
        return self._answer(self.call_as(who, op, **kw))

    def request(self, op: str, **kw) -> dict:
        return self._answer(self.call(op, **kw))

    @staticmethod
    def _answer(frames) -> dict:
        kind, payload = frames[-1]
        obj = json.loads(payload) if payload else {}
        if kind == b"E":
            raise PgError.from_dict(obj)
        return obj

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def cluster_context(plpy, GD) -> dict:
    """Where the dispatcher listens; read once per session."""
    ctx = GD.get(CTX_KEY)
    if ctx is None:
        # the oid too: the dispatcher reaches a database by name, and a name converted to UTF-8
        # on its way out can be another database's; every session it opens is checked against it
        r = plpy.execute("SELECT c.dirs, c.port, pg_catalog.current_database()::pg_catalog.text AS db, "
                         "(SELECT d.oid::pg_catalog.int8 FROM pg_catalog.pg_database d "
                         " WHERE d.datname OPERATOR(pg_catalog.=) pg_catalog.current_database()) AS db_oid "
                         "FROM plpy_bg.cluster_context() c")[0]
        dirs = [d.strip() for d in r["dirs"].split(",") if d.strip().startswith("/")]
        if not dirs:
            raise PgError("plpy_bg needs a Unix socket directory",
                          detail="Job workers log in over the server's Unix socket with peer authentication.",
                          hint="Set unix_socket_directories to an absolute path.", sqlstate="55000")
        ctx = {"sockdir": dirs[0], "port": int(r["port"]), "db": r["db"], "db_oid": int(r["db_oid"]),
               "path": P.socket_path_for(dirs[0], int(r["port"]))}
        GD[CTX_KEY] = ctx
    return ctx


def _postmaster_pid() -> int:
    pid = os.getppid()
    if pid > 1:
        return pid
    with open("/proc/self/stat") as f:  # a seccomp filter can make getppid() lie
        return int(f.read().rsplit(")", 1)[1].split()[1])


def spawn(ctx: dict) -> None:
    """Start a dispatcher for this cluster; a lock file keeps it to one.

    The dispatcher inherits this backend's seccomp filters: a backend that
    loaded a session or client filter of its own must not be its parent.
    """
    layers = sys.modules.get("plpy_bg.sandbox.layers")
    if layers is not None and layers.own_layers():
        raise ConnectionFailure("the plpy_bg dispatcher is not running, and this session may not start it",
                                detail="A dispatcher started here would inherit this session's seccomp filter.",
                                hint="Launch a job from a session without a session filter first.")
    python = os.path.join(sys.base_exec_prefix, "bin", "python3")
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "MALLOC_ARENA_MAX": "2",
           "PYTHONPATH": os.pathsep.join(p for p in sys.path if p and os.path.isdir(p))}
    for name in (supervision.ENV, supervision.GLOBAL_ENV):  # the sandbox the server started with
        if os.environ.get(name):
            env[name] = os.environ[name]
    # its log goes where the server's does: this backend's stderr is the postmaster's (a log file
    # or the logging collector's pipe)
    subprocess.Popen(
        [python, "-m", "plpy_bg.dispatcher", "--sockdir", ctx["sockdir"], "--port", str(ctx["port"]),
         "--postmaster-pid", str(_postmaster_pid()), "--datadir", os.getcwd()],
        stdin=subprocess.DEVNULL, stdout=2, stderr=2, start_new_session=True,
        close_fds=True, env=env, cwd="/")


def job_info(plpy, GD, must_answer: bool = False) -> dict | None:
    """What the dispatcher knows of the job this backend runs, or None outside job workers.

    The dispatcher recognizes its worker by the peer pid of this socket, so a
    job cannot claim to be another. A backend is a worker for its whole life
    or never, so a negative answer is kept for the session. With
    `must_answer` (the caller knows a job runs here) an unreachable
    dispatcher is an error, never a "not a worker".
    """
    if GD.get(NOT_WORKER_KEY):
        return None
    c = GD.get(GD_KEY)
    if c is None or c.broken:
        try:
            c = Client(cluster_context(plpy, GD)["path"])
        except OSError as e:
            if must_answer:
                raise ConnectionFailure("could not ask the plpy_bg dispatcher about this job",
                                        detail=str(e)) from None
            GD[NOT_WORKER_KEY] = True  # no dispatcher: no job runs here
            return None
        try:
            info = c.request("job_info")["job"]
        finally:
            c.close()
    else:
        info = c.request("job_info")["job"]
    if info is None:
        GD[NOT_WORKER_KEY] = True
    return info


def get(plpy, GD) -> Client:
    c = GD.get(GD_KEY)
    if c is not None and not c.broken:
        return c
    if c is not None:
        c.close()
        GD.pop(GD_KEY, None)
    ctx = cluster_context(plpy, GD)
    deadline = time.monotonic() + SPAWN_TIMEOUT
    spawned_at = 0.0
    pm = _postmaster_pid()
    while True:
        try:
            c = Client(ctx["path"], interrupts=lambda: plpy.execute("SELECT 1"))
            c.request("hello", postmaster_pid=pm, db=ctx["db"], db_oid=ctx["db_oid"])
            break
        except PgError as e:
            c.close()
            # a dispatcher of a restarted server retires, and one that is just going away drops the
            # connection: try again; any other answer (it cannot log in, ...) says why at once
            if e.sqlstate != "57P04" and not c.broken:
                raise
            err = e
        except (FileNotFoundError, ConnectionRefusedError) as e:
            err = e
            if time.monotonic() - spawned_at > 1.0:
                spawn(ctx)
                spawned_at = time.monotonic()
        if time.monotonic() > deadline:
            raise ConnectionFailure("could not reach the plpy_bg dispatcher", detail=str(err),
                                    hint=f"See {ctx['path']}.log.") from None
        time.sleep(0.02)
    GD[GD_KEY] = c
    return c
