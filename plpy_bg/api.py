"""Entry points of the SQL API: each SQL function body calls one function here.

Every function takes `plpy` (and `GD`), validates its arguments, talks to the
dispatcher through `dispatcher.client`, and turns a `PgError` into a
PostgreSQL error with the same SQLSTATE, message, detail and hint.

The launch functions keep the caller's search_path (the job inherits it), so
every statement here names its functions, operators and types with their
schema: a caller's `=` or `text` never takes part. Who is calling is read from
the backend itself (GetUserId), never from a query a caller could shape.
"""
from __future__ import annotations

import json
import time

from plpy_bg.dispatcher import client as dclient
from plpy_bg.dispatcher import protocol as P
from plpy_bg.errors import SANDBOX_REFUSAL, DeadlockDetected, InvalidParameter, PgError, require as _require, sql_errors
from plpy_bg import policy
from plpy_bg.jobs import gucs, identmap
from plpy_bg.jobs.limits import (DEFAULT_MAX_WORKERS, DEFAULT_QUEUE, GRACE_CAP_MS, MAX_MAX_WORKERS, MAX_QUEUE,
                                 MIN_QUEUE)
from plpy_bg.policy import native
from plpy_bg.jobs import settings as jsettings
from plpy_bg.jobs.settings import UNITS_BYTES as _UNITS_BYTES, UNITS_MS as _UNITS_MS, parse_setting

CANCEL_GRACE_MS = 1000
SLICE_MS = 200

CONTEXT_SQL = """
SELECT r.rolname::pg_catalog.text AS cu, r.rolsuper AS superuser, r.rolcanlogin AS can_login,
  pg_catalog.current_setting('pg_background.max_workers', true) AS max_workers,
  pg_catalog.current_setting('pg_background.default_queue_size', true) AS default_queue_size,
  pg_catalog.current_setting('pg_background.worker_timeout', true) AS worker_timeout,
  pg_catalog.current_setting('plpy_bg.inherit_settings', true) AS extra_names,
  pg_catalog.current_setting('standard_conforming_strings') AS sco,
  pg_catalog.pg_is_in_recovery() AS recovery, pg_catalog.current_setting('transaction_read_only') AS ro,
  {vals} AS vals
FROM pg_catalog.pg_roles r WHERE r.oid OPERATOR(pg_catalog.=) $1
"""

JOB_LOGIN_SQL = "SELECT plpy_bg.job_login($1) AS login"

BLOCKED_BY_ME = """
SELECT EXISTS (
  WITH RECURSIVE b(p, d) AS (
    SELECT pg_catalog.unnest(pg_catalog.pg_blocking_pids($1)), 1
    UNION
    SELECT pg_catalog.unnest(pg_catalog.pg_blocking_pids(b.p)), b.d OPERATOR(pg_catalog.+) 1
    FROM b WHERE b.d OPERATOR(pg_catalog.<) 8)
  SELECT 1 FROM b WHERE b.p OPERATOR(pg_catalog.=) pg_catalog.pg_backend_pid()) AS blocked
"""

PRIVS_SQL = """
SELECT u FROM pg_catalog.unnest($1::pg_catalog.oid[]) AS u WHERE pg_catalog.pg_has_role($2, u, 'USAGE')
"""


def _plan(plpy, GD, key: str, sql: str, types: list[str]):
    k = "plpy_bg.plan." + key
    p = GD.get(k)
    if p is None:
        p = GD[k] = plpy.prepare(sql, types)
    return p


# ---- argument checks --------------------------------------------------------

def check_sql(sql) -> str:
    _require("SQL text of a background job", sql)
    if not sql.strip():
        raise InvalidParameter("SQL text of a background job must not be empty")
    return sql


def queue_bytes(queue_size, default_raw: str | None) -> int:
    _require("queue_size", queue_size)
    if queue_size < 0:
        raise InvalidParameter(f"queue size must not be negative: {queue_size}",
                               hint="Pass 0 for pg_background.default_queue_size.")
    if queue_size == 0:
        queue_size = parse_setting("pg_background.default_queue_size", default_raw, DEFAULT_QUEUE,
                                   _UNITS_BYTES, "b")
    if queue_size > MAX_QUEUE:
        raise InvalidParameter(f"queue size must not exceed {MAX_QUEUE} bytes")
    return max(queue_size, MIN_QUEUE)


def _handle(pid, cookie) -> None:
    _require("pid", pid)
    _require("cookie", cookie)


