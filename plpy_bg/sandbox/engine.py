"""Building and loading filters with libseccomp (through pyseccomp).

Import this module before any filter is in force: pyseccomp finds libseccomp
with ctypes.util.find_library, which runs /sbin/ldconfig and fails when exec
is denied. A loaded filter stays for the life of the process and is
inherited by its children; a later filter can only add restrictions.
"""
from __future__ import annotations

import errno
import functools
import os
import re

import ctypes.util

_find = ctypes.util.find_library
# pyseccomp asks find_library, which runs /sbin/ldconfig: impossible under a filter that
# denies exec, and 14 ms besides. The sonames are fixed on this platform.
ctypes.util.find_library = lambda name: {"seccomp": "libseccomp.so.2", "c": "libc.so.6"}.get(name) or _find(name)
try:
    import pyseccomp as sc
finally:
    ctypes.util.find_library = _find

from plpy_bg.sandbox.config import ACTIONS, Policy

_ACTION = {
    "allow": sc.ALLOW,
    "log": sc.LOG,
    "error": sc.ERRNO(errno.EPERM),  # pgseccomp returns EACCES; EPERM is what callers expect
    "kill": sc.KILL_PROCESS,
}


@functools.lru_cache(maxsize=None)
def syscall_number(name: str) -> int | None:
    try:
        n = sc.resolve_syscall(sc.system_arch(), name)
    except Exception:
        return None
    return n if n >= 0 else None


def known(name: str) -> bool:
    return syscall_number(name) is not None


def all_syscalls() -> list[str]:
    """Every syscall name of this architecture (numbers 0..1023 that resolve)."""
    out = []
    arch = sc.system_arch()
    for nr in range(1024):
        try:
            name = sc.resolve_syscall(arch, nr)
        except Exception:
            continue
        if name:
            out.append(name.decode() if isinstance(name, bytes) else name)
    return out


def build(policy: Policy) -> "sc.SyscallFilter":
    f = sc.SyscallFilter(_ACTION[policy.default])
    for action in ACTIONS:
        if action == policy.default:
            continue
        for name in policy.lists.get(action, ()):
            f.add_rule(_ACTION[action], name)
    return f


def load(policy: Policy) -> None:
    """Load `policy` into this process (no_new_privs is set, as unprivileged loading needs)."""
    build(policy).load()


_SECCOMP = re.compile(r"^Seccomp:\s+(\d+)", re.M)


def mode(pid: int | str = "self") -> int:
    """0 none, 1 strict, 2 filter: what /proc/<pid>/status says."""
    with open(f"/proc/{pid}/status") as f:
        m = _SECCOMP.search(f.read())
    return int(m.group(1)) if m else 0


def filters(pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/status") as f:
        m = re.search(r"^Seccomp_filters:\s+(\d+)", f.read(), re.M)
    return int(m.group(1)) if m else 0


def kernel_supports() -> bool:
    return os.path.exists("/proc/self/status") and "Seccomp:" in open("/proc/self/status").read()
