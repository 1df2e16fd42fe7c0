"""The dispatcher: one long-lived process per cluster that runs every job.

Backends talk to it over a Unix socket that only the OS user postgres can
open (SO_PEERCRED gives each request's backend pid). A launch walks:

  api.launch (launcher backend) -> LAUNCH request -> Dispatcher.launch:
  worker connection as the job's role (pool) -> job row (store) -> handle back
  -> job thread runs the SQL, rows flow into the job's RowSink -> FETCH
  requests from the launcher stream them out.

Jobs belong to the socket connection of the session that launched them; when
that session ends, its jobs are detached (they run on, rows discarded). The
dispatcher leaves when the postmaster does; a new one marks jobs of the old
one `lost`.

Invariants (checked by `check_invariants`, which the tests call):
- every job reaches exactly one terminal state: completed, failed, canceled or
  lost, with a reason for all but completed;
- a job in state running has a live worker thread and a worker backend pid;
- a worker connection is either running one job or idle in the pool.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import ctypes
import fcntl
import hashlib
import json
import logging
import os
import secrets
import select
import signal
import socket
import struct
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

import psycopg
from psycopg import pq

from plpy_bg import __version__
from plpy_bg.dispatcher import protocol as P
from plpy_bg.dispatcher.host import Postmaster, Process, proc_stat
from plpy_bg.dispatcher.pool import Pool, Worker, error_fields, seccomp_filters, temp_file_limit_bytes
from plpy_bg.dispatcher.sink import Budget, RowSink, SpoolFull
from plpy_bg.dispatcher.store import FINISH, FLAGS, INSERT, PROGRESS, Store, reconcile
from plpy_bg.errors import SANDBOX_REFUSAL, cut_utf8
from plpy_bg.errors import (ConnectionFailure, InsufficientPrivilege, InvalidParameter,
                            FeatureNotSupported, ObjectNotFound, PgError, TooManyConnections,
                            TooManyWorkers, WrongState)
from plpy_bg.jobs import identmap
from plpy_bg.sandbox import supervision
from plpy_bg.jobs.limits import (ALL_ROW_BYTES, DATABASES_PER_CONNECTIONS, DISPATCHER_DATABASES, LAST_ERROR_LIMIT,
                                 PROGRESS_MSG_LIMIT, SESSION_MAX_JOBS, SESSION_ROW_BYTES, stored_sql)
from plpy_bg.jobs import settings as jsettings

log = logging.getLogger("plpy_bg.dispatcher")

TERMINAL = ("completed", "failed", "canceled", "lost")
ROW_CHUNK = tuple(x for x in (getattr(pq.ExecStatus, "TUPLES_CHUNK", None), pq.ExecStatus.SINGLE_TUPLE) if x)
ENDED = RowSink(0, False)  # stands in for the result queue of a job with nothing left to read
ENDED.discard()
SESSION_KEEP = 256  # jobs a session remembers once read or submitted (list_v2); the job table keeps more


class NeedPrivs(Exception):
    """The request touches jobs of other roles: the caller must say whose privileges it has."""

    def __init__(self, uids: list[int]):
        super().__init__(uids)
        self.uids = sorted(set(uids))


@dataclass(eq=False)
class Job:
    cookie: int
    pid: int
    db: str
    db_oid: int
    role: str
    user_id: int
    sql: str
    preview: str
    queue_size: int
    mode: str  # launch | submit | v1
    launcher_pid: int
    settings: list
    launched_at: datetime
    session: "Session | None"
    streaming: bool
    worker_timeout_ms: int = 0
    state: str = "running"
    last_error: dict | None = None
    command_tag: str | None = None
    consumed: bool = False
    delivered: bool = False  # the launcher read the last row: no longer attached (as pg_background)
    detached: bool = False
    progress: tuple | None = None
    cancel_requested: bool = False
    cancel_called: bool = False  # cancel_v2 named it, even after it ended: pg_background counts it canceled
    terminate_at: float | None = None
    terminated: bool = False
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None
    done: threading.Event = field(default_factory=threading.Event)
    # a cancel or termination acts wholly before the job's outcome is decided, or not at all: its
    # worker goes back to the pool after that, to run another role's job
    ctl: threading.Lock = field(default_factory=threading.Lock)
    sink: RowSink | None = None
    worker: Worker | None = None
    thread: "concurrent.futures.Future | None" = None
    provenance: str | None = None  # JSON text, as the launcher sent it and the table stores it
    classification: str | None = None
    parent_cookie: int | None = None
    session_user_id: int | None = None
    row_pending: tuple | None = None
    sent: bool = False  # the launch sent the job's SQL itself
    text: str | None = None  # what the worker runs (all of it), until it is sent
    row_text: bool = False  # text is one plain query the worker runs wrapped to write record literals
    one_transaction: bool = False  # its statements run in one transaction, which records its outcome

    @property
    def dbk(self) -> tuple[str, int]:
        return self.db, self.db_oid

    def listing(self) -> dict:
        """A row of pg_background_list_v2, in pg_background's words: `running` or `stopped` (how it
        ended is in last_error and in the pg_background_jobs view)."""
        err = self.last_error
        return {
            "pid": self.pid, "cookie": self.cookie, "launched_at": self.launched_at.isoformat(),
            "user_id": self.user_id, "queue_size": self.queue_size,
            "state": "stopped" if self.state in TERMINAL else self.state,
            "sql_preview": self.preview,
            "last_error": cut_utf8(err["message"], LAST_ERROR_LIMIT) if err else None,
            "consumed": self.consumed,
        }


@dataclass(eq=False)
class Session:
    sock: socket.socket
    peer_pid: int
    peer_start: int | None = None  # the peer's start time at connect: its pid names no later process
    jobs: dict = field(default_factory=dict)  # cookie -> Job, launched here and not detached
    running: set = field(default_factory=set)  # cookies of those still running
    launched: int = 0
    completed: int = 0
    failed: int = 0
    canceled: int = 0
    total_ms: float = 0.0
    closed: bool = False
    budget: Budget = field(default_factory=lambda: Budget(SESSION_ROW_BYTES))  # of all_rows, once served
    spooled: Budget = field(default_factory=lambda: Budget(1 << 62))  # bytes in its jobs' spool files


def _options(settings: dict[str, str]) -> str:
    """A libpq `options` value: each setting as -c name=value (spaces escaped as libpq requires)."""
    return " ".join(f"-c {k}={v.replace(chr(92), chr(92) * 2).replace(' ', chr(92) + ' ')}"
                    for k, v in settings.items())


# Startup options win over ALTER DATABASE/ROLE ... SET, which a database owner controls: every
# session the dispatcher opens resolves names in pg_catalog only, acts as the role it logged in
# as, sees row-level security applied (off would make its job-table writes fail), and cannot be
# made read-only, timed out or ended while idle. A job then sets its launcher's values.
PINNED = {"search_path": "pg_catalog, pg_temp", "role": "none", "row_security": "on",
          "default_transaction_read_only": "off", "default_transaction_isolation": "read committed",
          "statement_timeout": "0", "lock_timeout": "0", "idle_in_transaction_session_timeout": "0",
          "idle_session_timeout": "0"}
PINNED_OPTIONS = _options(PINNED)
# job-table writers: every final state committed durably (the fast lane turns it off itself); a
# lock held on the job table (a database owner's VACUUM FULL) makes a write fail and be retried
# instead of holding the writer's session
WRITER_OPTIONS = _options({**PINNED, "synchronous_commit": "on", "lock_timeout": "5s"})
CONTESTED_SQL = """
SELECT DISTINCT l.objid::pg_catalog.int8
FROM pg_catalog.pg_locks l
WHERE l.locktype OPERATOR(pg_catalog.=) 'object'
  AND l.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_database'::pg_catalog.regclass
  AND l.mode OPERATOR(pg_catalog.=) ANY ('{ShareLock,ShareRowExclusiveLock,ExclusiveLock,AccessExclusiveLock}')
  AND l.objid OPERATOR(pg_catalog.=) ANY (%s::pg_catalog.oid[])
"""
DATABASE_OID = """
SELECT d.oid::pg_catalog.int8 FROM pg_catalog.pg_database d
WHERE d.datname OPERATOR(pg_catalog.=) pg_catalog.current_database()
"""
# the role a shadow login stands for, if it is a member of exactly that role and holds no other
SHADOW_TARGET = """
SELECT r.rolname::pg_catalog.text FROM pg_catalog.pg_roles r
WHERE r.oid OPERATOR(pg_catalog.=) %s AND NOT r.rolcanlogin AND NOT r.rolsuper
  AND (SELECT pg_catalog.array_agg(m.roleid) FROM pg_catalog.pg_auth_members m
       WHERE m.member OPERATOR(pg_catalog.=) %s) OPERATOR(pg_catalog.=) ARRAY[r.oid]