# ---- launch -----------------------------------------------------------------

class Caller(dclient.Identity):
    """Who calls: the current user's oid as the backend holds it, and, when the dispatcher asks,
    which other job owners it has the privileges of (pg_has_role USAGE, as pg_background checks)."""

    def __init__(self, plpy, GD):
        self.plpy, self.GD = plpy, GD
        self.uid = native.backend(plpy).user_id()
        self.privs: list[int] | None = None

    def privs_of(self, uids: list[int]) -> list[int]:
        rows = _plan(self.plpy, self.GD, "privs", PRIVS_SQL, ["pg_catalog.oid[]", "pg_catalog.oid"]).execute(
            [uids, self.uid])
        return [int(r["u"]) for r in rows]


def _launch(plpy, GD, sql, queue_size, mode: str) -> dict:
    check_sql(sql)
    be = native.backend(plpy)
    gucs.define(be.lib)
    uid, suid = be.user_id(), be.session_user_id()
    base = jsettings.baseline(plpy, GD)
    plan = GD.get("plpy_bg.plan.context")
    if plan is None:  # per session: the baseline's names and values are constants of the plan
        plan = GD["plpy_bg.plan.context"] = plpy.prepare(CONTEXT_SQL.replace("{vals}", base.values_sql()),
                                                         ["pg_catalog.oid"])
    ctx = plan.execute([uid])
    if not ctx:
        raise PgError(f"current role (oid {uid}) does not exist", sqlstate="42704")
    r = ctx[0]
    if r["sco"] != "on":
        raise PgError("background jobs are read with standard_conforming_strings = on",
                      detail="This session has standard_conforming_strings = off, under which a backslash in "
                             "'...' escapes a quote: the server would read the job's text otherwise than "
                             "plpy_bg's policy reads it.",
                      hint="SET standard_conforming_strings = on before launching, and write E'...' where a "
                           "backslash escape is meant.", sqlstate="0A000")
    qsize = queue_bytes(queue_size, r["default_queue_size"])
    max_workers = parse_setting("pg_background.max_workers", r["max_workers"], DEFAULT_MAX_WORKERS,
                                {"": 1}, "")
    if not 1 <= max_workers <= MAX_MAX_WORKERS:
        raise InvalidParameter(f'{max_workers} is outside the valid range for parameter "pg_background.max_workers" '
                               f'(1 .. {MAX_MAX_WORKERS})')
    worker_timeout = parse_setting("pg_background.worker_timeout", r["worker_timeout"], 0, _UNITS_MS, "ms")
    settings = base.inherit(r["vals"], r["superuser"]) + jsettings.placeholders(plpy, GD, r["extra_names"])
    search_path = next((v for n, v in settings if n == "search_path"), None)
    # provenance and policy before anything runs: a refused job never reaches the dispatcher
    prov = policy.capture_provenance(plpy, parent_job=dclient.job_info(plpy, GD))
    classification = policy.check(plpy, sql, prov, r["cu"], search_path=search_path, job_oid=uid)
    if r["recovery"] or r["ro"] == "on":  # the launch writes the job table: refused at once, not after a wait
        raise _read_only(bool(r["recovery"]))
    # a NOLOGIN role's jobs log in as its shadow (plpy_bg.job_login) and SET ROLE to it
    login = r["cu"] if r["can_login"] else _plan(plpy, GD, "login", JOB_LOGIN_SQL, ["pg_catalog.oid"]).execute(
        [uid])[0]["login"]
    cl = dclient.get(plpy, GD)
    req = {
        "mode": mode, "db": GD[dclient.CTX_KEY]["db"], "db_oid": GD[dclient.CTX_KEY]["db_oid"],
        "role": r["cu"], "login": login, "user_id": uid,
        "session_user_id": suid, "sql": sql, "queue_size": qsize, "max_workers": max_workers,
        "worker_timeout_ms": worker_timeout, "settings": settings,
        "statements": len(classification["statements"]), "preview": policy.preview(sql),
        "one_transaction": policy.commits_its_outcome(classification),
        "provenance_json": P.jsonb_text(prov), "classification_json": P.jsonb_text(classification),
    }
    if mode != "submit":  # rows are kept: let the worker write them as record literals
        row_sql = policy.row_statement(sql, classification)
        if row_sql is not None:
            req["row_sql"] = row_sql
    try:
        return cl.request("launch", **req)
    except PgError as e:
        if e.message.startswith(SANDBOX_REFUSAL):  # said in the server log too, where DBAs look
            plpy.warning(f"plpy_bg: {e.message}", hint=e.hint)
        raise


