"""Worker connections: libpq sessions logged in as the job's own role.

A worker is never a superuser login downgraded with SET ROLE: it authenticates
as the role itself (peer map ``plpy_bg``), so no statement in the job can
become anyone else. Idle workers are kept per (database, role oid, profile)
and reset with DISCARD ALL before reuse; a worker is never shared across keys.
The key holds the role's oid, not its name, and a new worker's login oid is
checked against it: after a rename swap the name leads to another role, the
oid never does.
A worker whose seccomp filter stack changed during a job (a job may add a
filter, never remove one) is closed instead of reused: its profile is no longer
the key's.
"""
from __future__ import annotations

import select
import signal
import threading
import time
from dataclasses import dataclass, field

import psycopg
from psycopg import pq

from plpy_bg.dispatcher.host import Process
from plpy_bg.errors import PgError, cut_utf8
from plpy_bg.jobs.limits import ERROR_FIELD_LIMIT
from plpy_bg.jobs.settings import UNITS_BYTES, literal, parse_setting

DiagField = pq.DiagnosticField


def error_fields(res) -> dict:
    def f(code):
        v = res.error_field(code)
        return cut_utf8(v.decode("utf-8", "replace"), ERROR_FIELD_LIMIT) if v else None

    return {
        "sqlstate": f(DiagField.SQLSTATE) or "XX000",
        "message": f(DiagField.MESSAGE_PRIMARY) or cut_utf8(
            (res.error_message or b"").decode("utf-8", "replace").strip(), ERROR_FIELD_LIMIT),
        "detail": f(DiagField.MESSAGE_DETAIL),
        "hint": f(DiagField.MESSAGE_HINT),
        "context": f(DiagField.CONTEXT),
    }


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def seccomp_filters(pid: int) -> int | None:
    """The number of seccomp filters in force in process `pid` (None when unreadable)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Seccomp_filters:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return 0


def temp_file_limit_bytes(raw: str) -> int | None:
    """temp_file_limit as current_setting() shows it ('-1', '1MB', '64kB'); None when unlimited."""
    if raw.strip().startswith("-"):
        return None
    return parse_setting("temp_file_limit", raw, 0, UNITS_BYTES, "kb")


def settings_sql(settings: list, previous: list) -> list[str]:
    """Statements that take a worker from `previous` settings to `settings`."""
    wanted = {n for n, _ in settings}
    out = []
    if settings:
        out.append("SELECT " + ", ".join(
            f"pg_catalog.set_config({quote(n)}, {quote(v)}, false)" for n, v in settings))
    # a setting of the previous launcher that this one does not send goes back to its default
    out += [f"RESET {quote_ident(n)}" for n, _ in previous if n not in wanted]
    return out


# DISCARD ALL as its documented parts: unlike DISCARD ALL they may share one round trip
DISCARD = ("CLOSE ALL", "SET SESSION AUTHORIZATION DEFAULT", "RESET ALL", "DEALLOCATE ALL", "UNLISTEN *",
           "SELECT pg_catalog.pg_advisory_unlock_all()", "DISCARD PLANS", "DISCARD TEMP", "DISCARD SEQUENCES")


def quote(text: str) -> str:
    """A SQL string literal, written as the launcher's settings query writes them."""
    if "\0" in text:
        raise PgError("setting values cannot contain NUL bytes", sqlstate="22021")
    return literal(text)


