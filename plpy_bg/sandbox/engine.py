"""Building and loading filters with libseccomp (through pyseccomp).

Import this module before any filter is in force: pyseccomp finds libseccomp
with ctypes.util.find_library, which runs /sbin/ldconfig and fails when exec
is denied. A loaded filter stays for the life of the process and is
inherited by its children; a later filter can only add restrictions.
"""
from __future__ import annotations

import ctypes
import errno
import functools
import os
import re
import struct

import ctypes.util

_find = ctypes.util.find_library
# pyseccomp asks find_library, which runs /sbin/ldconfig: impossible under a filter that
# denies exec, and 14 ms besides. The sonames are fixed on this platform.
ctypes.util.find_library = lambda name: {"seccomp": "libseccomp.so.2", "c": "libc.so.6"}.get(name) or _find(name)
try:
    import pyseccomp as sc
finally:
    ctypes.util.find_library = _find

from plpy_bg.sandbox.config import ACTIONS, AF_MAX, Policy

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


SECCOMP_FILTER_FLAG_NEW_LISTENER = 8
PR_SET_SECCOMP = 22
CLONE_PARENT = 0x00008000
NEVER_NOTIFIED = ("clone", "clone3", "fork", "vfork")  # a fork must never wait for, or need, the supervisor


def build(policy: Policy, notify: frozenset = frozenset(), narrow_access: bool = False) -> "sc.SyscallFilter":
    """A filter doing what `policy` says; with `notify`, the global filter of a supervised server.

    Syscalls in `notify` (allowed by `policy`) go to the supervisor; a seccomp() call asking for
    a new listener is refused, so no process of the server can answer notifications itself, and
    prctl(PR_SET_SECCOMP) is refused so that every later filter is loaded where the supervisor
    sees it. Limits on socket() families are compared on its first argument. With
    `narrow_access`, only access(path, R_OK) goes to the supervisor (see preload.IDENTITY_SYSCALLS).
    """
    f = sc.SyscallFilter(_ACTION[policy.default])
    # a binary search over syscall numbers: every syscall of every process runs this filter, and
    # a list of hundreds of rules checked one by one cost a new session a tenth of a millisecond
    f.set_attr(sc.Attr.CTL_OPTIMIZE, 2)
    special = {"socket"} if policy.families is not None else set()
    if notify:
        special |= {"seccomp", "prctl", "clone", "clone3"}
    for action in ACTIONS:
        for name in policy.lists.get(action, ()):
            if action != policy.default and name not in special and not (
                    name in notify and action in ("allow", "log")):
                f.add_rule(_ACTION[action], name)
    for name in sorted(notify - special):
        if policy.action_of(name) in ("allow", "log"):
            if name == "access" and narrow_access:
                f.add_rule(sc.NOTIFY, name, sc.Arg(1, sc.EQ, os.R_OK))
            else:
                f.add_rule(sc.NOTIFY, name)
    if policy.families is not None:
        base = policy.action_of("socket", (policy.families[0],)) if policy.families else "error"
        for fam in range(AF_MAX):
            act = base if fam in policy.families else "error"
            act_code = sc.NOTIFY if act in ("allow", "log") and "socket" in notify else _ACTION[act]
            if act_code != _ACTION[policy.default]:
                f.add_rule(act_code, "socket", sc.Arg(0, sc.EQ, fam))
        if policy.default != "error":
            f.add_rule(_ACTION["error"], "socket", sc.Arg(0, sc.GE, AF_MAX))
    if notify:
        # the supervisor takes a child of the postmaster for one the postmaster forked: no process may
        # make itself the postmaster's child (CLONE_PARENT); clone3 hides its flags, so it says
        # ENOSYS and glibc falls back to clone
        if policy.action_of("clone3") in ("allow", "log"):
            f.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")
        elif policy.action_of("clone3") != policy.default:
            f.add_rule(_ACTION[policy.action_of("clone3")], "clone3")
        if policy.action_of("clone") in ("allow", "log"):
            f.add_rule(_ACTION["error"], "clone", sc.Arg(0, sc.MASKED_EQ, CLONE_PARENT, CLONE_PARENT))
            if policy.action_of("clone") != policy.default:
                f.add_rule(_ACTION[policy.action_of("clone")], "clone", sc.Arg(0, sc.MASKED_EQ, CLONE_PARENT, 0))
        elif policy.action_of("clone") != policy.default:
            f.add_rule(_ACTION[policy.action_of("clone")], "clone")
        for name, arg, mask, bad in (("seccomp", 1, SECCOMP_FILTER_FLAG_NEW_LISTENER, SECCOMP_FILTER_FLAG_NEW_LISTENER),
                                     ("prctl", 0, 0xFFFFFFFF, PR_SET_SECCOMP)):
            act = policy.action_of(name)
            if act in ("error", "kill"):
                if act != policy.default:
                    f.add_rule(_ACTION[act], name)
                continue
            f.add_rule(_ACTION["error"], name, sc.Arg(arg, sc.MASKED_EQ, mask, bad))
            if name == "seccomp":  # every other seccomp() call: the supervisor records the filter
                f.add_rule(sc.NOTIFY, name, sc.Arg(arg, sc.MASKED_EQ, mask, 0))
            elif act != policy.default:
                f.add_rule(_ACTION[act], name, sc.Arg(arg, sc.NE, PR_SET_SECCOMP))
    return f


def load(policy: Policy, notify: frozenset = frozenset(), narrow_access: bool = False) -> int | None:
    """Load `policy` into this process (no_new_privs is set, as unprivileged loading needs);
    with `notify`, return the new listener's fd."""
    f = build(policy, notify, narrow_access)
    f.load()
    if notify:
        fd = sc._libseccomp.seccomp_notify_fd(f._filter)
        if fd < 0:
            raise OSError(-fd, os.strerror(-fd))
        return fd
    return None


def load_raw(program: bytes) -> None:
    """Load a filter program as another process loaded it (seccomp(2), no flags)."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.syscall.restype = ctypes.c_long
    code = ctypes.create_string_buffer(program, len(program))
    prog = ctypes.create_string_buffer(struct.pack("<H6xQ", len(program) // 8, ctypes.addressof(code)), 16)
    # PR_SET_NO_NEW_PRIVS, as loading without CAP_SYS_ADMIN needs; then SECCOMP_SET_MODE_FILTER
    if (libc.prctl(38, 1, 0, 0, 0) != 0 or
            libc.syscall(317, ctypes.c_ulong(1), ctypes.c_ulong(0), ctypes.c_void_p(ctypes.addressof(prog))) != 0):
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


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