def _read_only(recovery: bool) -> PgError:
    if recovery:
        return PgError("cannot launch a background job on a server in recovery",
                       detail="Every job is recorded in plpy_bg.jobs at its launch; a hot standby cannot write it.",
                       hint="Launch on the primary. Launches work here once this server is promoted.",
                       sqlstate="25006")
    return PgError("cannot launch a background job in a read-only transaction",
                   detail="Every job is recorded in plpy_bg.jobs at its launch.",
                   hint="Launch in a read-write transaction. A database or server made read-only with "
                        "default_transaction_read_only = on refuses launches until it is reset.",
                   sqlstate="25006")


@sql_errors
def launch_v1(plpy, GD, sql, queue_size) -> int:
    return _launch(plpy, GD, sql, queue_size, "v1")["pid"]


@sql_errors
def launch_v2(plpy, GD, sql, queue_size) -> dict:
    return _launch(plpy, GD, sql, queue_size, "launch")


@sql_errors
def submit_v2(plpy, GD, sql, queue_size) -> dict:
    return _launch(plpy, GD, sql, queue_size, "submit")


# ---- waiting without hanging ----------------------------------------------------

def _check_blocked(plpy, GD, pid: int) -> None:
    """Between slices of waiting: let the backend process interrupts and refuse a deadlock.

    A job that waits for a lock (or a snapshot, as CREATE INDEX CONCURRENTLY
    does) held by this session would never end while we wait for it.
    """
    rows = _plan(plpy, GD, "blocked", BLOCKED_BY_ME, ["int4"]).execute([pid])
    if rows and rows[0]["blocked"]:
        raise DeadlockDetected(
            "deadlock detected: this session waits for background job with pid %d, which waits for this session" % pid,
            detail=f"Process {pid} is blocked by a lock or snapshot held by this session's transaction.",
            hint="Commit or roll back before waiting for the job. CREATE INDEX CONCURRENTLY waits for every "
                 "running statement: poll with pg_background_wait_v2_timeout in short statements instead.")


def _raise_job_error(final: dict, pid: int) -> None:
    err = final.get("error")
    if err:
        e = PgError.from_dict(err)
        e.origin = f"background job {pid}"
        raise e


PREFETCH_BYTES = 1 << 20


class _Fetcher:
    """Pulls a job's rows from the dispatcher in slices that can be interrupted."""

    def __init__(self, plpy, GD, pid, cookie):
        self.plpy, self.GD, self.pid = plpy, GD, pid
        self.cl = dclient.get(plpy, GD)
        self.kw = {"pid": pid, "cookie": cookie, "slice_ms": SLICE_MS}
        self.who = Caller(plpy, GD)
        self.first = True
        self.final = None

    def next_batch(self) -> list[str]:
        """Rows of the next reply; [] with self.final set at the end."""
        while self.final is None:
            frames = self.cl.call_as(self.who, "fetch", continuing=not self.first, **self.kw)
            self.first = False
            rows: list[str] = []
            for kind, payload in frames:
                if kind == b"R":
                    rows += P.unpack_rows(payload)
                elif kind == b"E":
                    raise PgError.from_dict(json.loads(payload))
                elif kind == b"Z":
                    self.final = json.loads(payload)
            if rows:
                return rows
            if self.final is None:
                _check_blocked(self.plpy, self.GD, self.pid)
        return []


def _result_rows(plpy, GD, pid, cookie):
    """Rows of a job for a SETOF record function.

    An error raised from inside the row iterator reaches the caller with
    PL/Python's own message ("error fetching next item from iterator"), so
    the first MB of rows is read here, before returning: a job that fails
    within it raises its own SQLSTATE, message, detail and hint.
    """
    f = _Fetcher(plpy, GD, pid, cookie)
    head: list[str] = []
    size = 0
    while f.final is None and size < PREFETCH_BYTES:
        batch = f.next_batch()
        head += batch
        size += sum(len(r) for r in batch)
    if f.final is not None:
        _raise_job_error(f.final, f.pid)
        return head
    return _stream(plpy, f, head)


def _stream(plpy, f: _Fetcher, head: list[str]):
    yield from head
    try:
        while True:
            batch = f.next_batch()
            if not batch:
                break
            yield from batch
        _raise_job_error(f.final, f.pid)
    except PgError as e:
        e.raise_in(plpy)


