"""Learn allow lists from a real workload: strace the cluster, print pgseccomp settings.

    python3 -m plpy_bg.sandbox.learn --pid POSTMASTER_PID [--seconds N] [-- workload command ...]

Attaches strace to the postmaster and every process it forks while the
workload runs (or for N seconds), then prints:
  pgseccomp.global_syscall_allow   every syscall any process of the cluster made
  pgseccomp.session_syscall_allow  the syscalls of processes forked during the run
                                   (client backends and job workers)
Paste them into postgresql.conf with a default of 'error' (or 'log' first, to
watch the kernel log) to build a minimal profile for your own application.
Run it as root; strace must be installed.
"""
from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

_LINE = re.compile(r"^(\d+)\s+(?:<\.\.\. )?([a-z_][a-z0-9_]*)[( ]")
_FORK = re.compile(r"^(\d+)\s+(?:clone3?|fork|vfork)\(.*\)\s+=\s+(\d+)")


def parse(trace_lines, root_pid: int) -> tuple[set[str], set[str]]:
    """(all syscalls, syscalls of processes forked during the trace)."""
    everything: set[str] = set()
    children: set[int] = set()
    per_pid: dict[int, set[str]] = {}
    for line in trace_lines:
        m = _FORK.match(line)
        if m:
            children.add(int(m.group(2)))
        m = _LINE.match(line)
        if not m or m.group(2) in ("exited", "killed", "resumed"):
            continue
        pid, name = int(m.group(1)), m.group(2)
        everything.add(name)
        per_pid.setdefault(pid, set()).add(name)
    session: set[str] = set()
    for pid in children:
        session |= per_pid.get(pid, set())
    return everything, session


def trace(pid: int, seconds: float | None, command: list[str]) -> list[str]:
    with tempfile.NamedTemporaryFile(prefix="plpy_bg_learn_", suffix=".trace", delete=False) as tf:
        path = tf.name
    st = subprocess.Popen(["strace", "-f", "-qq", "-o", path, "-p", str(pid)],
                          stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # let strace attach to every existing process
    try:
        if command:
            rc = subprocess.run(command).returncode
            if rc != 0:
                print(f"plpy_bg learn: the workload exited with {rc}", file=sys.stderr)
        else:
            time.sleep(seconds or 10)
    finally:
        st.send_signal(signal.SIGINT)
        st.wait(30)
    with open(path, errors="replace") as f:
        lines = f.readlines()
    os.unlink(path)
    return lines


def settings_lines(everything: set[str], session: set[str], known) -> str:
    glob = sorted(n for n in everything if known(n))
    sess = sorted(n for n in session if known(n))
    return (f"# learned by plpy_bg.sandbox.learn: {len(glob)} syscalls in the cluster, "
            f"{len(sess)} in sessions\n"
            f"pgseccomp.global_syscall_allow = '{','.join(glob)}'\n"
            f"pgseccomp.session_syscall_allow = '{','.join(sess)}'\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m plpy_bg.sandbox.learn", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pid", type=int, required=True, help="the postmaster's pid")
    ap.add_argument("--seconds", type=float, help="trace this long when no workload command is given")
    args, rest = ap.parse_known_args(argv)
    command = rest[1:] if rest[:1] == ["--"] else rest
    from plpy_bg.sandbox import engine

    everything, session = parse(trace(args.pid, args.seconds, command), args.pid)
    print(settings_lines(everything, session, engine.known), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
