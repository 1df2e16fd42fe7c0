"""Bodies of the sandbox's SQL functions (sql/idempotent/040-sandbox.sql)."""
from __future__ import annotations

import os

from plpy_bg.errors import FeatureNotSupported, PgError
from plpy_bg.sandbox import config, engine, layers, supervision, worker


def install_worker_filter(plpy, GD) -> None:
    def progress_connection():
        # a job worker reports progress (and launches child jobs) on a connection opened now, as
        # the filter forbids opening one later; only whether it is opened hangs on the name
        app = plpy.execute("SELECT pg_catalog.current_setting('application_name') AS a")[0]["a"]
        if app == WORKER_APPLICATION_NAME:
            from plpy_bg.dispatcher import client
            client.get(plpy, GD)
    worker.install(plpy, before_load=progress_connection)


WORKER_APPLICATION_NAME = "plpy_bg worker"


def set_client_filter(plpy, default_action: str | None, allow: str | None, log: str | None,
                      error: str | None, kill: str | None) -> str:
    """Add a client filter once per session; NULL takes the session setting, '*' the global list.

    The kernel stacks it on the filters in force, so it can only tighten: a
    syscall that an earlier filter denies stays denied whatever this one says.
    """
    try:
        if layers.done("client"):
            raise FeatureNotSupported("set_client_filter can be called only once per session",
                                      hint="The filter in force stays; open a new session for another.")
        get = worker.file_settings(plpy)
        glob = worker.configured_global(get)
        sess = worker.session_policy(plpy, get)
        lists: dict[str, tuple[str, ...]] = {}
        owner: dict[str, str] = {}
        for action, raw in (("allow", allow), ("log", log), ("error", error), ("kill", kill)):
            if raw is None:
                lists[action] = sess.lists.get(action, ())
            elif raw.strip() == "*":
                lists[action] = glob.lists.get(action, ())
            else:
                lists[action] = config.parse_list(f"set_client_filter({action}_list)", raw, engine.known)
                for name in lists[action]:  # the caller may not say two things of one syscall
                    if owner.setdefault(name, action) != action:
                        raise config.ConfigError(f'syscall "{name}" is listed for both "{owner[name]}" and "{action}"',
                                                 hint="List each syscall under one action.")
        final = {n: a for a in config.ACTIONS for n in lists[a]}  # inherited lists: the strictest wins
        lists = {a: tuple(n for n in lists[a] if final[n] == a) for a in config.ACTIONS}
        default = config.parse_action("set_client_filter(default_action)", default_action, sess.default)
        policy = config.Policy(default, lists)
        config.check_viable(policy, "set_client_filter")
        layers.load("client", policy)
    except PgError as e:
        e.raise_in(plpy)
    return "OK"


def seccomp_filter(plpy) -> list[tuple[str, int, str, str]]:
    """(syscall, syscallnum, filter_action, context) of the filters in force in this backend, first
    a row saying so when the sandbox is on but the server was started without its global filter."""
    rows = layers.rows(layers.stack())
    # what this session sees of the setting (any role may call this; the files are superusers')
    on = (plpy.execute("SELECT pg_catalog.current_setting('pgseccomp.enabled', true) AS v")[0]["v"]
          or "").strip().lower() in config.TRUE
    if on and engine.mode(os.getppid()) == 0:  # a backend's parent is the postmaster
        rows.insert(0, ("(none)", -1, "none",
                        "global: pgseccomp.enabled is on but the server was started without plpy_bg's "
                        "wrapper; nothing is filtered and background jobs are refused"))
    elif on and not supervised():
        rows.insert(0, ("(supervisor)", -1, "none",
                        "global: the seccomp supervisor does not answer for this server; no session, job "
                        "or parallel worker policy is applied, what it answered fails with ENOSYS, and "
                        "background jobs are refused"))
    return rows


def supervised() -> bool:
    try:
        return supervision.whoami().get("kind") not in (None, "none")
    except (OSError, ValueError):
        return False