def _result_handle(pid, cookie, v2: bool):
    if v2:
        _handle(pid, cookie)
        return cookie
    _require("pid", pid)
    return None


# a type no column list can name (a pseudo-type, another session's temporary type), one whose
# input function refuses every value, or one gone since the job wrote its rows is read as its text
COLUMNS_SQL = """
SELECT pg_catalog.string_agg(pg_catalog.format('c%s %s', u.n,
         CASE WHEN y.oid IS NULL OR y.typtype OPERATOR(pg_catalog.=) 'p'
                OR pg_catalog.pg_is_other_temp_schema(y.typnamespace)
                OR y.typinput OPERATOR(pg_catalog.=) ANY ('{pg_catalog.pg_node_tree_in, pg_catalog.pg_ndistinct_in,
                     pg_catalog.pg_dependencies_in, pg_catalog.pg_mcv_list_in,
                     pg_catalog.pg_ddl_command_in}'::pg_catalog.regproc[])
              THEN 'text' ELSE pg_catalog.format_type(u.t, u.m) END), ', ' ORDER BY u.n) AS cols
FROM ROWS FROM (pg_catalog.unnest($1::pg_catalog.oid[]), pg_catalog.unnest($2::pg_catalog.int4[]))
  WITH ORDINALITY AS u(t, m, n)
  LEFT JOIN pg_catalog.pg_type y ON y.oid OPERATOR(pg_catalog.=) u.t
"""


@sql_errors
def result_columns(plpy, GD, pid, cookie, v2: bool) -> dict:
    """The column list of a job's rows ("c1 integer, c2 text") and the DateStyle and IntervalStyle
    they were written under, once known; reads no row.

    pg_background_result(_v2) reads the rows through `result_rows` with that list, under those
    settings, inside PL/pgSQL's RETURN QUERY, which checks it against the caller's column list
    before the first row: a wrong list is 42804 with the types in its detail, and the rows stay
    to be read with the right one.
    """
    cookie = _result_handle(pid, cookie, v2)
    cl = dclient.get(plpy, GD)
    who = Caller(plpy, GD)
    while True:
        r = cl.request_as(who, "describe", pid=pid, cookie=cookie, slice_ms=SLICE_MS)
        if r["known"]:
            break
        _check_blocked(plpy, GD, pid)
    cols = r["columns"]
    if cols is None:  # the job failed: reading its rows raises its error, as it always has
        _result_rows(plpy, GD, pid, cookie)
        raise PgError(f"background job {pid} failed without an error", sqlstate="XX000")
    if not cols:
        raise PgError("structure of query does not match function result type",
                      detail=f"The rows of background job {pid} have no columns.", sqlstate="42804")
    text = _plan(plpy, GD, "columns", COLUMNS_SQL, ["pg_catalog.oid[]", "pg_catalog.int4[]"]).execute(
        [[c[0] for c in cols], [c[1] for c in cols]])[0]["cols"]
    styles = r.get("styles") or {}
    return {"cols": text, "datestyle": styles.get("datestyle") or None,
            "intervalstyle": styles.get("intervalstyle") or None}


@sql_errors
def result_rows(plpy, GD, pid, cookie, v2: bool):
    return _result_rows(plpy, GD, pid, _result_handle(pid, cookie, v2))


ENDED_SQL = """
SELECT j.state, j.error::pg_catalog.text AS error FROM plpy_bg.jobs j
WHERE j.pid OPERATOR(pg_catalog.=) $1 AND j.cookie OPERATOR(pg_catalog.=) $2
"""


def _wait_slice(plpy, GD, cl, who, pid, cookie, slice_ms: int) -> dict | None:
    """Wait up to `slice_ms` for the job: its end ({"state", "error"}), or None while it runs.

    A job no session holds any more (it ended and was read, detached, or its launcher is
    gone) is answered from the job table, as the caller may read it (its own jobs; a
    superuser all): a real handle always says how its job ended.
    """
    try:
        r = cl.request_as(who, "wait", pid=pid, cookie=cookie, slice_ms=slice_ms)
    except PgError as e:
        if cookie is None or e.sqlstate not in ("42704", "55000"):
            raise
        rows = _plan(plpy, GD, "ended", ENDED_SQL, ["pg_catalog.int4", "pg_catalog.int8"]).execute([pid, cookie])
        if not rows:
            raise
        if rows[0]["state"] == "running":  # its end is being written
            time.sleep(min(slice_ms, 50) / 1000)
            return None
        return {"state": rows[0]["state"], "error": json.loads(rows[0]["error"]) if rows[0]["error"] else None}
    return r if r["done"] else None


