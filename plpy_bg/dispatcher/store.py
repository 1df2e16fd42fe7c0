"""The job table (`plpy_bg.jobs`), written autonomously by the dispatcher.

Writes go through two lanes per database, each a thread and a connection that
commits queued writes in groups. The fast lane (launch rows only) commits with
``synchronous_commit = off``: a launch waits for its row to be
committed (visible to every session at once) but never for a WAL flush; the
row reaches disk no later than the job's own commit, which does wait for the
flush. The durable lane writes each final state with a flush, so a crash right
after a job ends cannot lose its outcome, and launches never wait behind it; it
also takes every other update of existing rows (flags, progress), so the two
lanes never lock the same row.

A write the server refuses for a reason that passes (disk full, read-only, out
of memory or connections, a serialization failure) is kept and retried with
backoff; a launch waiting for its row gets the error at once instead, so it is
refused rather than run unrecorded. Final states are never dropped.

The lanes log in as the dispatcher's own role (no superuser) with a pinned
search_path, and every statement names its operators and functions with
their schema as well. Progress reports are coalesced: a job that reports
10,000 times while a write is in flight costs one pending write, its latest.
"""
from __future__ import annotations

import logging
import queue
import threading
import time

import psycopg

log = logging.getLogger("plpy_bg.store")

INSERT = """
INSERT INTO plpy_bg.jobs (cookie, pid, user_id, launcher_pid, launcher_user_id, mode,
    queue_size, state, sql, sql_preview, launched_at, dispatcher_epoch, provenance,
    classification, parent_cookie)
VALUES (%(cookie)s, %(pid)s, %(user_id)s, %(launcher_pid)s, %(launcher_user_id)s, %(mode)s,
    %(queue_size)s, 'running', %(sql)s, %(preview)s, %(launched_at)s, %(epoch)s,
    %(provenance)s, %(classification)s, %(parent_cookie)s)
"""

# an upsert: a crash can lose the launch's asynchronously committed row, never the outcome
FINISH = """
INSERT INTO plpy_bg.jobs (cookie, pid, user_id, launcher_pid, launcher_user_id, mode,
    queue_size, state, sql, sql_preview, launched_at, dispatcher_epoch, provenance,
    classification, parent_cookie, finished_at, command_tag, last_error, error, rows_returned)
VALUES (%(cookie)s, %(pid)s, %(user_id)s, %(launcher_pid)s, %(launcher_user_id)s, %(mode)s,
    %(queue_size)s, %(state)s, %(sql)s, %(preview)s, %(launched_at)s, %(epoch)s,
    %(provenance)s, %(classification)s, %(parent_cookie)s, %(finished_at)s, %(tag)s,
    %(last_error)s, %(error)s, %(rows)s)
ON CONFLICT (cookie) DO UPDATE SET state = EXCLUDED.state, finished_at = EXCLUDED.finished_at,
    command_tag = EXCLUDED.command_tag, last_error = EXCLUDED.last_error, error = EXCLUDED.error,
    rows_returned = EXCLUDED.rows_returned
"""

FLAGS = """
UPDATE plpy_bg.jobs SET consumed = %(consumed)s, detached = %(detached)s
WHERE cookie OPERATOR(pg_catalog.=) %(cookie)s::pg_catalog.int8
"""

PROGRESS = """
UPDATE plpy_bg.jobs SET progress_pct = %(pct)s, progress_msg = %(msg)s, progress_at = pg_catalog.now()
WHERE cookie OPERATOR(pg_catalog.=) %(cookie)s::pg_catalog.int8
"""

RECONCILE = """
UPDATE plpy_bg.jobs SET state = 'lost', finished_at = pg_catalog.now(),
    last_error = 'the dispatcher that ran this job stopped before the job ended; its outcome is unknown'
WHERE state OPERATOR(pg_catalog.=) 'running'
  AND dispatcher_epoch OPERATOR(pg_catalog.<>) %(epoch)s::pg_catalog.text
RETURNING cookie, pid, user_id::pg_catalog.regrole::pg_catalog.text
"""

RUNNING_ELSEWHERE = """
SELECT cookie, pid, launched_at FROM plpy_bg.jobs
WHERE state OPERATOR(pg_catalog.=) 'running' AND dispatcher_epoch OPERATOR(pg_catalog.<>) %(epoch)s::pg_catalog.text
"""


