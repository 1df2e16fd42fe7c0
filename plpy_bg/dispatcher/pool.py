"""Worker connections: libpq sessions logged in as the job's own role.

A worker is never a superuser login downgraded with SET ROLE: it authenticates
as the role itself (peer map ``plpy_bg``), so no statement in the job can
become anyone else. Idle workers are kept per (database, role, profile) and
reset with DISCARD ALL before reuse; a worker is never shared across keys.
"""
from __future__ import annotations

import select
import threading
import time
from dataclasses import dataclass, field

import psycopg
from psycopg import pq

from plpy_bg.errors import PgError

DiagField = pq.DiagnosticField
CHUNK_ROWS = 256  # rows per result chunk from libpq: fewer Python calls, little delay


def error_fields(res) -> dict:
    def f(code):
        v = res.error_field(code)
        return v.decode("utf-8", "replace") if v else None

    return {
        "sqlstate": f(DiagField.SQLSTATE) or "XX000",
        "message": f(DiagField.MESSAGE_PRIMARY) or (res.error_message or b"").decode("utf-8", "replace").strip(),
        "detail": f(DiagField.MESSAGE_DETAIL),
        "hint": f(DiagField.MESSAGE_HINT),
        "context": f(DiagField.CONTEXT),
    }


def quote(text: str) -> str:
    """A SQL string literal (standard_conforming_strings is on in every worker)."""
    if "\0" in text:
        raise PgError("setting values cannot contain NUL bytes", sqlstate="22021")
    return "'" + text.replace("'", "''") + "'"


@dataclass(eq=False)
class Worker:
    key: tuple
    conn: psycopg.Connection
    pid: int
    created: float = field(default_factory=time.monotonic)
    idle_since: float = field(default_factory=time.monotonic)
    jobs_run: int = 0
    applied: list | None = None  # the settings in force, re-applied after each reset

    def apply_settings(self, settings: list) -> None:
        """Set the job's settings; nothing to do when the worker already has exactly these."""
        if settings == self.applied:
            return
        if settings:
            # one simple-protocol round trip; the worker keeps standard_conforming_strings on
            self.run_simple("SELECT " + ", ".join(
                f"pg_catalog.set_config({quote(n)}, {quote(v)}, false)" for n, v in settings))
        self.applied = settings

    @property
    def pgconn(self) -> pq.PGconn:
        return self.conn.pgconn

    def alive(self) -> bool:
        """Still connected; reads pending input so a server-side close is noticed."""
        pg = self.pgconn
        if pg.status != pq.ConnStatus.OK:
            return False
        try:
            pg.consume_input()
        except Exception:
            return False
        return pg.status == pq.ConnStatus.OK

    def close(self) -> None:
        try:
            self.conn.close()
        except Exception:
            pass

    # ---- low-level execution with the GIL released while waiting ----
    def send(self, sql: bytes) -> None:
        pg = self.pgconn
        pg.nonblocking = 1
        pg.send_query(sql)
        while pg.flush() == 1:
            select.select([pg.socket], [pg.socket], [], 1.0)
            pg.consume_input()

    def results(self, stream: bool = False, tick=None):
        """Yield each PGresult of the query in flight; `stream` returns rows in chunks as they come."""
        pg = self.pgconn
        if stream:
            if hasattr(pg, "set_chunked_rows_mode") and pq.version() >= 170000:
                pg.set_chunked_rows_mode(CHUNK_ROWS)
            else:
                pg.set_single_row_mode()
        fd = pg.socket
        while True:
            pg.consume_input()
            while not pg.is_busy():
                res = pg.get_result()
                if res is None:
                    return
                yield res
                if res.status in (pq.ExecStatus.COPY_IN, pq.ExecStatus.COPY_BOTH):
                    pg.put_copy_end(b"COPY from the client is not supported in a background job")
                    pg.flush()
                elif res.status == pq.ExecStatus.COPY_OUT:
                    while True:
                        n, _ = pg.get_copy_data(0)
                        if n == -1:
                            break
                        if n == 0:
                            select.select([fd], [], [], 1.0)
                            pg.consume_input()
                        elif n == -2:
                            break
                pg.consume_input()
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
            if self.pgconn.transaction_status != pq.TransactionStatus.IDLE:
                self.run_simple("ROLLBACK")
            self.run_simple("DISCARD ALL")
            settings, self.applied = self.applied, []
            self.apply_settings(settings or [])  # the next job of this key most likely wants the same
            return self.pgconn.transaction_status == pq.TransactionStatus.IDLE
        except Exception:
            return False


class Pool:
    """Idle workers per key, bounded per key and in total, reaped when idle too long."""

    def __init__(self, connect, max_idle_per_key: int = 8, max_idle_total: int = 32,
                 idle_timeout: float = 60.0):
        self._connect = connect
        self.max_idle_per_key = max_idle_per_key
        self.max_idle_total = max_idle_total
        self.idle_timeout = idle_timeout
        self.idle: dict[tuple, list[Worker]] = {}
        self.lock = threading.Lock()
        self.opened = 0
        self.reused = 0
        self.warming: set[tuple] = set()

    def acquire(self, key: tuple) -> tuple[Worker, bool]:
        with self.lock:
            stack = self.idle.get(key)
            while stack:
                w = stack.pop()
                if w.alive():
                    self.reused += 1
                    if not stack:
                        self._prewarm(key)
                    return w, True
                w.close()
        w = self._connect(key)
        self.opened += 1
        self._prewarm(key)
        return w, False

    def _prewarm(self, key: tuple) -> None:
        """Open one more worker in the background: a login and its filter cost tens of ms."""
        if key in self.warming or self.max_idle_per_key <= 0:
            return
        self.warming.add(key)

        def open_one():
            try:
                w = self._connect(key)
                self.opened += 1
                with self.lock:
                    stack = self.idle.setdefault(key, [])
                    if len(stack) < self.max_idle_per_key and self.idle_count() < self.max_idle_total:
                        w.idle_since = time.monotonic()
                        stack.append(w)
                        w = None
                if w is not None:
                    w.close()
            except Exception:  # the launch that needs it will report the failure
                pass
            finally:
                self.warming.discard(key)

        threading.Thread(target=open_one, name="prewarm", daemon=True).start()

    def release(self, w: Worker) -> None:
        w.jobs_run += 1
        if self.max_idle_per_key <= 0 or not w.reset():
            w.close()
            return
        w.idle_since = time.monotonic()
        with self.lock:
            stack = self.idle.setdefault(w.key, [])
            if len(stack) >= self.max_idle_per_key or self.idle_count() >= self.max_idle_total:
                w.close()
                return
            stack.append(w)

    def idle_count(self) -> int:
        return sum(len(s) for s in self.idle.values())

    def reap(self, now: float | None = None, all_: bool = False) -> int:
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
        for w in closed:
            w.close()
        return len(closed)

    def drop_key(self, key: tuple) -> None:
        with self.lock:
            stack = self.idle.pop(key, [])
        for w in stack:
            w.close()
