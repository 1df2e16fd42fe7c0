"""The preload helper: load the global filter, then become postgres.

    python3 -m plpy_bg.sandbox.preload [--datadir D] -- /usr/lib/postgresql/15/bin/postgres -D D [...]

Reads pgseccomp's settings the way the server will (`postgres -C name` with
the same command line, so includes, postgresql.auto.conf and -c options
count), validates them all (global, session and every role's overrides),
loads the global filter into this process and execs postgres: the postmaster
and every process it forks inherit the filter. A bad setting stops here with
a message that names it, before the server starts. With pgseccomp.enabled
off it just execs. The loaded policy goes to the server in the environment
(PLPY_BG_SECCOMP_GLOBAL) so `seccomp_filter()` shows exactly what is in force.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from plpy_bg.sandbox import config, engine, supervision
from plpy_bg.sandbox.layers import ENV

_UNSET = "unrecognized configuration parameter"


def read_settings(command: list[str], names: list[str]) -> dict[str, str]:
    """The values `postgres -C` reports for `names` (a custom name that is not set is left out)."""
    def one(name: str) -> tuple[str, str | None]:
        # postgres honours a single -C, so ask once per name; each run takes about 25 ms
        r = subprocess.run(command + ["-C", name], capture_output=True, text=True)
        if r.returncode == 0:
            return name, r.stdout.rstrip("\n")
        if _UNSET in r.stderr:
            return name, None
        raise config.ConfigError(f'could not read setting "{name}"', detail=r.stderr.strip(),
                                 hint="Check that the postgres command line is right.")
    with ThreadPoolExecutor(max_workers=8) as pool:
        return {n: v for n, v in pool.map(one, names) if v is not None}


@dataclass(frozen=True)
class Plan:
    """What the server will run under: the global filter and every policy the supervisor applies."""
    glob: config.Policy
    session: config.Policy
    session_roles: dict
    job: config.Policy
    job_roles: dict
    cluster_name: str

    def notify(self) -> frozenset:
        """Syscalls the global filter hands to the supervisor: those some policy restricts beyond
        the global filter, and those that tell who a process is (never a fork: see engine)."""
        return frozenset(s for s in self.restricted() | set(IDENTITY_SYSCALLS) if self.glob.action_of(s) in ("allow", "log")
                         and s not in engine.NEVER_NOTIFIED and s not in ("seccomp", "prctl"))

    def narrow_access(self) -> bool:
        """Hand over only access(R_OK): no backend is named at its start, and no policy restricts access."""
        return not self.named_at_start() and "access" not in self.restricted()

    def restricted(self) -> set:
        """Syscalls some session or job policy restricts (or logs) beyond what it allows outright."""
        out = set()
        for p in (self.session, self.job, *self.session_roles.values(), *self.job_roles.values()):
            # listed log actions too: the supervisor logs them (a default of log is the kernel's alone)
            mine = {s for a in ("log", "error", "kill") for s in p.lists.get(a, ())}
            if p.default in ("error", "kill"):
                mine |= {s for s in engine.all_syscalls() if config.RANK[p.listed_action(s)] >= config.RANK["error"]}
            if p.families is not None:
                mine.add("socket")
            if p.families == () or config.RANK[p.listed_action("socket")] >= config.RANK["error"]:
                # a listening socket is one the process made (no backend inherits one), and this
                # policy refuses socket(): the postmaster's accept per connection need not wait
                mine -= LISTENING_SYSCALLS
            out |= mine
        return out

    def named_at_start(self) -> bool:
        return config.named_at_start(self.session_roles, self.job_roles)

    def registration(self, argv: list[str]) -> dict:
        return {"op": "register", "argv": argv, "cluster_name": self.cluster_name,
                "policies": {"global": self.glob.as_dict(), "session": self.session.as_dict(),
                             "session_roles": {r: p.as_dict() for r, p in self.session_roles.items()},
                             "job": self.job.as_dict(),
                             "job_roles": {r: p.as_dict() for r, p in self.job_roles.items()}}}


# access(): every backend's InitPostgres checks its database directory with it, after the role is
# known and before any of its user's code, so a backend is named then (when roles have lists of
# their own; else only access(R_OK), which the postmaster asks of its execute-only binary, is
# handed over); exec: children are named
IDENTITY_SYSCALLS = ("access", "execve", "execveat")
LISTENING_SYSCALLS = frozenset({"accept", "accept4", "listen", "bind"})


def prepare(command: list[str]) -> Plan | None:
    """What to load and register, or None when pgseccomp.enabled is off; ConfigError when bad."""
    values = read_settings(command, config.names())
    get = config.getter(values)
    if not config.enabled(get):
        return None
    roles, jroles = config.session_roles(get), config.job_roles(get)
    if roles or jroles:
        values.update(read_settings(command, config.names(roles, jroles)[len(config.names()):]))
        get = config.getter(values)
    glob = config.global_policy(get, engine.known)
    # every role's lists are validated now, not when a session or a worker starts
    sess = config.session_policy(get, engine.known, None, glob)
    sroles = {r: config.session_policy(get, engine.known, r, glob) for r in roles}
    job = config.job_policy(get, engine.known, None, sess)
    # every listed role's job policy stacks on its own session policy
    jobr = {r: config.job_policy(get, engine.known, r, sroles.get(r, sess)) for r in set(roles) | set(jroles)}
    return Plan(glob, sess, sroles, job, jobr, values.get("cluster_name", ""))


def nondumpable(postgres: str) -> str:
    """The execute-only copy of `postgres` that the server runs as (build.py install makes it).

    A process that execs a binary it cannot read is not dumpable, nor are its forks: no other
    process of the server's uid may open its /proc/<pid>/mem, so native code in one backend
    cannot write itself into the checkpointer or another session (no C needed for that).
    """
    copy = os.path.join(os.path.dirname(os.path.dirname(postgres)), "plpy_bg-bin", "postgres")
    try:
        src, dst = os.stat(postgres), os.stat(copy)
    except FileNotFoundError:
        raise config.ConfigError(f"there is no execute-only copy of {postgres}",
                                 detail=f"The sandboxed server runs as {copy}, which no server process can read.",
                                 hint="Run python3 build.py install as root.") from None
    if (src.st_size, src.st_mtime_ns) != (dst.st_size, dst.st_mtime_ns) or dst.st_mode & 0o444 or dst.st_uid == os.getuid():
        raise config.ConfigError(f"the execute-only copy {copy} is not a current copy of {postgres}",
                                 detail="It must be the same binary (size and time), owned by root, mode 0111.",
                                 hint="Run python3 build.py install as root again (after each PostgreSQL update).")
    return copy


def register(plan: Plan, argv: list[str], path: str) -> None:
    """Load the global filter with its notifications and hand the listener to the supervisor."""
    try:
        s = supervision.connect(path)
    except OSError as e:
        raise config.ConfigError(f"the seccomp supervisor is not running at {path}", detail=e.strerror,
                                 hint="Start it as root (python3 -m plpy_bg.sandbox.supervisor, or "
                                      "python3 build.py supervisor); see README, Seccomp sandbox.") from None
    try:
        supervision.request(s, {"op": "register"})
        fd = engine.load(plan.glob, plan.notify(), narrow_access=plan.narrow_access())
        try:
            supervision.request(s, dict(plan.registration(argv), exec_path=argv[0]), fd=fd)
        finally:
            os.close(fd)  # only the supervisor holds the listener: no backend can answer for it
    except supervision.SupervisorError as e:
        raise config.ConfigError("the seccomp supervisor refused this server", detail=str(e)) from None
    finally:
        s.close()


def describe(e: config.ConfigError) -> str:
    msg = f"plpy_bg preload: FATAL:  {e.message}"
    for label, text in (("DETAIL", e.detail), ("HINT", e.hint)):
        if text:
            msg += f"\n{label}:  {text}"
    return msg


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog="python3 -m plpy_bg.sandbox.preload",
                                 usage="%(prog)s [--datadir D] -- /path/to/postgres -D D [options]")
    ap.add_argument("--datadir", help="the data directory, when the postgres command has no -D")
    ap.add_argument("--supervisor", help=f"the supervisor's socket (default {supervision.DEFAULT_SOCKET})")
    if "--" not in argv:
        ap.print_usage(sys.stderr)
        return 2
    args = ap.parse_args(argv[:argv.index("--")])
    cmd = argv[argv.index("--") + 1:]
    if not cmd:
        ap.print_usage(sys.stderr)
        return 2
    if args.datadir and "-D" not in cmd:
        cmd[1:1] = ["-D", args.datadir]
    if "-D" not in cmd and not os.environ.get("PGDATA"):
        print("plpy_bg preload: FATAL:  the postgres command needs -D DATADIR (or --datadir)", file=sys.stderr)
        return 2
    env = dict(os.environ)
    env.pop(ENV, None)  # only a filter loaded here may be reported as in force
    path = args.supervisor or supervision.socket_path()
    try:
        plan = prepare(cmd)
        if plan is not None:
            cmd[0] = nondumpable(cmd[0])
            register(plan, cmd, path)
            env[ENV] = json.dumps(plan.glob.as_dict())
            env[supervision.ENV] = path
    except config.ConfigError as e:
        print(describe(e), file=sys.stderr)
        return 1
    except OSError as e:
        print(f"plpy_bg preload: FATAL:  could not load the global seccomp filter: {e.strerror}",
              file=sys.stderr)
        return 1
    os.execve(cmd[0], cmd, env)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