"""

WORKER_HELLO = f"""
SELECT s.usesysid::pg_catalog.int8, pg_catalog.current_setting('temp_file_limit'), ({DATABASE_OID})
FROM pg_catalog.pg_stat_get_activity(pg_catalog.pg_backend_pid()) AS s
"""


def other_database(db: str, want: int, got: int) -> PgError:
    return PgError(f'database "{db}" cannot be served by plpy_bg: its name leads to another database',
                   detail=f"The launch came from the database of oid {want}; a session opened with this "
                          f"name reached oid {got} (the name is converted to UTF-8 on its way).",
                   hint="Rename the database to an ASCII name.", sqlstate="3D000")


SANDBOX_WARNING_EVERY = 60  # housekeeping ticks (seconds)
EXIT_WRITES_WAIT = 3.0  # seconds an orderly exit gives queued job-table writes to commit
SUPERSEDED_CHECK_EVERY = 10  # housekeeping ticks between two looks for a newer version's dispatcher
PR_SET_DUMPABLE = 4
UNSANDBOXED_WARNING = ("DO $w$ BEGIN RAISE WARNING 'plpy_bg: pgseccomp.enabled is on but {what}; no session, job "
                       "or parallel worker policy is applied, and background jobs are refused' USING HINT = "
                       "'Start the supervisor (python3 build.py supervisor) and the server under the wrapper; "
                       "see README, Seccomp sandbox.'; END $w$")


class Dispatcher:
    def __init__(self, sockdir: str, port: int, postmaster: Postmaster, socket_path: str):
        self.sockdir = sockdir
        self.port = port
        self.postmaster = postmaster
        # filters stay for a process's life and children inherit them: what the postmaster carries
        # now is what every backend of this server starts with (0 or None: started unwrapped)
        self.postmaster_filters = seccomp_filters(postmaster.pid)
        self.supervisor_checked = (-10.0, False)
        self.restriction_profiles: dict[str, str] = {}  # pool profile -> the restrictions' JSON
        raw = os.environ.get(supervision.GLOBAL_ENV)
        self.global_policy = json.loads(raw) if raw else None  # as the supervisor reports a policy
        self.warn_now = False  # a launch was refused for the sandbox: say so in the server log now
        self.socket_path = socket_path
        self.os_user = identmap.os_user()
        self.epoch = secrets.token_hex(8)
        self.lock = threading.RLock()
        self.jobs: dict[int, Job] = {}
        self.by_worker_pid: dict[int, Job] = {}
        # every database is named by (name, oid): a name reaches a database, the oid says which
        self.stores: dict[tuple[str, int], Store] = {}
        self.mapped_roles: set[str] = set()
        self.server_cache: dict[tuple[str, int], tuple] = {}
        self.ident_lock = threading.Lock()
        self.pool = Pool(self._open_worker)
        self.config_db: tuple[str, int] | None = None  # the first database served: asked first
        self.config_at = 0.0
        self.log_level_setting: str | None = None  # plpy_bg.log_level as last applied
        # job threads are reused: starting a thread per job costs more than the rest of a launch
        self.executor = concurrent.futures.ThreadPoolExecutor(max_workers=4096, thread_name_prefix="job")
        self.stopping = threading.Event()
        self.started_at = time.time()
        self.listener: socket.socket | None = None
        self.lockfile = None
        self.db_active: dict[tuple[str, int], float] = {}  # database -> when a job last started or ended there
        self.max_connections = 100  # the server's, read with its other settings
        self.draining = False  # the server is shutting down: no new jobs
        self.retiring = False
        self.open_sessions = 0  # backends connected to this dispatcher
        self.socket_inode = 0
        self.probe_failed: dict[tuple[str, int], float] = {}  # database -> when it last failed a probe
        self.all_rows = Budget(ALL_ROW_BYTES)  # unread rows of every session, in memory

    # ---- connections back into the server ----
    def _connect(self, db: str, role: str, appname: str, options: str) -> psycopg.Connection:
        return psycopg.connect(host=self.sockdir, port=self.port, dbname=db, user=role,
                               application_name=appname, connect_timeout=10, client_encoding="UTF8",
                               options=options, autocommit=True)

    def _connect_own(self, db: str, db_oid: int) -> psycopg.Connection:
        """A session of the dispatcher's own role (no superuser, job table writes only) in the
        database of oid `db_oid`, reached by name and checked."""
        try:
            conn = self._connect(db, identmap.DISPATCHER_ROLE, "plpy_bg dispatcher", WRITER_OPTIONS)
            got = conn.execute(DATABASE_OID).fetchone()[0]
            if got != db_oid:
                conn.close()
                raise other_database(db, db_oid, got)
            return conn
        except psycopg.OperationalError as e:
            no_slot(e)
            if "Peer authentication failed" in str(e) or f'role "{identmap.DISPATCHER_ROLE}"' in str(e):
                raise ConnectionFailure(
                    f'the plpy_bg dispatcher cannot log in as "{identmap.DISPATCHER_ROLE}"',
                    detail=str(e).strip(),
                    hint=f'CREATE EXTENSION plpy_bg creates the role; pg_ident.conf needs the line '
                         f'{identmap.map_line(self.os_user, identmap.DISPATCHER_ROLE)} and pg_hba.conf '
                         f'"local all all peer map=plpy_bg".') from None
            raise

    def control_exec(self, dbk: tuple[str, int], sql: str, params=None, wait: float = 10.0,
                     limit_ms: int = 5000):
        """A control question in database `dbk`, on its durable job-table session (its own
        timeouts and lock: a database whose owner holds a lock delays only itself)."""
        return self.store(dbk).durable.query(sql, params, wait, limit_ms)

    def store(self, dbk: tuple[str, int]) -> Store:
        """The job-table writers of database `dbk` = (name, oid), made on demand; each session they
        open is checked to reach that oid."""
        with self.lock:
            s = self.stores.get(dbk)
            if s is None:
                db, db_oid = dbk
                s = self.stores[dbk] = Store(lambda d: self._connect_own(d, db_oid), db, self.epoch,
                                             self.end_orphans)
            return s

    def end_orphans(self, running: list) -> None:
        """Rows (cookie, pid, launched_at) of jobs an earlier dispatcher left `running`: a backend
        that still runs one (a child of the postmaster started before the launch, not a pid used
        again) is terminated and waited for, so `lost` is recorded only for jobs that can no
        longer commit (the backend of a dead dispatcher runs its statement to its end)."""
        for cookie, pid, launched_at in running:
            st = proc_stat(pid)
            if st is None or st[0] != self.postmaster.pid or st[1] > launched_at.timestamp() + 0.02:
                continue
            try:
                p = Process(pid)
            except ProcessLookupError:
                continue
            try:
                if proc_stat(pid) != st:  # the pidfd must hold the process just read
                    continue
                log.warning("terminating backend %s, which still runs background job %s of a dispatcher "
                            "that is gone", pid, cookie)
                p.signal(signal.SIGTERM)
                if not select.select([p.fd], [], [], 10)[0]:
                    log.warning("backend %s did not end within 10 s of SIGTERM", pid)
            finally:
                p.close()

    def sweep(self, dbk: tuple[str, int]) -> None:
        """At start, every database where an earlier dispatcher may have left jobs `running`: they
        are settled at once, not when someone next launches there."""
        try:
            dbs = self.control_exec(dbk, "SELECT d.datname::pg_catalog.text, d.oid::pg_catalog.int8 "
                                         "FROM pg_catalog.pg_database d WHERE d.datallowconn")
        except Exception as e:
            log.warning("could not list databases to settle jobs of an earlier dispatcher: %s", e)
            return
        for name, oid in dbs:  # the writers of a database settle it again when they open: nothing is left then
            try:
                with self._connect_own(name, int(oid)) as conn:
                    if conn.execute("SELECT pg_catalog.to_regclass('plpy_bg.jobs') IS NOT NULL").fetchone()[0]:
                        reconcile(conn, self.epoch, name, self.end_orphans)
            except Exception as e:  # no plpy_bg there, or no way in: nothing of ours to settle
                log.debug("not settling database %s: %s", name, e)

    def _open_worker(self, key: tuple, role: str) -> Worker:
        """A worker connection logged in as `role`, which must still be the role of oid key[1], in
        the database of oid key[3]."""
        db, role_oid, _, db_oid = key
        last = None
        for attempt in range(40):
            try:
                conn = self._connect(db, role, "plpy_bg worker", PINNED_OPTIONS)
                break
            except psycopg.OperationalError as e:
                last = e
                msg = str(e)
                no_slot(e)
                if "Peer authentication failed" in msg and attempt < 39:
                    # the map line may be missing or the postmaster not reloaded yet
                    self.ensure_ident((db, db_oid), role)
                    time.sleep(0.05)
                    continue
                if "not permitted to log in" in msg:
                    raise InsufficientPrivilege(
                        f'role "{role}" cannot run background jobs because it cannot log in',
                        detail="Background jobs run on a connection authenticated as the job's role.",
                        hint=f'ALTER ROLE "{role}" LOGIN, or launch from a role that can log in.')
                if "the database system is" in msg:  # starting up / shutting down / in recovery
                    raise ConnectionFailure("could not start background job: the server is not accepting connections",
                                            detail=msg.strip())
                raise ConnectionFailure("could not open a worker connection for a background job",
                                        detail=msg.strip())
        else:
            raise ConnectionFailure(f'could not log in as role "{role}" for a background job',
                                    detail=str(last).strip(),
                                    hint=f'Add {identmap.map_line(self.os_user, role)} to pg_ident.conf '
                                         'and "local all all peer map=plpy_bg" to pg_hba.conf.')
        conn.prepare_threshold = None  # DISCARD ALL between jobs drops prepared statements
        w = None
        try:
            login_oid, temp_limit, got_db = conn.execute(WORKER_HELLO).fetchone()
            if got_db != db_oid:
                raise other_database(db, db_oid, got_db)
            shadow = role == identmap.shadow_name(role_oid)
            if shadow:  # a NOLOGIN role's: a member of it only, then that role for every job
                target = conn.execute(SHADOW_TARGET, (role_oid, login_oid)).fetchone()
                if target is None:
                    raise InsufficientPrivilege(f'role "{role}" is not the job login of role oid {role_oid}',
                                                hint=f"DROP ROLE {role}; the next launch makes it again.")
            elif int(login_oid) != role_oid:  # renamed between the launch and the login
                raise InsufficientPrivilege(
                    f'role "{role}" is no longer the role that launched the job',
                    detail=f"The launching role has oid {role_oid}; the name now belongs to oid {login_oid}.",
                    hint="Launch the job again.")
            if conn.info.parameter_status("standard_conforming_strings") != "on":
                conn.execute("SET SESSION standard_conforming_strings = on")
            w = Worker(key=key, conn=conn, pid=conn.info.backend_pid, login=role, login_oid=int(login_oid),
                       temp_file_limit=temp_file_limit_bytes(temp_limit),
                       become=("role", target[0]) if shadow else None)
            sandboxed = self.sandboxed((db, db_oid))  # the settings' own failure says what it is
            if sandboxed:  # before any job SQL: the job can never run unfiltered
                if key[2] != "worker":  # held to its launcher's restrictions too
                    conn.execute("SELECT pg_catalog.set_config('plpy_bg.job_restrictions', %s, false)",
                                 (self.restriction_profiles[key[2]],))
                conn.execute("SELECT plpy_bg.install_worker_filter()")
            w.filters = seccomp_filters(w.pid)
        except psycopg.OperationalError as e:
            (w or conn).close()
            no_slot(e)
            raise ConnectionFailure("could not prepare a job worker", detail=str(e).strip()) from None
        except psycopg.Error as e:
            (w or conn).close()
            raise PgError("could not prepare a job worker (seccomp filter)",
                          detail=e.diag.message_primary or str(e), hint=e.diag.message_hint,
                          sqlstate=e.sqlstate or "XX000")
        except BaseException:
            (w or conn).close()
            raise
        return w

    def server_settings(self, dbk: tuple[str, int]) -> tuple[str, bool]:
        """(the ident file's path, pgseccomp.enabled as the configuration files say), cached 5 s.

        A superuser's facts, read through one narrow function granted to the dispatcher's role."""
        now = time.monotonic()
        hit = self.server_cache.get(dbk)
        if hit is None or now - hit[1] > 5.0:
            path, sandbox, maxconn = self.control_exec(
                dbk, "SELECT s.ident_file, s.sandbox, pg_catalog.current_setting('max_connections') "
                     "FROM plpy_bg.dispatcher_settings() s")[0]
            on = (sandbox or "").strip().lower() in ("on", "true", "yes", "1")
            self.max_connections = int(maxconn)
            hit = self.server_cache[dbk] = ((path, on), now)
        return hit[0]

    def profile_of(self, sess, dbk: tuple[str, int]) -> str:
        """The pool profile of a launch: "worker" when the launching backend runs under the global
        filter alone, else one per distinct set of restrictions (its policy and loaded filters,
        as the supervisor holds them), so a worker is only reused under the same ones."""
        if not self.postmaster_filters:
            return "worker"
        try:
            r = supervision.restrictions(sess.peer_pid, sess.peer_start)
        except (OSError, ValueError) as e:
            raise WrongState(f"{SANDBOX_REFUSAL} the seccomp supervisor does not say what the "
                             "launching session runs under", detail=str(e),
                             hint="Start the supervisor (python3 build.py supervisor) and restart the server.") from None
        policy = {"policy": r["policy"], "programs": r["programs"]}
        if not r["programs"] and r["policy"] == self.global_policy:
            return "worker"
        text = json.dumps(policy, sort_keys=True)
        profile = "worker:" + hashlib.sha256(text.encode()).hexdigest()[:16]
        with self.lock:
            self.restriction_profiles[profile] = text
        return profile

    def supervisor_answers(self) -> bool:
        """The supervisor that holds this server's listener is alive (asked at most once a second)."""
        now = time.monotonic()
        if now - self.supervisor_checked[0] > 1.0:
            try:
                ok = supervision.whoami().get("kind") != "none"
            except (OSError, ValueError):
                ok = False
            self.supervisor_checked = (now, ok)
        return self.supervisor_checked[1]

    def sandboxed(self, dbk: tuple[str, int]) -> bool:
        """A server started sandboxed stays so until it restarts (an ALTER SYSTEM that turns
        pgseccomp.enabled off counts at the next start); one started without its filter is
        sandboxed when the configuration files say so (a session SET cannot turn it off)."""
        files_on = self.server_settings(dbk)[1]  # read anyway: it also learns max_connections
        return bool(self.postmaster_filters) or files_on

    def ensure_ident(self, dbk: tuple[str, int], role: str) -> bool:
        """Add the peer-map line for `role` and make the postmaster reload; True when the file changed."""
        identmap.check_role_name(role)
        if role in self.mapped_roles:
            return False
        path = self.server_settings(dbk)[0]  # outside the lock: a slow database stalls only its own launch
        with self.ident_lock:
            if role in self.mapped_roles:
                return False
            changed = identmap.update_file(path, self.os_user, add=[role])
            self.mapped_roles.add(role)
            if changed:
                self.postmaster.reload()
                log.info("added peer map line for role %s", role)
            return changed

    # ---- launch ----
    def launch(self, sess: Session, req: dict) -> dict:
        mode = req["mode"]
        max_workers = int(req.get("max_workers") or 16)
        if self.draining:
            raise PgError("could not start background job: the server is shutting down", sqlstate="57P03")
        db_oid = int(req["db_oid"])
        dbk = (req["db"], db_oid)
        if not self.postmaster_filters and self.sandboxed(dbk):
            self.warn_now = True
            raise WrongState(
                f"{SANDBOX_REFUSAL} pgseccomp.enabled is on but this server runs without its seccomp filter",
                detail=f"The postmaster (pid {self.postmaster.pid}) carries no seccomp filter: it was not started "
                       "under plpy_bg's wrapper, so no process of this server is sandboxed.",
                hint="Restart the server under the wrapper (python3 build.py serve, or pg_ctl -p <wrapper>; see "
                     "README, Seccomp sandbox), or set pgseccomp.enabled = off to run unsandboxed knowingly.")
        if self.postmaster_filters and not self.supervisor_answers() and self.sandboxed(dbk):
            self.warn_now = True
            raise WrongState(
                f"{SANDBOX_REFUSAL} the seccomp supervisor of this server does not answer",
                detail="Without it no session, job or parallel worker policy is applied, and every syscall "
                       "it would answer fails with ENOSYS.",
                hint="Start the supervisor as root (python3 build.py supervisor), then restart the server "
                     "under the wrapper: a listener lost with its supervisor cannot be handed over again.")
        self.make_room(dbk, int(req["user_id"]))
        self.note_activity(dbk)
        with self.lock:
            active = len(sess.running)
            if len(sess.jobs) >= SESSION_MAX_JOBS:
                raise TooManyWorkers(
                    "too many background jobs tracked by this session",
                    detail=f"{len(sess.jobs)} jobs of this session are running or hold unread results.",
                    hint="Read their results (pg_background_result_v2) or detach them (pg_background_detach_v2).")
            if active >= max_workers:
                raise TooManyWorkers(
                    "too many background workers in this session",
                    detail=f"{active} jobs of this session are running; pg_background.max_workers is {max_workers}.",
                    hint="Wait for, detach or cancel running jobs, or raise pg_background.max_workers.")
        with self.lock:
            parent = self.by_worker_pid.get(sess.peer_pid)
        # by oid: a role renamed or dropped never reaches a worker logged in as another role; a job
        # is held to what its launcher runs under (a parent job too), whatever role it runs as
        key = (req["db"], int(req["user_id"]), self.profile_of(sess, dbk), db_oid)
        login = req.get("login") or req["role"]
        if login not in (req["role"], identmap.shadow_name(key[1])):
            raise InsufficientPrivilege(f'a job of role "{req["role"]}" cannot log in as "{login}"')
        worker, _ = self.pool.acquire(key, login)
        try:
            statements = int(req.get("statements") or 1)
            job = Job(
                cookie=secrets.randbits(63) or 1, pid=worker.pid, db=req["db"], db_oid=db_oid, role=req["role"],
                user_id=int(req["user_id"]), sql=stored_sql(req["sql"]), preview=req.get("preview") or "",
                queue_size=int(req["queue_size"]), mode=mode, launcher_pid=sess.peer_pid,
                settings=req.get("settings") or [], launched_at=datetime.now(timezone.utc),
                session=sess, streaming=(statements == 1),
                worker_timeout_ms=int(req.get("worker_timeout_ms") or 0),
                provenance=req.get("provenance_json"), classification=req.get("classification_json"),
                session_user_id=req.get("session_user_id"), text=req.get("row_sql") or req["sql"],
                row_text=bool(req.get("row_sql")), one_transaction=bool(req.get("one_transaction")))
            if parent is not None:
                job.parent_cookie = parent.cookie
            job.sink = RowSink(job.queue_size, job.streaming, budget=sess.budget,
                               spool_dir=self.postmaster.spool_dir, spool_limit=worker.temp_file_limit,
                               spooled=sess.spooled)
            if mode == "submit":
                job.sink.discard()
            job.worker = worker
            job.row_pending = self.store(job.dbk).insert(INSERT, self._row(job, sess))
        except psycopg.Error as e:
            self.pool.release(worker)
            raise self._unrecorded(e) from None
        except BaseException:
            self.pool.release(worker)
            raise
        with self.lock:
            self.jobs[job.cookie] = job
            self.by_worker_pid[job.pid] = job
            sess.jobs[job.cookie] = job
            sess.running.add(job.cookie)
            sess.launched += 1
            self._trim(sess)
        if job.row_pending[0].is_set() and job.settings == worker.applied:
            # the row is committed and the worker is ready: start the job from here, no handoff
            try:
                self._send(job, worker)
                job.sent = True
            except Exception:  # the job thread reports the dead connection
                job.sent = False
        job.thread = self.executor.submit(self._run_job, job)  # applies the settings while the row is committed
        try:
            Store.wait(job.row_pending)  # the row is visible to every session before the launch returns
        except Exception as e:
            # the job thread sees the same error and ends the job without running any of its SQL
            with self.lock:
                sess.jobs.pop(job.cookie, None)
                job.detached = True
                self._forget_if_done(job)
            raise self._unrecorded(e) from None
        return {"pid": job.pid, "cookie": job.cookie}

    @staticmethod
    def _unrecorded(e: Exception) -> PgError:
        return PgError("could not record the background job in plpy_bg.jobs; it was not started",
                       detail=str(e).strip() or type(e).__name__,
                       hint="The job table must be writable (disk space, read-only mode) for jobs to start.",
                       sqlstate=getattr(e, "sqlstate", None) or "58000")

    # ---- running a job ----
    @staticmethod
    def _send(job: Job, w: Worker) -> None:
        """Start the job's SQL on its worker; one plain query is described too (its rows reach the
        launcher as record literals, whose column types the reader's column list is checked against)."""
        committed = P.COMMITTED_SQL.format(cookie=int(job.cookie)) if job.one_transaction else None
        if job.row_text:
            w.send_described(job.text.encode(), P.row_text_sql(job.text).encode(),
                             committed.encode() if committed else None)
        elif committed:  # a line of its own: the job's text may end in a comment
            w.send(f"{job.text}\n;\n{committed}".encode())
        else:
            w.send(job.text.encode())
        job.text = None  # a 200 MB text is not kept while the job runs

    def _run_job(self, job: Job) -> None:
        w = job.worker
        error = None
        tag = None
        had_rows = False
        in_set = False
        reusable = True
        try:
            if not job.sent:
                w.apply_settings(job.settings)
                Store.wait(job.row_pending)  # the job row is committed before any job SQL runs
                if job.row_pending[1].get("abandoned"):  # the launch gave up waiting and said so
                    raise PgError("background job was not started: its launch timed out", sqlstate="57014")
                self._send(job, w)
            cancelled = lambda: job.cancel_requested
            spool_error = None

            def put(rows: list[bytes]) -> None:
                nonlocal spool_error
                try:
                    job.sink.put_many(rows, cancelled)
                except SpoolFull as e:  # the job fails as a query past temp_file_limit does
                    spool_error = e.as_dict()
                    job.sink.drop_rows()
                    w.pgconn.get_cancel().cancel()

            columns = lambda res: [(res.ftype(i), res.fmod(i)) for i in range(res.nfields)]
            # the settings the worker writes values under, as the server reports them (a job may SET them)
            styles = lambda: {"datestyle": (w.pgconn.parameter_status(b"DateStyle") or b"").decode(),
                              "intervalstyle": (w.pgconn.parameter_status(b"IntervalStyle") or b"").decode()}
            results = ()
            if job.row_text:
                described, error = w.described()
                if described is not None:
                    results = w.results(stream=True)
                    columns = lambda res: described
            else:
                results = w.results(stream=True)
            for res in results:
                st = res.status
                if st in ROW_CHUNK:
                    if not in_set:
                        in_set = True
                        had_rows = True
                        job.sink.new_set(columns(res), styles())
                    gv = res.get_value
                    if job.row_text:  # the worker wrote each row as a record literal
                        rows = [gv(r, 0) for r in range(res.ntuples)]
                    else:
                        nf = res.nfields
                        lit = P.row_literal
                        rows = [lit([gv(r, i) for i in range(nf)]) for r in range(res.ntuples)]
                    res.clear()  # libpq's copy goes now: a row waiting for the queue is held once
                    put(rows)
                    del rows
                elif st == pq.ExecStatus.TUPLES_OK:
                    if not in_set:  # a row set with no rows
                        job.sink.new_set(columns(res), styles())
                        had_rows = True
                    in_set = False
                    tag = (res.command_status or b"").decode()
                elif st == pq.ExecStatus.COMMAND_OK:
                    if not (job.one_transaction and res.command_status == b"CALL"):  # not our own last call
                        tag = (res.command_status or b"").decode()
                elif st == pq.ExecStatus.EMPTY_QUERY:
                    tag = tag or ""
                elif st == pq.ExecStatus.FATAL_ERROR:
                    error = error_fields(res)
                elif st in (pq.ExecStatus.COPY_IN, pq.ExecStatus.COPY_OUT, pq.ExecStatus.COPY_BOTH):
                    error = {"sqlstate": "0A000",
                             "message": "COPY to or from the client is not supported in a background job",
                             "hint": "COPY to or from a server file, or use INSERT ... SELECT.",
                             "detail": None, "context": None}
            if job.row_text:
                error = error or w.end_pipeline()
            if spool_error is not None:
                error = spool_error
            if w.pgconn.status != pq.ConnStatus.OK:
                reusable = False
        except psycopg.OperationalError as e:
            reusable = False
            error = error or {"sqlstate": "08006", "message": f"job worker connection lost: {str(e).strip()}",
                              "detail": None, "hint": None, "context": None}
        except psycopg.Error as e:  # the inherited settings were refused
            d = e.diag
            error = {"sqlstate": e.sqlstate or "XX000", "message": d.message_primary or str(e),
                     "detail": d.message_detail, "hint": d.message_hint, "context": d.context}
        except PgError as e:
            error = e.as_dict()
        except Exception as e:  # never leave a job without a final state
            log.exception("job %s failed in the dispatcher", job.pid)
            reusable = False
            error = {"sqlstate": "XX000", "message": f"background job failed in the dispatcher: {e}",
                     "detail": None, "hint": None, "context": None}
        if w.pgconn.status != pq.ConnStatus.OK:
            reusable = False
            if error is None:
                error = {"sqlstate": "08006", "message": "job worker connection lost",
                         "detail": None, "hint": None, "context": None}
        self._finish(job, error, tag, had_rows)
        if reusable and not job.terminated:
            self.pool.release(w)
        else:
            self.pool.close(w)

    def _row(self, job: Job, sess: "Session | None") -> dict:
        return {
            "cookie": job.cookie, "pid": job.pid, "user_id": job.user_id,
            "launcher_pid": job.launcher_pid, "launcher_user_id": job.session_user_id,
            "mode": job.mode, "queue_size": job.queue_size, "sql": job.sql, "preview": job.preview,
            "launched_at": job.launched_at, "epoch": self.epoch,
            "provenance": job.provenance,
            "classification": job.classification,
            "parent_cookie": job.parent_cookie,
        }

    def _finish(self, job: Job, error: dict | None, tag: str | None, had_rows: bool) -> None:
        sink = job.sink  # a reader may swap job.sink once the job is done: count this one's rows
        if not had_rows and error is None:  # the command tag, as a text column (as pg_background)
            sink.new_set(P.TAG_COLUMNS, {})
            sink.put(P.row_literal([(tag or "").encode()]))  # may wait for the reader: not under ctl
        with job.ctl:
            if error is not None:
                canceled = job.cancel_requested and error["sqlstate"] in ("57014", "57P01", "08006")
                state = "canceled" if canceled else "failed"
                if canceled and job.last_error:
                    error = job.last_error
            else:
                state = "completed"
            job.command_tag = tag
            with self.lock:
                job.state = state
                job.last_error = error
                job.finished = time.monotonic()
                self.by_worker_pid.pop(job.pid, None) if self.by_worker_pid.get(job.pid) is job else None
                s = job.session
                if s is not None:
                    s.running.discard(job.cookie)
                self._forget_if_done(job)
            sink.finish({"tag": tag, "error": error, "state": state})
            job.done.set()
            job.worker = None  # from here the worker is the pool's
        self.note_activity(job.dbk)
        self.store(job.dbk).write(FINISH, {
            **self._row(job, job.session), "state": state, "finished_at": datetime.now(timezone.utc),
            "tag": tag, "last_error": cut_utf8(error["message"], LAST_ERROR_LIMIT) if error else None,
            "error": P.jsonb_text(error) if error else None, "rows": sink.rows_total,
        })
        # the table has them now: an ended job kept for its session holds only what it answers with
        job.sql, job.text, job.settings, job.provenance, job.classification = "", None, [], None, None
        job.thread = None
        if sink.discarding:
            job.sink = ENDED

    def _trim(self, sess: "Session") -> None:
        """Keep a long-lived session's memory bounded: forget its oldest ended jobs with nothing left to read."""
        if len(sess.jobs) <= SESSION_KEEP:
            return
        for cookie, j in list(sess.jobs.items()):
            if len(sess.jobs) <= SESSION_KEEP:
                break
            if j.state in TERMINAL and (j.mode == "submit" or j.consumed):
                self._count_release(sess, j)
                del sess.jobs[cookie]
                j.detached = True
                self._forget_if_done(j)

    def _forget_if_done(self, job: Job) -> None:
        """Drop a finished job from memory once no session can ask for it (the table keeps it)."""
        if job.state in TERMINAL and (job.session is None or job.detached):
            self.jobs.pop(job.cookie, None)

    # ---- handles ----
    def find(self, sess: Session, req: dict, op: str) -> Job:
        """The job a request names, once the caller is shown to hold its role's privileges.

        Checked on every call, whichever session launched the job: the caller's
        role (`uid`, read from its backend) must be the job's or have its
        privileges (pg_has_role USAGE, which the launcher answers when asked),
        as pg_background checks. Results and detach are for the launching session.
        """
        pid = req.get("pid")
        cookie = req.get("cookie")
        uid = req.get("uid")
        if uid is None:
            raise InsufficientPrivilege("background job request without the caller's role",
                                        hint="Reconnect: this session runs another version of plpy_bg.")
        if cookie is None:  # v1: the newest job of this session with that pid
            cands = [j for j in sess.jobs.values() if j.pid == pid and j.mode == "v1"]
            if not cands:
                raise ObjectNotFound(f"PID {pid} is not attached to this session",
                                     hint="Launch it with pg_background_launch in this session.")
            job = max(cands, key=lambda j: j.started)
        else:
            with self.lock:
                job = sess.jobs.get(cookie) or self.jobs.get(cookie)
            if job is None or job.pid != pid:
                with self.lock:
                    held = any(j.pid == pid for j in sess.jobs.values())
                if held and op in ("detach", "cancel", "wait"):  # pg_background's SQLSTATEs for a stale cookie
                    raise WrongState(f"cookie mismatch for PID {pid}",
                                     hint="The worker may have been restarted or the handle is stale.")
                raise ObjectNotFound(f"PID {pid} is not attached to this session" + (" (cookie mismatch)" if held else ""),
                                     detail="The job may have ended and been detached or read, or the handle is wrong.",
                                     hint="Use the (pid, cookie) handle returned by pg_background_launch_v2.")
        if job.user_id != uid and job.user_id not in (req.get("privs_of") or ()):
            if "privs_of" not in req:
                raise NeedPrivs([job.user_id])
            raise InsufficientPrivilege(f"permission denied for background job with pid {pid}",
                                        detail="The job belongs to a role whose privileges the current role does not have.")
        attached = job.session is sess and not job.detached and sess.jobs.get(job.cookie) is job
        if op == "detach" and (not attached or job.delivered):
            raise ObjectNotFound(f"PID {pid} is not attached to this session",
                                 detail="Its results were read." if attached else
                                 "Only the session that launched a job, and has not detached it, can detach it.")
        if op == "result" and not attached:
            raise ObjectNotFound(f"PID {pid} is not attached to this session",
                                 detail="Only the session that launched a job can read its results.")
        return job

    @staticmethod
    def _count_release(sess: Session, job: Job) -> None:
        """A session stops holding a handle: pg_background counts the job's outcome then, as it
        stands (canceled if cancel_v2 named it, failed if it has an error, completed otherwise)."""
        if sess.jobs.get(job.cookie) is not job:
            return
        sess.total_ms += (time.monotonic() - job.started) * 1000
        if job.cancel_called:
            sess.canceled += 1
        elif job.last_error is not None:
            sess.failed += 1
        else:
            sess.completed += 1

    def detach(self, sess: Session, job: Job) -> None:
        with self.lock:
            self._count_release(sess, job)
            job.detached = True
            sess.jobs.pop(job.cookie, None)
            sess.running.discard(job.cookie)
            self._forget_if_done(job)
        job.sink.discard()  # first: its memory and spool go whatever happens to the write
        self.store(job.dbk).write(FLAGS, {"cookie": job.cookie, "consumed": job.consumed, "detached": True})

    def cancel(self, job: Job, grace_ms: int, reason: str = "canceling statement due to user request") -> None:
        with job.ctl:
            if job.done.is_set():
                return
            job.last_error = {"sqlstate": "57014", "message": reason, "detail": None, "hint": None, "context": None}
            job.cancel_requested = True  # after the reason: the job may end as soon as this is seen
            job.sink.discard() if job.session is None or job.detached else job.sink.allow_spill()
            if job.worker is not None:
                try:
                    job.worker.pgconn.get_cancel().cancel()
                except Exception as e:
                    log.warning("cancel request for job %s failed: %s", job.pid, e)
            job.terminate_at = time.monotonic() + grace_ms / 1000.0

    def _terminate(self, job: Job) -> None:
        """SIGTERM the job's backend through its pidfd; never SIGKILL, which would crash-restart the cluster."""
        with job.ctl:
            if job.done.is_set():  # its worker may run another job now
                return
            job.terminated = True
            w = job.worker
            if w is None or not w.terminate():
                log.warning("could not terminate job %s: its backend is gone", job.pid)

    # ---- the watchdog ----
    def watchdog(self) -> None:
        last_tick = time.monotonic()
        while not self.stopping.is_set():
            time.sleep(0.05)
            now = time.monotonic()
            with self.lock:
                running = list(self.by_worker_pid.values())
            for j in running:
                if j.terminate_at is not None and now >= j.terminate_at and not j.terminated:
                    self._terminate(j)
                elif (j.worker_timeout_ms and not j.cancel_requested
                      and (now - j.started) * 1000 >= j.worker_timeout_ms):
                    self.cancel(j, 1000, f"background job exceeded pg_background.worker_timeout "
                                         f"({j.worker_timeout_ms} ms)")
            if now - last_tick < 1.0:
                continue
            last_tick = now
            if not self.postmaster.alive():
                log.info("postmaster %s is gone; dispatcher exits", self.postmaster.pid)
                self.stopping.set()
                self._say_unwritten("the server is gone")  # nothing can commit them now
                self._release_lock()
                os._exit(0)

    def housekeeper(self) -> None:
        """Once a second, the work that talks to databases (and may wait on one): pool settings and
        reaping, letting go of databases, draining at shutdown. Kept apart from the watchdog, so
        grace terminations, worker_timeout and the postmaster check never wait behind a database."""
        ticks = 0
        while not self.stopping.is_set():
            time.sleep(1.0)
            ticks += 1
            try:
                if self.postmaster.stopping():
                    self.drain()
                    continue
                self.refresh_config()
                self.pool.reap()
                self.release_databases(time.monotonic())
                if self.warn_now or ticks % SANDBOX_WARNING_EVERY == 1:
                    self.warn_if_unsandboxed()
                if ticks % 10 == 0:
                    trim_memory()
                if ticks % SUPERSEDED_CHECK_EVERY == 0:
                    self.leave_if_superseded()
            except Exception:
                log.exception("housekeeping failed")

    def leave_if_superseded(self) -> None:
        """After ALTER EXTENSION plpy_bg UPDATE a newer version's dispatcher serves the updated
        databases: this one leaves once nothing is left of its work (no session, job, queued write
        or open connection). A session of a database not yet updated starts it again."""
        newer = newer_dispatcher(self.sockdir, self.port)
        if newer is None:
            return
        with self.lock:
            if (self.open_sessions or self.jobs or self.pool.databases()
                    or not all(st.idle() for st in self.stores.values())):
                return
            self.retiring = True  # under the lock that counts sessions: a hello from now on is sent away
        log.info("dispatcher %s leaves: the dispatcher of version %s serves this server, and nothing "
                 "is left of this one's work", __version__, newer)
        self._leave()

    def warn_if_unsandboxed(self) -> None:
        """While the settings say sandboxed and the server is not, a WARNING in the server's log
        (raised by the dispatcher's own session), where DBAs look: once a minute, and at once
        after a refused launch."""
        self.warn_now = False
        dbk = self.config_db
        if dbk is None or (self.postmaster_filters and self.supervisor_answers()) or not self.sandboxed(dbk):
            return
        what = ("the server was started without the plpy_bg wrapper" if not self.postmaster_filters
                else "the seccomp supervisor does not answer")
        log.warning("pgseccomp.enabled is on but %s: background jobs are refused", what)
        self.control_exec(dbk, UNSANDBOXED_WARNING.format(what=what))

    # ---- letting go of databases ----
    def note_activity(self, dbk: tuple[str, int]) -> None:
        with self.lock:
            self.db_active[dbk] = time.monotonic()

    def _running_in(self, dbk: tuple[str, int]) -> bool:
        with self.lock:
            return any(j.dbk == dbk for j in self.by_worker_pid.values())

    def held_databases(self) -> set[tuple[str, int]]:
        """Databases where a session of ours is open (a connection slot): job-table writers or workers."""
        with self.lock:
            held = {k for k, st in self.stores.items() if st.connected()}
        return held | self.pool.databases()

    def release(self, dbk: tuple[str, int], why: str) -> bool:
        """Close every connection of ours to `dbk` that no running job needs; True when none is left.
        Jobs that ended there keep their rows: their writes reopen a session when they come."""
        if self._running_in(dbk):
            return False
        n = self.pool.drop_database(dbk)
        with self.lock:
            store = self.stores.get(dbk)
        flushed = store is None or store.release()
        if n or (store is not None and flushed):
            log.info("released database %s (%s): %d idle workers closed", dbk[0], why, n)
        return flushed and dbk not in self.pool.databases()

    def forget_idle(self) -> None:
        """Drop what is kept of databases with no session of ours, no queued write and no running
        job: a database made and dropped, or only greeted, leaves nothing behind."""
        with self.lock:
            for k, st in list(self.stores.items()):
                if not self._running_in(k) and st.forget():
                    del self.stores[k]
                    self.server_cache.pop(k, None)
                    self.db_active.pop(k, None)
                    self.probe_failed.pop(k, None)

    def make_room(self, dbk: tuple[str, int], uid: int) -> None:
        """Serve `dbk` only if the sessions of ours in all databases stay a bounded share of the
        server's slots, and one role's running jobs keep at most half of them busy: a role that
        keeps many databases busy takes neither everyone's slots nor every database's room."""
        with self.lock:
            busy_for_role = {j.dbk for j in self.by_worker_pid.values() if j.user_id == uid}
        if dbk in busy_for_role:  # a running job of the role holds it already: nothing to count
            return
        cap = max(2, min(DISPATCHER_DATABASES, self.max_connections // DATABASES_PER_CONNECTIONS))
        if len(busy_for_role) >= max(1, cap // 2):
            raise TooManyConnections(
                f"could not start background job: this role has running jobs in {len(busy_for_role)} databases",
                detail=f"One role's running jobs may keep at most {max(1, cap // 2)} of the {cap} databases "
                       "plpy_bg serves at once busy.",
                hint="Wait for your jobs in other databases to end, or raise max_connections.")
        held = self.held_databases()
        if dbk in held or len(held) < cap:
            return
        with self.lock:
            idle = sorted((d for d in held if not self._running_in(d)), key=lambda d: self.db_active.get(d, 0.0))
        for d in idle:
            if self.release(d, "room for another database") and len(self.held_databases()) < cap:
                return
        raise TooManyConnections(
            f"could not start background job: plpy_bg serves {len(held)} databases at once",
            detail=f"Each database with jobs holds sessions of the dispatcher; at most {cap} databases "
                   f"are served at once (max_connections / {DATABASES_PER_CONNECTIONS}, at most "
                   f"{DISPATCHER_DATABASES}).",
            hint="Wait for jobs in other databases to end, or raise max_connections.")

    def release_databases(self, now: float) -> None:
        """Let go of a database that a command needs alone (DROP DATABASE, a template for CREATE
        DATABASE, RENAME) at once, and of any database idle for the pool's idle limit."""
        held = self.held_databases()
        if held:
            for dbk in self.contested(held):
                self.release(dbk, "needed alone by another session")
            for dbk in held:
                with self.lock:
                    last = self.db_active.get(dbk, 0.0)
                if now - last > self.pool.idle_timeout:
                    self.release(dbk, "idle")
        self.forget_idle()

    def _probe_dbs(self) -> list[tuple[str, int]]:
        """Databases where a job-table session of ours is open, the first database served first:
        opening one could itself wait for the lock of a DROP DATABASE, so cluster-wide questions
        are asked only on an open one, and on the next when one is busy."""
        with self.lock:
            dbs = sorted(k for k, st in self.stores.items() if st.durable.conn is not None)
        return sorted(dbs, key=lambda d: d != self.config_db)

    def contested(self, held: set[tuple[str, int]]) -> set[tuple[str, int]]:
        """Databases of ours that another session locks to be alone in them (those commands wait
        up to 5 s for other sessions to leave: we leave within one housekeeping tick). A database
        whose session is busy (its owner may hold it on purpose) is passed over for the next."""
        now = time.monotonic()
        probes = self._probe_dbs()
        # a database that did not answer lately is asked last: its owner may keep it busy
        probes.sort(key=lambda d: now - self.probe_failed.get(d, -1e9) < 30.0)
        for probe in probes[:3]:
            try:
                rows = self.control_exec(probe, CONTESTED_SQL, ([k[1] for k in held],), wait=0.2, limit_ms=500)
                self.probe_failed.pop(probe, None)
                locked = {int(r[0]) for r in rows}
                return {k for k in held if k[1] in locked}
            except Exception as e:
                self.probe_failed[probe] = now
                log.debug("database locks not read in %s: %s", probe[0], e)
        return set()

    def drain(self) -> None:
        """The server is shutting down: take no more jobs, close what no running job needs, and
        leave once the last running job's outcome is recorded (a smart shutdown then completes)."""
        if not self.draining:
            log.info("the server is shutting down: the dispatcher takes no more jobs")
            self.draining = True
        done = True
        for dbk in self.held_databases():
            done = self.release(dbk, "server shutting down") and done
        if done and not self.by_worker_pid:
            log.info("dispatcher exits: no jobs left and the server is shutting down")
            self.retire()

    def retire(self) -> None:
        """Leave the socket to a dispatcher of the restarted server, then exit (once)."""
        with self.lock:
            if self.retiring:
                return
            self.retiring = True
        log.info("dispatcher of postmaster %s retires", self.postmaster.pid)
        self._leave()

    def _leave(self) -> None:
        """Stop taking sessions and let the socket go (the caller set `retiring`), then exit once
        the queued job-table writes are in."""
        self.stopping.set()
        try:
            if self.listener is not None:
                self.listener.close()
            # the path may already be the next dispatcher's socket: unlink only our own
            if os.stat(self.socket_path).st_ino == self.socket_inode:
                os.unlink(self.socket_path)
        except OSError:
            pass
        threading.Thread(target=self._exit_after_writes, name="exit", daemon=True).start()

    def _exit_after_writes(self) -> None:
        """Give queued job-table writes a bounded time to commit (the caller's reply goes out
        meanwhile), say what is left unwritten, then end the process."""
        deadline = time.monotonic() + EXIT_WRITES_WAIT
        with self.lock:
            stores = list(self.stores.values())
        for st in stores:
            if st.queued():
                try:
                    st.barrier(max(0.1, deadline - time.monotonic()))
                except Exception:
                    pass  # said below
        self._say_unwritten(f"they were not committed within {EXIT_WRITES_WAIT:.0f} s")
        self._release_lock()
        time.sleep(0.2)  # a reply being sent goes out
        os._exit(0)

    def _say_unwritten(self, why: str) -> None:
        """Job-table writes still queued as the process ends: logged, never dropped unsaid (the
        next dispatcher settles their jobs)."""
        with self.lock:
            left = [(dbk[0], st.queued()) for dbk, st in self.stores.items() if st.queued()]
        for db, n in left:
            log.warning("%d job-table write(s) in database %s are not recorded: %s; the next dispatcher "
                        "settles their jobs", n, db, why)

    def _release_lock(self) -> None:
        """An orderly end: no pid left behind (the next dispatcher warns of one), and the flock goes
        to the next dispatcher."""
        if self.lockfile is not None:
            try:
                self.lockfile.truncate(0)
            except OSError:
                pass
            self.lockfile.close()
            self.lockfile = None

    # ---- one backend session ----
    def serve_session(self, sess: Session) -> None:
        sock = sess.sock
        try:
            while True:
                try:
                    kind, payload = P.recv_frame(sock)
                except (EOFError, ConnectionError, OSError, P.ProtocolError):
                    break
                if kind != b"Q":
                    break
                reply = self._answer(sess, json.loads(payload))
                try:
                    sock.sendall(reply)
                except OSError:  # the backend is gone; its jobs are detached below
                    break
        finally:
            self.end_session(sess)

    def _answer(self, sess: Session, req: dict) -> bytes:
        """The reply frames to one request: the handler's answer or its error, never an exception."""
        try:
            out = self.handle(sess, req)
        except NeedPrivs as e:
            return P.pack_json(b"A", {"need_privs": e.uids})
        except PgError as e:
            return P.pack_json(b"E", e.as_dict())
        except psycopg.Error as e:
            return P.pack_json(b"E", {"sqlstate": getattr(e, "sqlstate", None) or "08006",
                                     "message": f"plpy_bg dispatcher: {str(e).strip()}"})
        except Exception as e:
            log.exception("request %s failed", req.get("op"))
            return P.pack_json(b"E", {"sqlstate": "XX000", "message": f"plpy_bg dispatcher: internal error: {e}"})
        return out if isinstance(out, bytes) else P.pack_json(b"A", out)

    def end_session(self, sess: Session) -> None:
        """The launcher's session is gone: its jobs run on, detached."""
        sess.closed = True
        with self.lock:
            self.open_sessions -= 1
            jobs = list(sess.jobs.values())
            sess.jobs.clear()
        for j in jobs:  # each one, whatever happens to another
            try:
                self.detach(sess, j)
            except Exception:
                log.exception("detaching job %s of an ended session failed", j.pid)
        try:
            sess.sock.close()
        except OSError:
            pass

    def handle(self, sess: Session, req: dict):
        op = req.get("op")
        if op == "launch":
            return self.launch(sess, req)
        if op in ("fetch", "describe"):
            job = self.find(sess, req, "result")
            if job.mode == "submit":
                raise FeatureNotSupported(f"results are disabled for PID {job.pid} (submitted via submit_v2)",
                                          hint="Use pg_background_launch_v2 to keep results, or pg_background_wait_v2 to wait.")
            if job.consumed and not req.get("continuing"):
                raise ObjectNotFound(f"results for PID {job.pid} have already been consumed",
                                     hint="Results can be read once.")
        if op == "describe":  # the column types of the rows, once known; reads no row
            known, columns, styles = job.sink.describe(req.get("slice_ms", 200) / 1000)
            return {"known": known, "columns": columns, "styles": styles}
        if op == "fetch":
            if not job.consumed:
                job.consumed = True
                self.store(job.dbk).write(FLAGS, {"cookie": job.cookie, "consumed": True,
                                                 "detached": job.detached})
            rows, final = job.sink.take(int(req.get("max_bytes") or 262144), req.get("slice_ms", 200) / 1000)
            frames = [P.pack_rows(rows)] if rows else []
            if final is not None:
                frames.append(P.pack_json(b"Z", final))
                job.sink = ENDED  # read once: nothing more to keep
                job.delivered = True
                self.detach(sess, job)  # read to the end: no longer attached (as pg_background)
            else:
                frames.append(P.pack_json(b"A", {}))
            return b"".join(frames)
        if op == "wait":
            job = self.find(sess, req, "wait")
            job.sink.allow_spill()  # waiting must never hang on a full result queue
            done = job.done.wait(max(0, req.get("slice_ms", 200)) / 1000)
            return {"done": done, "state": job.state, "error": job.last_error if done else None}
        if op == "detach":
            job = self.find(sess, req, "detach")
            self.detach(sess, job)
            return {}
        if op == "cancel":
            job = self.find(sess, req, "cancel")
            job.cancel_called = True
            self.cancel(job, int(req.get("grace_ms") or 0))
            return {"done": job.done.is_set()}
        if op == "list":  # this session's jobs of roles whose privileges the caller has
            uid, privs = req.get("uid"), req.get("privs_of")
            with self.lock:
                jobs = sorted(sess.jobs.values(), key=lambda j: j.started)
            others = {j.user_id for j in jobs if j.user_id != uid}
            if others and privs is None:
                raise NeedPrivs(list(others))
            return {"jobs": [j.listing() for j in jobs if j.user_id == uid or j.user_id in privs]}
        if op == "stats":
            with self.lock:
                active = len(sess.jobs)  # handles held, ended or not (pg_background's count)
                ended = sess.completed + sess.failed + sess.canceled
            return {"workers_launched": sess.launched, "workers_completed": sess.completed,
                    "workers_failed": sess.failed, "workers_canceled": sess.canceled,
                    "workers_active": active,
                    "avg_execution_ms": (sess.total_ms / ended) if ended else 0.0}
        if op == "progress":
            with self.lock:
                job = self.by_worker_pid.get(sess.peer_pid)
            if job is None:
                raise FeatureNotSupported("pg_background_progress can only be called inside a background job")
            msg = cut_utf8(req.get("msg"), PROGRESS_MSG_LIMIT)
            job.progress = (req.get("pct"), msg)
            self.store(job.dbk).write_latest(("progress", job.cookie), PROGRESS,
                                            {"cookie": job.cookie, "pct": req.get("pct"), "msg": msg})
            return {}
        if op == "get_progress":  # a handle not held (or stale) reads as NULL, as in pg_background
            try:
                job = self.find(sess, req, "progress")
            except (ObjectNotFound, WrongState):
                return {"progress": None}
            return {"progress": job.progress}
        if op == "job_info":
            with self.lock:
                job = self.by_worker_pid.get(sess.peer_pid)
            if job is None:
                return {"job": None}
            return {"job": {"pid": job.pid, "cookie": job.cookie, "role": job.role,
                            "provenance": json.loads(job.provenance) if job.provenance else None,
                            "classification": json.loads(job.classification) if job.classification else None}}
        if op == "hello":
            if int(req.get("postmaster_pid") or 0) != self.postmaster.pid:
                self.retire()
                raise PgError("this dispatcher serves a server that has stopped", sqlstate="57P04",
                              hint="Reconnect; a new dispatcher starts.")
            if self.retiring:
                raise PgError("this dispatcher is leaving", sqlstate="57P04", hint="Reconnect; a new dispatcher starts.")
            if req.get("db"):  # nothing is opened yet: a hello claims no database
                with self.lock:
                    first = self.config_db is None
                    self.config_db = self.config_db or (req["db"], int(req["db_oid"]))
                if first:
                    threading.Thread(target=self.sweep, args=(self.config_db,), name="sweep", daemon=True).start()
            return {"epoch": self.epoch}
        if op == "ping":
            return {"epoch": self.epoch, "pid": os.getpid(), "pool_opened": self.pool.opened,
                    "pool_reused": self.pool.reused, "pool_idle": self.pool.idle_count()}
        if op == "pool_pids":
            return {"pids": sorted(self.pool.snapshot()[0])}
        if op == "invariants":  # pg_stat_activity as the (superuser) caller sees it
            return {"violations": self._violations(req.get("activity") or [])}
        if op == "pool":
            self.refresh_config(force=True)
            return {"workers": self.pool_listing()}
        raise InvalidParameter(f"unknown dispatcher request {op!r}")

    def _violations(self, activity: list) -> list[str]:
        """The invariants of the module docstring, against `activity`: (pid, database, role name,
        role oid) of every client backend that is a job worker or holds a pid of ours."""
        bad = []
        with self.lock:
            jobs = list(self.jobs.values())
            by_pid = dict(self.by_worker_pid)
            stores = dict(self.stores)
        for j in jobs:
            if j.state == "running":
                if j.thread is not None and j.thread.done():
                    bad.append(f"job {j.pid}/{j.cookie} is running without a live thread")
                if by_pid.get(j.pid) is not j:
                    bad.append(f"job {j.pid}/{j.cookie} is running but not registered on its worker")
            elif j.state not in TERMINAL:
                bad.append(f"job {j.pid}/{j.cookie} has unknown state {j.state}")
            elif j.state != "completed" and not j.last_error:
                bad.append(f"job {j.pid}/{j.cookie} ended {j.state} without a reason")
        # the pool: every worker connection is idle or runs one job, and its backend agrees
        live, idle, warming = self.pool.snapshot()
        now = time.monotonic()
        for pid, w in live.items():
            running = by_pid.get(pid)
            if running is not None and pid in idle:
                bad.append(f"worker {pid} is idle in the pool and runs job {running.cookie}")
            elif running is None and pid not in idle and not warming:
                bad.append(f"worker {pid} is neither idle nor running a job")
            if pid in idle and now - w.idle_since > self.pool.idle_timeout + 2.0:
                bad.append(f"worker {pid} has been idle {now - w.idle_since:.0f} s, beyond the pool's "
                           f"idle limit of {self.pool.idle_timeout:.0f} s")
        for pid, j in by_pid.items():
            if pid not in live:
                bad.append(f"job {pid}/{j.cookie} runs on a worker the pool does not know")
        seen = {int(r[0]): r for r in activity}
        for pid, w in live.items():
            r = seen.get(pid)
            if r is None:
                if w.alive():
                    bad.append(f"worker {pid} is connected but its backend is not in pg_stat_activity")
            elif (r[1], int(r[3])) != (w.key[0], w.login_oid or w.key[1]):  # pg_stat_activity names the database
                bad.append(f"worker {pid} of ({w.key[0]}, role oid {w.key[1]}) is a backend of ({r[1]}, {r[2]})")
        for pid, r in seen.items():
            if pid not in live:
                bad.append(f"backend {pid} ({r[1]}, {r[2]}) is a job worker the dispatcher does not hold")
        # the job table: once queued writes are committed, it says what the dispatcher knows
        for dbk, store in stores.items():
            db = dbk[0]
            if store.idle():
                continue  # released (a dropped database stays so): nothing of ours is there to compare
            failing = store.failing()
            if failing:
                bad.append(f"job table writes in database {db} are failing ({failing}); "
                           f"{store.queued()} writes wait to be retried")
                continue
            try:
                store.barrier()
                rows = self.control_exec(dbk, """
                    SELECT j.cookie, j.pid, j.state, j.dispatcher_epoch
                    FROM plpy_bg.jobs j
                    WHERE j.state OPERATOR(pg_catalog.=) 'running'
                       OR (j.state OPERATOR(pg_catalog.<>) 'completed' AND j.last_error IS NULL)
                    LIMIT 100""")
            except Exception as e:
                with self.lock:
                    ours = any(j.dbk == dbk and j.state == "running" for j in self.jobs.values())
                if getattr(e, "sqlstate", None) == "42P01" and not ours:
                    continue  # plpy_bg was dropped there once its jobs ended: nothing of ours is left
                bad.append(f"job table of database {db} cannot be read: {e}")
                continue
            with self.lock:
                running = {j.cookie for j in self.jobs.values() if j.state == "running"}
            for cookie, pid, state, epoch in rows:
                has_backend = pid in seen
                if state != "running":
                    bad.append(f"job row {pid}/{cookie} ended {state} without a reason")
                elif epoch != self.epoch:
                    bad.append(f"job row {pid}/{cookie} of an earlier dispatcher is still running")
                elif cookie not in running:
                    bad.append(f"job row {pid}/{cookie} is running but no job runs")
                elif not has_backend:
                    bad.append(f"job row {pid}/{cookie} is running but backend {pid} is gone")
        return bad

    def pool_listing(self) -> list[dict]:
        with self.lock:
            by_pid = dict(self.by_worker_pid)
        live, idle, _ = self.pool.snapshot()
        now = time.monotonic()
        out = []
        for w in sorted(live.values(), key=lambda w: w.pid):
            j = by_pid.get(w.pid)
            out.append({"pid": w.pid, "database": w.key[0], "role": w.login, "profile": w.key[2],
                        "state": "running" if j else ("idle" if w.pid in idle else "opening"),
                        "job_cookie": j.cookie if j else None, "jobs_run": w.jobs_run,
                        "idle_seconds": round(now - w.idle_since, 3) if w.pid in idle else None,
                        "seccomp_filters": w.filters})
        return out

    def refresh_config(self, force: bool = False) -> None:
        """The pool's bounds from the server's settings (postgresql.conf or ALTER SYSTEM)."""
        now = time.monotonic()
        probes = self._probe_dbs()
        if not probes:
            self.config_at = 0.0  # read as soon as a session of ours is open again
            return
        if not force and now - self.config_at < 5.0:
            return
        probe = probes[0]
        self.config_at = now
        try:
            row = self.control_exec(probe, """SELECT
                pg_catalog.current_setting('plpy_bg.pool_max_idle_per_role', true),
                pg_catalog.current_setting('plpy_bg.pool_max_idle', true),
                pg_catalog.current_setting('plpy_bg.pool_idle_timeout', true),
                pg_catalog.current_setting('plpy_bg.log_level', true)""")[0]
        except Exception as e:
            log.warning("could not read the pool settings: %s", e)
            return
        d_role, d_total, d_timeout = Pool.DEFAULTS
        per_role = pool_setting("plpy_bg.pool_max_idle_per_role", row[0], self.pool.max_idle_per_role, d_role,
                                {"": 1}, "", 0, 100000)
        total = pool_setting("plpy_bg.pool_max_idle", row[1], self.pool.max_idle_total, d_total,
                             {"": 1}, "", 0, 100000)
        timeout = pool_setting("plpy_bg.pool_idle_timeout", row[2], int(self.pool.idle_timeout * 1000),
                               int(d_timeout * 1000), jsettings.UNITS_MS, "s", 1, 7 * 86_400_000) / 1000
        if row[3] != self.log_level_setting:  # a bad value is logged once, not every 5 s
            self.log_level_setting = row[3]
            set_log_level(row[3])
        if (per_role, total, timeout) != (self.pool.max_idle_per_role, self.pool.max_idle_total,
                                          self.pool.idle_timeout):
            log.info("pool bounds: %s idle per role, %s idle in all, %s s idle limit", per_role, total, timeout)
            self.pool.configure(per_role, total, timeout)

    # ---- main loop ----
    def serve_forever(self) -> None:
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            os.unlink(self.socket_path)
        except FileNotFoundError:
            pass
        old = os.umask(0o177)
        try:
            srv.bind(self.socket_path)
        finally:
            os.umask(old)
        os.chmod(self.socket_path, 0o600)
        self.socket_inode = os.stat(self.socket_path).st_ino
        srv.listen(256)
        self.listener = srv
        threading.Thread(target=self.watchdog, name="watchdog", daemon=True).start()
        threading.Thread(target=self.housekeeper, name="housekeeper", daemon=True).start()
        log.info("dispatcher %s listening on %s (postmaster %s)", self.epoch, self.socket_path, self.postmaster.pid)
        while not self.stopping.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                if self.stopping.is_set():
                    break
                raise
            creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            pid, uid, _gid = struct.unpack("3i", creds)
            if uid not in (os.geteuid(), 0):
                conn.close()
                continue
            sess = Session(sock=conn, peer_pid=pid, peer_start=process_start(pid),
                           budget=Budget(SESSION_ROW_BYTES, self.all_rows))
            with self.lock:
                self.open_sessions += 1
            threading.Thread(target=self.serve_session, args=(sess,), name=f"session-{pid}", daemon=True).start()


def _version_key(v: str) -> tuple[int, ...] | None:
    try:
        return tuple(int(x) for x in v.split("."))
    except ValueError:
        return None


def newer_dispatcher(sockdir: str, port: int) -> str | None:
    """The version of a running dispatcher newer than this one for the server on `port`: its lock
    file names its pid, and that process must be another dispatcher of this server."""
    prefix, mine = P.socket_name(port, ""), _version_key(__version__)
    try:
        names = os.listdir(sockdir)
    except OSError:
        return None
    for name in names:
        if not (name.startswith(prefix) and name.endswith(".lock")):
            continue
        version = name[len(prefix):-len(".lock")]
        key = _version_key(version)
        if key is None or key <= mine:
            continue
        try:
            with open(os.path.join(sockdir, name)) as f:
                pid = int(f.read().split()[0])
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        if pid != os.getpid() and b"plpy_bg.dispatcher" in argv and str(port).encode() in argv \
                and sockdir.encode() in argv:
            return version
    return None


def process_start(pid: int) -> int | None:
    try:
        return supervision.start_time(pid)
    except (OSError, ValueError, IndexError):
        return None


def trim_memory() -> None:
    """Give freed heap back to the system: rows read or dropped leave large holes that glibc keeps."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def no_slot(e: Exception) -> None:
    """Raise 53300 when a login was refused for want of a connection slot (libpq gives the
    server's FATAL message only, no SQLSTATE)."""
    msg = str(e).strip()
    if "too many clients" in msg or "remaining connection slots" in msg or "too many connections" in msg:
        raise TooManyConnections("could not start background job: no free connection slot",
                                 detail=msg.splitlines()[-1] if msg else None,
                                 hint="Raise max_connections or wait for running jobs to end.") from None


def pool_setting(name: str, raw: str | None, current, default, units: dict, base: str, low: int, high: int):
    """A pool setting read with the launch settings' parser: unset, the default; out of [low, high]
    or unreadable, it is logged and the current value kept (the dispatcher has nobody to raise the
    error to)."""
    try:
        v = jsettings.parse_setting(name, raw, default, units, base)
        if low <= v <= high:
            return v
    except PgError:
        pass
    log.warning("%s = %r is not in [%s, %s] %s; keeping %s", name, raw, low, high, base or "", current)
    return current


LEVELS = {"DEBUG": "DEBUG1", "INFO": "LOG", "WARNING": "WARNING", "ERROR": "ERROR", "CRITICAL": "FATAL"}


_LOG_ESCAPES = {c: f"\\x{c:02x}" for c in [*range(0x20), 0x7f, 0x85] if c not in (0x09, 0x0a)}
_LOG_ESCAPES.update({0x2028: "\\u2028", 0x2029: "\\u2029"})


class _ServerLogFormat(logging.Formatter):
    """Lines shaped like the server's own (Debian's log_line_prefix '%m [%p] '), so a DBA's grep
    and logrotate treat them alike."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(record.created))
        text = record.getMessage() + (f"\n{self.formatException(record.exc_info)}" if record.exc_info else "")
        # continuation lines start with a tab, as the server writes them, and every other character
        # a reader may take for a line break (or a terminal for a command) is escaped: a name or a
        # message never makes a line that reads as a record of its own
        text = text.translate(_LOG_ESCAPES).replace("\n", "\n\t")
        return (f"{stamp}.{int(record.msecs):03d} UTC [{record.process}] plpy_bg dispatcher "
                f"{LEVELS.get(record.levelname, record.levelname)}:  {text}")


LOG_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "log": logging.INFO, "warning": logging.WARNING,
              "error": logging.ERROR}


def set_log_level(value: str | None) -> None:
    """plpy_bg.log_level: debug, info (or log, the default), warning or error."""
    level = LOG_LEVELS.get((value or "info").strip().lower())
    if level is None:
        log.warning('invalid value for parameter "plpy_bg.log_level": "%s" (debug, info, warning or error)', value)
        level = logging.INFO
    if logging.getLogger().level != level:
        logging.getLogger().setLevel(level)


def log_to_server_log() -> None:
    """Log to stderr, which the launching backend handed over: the server's log destination."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_ServerLogFormat())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m plpy_bg.dispatcher",
                                 description="Run the plpy_bg job dispatcher for one cluster.")
    ap.add_argument("--sockdir", required=True, help="the server's Unix socket directory")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--postmaster-pid", type=int, required=True)
    ap.add_argument("--datadir", required=True, help="the server's data directory (its backends' working directory)")
    args = ap.parse_args(argv)
    # not dumpable: no backend (same uid) may open this process's /proc/<pid>/mem and write itself in
    ctypes.CDLL("libc.so.6").prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGPIPE):
        signal.signal(s, signal.SIG_DFL if s != signal.SIGPIPE else signal.SIG_IGN)
    path = P.socket_path_for(args.sockdir, args.port)
    lockf = open(path + ".lock", "a+")
    deadline = time.monotonic() + 3
    while True:
        try:
            fcntl.flock(lockf, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() > deadline:
                return 0  # another dispatcher serves this cluster
            time.sleep(0.05)
    log_to_server_log()
    try:
        pm = Postmaster(args.postmaster_pid, args.datadir)
    except (OSError, RuntimeError) as e:
        log.error("cannot serve postmaster %s: %s", args.postmaster_pid, e)
        return 1
    d = Dispatcher(args.sockdir, args.port, pm, path)
    d.lockfile = lockf
    lockf.seek(0)
    before = lockf.read().split()
    if before and before[0].isdigit() and int(before[0]) != os.getpid():
        log.warning("the previous dispatcher (pid %s) ended without being stopped; the jobs it ran are "
                    "settled in every database now", before[0])
    lockf.seek(0)
    lockf.truncate()
    lockf.write(f"{os.getpid()}\n")
    lockf.flush()
    d.serve_forever()
    return 0