def reconcile(conn, epoch: str, dbname: str, end_orphans) -> None:
    """Jobs of an earlier dispatcher still `running` in this database: their backends that still
    run them end first (`end_orphans`), then they are recorded `lost`, each logged; a job that
    committed its outcome meanwhile keeps it."""
    rows = conn.execute(RUNNING_ELSEWHERE, {"epoch": epoch}).fetchall()
    if not rows:
        return
    end_orphans(rows)
    for cookie, pid, role in conn.execute(RECONCILE, {"epoch": epoch}).fetchall():
        log.warning("background job %s (worker pid %s, role %s) in database %s recorded as lost: the "
                    "dispatcher that ran it stopped before it ended", cookie, pid, role, dbname)


# ended jobs go after plpy_bg.history_retention, their full SQL after plpy_bg.history_sql_retention
# (the literal-free preview stays); both read in the database's own session (ALTER DATABASE SET)
PURGE = """
DELETE FROM plpy_bg.jobs WHERE state OPERATOR(pg_catalog.<>) 'running'
  AND finished_at OPERATOR(pg_catalog.<) (pg_catalog.now() OPERATOR(pg_catalog.-)
                                          plpy_bg.retention('plpy_bg.history_retention', '7 days'))
"""

REDACT = """
UPDATE plpy_bg.jobs SET sql = COALESCE(sql_preview, '') WHERE state OPERATOR(pg_catalog.<>) 'running'
  AND finished_at OPERATOR(pg_catalog.<) (pg_catalog.now() OPERATOR(pg_catalog.-)
                                          plpy_bg.retention('plpy_bg.history_sql_retention', '1 day'))
  AND sql IS DISTINCT FROM COALESCE(sql_preview, '')
"""
PURGE_EVERY = 600.0  # seconds between two passes of PURGE and REDACT in a database


class Store:
    """Two lanes per database: launches never queue behind the flush of a final state."""

    def __init__(self, connect, dbname: str, epoch: str, end_orphans=lambda rows: None):
        self.fast = Lane(connect, dbname, epoch, durable=False, end_orphans=end_orphans)
        self.durable = Lane(connect, dbname, epoch, durable=True)

    def write(self, sql: str, params: dict) -> None:
        # only launch rows take the fast lane: updates of existing rows share the durable lane,
        # so two lanes never lock the same row (they would deadlock under load)
        (self.fast if sql is INSERT else self.durable).write(sql, params)

    def write_latest(self, key, sql: str, params: dict) -> None:
        """Queue a write that replaces an earlier one of the same `key` not yet applied."""
        self.durable.write_latest(key, sql, params)

    def release(self) -> bool:
        """Close both lanes' connections once their queued writes are committed; False while writes
        still wait. The lanes reconnect when the next write comes."""
        return all([lane.release() for lane in (self.fast, self.durable)])

    def idle(self) -> bool:
        """No connection open and nothing queued: released, or never used."""
        return all(lane.conn is None and lane.empty() for lane in (self.fast, self.durable))

    def connected(self) -> bool:
        """A session of ours is open in this database (it holds a connection slot)."""
        return any(lane.conn is not None for lane in (self.fast, self.durable))

    def forget(self) -> bool:
        """Give the store up when nothing of it runs (no thread, no session, nothing queued); a
        thread a stale caller starts on it later ends as soon as it has nothing to do."""
        lanes = (self.fast, self.durable)
        for lane in lanes:
            with lane.life:
                if lane.thread is not None or lane.conn is not None or not lane.empty():
                    return False
        for lane in lanes:
            lane.forgotten = True
        return True

    def submit(self, sql: str, params: dict) -> tuple:
        return self.fast.submit(sql, params)

    def insert(self, sql: str, params: dict) -> tuple:
        """A launch's row: written in the caller's thread when the fast lane is idle (no thread
        handoff on the launch path), queued otherwise; returns a pending to `wait` for."""
        if self.fast.write_now(sql, params):
            done = threading.Event()
            done.set()
            return done, {}
        return self.fast.submit(sql, params)

    @staticmethod
    def wait(pending: tuple, timeout: float = 30.0) -> None:
        Lane.wait(pending, timeout)

    def failing(self) -> str | None:
        return self.durable.failing or self.fast.failing

    def queued(self) -> int:
        return self.durable.pending() + self.fast.pending()

    def barrier(self, timeout: float = 5.0) -> None:
        """Return once every write queued before the call is committed."""
        pend = [lane.submit("SELECT 1", {}) for lane in (self.fast, self.durable)]
        for p in pend:
            Lane.wait(p, timeout)


