"""Bodies of the sandbox's SQL functions (sql/idempotent/040-sandbox.sql).

Inside a backend the settings are read from the configuration files
(pg_file_settings, through SECURITY DEFINER functions), never from
current_setting(): a role could `ALTER ROLE me SET pgseccomp...` or `SET` in
its session and weaken its own filter.
"""
from __future__ import annotations

import json
import os

from plpy_bg.errors import PgError, WrongState
from plpy_bg.sandbox import config, engine
from plpy_bg.sandbox.preload import ENV

GD_SESSION = "plpy_bg.seccomp.session"  # the session layers loaded in this backend
GD_CLIENT = "plpy_bg.seccomp.client_set"

FILE_SETTINGS = ("SELECT name, setting FROM pg_catalog.pg_file_settings "
                 "WHERE error IS NULL ORDER BY seqno")


def _getter(plpy):
    values: dict[str, str] = {}
    for r in plpy.execute(FILE_SETTINGS):
        values[r["name"]] = r["setting"]
    return values.get


def _global(get) -> config.Policy | None:
    """The global filter in force: what the preload helper loaded, else none."""
    raw = os.environ.get(ENV)
    if raw:
        return config.Policy.from_dict(json.loads(raw))
    return None


def _raise(plpy, e: PgError):
    e.raise_in(plpy)


def install_worker_filter(plpy, GD) -> None:
    """Install the session filter of session_user's role; once per backend, only ever tighter."""
    if GD.get(GD_SESSION):
        return
    try:
        get = _getter(plpy)
        if not config.enabled(get):
            return
        role = plpy.execute("SELECT SESSION_USER::text AS r")[0]["r"]
        glob = _global(get) or config.global_policy(get, engine.known)
        policy = config.session_policy(get, engine.known, role, glob)
        engine.load(policy)
    except PgError as e:
        _raise(plpy, e)
    GD[GD_SESSION] = [{"origin": "session", "policy": policy.as_dict()}]


def set_client_filter(plpy, GD, default_action, allow, log, error, kill) -> None:
    """Tighten this session's filter once; NULL takes the session setting, '*' the global list."""
    try:
        if GD.get(GD_CLIENT):
            raise WrongState("set_client_filter can be called only once per session",
                             hint="The filter in force stays; open a new session for another.")
        get = _getter(plpy)
        glob = _global(get) or (config.global_policy(get, engine.known) if config.enabled(get)
                                else config.Policy("allow", {}))
        role = plpy.execute("SELECT SESSION_USER::text AS r")[0]["r"]
        sess = config.session_policy(get, engine.known, role, glob)
        lists = {}
        given = {"allow": allow, "log": log, "error": error, "kill": kill}
        seen: dict[str, str] = {}
        for action, raw in given.items():
            if raw is None:
                lists[action] = sess.lists.get(action, ())
            elif raw.strip() == "*":
                lists[action] = glob.lists.get(action, ())
            else:
                lists[action] = config.parse_list(f"set_client_filter({action}_list)", raw, engine.known)
                for n in lists[action]:  # the caller may not say two things of one syscall
                    if n in seen and seen[n] != action:
                        raise config.ConfigError(f'syscall "{n}" is listed for both "{seen[n]}" and "{action}"')
                    seen[n] = action
        final = {n: a for a in config.ACTIONS for n in lists[a]}  # inherited lists: the strictest wins
        lists = {a: tuple(n for n in lists[a] if final[n] == a) for a in config.ACTIONS}
        default = config.parse_action("set_client_filter(default_action)", default_action, sess.default)
        policy = config.Policy(default, lists)
        config.check_viable(policy, "set_client_filter")
        engine.load(policy)
    except PgError as e:
        _raise(plpy, e)
    GD[GD_CLIENT] = True
    GD.setdefault(GD_SESSION, []).append({"origin": "session", "policy": policy.as_dict()})


def seccomp_filter(plpy, GD):
    """(syscall, syscallnum, filter_action, context) for the global filter and this session's."""
    get = _getter(plpy)
    glob = _global(get)
    layers = [config.Policy.from_dict(x["policy"]) for x in GD.get(GD_SESSION, [])]
    rows = []
    if glob is not None:
        rows.append((None, -1, f"global->{glob.default}", "global"))
        for sc in sorted({s for v in glob.lists.values() for s in v}):
            rows.append((sc, engine.syscall_number(sc), f"global->{glob.action_of(sc)}", "global"))
    if glob is None and not layers:
        return rows
    names = sorted({s for p in ([glob] if glob else []) + layers for v in p.lists.values() for s in v})

    def effective(sc):
        best, origin = (glob.action_of(sc) if sc else glob.default, "global") if glob else ("allow", "global")
        for p in layers:
            a = p.action_of(sc) if sc else p.default
            if config.RANK[a] >= config.RANK[best]:  # the same action: the session's wins
                best, origin = a, "session"
        return f"{origin}->{best}"

    rows.append((None, -1, effective(None), "session"))
    for sc in names:
        rows.append((sc, engine.syscall_number(sc), effective(sc), "session"))
    return rows
