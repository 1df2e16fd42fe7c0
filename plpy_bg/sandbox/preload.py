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

from plpy_bg.sandbox import config, engine
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


def prepare(command: list[str]) -> config.Policy | None:
    """The global policy to load, or None when pgseccomp.enabled is off; ConfigError when bad."""
    values = read_settings(command, config.names())
    get = config.getter(values)
    if not config.enabled(get):
        return None
    roles = config.session_roles(get)
    if roles:
        values.update(read_settings(command, config.names(roles)[len(config.names()):]))
        get = config.getter(values)
    glob = config.global_policy(get, engine.known)
    # validate the session lists and every role's overrides now, not when a worker starts
    for role in (None,) + roles:
        config.session_policy(get, engine.known, role, glob)
    return glob


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
    try:
        policy = prepare(cmd)
    except config.ConfigError as e:
        print(describe(e), file=sys.stderr)
        return 1
    env = dict(os.environ)
    env.pop(ENV, None)  # only a filter loaded here may be reported as in force
    if policy is not None:
        try:
            engine.load(policy)
        except OSError as e:
            print(f"plpy_bg preload: FATAL:  could not load the global seccomp filter: {e.strerror}",
                  file=sys.stderr)
            return 1
        env[ENV] = json.dumps(policy.as_dict())
    os.execve(cmd[0], cmd, env)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