LATEST = object()  # marks a queued write whose statement is looked up when applied
IDLE_EXIT = 5.0  # a released lane's thread ends after this long without a write
DEFER_RETRY = 1.0  # seconds between tries of writes put aside for a locked row
DEFER_LOCK_MS = 200  # how long such a try waits for the row's lock
RETRY_MAX = 5.0  # seconds between tries of a write the server refuses for a while
BATCH_BYTES = 8 << 20  # one transaction's worth of parameters: one big job text cannot wedge a batch


def no_answer(e: Exception) -> bool:
    """The server did not answer (it restarts, our session was killed, no connection could be
    made): worth another try. A refusal has its SQLSTATE; anything else is a fault of ours."""
    state = getattr(e, "sqlstate", None) or ""
    if state:
        return state[:2] == "08"
    return isinstance(e, (psycopg.OperationalError, psycopg.InterfaceError, OSError))


def _size(item: tuple) -> int:
    params = item[1] if isinstance(item[1], dict) else {}
    return sum(len(v) for v in params.values() if isinstance(v, str))

# SQLSTATE classes of refusals that pass: insufficient resources, read-only, serialization,
# operator intervention, system error, object in use (a lock timeout)
TRANSIENT_CLASSES = ("53", "25", "40", "57", "58", "55")


