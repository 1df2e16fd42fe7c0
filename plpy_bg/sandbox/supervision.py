"""The supervisor's protocol and its clients: the preload helper registers a server's listener,
a backend asks what it runs under.

One JSON object per line over a Unix socket; the listener fd travels with the
registration as SCM_RIGHTS. The supervisor names the asking process by the
socket's peer credentials, never by anything in the request.
"""
from __future__ import annotations

import array
import json
import os
import socket

ENV = "PLPY_BG_SUPERVISOR"  # the socket path, handed to the server by the preload helper
GLOBAL_ENV = "PLPY_BG_SECCOMP_GLOBAL"  # the global policy loaded, likewise (see layers.global_layer)
DEFAULT_SOCKET = "/run/plpy_bg/seccomp.sock"
TIMEOUT = 10.0


class SupervisorError(OSError):
    pass


def socket_path() -> str:
    return os.environ.get(ENV) or DEFAULT_SOCKET


def _recv_line(s: socket.socket) -> dict:
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = s.recv(65536)
        if not chunk:
            raise SupervisorError("the seccomp supervisor closed the connection")
        buf += chunk
        if len(buf) > 1 << 20:
            raise SupervisorError("the seccomp supervisor's answer is too long")
    msg = json.loads(buf)
    if not msg.get("ok"):
        raise SupervisorError(msg.get("error") or "the seccomp supervisor refused")
    return msg


def connect(path: str | None = None, timeout: float = TIMEOUT) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    s.settimeout(timeout)
    try:
        s.connect(path or socket_path())
    except OSError:
        s.close()
        raise
    return s


def request(s: socket.socket, msg: dict, fd: int | None = None) -> dict:
    data = (json.dumps(msg) + "\n").encode()
    if fd is None:
        s.sendall(data)
    else:
        s.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))])
    return _recv_line(s)


def ask(msg: dict, path: str | None = None, timeout: float = 2.0) -> dict:
    """One question on a connection of its own."""
    s = connect(path, timeout)
    try:
        return request(s, msg)
    finally:
        s.close()


def whoami(path: str | None = None) -> dict:
    """What the supervisor applies to this process: kind, label, policy (a Policy dict), programs."""
    return ask({"op": "whoami"}, path)


def restrictions(pid: int, start: int | None, path: str | None = None) -> dict:
    """What process `pid` (started at `start`, as /proc/<pid>/stat counts) of a supervised server
    runs under beyond the global filter; refused when that pid now names another process."""
    return ask({"op": "restrictions", "pid": pid, "start": start}, path)


def read_proc(path: str, n: int = 4096) -> bytes:
    """One read of a /proc file with a bare fd (the supervisor pays it on every notification)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, n)
    finally:
        os.close(fd)


def stat_fields(pid: int) -> list[bytes]:
    """/proc/<pid>/stat after the command name: [0] is the state, [1] the ppid, [19] the start time."""
    return read_proc(f"/proc/{pid}/stat", 1024).rsplit(b")", 1)[1].split()


def start_time(pid: int) -> int:
    """When `pid` started (clock ticks since boot): with the pid, a process no later one can be taken for."""
    return int(stat_fields(pid)[19])


def recv_with_fd(s: socket.socket) -> tuple[bytes, int | None]:
    fds = array.array("i")
    data, anc, _flags, _addr = s.recvmsg(1 << 20, socket.CMSG_SPACE(fds.itemsize))
    fd = None
    for level, kind, payload in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            got = array.array("i")
            got.frombytes(payload[:len(payload) - len(payload) % fds.itemsize])
            for extra in got[1:]:
                os.close(extra)
            fd = got[0] if got else None
    return data, fd
