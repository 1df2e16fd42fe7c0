"""The preload helper: load the global filter, then become postgres.

    python3 -m plpy_bg.sandbox.preload -- /usr/lib/postgresql/15/bin/postgres -D DATADIR [...]

Reads pgseccomp's settings the way the server will (`postgres -C name` for
each, so includes and postgresql.auto.conf count), validates them, loads the
global filter into this process and execs postgres: the postmaster and every
process it forks inherit the filter. A bad setting stops here, before the
server starts. The loaded policy is passed to the server in the environment
(PLPY_BG_SECCOMP_GLOBAL) so `seccomp_filter()` shows exactly what is in force.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

from plpy_bg.sandbox import config, engine

ENV = "PLPY_BG_SECCOMP_GLOBAL"


def conf_reader(postgres: str, datadir: str):
    """A getter of the cluster's settings; None for a custom setting that is not set."""
    cache: dict[str, str | None] = {}

    def get(name: str) -> str | None:
        if name not in cache:
            r = subprocess.run([postgres, "-D", datadir, "-C", name], capture_output=True, text=True)
            if r.returncode != 0:
                if "unrecognized configuration parameter" not in r.stderr:
                    raise config.ConfigError(f'could not read setting "{name}"', detail=r.stderr.strip())
                cache[name] = None
            else:
                cache[name] = r.stdout.rstrip("\n")
        return cache[name]
    return get


def prepare(postgres: str, datadir: str) -> config.Policy | None:
    get = conf_reader(postgres, datadir)
    if not config.enabled(get):
        return None
    glob = config.global_policy(get, engine.known)
    # validate the session lists and every role override now, not when a worker starts
    for role in (None,) + config.session_roles(get):
        config.session_policy(get, engine.known, role, glob)
    return glob


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        print("usage: python3 -m plpy_bg.sandbox.preload -- /path/to/postgres -D DATADIR [options]",
              file=sys.stderr)
        return 2
    cmd = argv[argv.index("--") + 1:]
    if len(cmd) < 3 or "-D" not in cmd:
        print("plpy_bg preload: the postgres command needs -D DATADIR", file=sys.stderr)
        return 2
    datadir = cmd[cmd.index("-D") + 1]
    try:
        policy = prepare(cmd[0], datadir)
    except config.ConfigError as e:
        msg = f"plpy_bg preload: FATAL: {e.message}"
        for label, text in (("DETAIL", e.detail), ("HINT", e.hint)):
            if text:
                msg += f"\n{label}: {text}"
        print(msg, file=sys.stderr)
        return 1
    env = dict(os.environ)
    if policy is not None:
        engine.load(policy)
        env[ENV] = json.dumps(policy.as_dict())
    else:
        env.pop(ENV, None)
    os.execve(cmd[0], cmd, env)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
