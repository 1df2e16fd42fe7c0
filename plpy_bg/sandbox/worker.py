"""The job filter of a job worker, installed before any of the job's SQL.

The dispatcher runs `SELECT plpy_bg.install_worker_filter()` on each new
worker connection when pgseccomp.enabled is on; that calls `install`.

Settings come from the configuration files (pg_file_settings: postgresql.conf,
its includes and postgresql.auto.conf), never from current_setting(): without
pgseccomp loaded the pgseccomp.* names are placeholders that any role may SET,
or ALTER ROLE ... SET for itself, and that must not weaken its own filter.
Only a superuser can change the files. Like pgseccomp's PGC_SIGHUP session
settings, an edit counts for workers that start after it.
"""
from __future__ import annotations

import json

from plpy_bg.errors import PgError
from plpy_bg.sandbox import config, engine, layers

FILE_SETTINGS = ("SELECT name, setting FROM pg_catalog.pg_file_settings "
                 "WHERE error IS NULL ORDER BY seqno")


def file_settings(plpy) -> config.Getter:
    """The configuration files' settings (the last line for a name wins, as in the server)."""
    return config.getter({r["name"]: r["setting"] for r in plpy.execute(FILE_SETTINGS)})


def session_user(plpy) -> str:
    return plpy.execute("SELECT pg_catalog.session_user()::pg_catalog.text AS r")[0]["r"]


def configured_global(get: config.Getter) -> config.Policy:
    """The global filter in force, or as the files describe it when no helper loaded one."""
    g = layers.global_layer()
    return g.policy if g else config.global_policy(get, engine.known)


def session_policy(plpy, get: config.Getter) -> config.Policy:
    """session_user's session policy: what the supervisor applies to this backend, or (without a
    supervisor, or when it cannot be asked) what the files say."""
    s = layers.supervised_layer()
    return s.policy if s else config.session_policy(get, engine.known, session_user(plpy), configured_global(get))


def also_roles(plpy) -> list[str]:
    """Roles (JSON list in plpy_bg.job_filter_roles, set by the dispatcher) whose job filters this
    worker's meets; any session may set it, and it can only make its own filter stricter."""
    raw = plpy.execute("SELECT pg_catalog.current_setting('plpy_bg.job_filter_roles', true) AS r")[0]["r"]
    if not raw:
        return []
    try:
        roles = json.loads(raw)
    except ValueError:
        roles = None
    if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
        raise config.ConfigError(f'invalid value for parameter "plpy_bg.job_filter_roles": "{raw[:200]}"',
                                 hint="It is a JSON list of role names, set by the dispatcher.")
    return roles


def install(plpy, before_load=None) -> bool:
    """Load session_user's job filter into this backend; False when nothing was loaded.

    Once per backend: a second call returns False at once. The job filter
    stacks on the role's session policy (the supervisor's), so it names only
    what jobs may do beyond a session: no socket() of a family the profile
    does not name. `before_load` runs first (it opens the connection a job
    reports progress on, which the filter would then forbid opening).
    """
    if layers.done("job"):
        return False
    try:
        get = file_settings(plpy)
        if not config.enabled(get):
            layers.mark("job")
            return False
        policy = config.job_policy(get, engine.known, session_user(plpy), session_policy(plpy, get))
        outer = also_roles(plpy)
        if outer:  # a child job: each ancestor's job filter as well (this can only tighten)
            glob = configured_global(get)
            policy = config.meet([policy] + [config.job_policy(get, engine.known, r,
                                                               config.session_policy(get, engine.known, r, glob))
                                             for r in outer])
        if before_load is not None:
            before_load()
        layers.load("job", policy)
    except PgError as e:
        e.raise_in(plpy)
    return True