@dataclass(eq=False)
class Worker:
    key: tuple  # (database name, role oid, profile, database oid)
    conn: psycopg.Connection
    pid: int
    login: str = ""  # the role name it logged in with
    login_oid: int | None = None
    become: tuple | None = None  # ("role", name): a shadow login's role, set before every job
    temp_file_limit: int | None = None  # the role's, in bytes: bounds the rows spooled for its jobs
    process: Process | None = None
    created: float = field(default_factory=time.monotonic)
    idle_since: float = field(default_factory=time.monotonic)
    jobs_run: int = 0
    applied: list | None = None  # the settings in force, re-applied after each reset
    filters: int | None = None  # seccomp filters in the backend once it was ready for jobs

    def __post_init__(self):
        if self.process is None:
            self.process = Process(self.pid)  # while the connection is open, the pid is its backend

    def terminate(self) -> bool:
        """SIGTERM the backend, as pg_terminate_backend does; never a signal to a recycled pid."""
        return self.process.signal(signal.SIGTERM)

    def login_holds(self) -> bool:
        """A shadow login is still a member of its role (it may have been dropped and made again
        while this worker was idle; SET ROLE would then fail)."""
        try:
            return bool(self.run_simple(
                f"SELECT 1 FROM pg_catalog.pg_auth_members WHERE member OPERATOR(pg_catalog.=) {int(self.login_oid)} "
                f"AND roleid OPERATOR(pg_catalog.=) {int(self.key[1])}"))
        except Exception:
            return False

    def apply_settings(self, settings: list) -> None:
        """Set the job's settings; nothing to do when the worker already has exactly these."""
        if self.become is not None:  # first: no inherited setting is named role (jobs.settings.NEVER)
            settings = [self.become, *settings]
        if settings == self.applied:
            return
        sql = settings_sql(settings, self.applied or [])
        self.applied = None  # unknown until the statement succeeds
        if sql:
            self.run_simple("; ".join(sql))
        self.applied = settings

    @property
    def pgconn(self) -> pq.PGconn:
        return self.conn.pgconn

    def alive(self) -> bool:
        """Still connected; reads pending input so a server-side close is noticed."""
        pg = self.pgconn
        try:
            # a terminated backend sends its FATAL message, then EOF: reading until nothing is
            # pending sees both (one read may stop after the message)
            for _ in range(4):
                if pg.status != pq.ConnStatus.OK:
                    return False
                if not select.select([pg.socket], [], [], 0)[0]:
                    return True
                pg.consume_input()
        except Exception:
            return False
        return pg.status == pq.ConnStatus.OK

    def close(self) -> None:
        try:
            self.conn.close()
        except Exception:
            pass
        if self.process is not None:
            self.process.close()

    # ---- low-level execution with the GIL released while waiting ----
    def send(self, sql: bytes) -> None:
        pg = self.pgconn
        pg.nonblocking = 1
        pg.send_query(sql)
        self._flush()

    def _flush(self) -> None:
        pg = self.pgconn
        while pg.flush() == 1:
            select.select([pg.socket], [pg.socket], [], 1.0)
            pg.consume_input()

    def send_described(self, statement: bytes, wrapped: bytes, then: bytes | None = None) -> None:
        """Send, in one round trip (pipeline mode), a statement to describe and the query that
        runs it (and `then`, in the same transaction): `described()` then reads the statement's
        own column types, `results()` the rows of `wrapped`, and `end_pipeline()` the rest."""
        pg = self.pgconn
        pg.nonblocking = 1
        pg.enter_pipeline_mode()
        pg.send_prepare(b"", statement)
        pg.send_describe_prepared(b"")
        pg.send_query_params(wrapped, None)
        if then is not None:
            pg.send_query_params(then, None)
        pg.pipeline_sync()
        self._flush()

    def described(self) -> tuple[list[tuple[int, int]] | None, dict | None]:
        """(columns as (type oid, typmod), None), or (None, error) when the statement was refused."""
        cols, err = None, None
        for step in ("parse", "describe"):
            for res in self.results():
                if res.status == pq.ExecStatus.FATAL_ERROR:
                    err = err or error_fields(res)
                elif step == "describe" and res.status == pq.ExecStatus.COMMAND_OK:
                    cols = [(res.ftype(i), res.fmod(i)) for i in range(res.nfields)]
        return (None, err) if err else (cols, None)

    def end_pipeline(self) -> dict | None:
        """Read what is left of a pipeline up to its sync, leave pipeline mode, and return the first
        error in it (its transaction did not commit)."""
        err = None
        for _ in range(4):  # what is left of the queries, then the sync
            synced = False
            for res in self.results():
                if res.status == pq.ExecStatus.FATAL_ERROR and err is None:
                    err = error_fields(res)
                synced = synced or res.status == pq.ExecStatus.PIPELINE_SYNC
            if synced:
                break
        self.pgconn.exit_pipeline_mode()
        return err

    def results(self, stream: bool = False, tick=None):
        """Yield each PGresult of the query in flight; `stream` returns rows one by one as they come.

        One row a result: libpq's chunked mode holds a whole chunk of rows whatever their size (8
        rows of 100 MB are 800 MB in this shared process), single-row mode one row, as the worker
        itself does. It halves the rows per second of small rows; the bound comes first."""
        pg = self.pgconn
        if stream:
            pg.set_single_row_mode()
        fd = pg.socket
        while True:
            pg.consume_input()
            while not pg.is_busy():
                res = pg.get_result()
                if res is None:
                    return
                status = res.status  # the consumer may clear the result to free it at once
                yield res
                del res
                if status in (pq.ExecStatus.COPY_IN, pq.ExecStatus.COPY_BOTH):
                    pg.put_copy_end(b"COPY from the client is not supported in a background job")
                    pg.flush()
                elif status == pq.ExecStatus.COPY_OUT:
                    while True:
                        n, _ = pg.get_copy_data(0)
                        if n == -1:
                            break
                        if n == 0:
                            select.select([fd], [], [], 1.0)
                            pg.consume_input()
                        elif n == -2:
                            break
                # no consume_input() here: reading ahead while the sink applies backpressure
                # makes libpq double its buffer per row until the whole result is in memory
            r, _, _ = select.select([fd], [], [], 0.5)
            if not r and tick is not None:
                tick()

    def run_simple(self, sql: str) -> list:
        """Run a utility statement; raise PgError with the server's fields on failure."""
        self.send(sql.encode())
        err = None
        out = []
        for res in self.results():
            if res.status == pq.ExecStatus.FATAL_ERROR:
                err = error_fields(res)
            elif res.status == pq.ExecStatus.TUPLES_OK:
                out = [[res.get_value(i, j) for j in range(res.nfields)] for i in range(res.ntuples)]
        if err:
            raise PgError.from_dict(err)
        return out

    def reset(self) -> bool:
        """Make the session as new for the next job of the same key; False when unusable."""
        try:
            if not self.alive():
                return False
            if self.filters is not None and seccomp_filters(self.pid) != self.filters:
                return False
            if self.pgconn.transaction_status != pq.TransactionStatus.IDLE:
                self.run_simple("ROLLBACK")
            settings, self.applied = self.applied or [], None
            # one round trip; the next job of this key most likely wants the same settings again
            self.run_simple("; ".join(DISCARD + tuple(settings_sql(settings, []))))
            self.applied = settings
            return self.pgconn.transaction_status == pq.TransactionStatus.IDLE
        except Exception:
            return False