def _wait_for_end(plpy, GD, pid, cookie, timeout_ms: int | None, between) -> dict | None:
    """The job's end ({"state", "error"}), or None when `timeout_ms` passed first; `between`
    runs after each slice of waiting."""
    cl = dclient.get(plpy, GD)
    who = Caller(plpy, GD)
    deadline = None if timeout_ms is None else time.monotonic() + timeout_ms / 1000
    while True:
        slice_ms = SLICE_MS
        if deadline is not None:
            slice_ms = max(0, min(slice_ms, int((deadline - time.monotonic()) * 1000)))
        end = _wait_slice(plpy, GD, cl, who, pid, cookie, slice_ms)
        if end is not None:
            return end
        if deadline is not None and time.monotonic() >= deadline:
            return None
        between()


def _wait(plpy, GD, pid, cookie, timeout_ms: int | None) -> bool:
    """True once the job has ended; False when `timeout_ms` passed first.

    Without a timeout, a job blocked by this very session is a deadlock and
    raises; with one, the wait simply ends in time (a caller that polls in
    short statements lets CREATE INDEX CONCURRENTLY finish).
    """
    if timeout_ms is None:
        between = lambda: _check_blocked(plpy, GD, pid)  # noqa: E731
    else:
        between = lambda: plpy.execute("SELECT 1")  # noqa: E731  (acts on cancel and statement_timeout)
    return _wait_for_end(plpy, GD, pid, cookie, timeout_ms, between) is not None


@sql_errors
def wait_v2(plpy, GD, pid, cookie) -> None:
    _handle(pid, cookie)
    _wait(plpy, GD, pid, cookie, None)


@sql_errors
def wait_v2_timeout(plpy, GD, pid, cookie, timeout_ms) -> bool:
    _handle(pid, cookie)
    _require("timeout_ms", timeout_ms)
    if timeout_ms < 0:
        raise InvalidParameter(f"timeout must not be negative: {timeout_ms}")
    return _wait(plpy, GD, pid, cookie, timeout_ms)


@sql_errors
def await_job(plpy, GD, pid, cookie, timeout_ms) -> None:
    """CALL pg_background_await: wait for a job, committing between checks so that this session
    holds no snapshot (CREATE INDEX CONCURRENTLY in the job waits for none of ours); raise the
    job's error if it failed, 57014 when `timeout_ms` passes first."""
    _handle(pid, cookie)
    if timeout_ms is not None and timeout_ms < 0:
        raise InvalidParameter(f"timeout must not be negative: {timeout_ms}")
    try:
        plpy.commit()
    except plpy.SPIError:
        raise PgError("pg_background_await cannot run inside a transaction block", sqlstate="25001",
                      detail="It commits between checks so that it holds no snapshot the job could wait for.",
                      hint="CALL it on its own, after the transaction that launched the job has committed "
                           "(psql: a separate command, not inside -1 or BEGIN); inside a transaction, use "
                           "pg_background_wait_v2.") from None
    def between():
        plpy.execute("SELECT 1")  # lets the backend act on cancel and statement_timeout
        plpy.commit()  # and ends the transaction that took a snapshot for it

    end = _wait_for_end(plpy, GD, pid, cookie, timeout_ms, between)
    if end is None:
        raise PgError(f"canceling wait: background job {pid} did not end within {timeout_ms} ms",
                      sqlstate="57014", hint="The job runs on; CALL pg_background_await again to wait longer.")
    if end["state"] == "completed":
        return
    if end.get("error"):
        _raise_job_error(end, pid)
    raise PgError(f"background job {pid} ended {end['state']}", sqlstate="XX000",
                  hint="See the pg_background_jobs view.")


@sql_errors
def detach_v1(plpy, GD, pid) -> None:
    _require("pid", pid)
    dclient.get(plpy, GD).request_as(Caller(plpy, GD), "detach", pid=pid, cookie=None)


@sql_errors
def detach_v2(plpy, GD, pid, cookie) -> None:
    _handle(pid, cookie)
    dclient.get(plpy, GD).request_as(Caller(plpy, GD), "detach", pid=pid, cookie=cookie)