class Lane:
    """One connection and one thread that commit queued writes in groups."""

    def __init__(self, connect, dbname: str, epoch: str, durable: bool, end_orphans=lambda rows: None):
        self._connect = connect
        self.end_orphans = end_orphans
        self.dbname = dbname
        self.epoch = epoch
        self.durable = durable
        self.q: queue.Queue = queue.Queue()
        self.conn: psycopg.Connection | None = None
        self.thread: threading.Thread | None = None  # runs while writes come; see _put and _run
        self.life = threading.Lock()  # orders a thread's end against the next write's start
        self.forgotten = False  # the dispatcher gave this store up: end once idle, session or not
        self.last_purge = 0.0 if not durable else float("inf")
        self.ready = threading.Event()
        self.failing: str | None = None  # the last refusal while writes wait to be retried
        self.busy = threading.Lock()  # held while writes are applied, by the thread or a caller
        self.latest: dict = {}  # key -> (sql, params) of a coalesced write waiting in the queue
        self.latest_lock = threading.Lock()
        self.noted_at = -60.0
        # writes that met a row another session keeps locked (a job's own transaction holds its row):
        # put aside and tried again alone, so the writes queued behind them go on
        self.deferred: list = []
        self.deferred_at = 0.0

    def empty(self) -> bool:
        return self.q.empty() and not self.deferred

    def pending(self) -> int:
        return self.q.qsize() + len(self.deferred)

    def _put(self, item: tuple) -> None:
        """Queue an item; start the lane's thread if it ended (a released lane's thread ends)."""
        with self.life:
            self.q.put(item)
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, daemon=True,
                                               name=f"store-{self.dbname}-{'durable' if self.durable else 'fast'}")
                self.thread.start()

    # ---- API used by the dispatcher ----
    def write(self, sql: str, params: dict) -> None:
        """Queue a write nobody waits for."""
        self._put((sql, params, None, {}))

    def write_latest(self, key, sql: str, params: dict) -> None:
        """Queue a write nobody waits for, superseding a queued one of the same key."""
        with self.latest_lock:
            queued = key in self.latest
            self.latest[key] = (sql, params)
        if not queued:
            self._put((LATEST, key, None, {}))

    def release(self) -> bool:
        """Drop the connection when nothing is queued or being written; True when it is closed."""
        if not self.empty() or not self.busy.acquire(blocking=False):
            return False
        try:
            if not self.empty():
                return False
            self._drop()
            return True
        finally:
            self.busy.release()

    def submit(self, sql: str, params: dict) -> tuple:
        """Queue a write whose commit someone will wait for with `wait`."""
        pending = (threading.Event(), {})
        self._put((sql, params, *pending))
        return pending

    @staticmethod
    def wait(pending: tuple, timeout: float = 30.0) -> None:
        done, box = pending
        if not done.wait(timeout):
            box["abandoned"] = True  # nobody waits any more: the lane drops it (and its SQL text)
            raise TimeoutError("job table write timed out")
        if "error" in box:
            raise box["error"]

    def write_now(self, sql: str, params: dict) -> bool:
        """Commit one write in the caller's thread if nothing is queued or being written; False
        when the lane is busy or its connection is down (queue the write then). A refusal
        by the server is raised."""
        if not self.empty() or not self.busy.acquire(blocking=False):
            return False
        try:
            if not self._usable():
                return False
            try:
                self.conn.execute(sql, params)
            except Exception:
                if not self._usable():
                    self._drop()
                    return False
                raise
            self.failing = None
            return True
        finally:
            self.busy.release()

    # ---- writer thread ----
    def _open(self) -> psycopg.Connection:
        conn = self._connect(self.dbname)
        try:
            conn.autocommit = True
            conn.prepare_threshold = 0  # the same few statements, thousands of times
            if not self.durable:
                conn.execute("SET synchronous_commit = off")
                reconcile(conn, self.epoch, self.dbname, self.end_orphans)
        except BaseException:
            conn.close()
            raise
        return conn

    def query(self, sql: str, params=None, wait: float = 10.0, limit_ms: int = 5000) -> list:
        """A control question on this lane's session, in the caller's thread under the lane's lock,
        with statement and lock timeouts local to it: a lock held in this database delays only it."""
        if not self.busy.acquire(timeout=wait):
            raise TimeoutError(f"the job-table session of database {self.dbname} is busy")
        try:
            if not self._usable():
                self._drop()
                self.conn = self._open()
            try:
                with self.conn.transaction():
                    self.conn.execute("SELECT pg_catalog.set_config('statement_timeout', %s, true), "
                                      "pg_catalog.set_config('lock_timeout', %s, true)",
                                      (str(int(limit_ms)), str(int(limit_ms) // 2)))
                    return self.conn.execute(sql, params).fetchall()
            except psycopg.OperationalError:
                self._drop()
                raise
        finally:
            self.busy.release()

    def _run(self) -> None:
        while True:
            try:
                if self._step():
                    return
            except Exception:  # the thread must outlive a fault of ours: a dead one wedges the lane
                log.exception("job table writer of %s", self.dbname)
                time.sleep(0.1)

    def _step(self) -> bool:
        """Commit one batch of queued writes; True when the thread ends (idle and released)."""
        if self.deferred and time.monotonic() - self.deferred_at >= DEFER_RETRY:
            items, self.deferred = self.deferred, []
            self.deferred_at = time.monotonic()
            for item in items:  # in order: a later write to a locked row waits behind the earlier one
                if self.deferred:
                    self.deferred.append(item)
                else:
                    self._with_retry(lambda: self._apply_brief(item), item, keep=item[2] is None,
                                     on_lock=lambda item=item: self._defer(item))
        try:
            first = self.q.get(timeout=DEFER_RETRY if self.deferred else IDLE_EXIT)
        except queue.Empty:
            # released (no usable session) or given up, and idle: the thread ends (closing its
            # session); the next write starts one
            if self.busy.acquire(blocking=False):
                try:
                    with self.life:
                        if self.empty() and (self.forgotten or not self._usable()):
                            self._drop()
                            self.thread = None
                            return True
                finally:
                    self.busy.release()
            return False
        batch, size = [first], _size(first)
        while len(batch) < 500 and size < BATCH_BYTES:
            try:
                item = self.q.get_nowait()
            except queue.Empty:
                break
            batch.append(item)
            size += _size(item)
        batch = [item for item in map(self._resolve, batch) if not item[3].get("abandoned")]
        if not batch:
            return False
        waited = any(item[2] is not None for item in batch)
        # a lone write, or a batch one of whose rows failed (or was locked): one by one, each
        # failure reported, each locked row's write put aside
        if len(batch) == 1 or not self._with_retry(lambda: self._apply(batch), keep=not waited,
                                                   on_lock=lambda: None):
            for item in batch:
                self._with_retry(lambda: self._apply([item]), item, keep=item[2] is None,
                                 on_lock=lambda item=item: self._defer(item))
        if time.monotonic() - self.last_purge > PURGE_EVERY:
            self.last_purge = time.monotonic()
            self.write(PURGE, {})
            self.write(REDACT, {})
        return False

    def _resolve(self, item: tuple) -> tuple:
        """A queued coalesced write becomes its latest statement (taken off the table of pending ones)."""
        if item[0] is not LATEST:
            return item
        with self.latest_lock:
            sql, params = self.latest.pop(item[1])
        return sql, params, None, {}

    def _usable(self) -> bool:
        return self.conn is not None and not self.conn.closed and not self.conn.broken

    def _attempt(self, fn) -> Exception | None:
        """One try under the lane's lock: None when the server took it, else the error."""
        with self.busy:
            try:
                if not self._usable():
                    self._drop()
                    self.conn = self._open()
                    self.ready.set()
                fn()
                self.failing = None
                return None
            except Exception as e:
                if self.conn is not None and not self._usable():
                    self._drop()
                return e

    def _with_retry(self, fn, item=None, keep: bool = True, on_lock=None) -> bool:
        """Run fn until the server takes it. A refusal that passes is retried on the durable lane
        when nobody waits (`keep`); otherwise False, the error in item. A row lock that outlasts
        lock_timeout goes to `on_lock` instead (the write is put aside, not retried in place). The
        lane's lock is free while it waits between tries, so control questions go on."""
        backoff = 0.1
        while True:
            e = self._attempt(fn)
            if e is None:
                return True
            state = getattr(e, "sqlstate", None) or ""
            if self.conn is None and f'database "{self.dbname}" does not exist' in str(e):
                self._note(f"database {self.dbname} was dropped: its job-table writes are discarded")
                return self._fail(item, e)
            if no_answer(e):
                self._note(f"job table connection for {self.dbname} lost ({str(e).strip()}); retrying")
            elif state == "55P03" and on_lock is not None:
                on_lock()
                return False
            elif keep and self.durable and state[:2] in TRANSIENT_CLASSES:
                self.failing = f"SQLSTATE {state}: {str(e).strip().splitlines()[0]}"
                self._note(f"job table write refused in {self.dbname} ({self.failing}); retrying")
            elif isinstance(e, psycopg.Error):
                log.warning("job table write failed: %s", e)
                return self._fail(item, e)
            else:  # a fault of ours: retrying would wedge every write behind it
                log.error("job table write failed", exc_info=e)
                return self._fail(item, e)
            time.sleep(backoff)
            backoff = min(backoff * 2, RETRY_MAX)

    def _defer(self, item: tuple) -> None:
        if not self.deferred:
            self.deferred_at = time.monotonic()
        self.deferred.append(item)
        self._note(f"a job-table write in {self.dbname} waits for a row another session keeps locked; "
                   "the writes after it go on")

    def _apply_brief(self, item: tuple) -> None:
        """One put-aside write, waiting for its row's lock only briefly: the lane does not stall on it."""
        with self.conn.transaction():
            self.conn.execute("SELECT pg_catalog.set_config('lock_timeout', %s, true)", (str(DEFER_LOCK_MS),))
            self.conn.execute(item[0], item[1])
        if item[2]:
            item[2].set()

    def _note(self, msg: str) -> None:
        """A retry worth a log line: the first, then one a minute (a refusal can last for days)."""
        now = time.monotonic()
        if now - self.noted_at >= 60.0:
            self.noted_at = now
            log.warning(msg)

    @staticmethod
    def _fail(item, e: Exception) -> bool:
        if item is not None:
            item[3]["error"] = e
            if item[2]:
                item[2].set()
        return False

    def _apply(self, batch) -> None:
        if len(batch) == 1:  # autocommit: one round trip
            self.conn.execute(batch[0][0], batch[0][1])
            if batch[0][2]:
                batch[0][2].set()
            return
        # one round trip and one commit (one flush on the durable lane) for the whole batch
        with self.conn.pipeline(), self.conn.transaction(), self.conn.cursor() as cur:
            for sql, params, _, _ in batch:
                cur.execute(sql, params)
        for _, _, done, _ in batch:
            if done:
                done.set()

    def _drop(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except Exception:
                pass
        self.conn = None