class Pool:
    """Idle workers per key, bounded per role and in total, reaped when idle too long.

    `live` holds every worker connection this pool opened and has not closed:
    each is either idle here or running exactly one job (the invariants check
    this against pg_stat_activity).
    """

    DEFAULTS = (8, 32, 60.0)  # idle per role, idle in all, idle seconds: what an unset setting means

    def __init__(self, connect, max_idle_per_role: int = DEFAULTS[0], max_idle_total: int = DEFAULTS[1],
                 idle_timeout: float = DEFAULTS[2]):
        self._connect = connect
        self.max_idle_per_role = max_idle_per_role
        self.max_idle_total = max_idle_total
        self.idle_timeout = idle_timeout
        self.idle: dict[tuple, list[Worker]] = {}
        self.live: dict[int, Worker] = {}
        self.lock = threading.Lock()
        self.opened = 0
        self.reused = 0
        self.warming: set[tuple] = set()

    def configure(self, max_idle_per_role: int, max_idle_total: int, idle_timeout: float) -> None:
        """New bounds (from the server's settings); idle workers beyond them are closed now."""
        self.max_idle_per_role = max_idle_per_role
        self.max_idle_total = max_idle_total
        self.idle_timeout = idle_timeout
        self.reap()

    def _open(self, key: tuple, login: str) -> Worker:
        w = self._connect(key, login)
        with self.lock:
            self.opened += 1
            self.live[w.pid] = w
        return w

    def close(self, w: Worker) -> None:
        with self.lock:
            if self.live.get(w.pid) is w:
                del self.live[w.pid]
        w.close()

    def acquire(self, key: tuple, login: str) -> tuple[Worker, bool]:
        """An idle worker of `key`, or a new one logged in as `login` (the key's role by name)."""
        stale = []
        with self.lock:
            stack = self.idle.get(key)
            found = None
            while stack:
                w = stack.pop()
                if w.alive():
                    found = w
                    break
                stale.append(w)
        if found is not None and found.become is not None and not found.login_holds():
            stale.append(found)
            found = None
        with self.lock:
            if stack is not None and not stack and self.idle.get(key) is stack:
                del self.idle[key]
        for w in stale:
            self.close(w)
        if found is not None:
            self.reused += 1
            if key not in self.idle:
                self._prewarm(key, login)
            return found, True
        w = self._open(key, login)
        self._prewarm(key, login)
        return w, False

    def _room(self, key: tuple) -> bool:
        """Whether one more idle worker of `key` fits the bounds (called with the lock held)."""
        role = key[1]
        per_role = sum(len(s) for k, s in self.idle.items() if k[1] == role)
        return per_role < self.max_idle_per_role and self.idle_count() < self.max_idle_total

    def _park(self, w: Worker) -> bool:
        with self.lock:
            if not self._room(w.key):
                return False
            w.idle_since = time.monotonic()
            self.idle.setdefault(w.key, []).append(w)
            return True

    def _prewarm(self, key: tuple, login: str) -> None:
        """Open one more worker in the background: a login and its filter cost tens of ms."""
        with self.lock:
            if key in self.warming or not self._room(key):
                return
            self.warming.add(key)

        def open_one():
            try:
                w = self._open(key, login)
                if not self._park(w):
                    self.close(w)
            except Exception:  # the launch that needs it will report the failure
                pass
            finally:
                with self.lock:
                    self.warming.discard(key)

        threading.Thread(target=open_one, name="prewarm", daemon=True).start()

    def release(self, w: Worker) -> None:
        w.jobs_run += 1
        if self.max_idle_per_role <= 0 or not w.reset() or not self._park(w):
            self.close(w)

    def idle_count(self) -> int:
        return sum(len(s) for s in self.idle.values())

    def snapshot(self) -> tuple[dict[int, Worker], dict[int, Worker], bool]:
        """(every live worker by pid, the idle ones by pid, whether one is being opened)."""
        with self.lock:
            return dict(self.live), {w.pid: w for s in self.idle.values() for w in s}, bool(self.warming)

    def reap(self, now: float | None = None, all_: bool = False) -> int:
        """Close workers idle too long, dead, or beyond the bounds (the oldest idle go first)."""
        now = now or time.monotonic()
        closed = []
        with self.lock:
            for key, stack in list(self.idle.items()):
                keep = [w for w in stack if not all_ and now - w.idle_since < self.idle_timeout and w.alive()]
                closed += [w for w in stack if w not in keep]
                if keep:
                    self.idle[key] = keep
                else:
                    del self.idle[key]
            per_role: dict[str, int] = {}
            for w in sorted((w for s in self.idle.values() for w in s), key=lambda w: -w.idle_since):
                n = per_role.get(w.key[1], 0) + 1
                per_role[w.key[1]] = n
                if n > self.max_idle_per_role or sum(per_role.values()) > self.max_idle_total:
                    per_role[w.key[1]] -= 1
                    self.idle[w.key].remove(w)
                    closed.append(w)
            for key in [k for k, s in self.idle.items() if not s]:
                del self.idle[key]
        for w in closed:
            self.close(w)
        return len(closed)

    def drop_database(self, dbk: tuple[str, int] | None = None) -> int:
        """Close every idle worker of database `dbk` = (name, oid) (of all databases when None)."""
        with self.lock:
            keys = [k for k in self.idle if dbk is None or (k[0], k[3]) == dbk]
            stacks = [self.idle.pop(k) for k in keys]
        for stack in stacks:
            for w in stack:
                self.close(w)
        return sum(len(s) for s in stacks)

    def databases(self) -> set[tuple[str, int]]:
        """Databases (name, oid) where a worker connection is open (idle or running)."""
        with self.lock:
            return {(w.key[0], w.key[3]) for w in self.live.values()}