def _cancel(plpy, GD, pid, cookie, grace_ms: int) -> None:
    cl = dclient.get(plpy, GD)
    cl.request_as(Caller(plpy, GD), "cancel", pid=pid, cookie=cookie, grace_ms=grace_ms)
    # wait (interruptibly) until the job has stopped or the grace and the terminate are through
    _wait(plpy, GD, pid, cookie, grace_ms + 2000)


@sql_errors
def cancel_v2(plpy, GD, pid, cookie) -> None:
    _handle(pid, cookie)
    _cancel(plpy, GD, pid, cookie, CANCEL_GRACE_MS)


@sql_errors
def cancel_v2_grace(plpy, GD, pid, cookie, grace_ms) -> None:
    _handle(pid, cookie)
    _require("grace_ms", grace_ms)
    if grace_ms < 0:
        raise InvalidParameter(f"grace period must not be negative: {grace_ms}")
    _cancel(plpy, GD, pid, cookie, min(grace_ms, GRACE_CAP_MS))


@sql_errors
def list_v2(plpy, GD):
    jobs = dclient.get(plpy, GD).request_as(Caller(plpy, GD), "list")["jobs"]
    return [(j["pid"], j["cookie"], j["launched_at"], j["user_id"], j["queue_size"], j["state"],
             j["sql_preview"], j["last_error"], j["consumed"]) for j in jobs]


@sql_errors
def define_settings(plpy) -> None:
    """pg_background's settings, in this backend (CREATE EXTENSION calls it; so does a launch)."""
    gucs.define(native.backend(plpy).lib)


@sql_errors
def stats_v2(plpy, GD) -> dict:
    gucs.define(native.backend(plpy).lib)
    r = _plan(plpy, GD, "maxw", "SELECT pg_catalog.current_setting('pg_background.max_workers', true) AS v",
              []).execute([])
    st = dclient.get(plpy, GD).request("stats")
    st["max_workers"] = parse_setting("pg_background.max_workers", r[0]["v"], DEFAULT_MAX_WORKERS, {"": 1}, "")
    return st


@sql_errors
def get_progress_v2(plpy, GD, pid, cookie):
    _handle(pid, cookie)
    p = dclient.get(plpy, GD).request_as(Caller(plpy, GD), "get_progress", pid=pid, cookie=cookie)["progress"]
    if p is None:
        return None
    return {"progress_pct": p[0], "progress_msg": p[1]}


@sql_errors
def register_role(plpy, GD, role, present) -> None:
    """Add (or remove) the peer-map line that lets job workers log in as `role`.

    Runs as the extension's owner (SECURITY DEFINER): the ident file's path is
    a superuser's setting, and the backend writes the file as the server's OS user.
    """
    _require("role_name", role)
    _require("present", present)
    if not present and role == identmap.DISPATCHER_ROLE:
        return  # the dispatcher's own login stays
    path = plpy.execute("SELECT pg_catalog.current_setting('ident_file') AS f")[0]["f"]
    if identmap.update_file(path, identmap.os_user(), add=[role] if present else [],
                            remove=[] if present else [role]):
        plpy.execute("SELECT pg_catalog.pg_reload_conf()")


ACTIVITY_SQL = """
SELECT a.pid, a.datname::pg_catalog.text AS datname, a.usename::pg_catalog.text AS usename,
       a.usesysid::pg_catalog.int8 AS usesysid
FROM pg_catalog.pg_stat_activity a
WHERE a.backend_type OPERATOR(pg_catalog.=) 'client backend'
  AND (a.application_name OPERATOR(pg_catalog.=) 'plpy_bg worker' OR a.pid OPERATOR(pg_catalog.=) ANY($1))
"""


@sql_errors
def invariants(plpy, GD) -> list:
    """The dispatcher's invariants against pg_stat_activity as this (superuser) caller sees it.

    A violation must persist for a second to count: a job ending or a worker
    connecting while the check runs is not one.
    """
    cl = dclient.get(plpy, GD)
    for attempt in range(6):
        live = cl.request("pool_pids")["pids"]
        rows = _plan(plpy, GD, "activity", ACTIVITY_SQL, ["pg_catalog.int4[]"]).execute([live])
        activity = [[r["pid"], r["datname"], r["usename"], r["usesysid"]] for r in rows]
        bad = cl.request("invariants", activity=activity)["violations"]
        if not bad or attempt == 5:
            return bad
        time.sleep(0.2)


@sql_errors
def pool_workers(plpy, GD) -> list:
    return dclient.get(plpy, GD).request("pool")["workers"]
