"""The job table (`plpy_bg.jobs`), written autonomously by the dispatcher.

Writes go through one thread per database that commits them in groups with
``synchronous_commit = off``: a launch waits for its row to be committed
(visible to every session at once) but never for a WAL flush. The row is
flushed to disk no later than the job's own commit, which does wait for the
flush, so a crash cannot keep a job's work and lose its row.
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

FINISH = """
UPDATE plpy_bg.jobs SET state = %(state)s, finished_at = %(finished_at)s,
    command_tag = %(tag)s, last_error = %(last_error)s, error = %(error)s,
    rows_returned = %(rows)s
WHERE cookie = %(cookie)s
"""

FLAGS = "UPDATE plpy_bg.jobs SET consumed = %(consumed)s, detached = %(detached)s WHERE cookie = %(cookie)s"

PROGRESS = """
UPDATE plpy_bg.jobs SET progress_pct = %(pct)s, progress_msg = %(msg)s, progress_at = now()
WHERE cookie = %(cookie)s
"""

RECONCILE = """
UPDATE plpy_bg.jobs SET state = 'lost', finished_at = now(),
    last_error = 'the dispatcher that ran this job stopped before the job ended; its outcome is unknown'
WHERE state = 'running' AND dispatcher_epoch <> %(epoch)s
"""

PURGE = """
DELETE FROM plpy_bg.jobs WHERE state <> 'running' AND finished_at < now() - %(keep)s::interval
"""


class Store:
    def __init__(self, connect, dbname: str, epoch: str, retention: str = "7 days"):
        self._connect = connect
        self.dbname = dbname
        self.epoch = epoch
        self.retention = retention
        self.q: queue.Queue = queue.Queue()
        self.conn: psycopg.Connection | None = None
        self.thread = threading.Thread(target=self._run, name=f"store-{dbname}", daemon=True)
        self.last_purge = 0.0
        self.ready = threading.Event()
        self.thread.start()

    # ---- API used by the dispatcher ----
    def write(self, sql: str, params: dict, wait: bool = False, timeout: float = 30.0) -> None:
        done = threading.Event() if wait else None
        box: dict = {}
        self.q.put((sql, params, done, box))
        if done is not None:
            if not done.wait(timeout):
                raise TimeoutError("job table write timed out")
            if "error" in box:
                raise box["error"]

    # ---- writer thread ----
    def _open(self) -> psycopg.Connection:
        conn = self._connect(self.dbname)
        conn.execute("SET synchronous_commit = off")
        conn.execute("SET application_name = 'plpy_bg dispatcher'")
        conn.execute(RECONCILE, {"epoch": self.epoch})
        conn.commit()
        return conn

    def _run(self) -> None:
        backoff = 0.1
        while True:
            batch = [self.q.get()]
            while len(batch) < 500:
                try:
                    batch.append(self.q.get_nowait())
                except queue.Empty:
                    break
            while True:
                try:
                    if self.conn is None or self.conn.closed:
                        self.conn = self._open()
                        self.ready.set()
                    self._apply(batch)
                    backoff = 0.1
                    break
                except psycopg.OperationalError as e:
                    # server restarting or our session killed: keep the writes and retry
                    log.warning("job table connection for %s lost (%s); retrying", self.dbname, e)
                    self._drop()
                    time.sleep(backoff)
                    backoff = min(backoff * 2, 2.0)
                except Exception as e:  # a bad row must not block the others
                    log.exception("job table write failed")
                    self._drop()
                    for sql, params, done, box in batch:
                        try:
                            self.conn = self.conn or self._open()
                            with self.conn.transaction():
                                self.conn.execute(sql, params)
                        except Exception as e2:
                            box["error"] = e2
                        if done:
                            done.set()
                    break
            if time.monotonic() - self.last_purge > 600:
                self.last_purge = time.monotonic()
                self.write(PURGE, {"keep": self.retention})

    def _apply(self, batch) -> None:
        with self.conn.transaction():
            with self.conn.cursor() as cur:
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
