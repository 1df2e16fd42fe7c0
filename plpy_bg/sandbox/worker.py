"""The job filter of a job worker, installed before any of the job's SQL.

The dispatcher runs `SELECT plpy_bg.install_worker_filter()` on each new
worker connection when the server is sandboxed; that calls `install`.

On a sandboxed server the job policy is the one the server started with: the
supervisor holds it, as the preload helper read it (files, includes,
postgresql.auto.conf, -c options) and no later ALTER SYSTEM, SET or ALTER ROLE
... SET changes it. The dispatcher adds what the launching backend runs under
(its session policy and the filters it loaded, a parent job's included): a job
is never laxer than the session, or the job, that launched it.
"""
from __future__ import annotations

import base64
import json
import os

from plpy_bg.errors import PgError, WrongState
from plpy_bg.sandbox import config, engine, layers, supervision

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


RESTRICTIONS = "plpy_bg.job_restrictions"


def launcher_restrictions(plpy) -> tuple[config.Policy | None, list[bytes]]:
    """What the launching backend runs under (JSON in plpy_bg.job_restrictions, set by the
    dispatcher from the supervisor's answer); any session may set it: it can only tighten."""
    raw = plpy.execute(f"SELECT pg_catalog.current_setting('{RESTRICTIONS}', true) AS r")[0]["r"]
    if not raw:
        return None, []
    try:
        d = json.loads(raw)
        return config.Policy.from_dict(d["policy"]), [base64.b64decode(p) for p in d["programs"]]
    except (ValueError, KeyError, TypeError) as e:
        raise config.ConfigError(f'invalid value for parameter "{RESTRICTIONS}"', detail=str(e)[:200],
                                 hint="It is set by the dispatcher.") from None


def job_policy(plpy) -> config.Policy | None:
    """This worker's job policy; None when the server is not sandboxed."""
    if layers.global_layer() is not None and os.environ.get(supervision.ENV):
        try:
            return config.Policy.from_dict(supervision.whoami()["job"])
        except (OSError, ValueError, KeyError) as e:
            raise WrongState("could not load the job filter: the seccomp supervisor does not answer",
                             detail=str(e), hint="Start the supervisor (python3 build.py supervisor) and "
                                                 "restart the server under the wrapper.") from None
    get = file_settings(plpy)
    if not config.enabled(get):
        return None
    return config.job_policy(get, engine.known, session_user(plpy), session_policy(plpy, get))


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
        policy = job_policy(plpy)
        if policy is None:
            layers.mark("job")
            return False
        launcher, programs = launcher_restrictions(plpy)
        if launcher is not None:
            policy = config.meet([policy, launcher])
        if before_load is not None:
            before_load()
        layers.load("job", policy)
        for prog in programs:  # the launcher's own filters, as it loaded them
            layers.load_raw("job", prog)
    except PgError as e:
        e.raise_in(plpy)
    return True
