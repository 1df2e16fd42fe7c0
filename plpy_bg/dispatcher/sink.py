"""Where a job's rows wait for the launcher: bounded memory, backpressure, spill.

A single-statement job streams: rows become readable at once and the worker
thread blocks when `limit` bytes are unread (backpressure, like pg_background's
shm_mq). A multi-statement job returns only its last row set, which is known
only at the end, so its rows go to a spooled file and become readable when the
job finishes. `wait_v2` must never hang on a full queue, so it switches the
sink to spilling. A detached or submitted job discards its rows.

Memory is bounded twice: by the job's queue and by its session's `Budget`
(unread rows of all its jobs); a job with nothing in memory may always hold
one chunk, so some job of the session can always make progress. Spooled rows
go to unnamed files (O_TMPFILE) in the server's own temporary directory
(mode 0700, the server's OS user only); a job whose rows would bring its
session's spooled bytes past its role's temp_file_limit fails with 53400, as
the server's own temporary files do.
"""
from __future__ import annotations

import os
import struct
import tempfile
import threading
from collections import deque

from plpy_bg.errors import PgError

_LEN = struct.Struct("!I")


class SpoolFull(PgError):
    sqlstate = "53400"


class Budget:
    """Bytes held for a session (or, as a session budget's parent, for all of them)."""

    def __init__(self, limit: int, parent: "Budget | None" = None):
        self.limit = limit
        self.parent = parent
        self.used = 0
        self.lock = threading.Lock()

    def fits(self, n: int) -> bool:
        return self.used + n <= self.limit and (self.parent is None or self.parent.fits(n))

    def cap(self) -> int:
        """The most this budget could ever hold."""
        return min(self.limit, self.parent.cap()) if self.parent is not None else self.limit

    def add(self, n: int) -> None:
        with self.lock:
            self.used += n
        if self.parent is not None:
            self.parent.add(n)

    def give(self, n: int) -> None:
        with self.lock:
            self.used -= n
        if self.parent is not None:
            self.parent.give(n)


UNBOUNDED = Budget(1 << 62)
SPOOL_DEFAULT_LIMIT = 4 << 30  # a session's spool when its job's role has no temp_file_limit
DISK_CHECK_EVERY = 16 << 20  # the free space of the spool's disk is checked as files grow by this
DISK_FREE_MIN = 0.10  # spooling stops before the disk holding the data directory is 90% full


def disk_room(path: str, n: int) -> None:
    """Refuse to spool `n` more bytes when the disk (the server's own, in its data directory)
    would keep less than 10% free: rows waiting to be read must not fill the database's disk."""
    st = os.statvfs(path)
    if (st.f_bavail * st.f_frsize - n) < DISK_FREE_MIN * st.f_blocks * st.f_frsize:
        raise SpoolFull("could not spool the rows of a background job: the disk is nearly full",
                        detail=f"Less than {DISK_FREE_MIN:.0%} of the disk holding {path} would stay free.",
                        hint="Read the rows while the job runs, or free disk space.", sqlstate="53100")


class RowSink:
    def __init__(self, limit: int, streaming: bool, budget: Budget = UNBOUNDED, spool_dir: str | None = None,
                 spool_limit: int | None = None, spooled: Budget | None = None):
        self.limit = limit
        self.budget = budget
        self.spooled = spooled or Budget(1 << 62)  # bytes in the spool files of this session
        self.spool_dir = spool_dir
        self.spool_limit = spool_limit  # bytes, None = unlimited
        self.streaming = streaming
        self.cond = threading.Condition()
        self.mem: deque[bytes] = deque()
        self.mem_bytes = 0
        self.file = None  # overflow, read after mem
        self.file_unread = 0
        self.file_rpos = 0
        self.file_wpos = 0
        self.spill = not streaming
        self.discarding = False
        self.dropping = False  # the job failed: rows already sent are dropped, later ones ignored
        self.finished = False
        self.final: dict | None = None  # {"tag": ...} or {"error": {...}}
        self.rows_total = 0
        self.columns: list[tuple[int, int]] | None = None  # (type oid, typmod) of the rows kept
        self.styles: dict = {}  # the output settings the rows were written under (DateStyle, ...)

    # ---- writer side (the job's thread) ----
    def new_set(self, columns: list[tuple[int, int]], styles: dict) -> None:
        """A new row set begins: earlier sets of a multi-statement job are dropped."""
        with self.cond:
            if not self.streaming:
                self._clear()
            self.columns, self.styles = columns, styles
            self.cond.notify_all()

    def put(self, row: bytes, cancelled=lambda: False) -> None:
        self.put_many([row], cancelled)

    def put_many(self, rows: list[bytes], cancelled=lambda: False) -> None:
        """Queue a chunk of rows as one entry (rows joined by NUL, as the wire carries them)."""
        if not rows:
            return
        blob = rows[0] if len(rows) == 1 else b"\0".join(rows)
        count = len(rows)
        rows.clear()  # the caller's list lets go: a row waiting here is held once
        with self.cond:
            if self.discarding or self.dropping:
                return
            self.rows_total += count
            if self.streaming and not self.spill and len(blob) > min(self.limit, self.budget.cap()):
                # larger than memory may ever hold for this job: to disk at once, then wait there
                # until it is read (one such row at a time), so memory never holds it while waiting
                self._to_file(blob)
                del blob
                self.cond.notify_all()
                while self.file_unread and not self.discarding and not self.spill and not cancelled():
                    self.cond.wait(0.5)
                return
            # backpressure: a streaming job waits until the chunk fits the queue and the budgets,
            # or until the queue is empty (then a chunk that does not fit now goes to the file)
            # (wait_v2 turns spilling on meanwhile: then nothing waits)
            while (self.streaming and not self.spill and not self.discarding and not self._may_put(len(blob))
                   and not cancelled()):
                self.cond.wait(0.5 if self.mem_bytes + len(blob) > self.limit else 0.05)
            if self.discarding:
                return
            if self.file is None and self._fits(len(blob)):
                self.mem.append(blob)
                self.mem_bytes += len(blob)
                self.budget.add(len(blob))
            else:
                self._to_file(blob)
            if self.streaming:
                self.cond.notify_all()

    def _fits(self, n: int) -> bool:
        return self.mem_bytes + n <= self.limit and self.budget.fits(n)

    def _may_put(self, n: int) -> bool:
        """Streaming: into memory when it fits and nothing waits in the file, or alone into the
        file once the queue is empty (a row larger than the queue or the budget)."""
        return (self.file is None and self._fits(n)) or (not self.mem and not self.file_unread)

    def _to_file(self, row: bytes) -> None:
        n = _LEN.size + len(row)
        limit = self.spool_limit if self.spool_limit is not None else SPOOL_DEFAULT_LIMIT
        if self.spooled.used + n > limit:
            what = (f"temp_file_limit ({limit // 1024}kB)" if self.spool_limit is not None
                    else f"plpy_bg's spool bound ({limit // 1024}kB) for roles without a temp_file_limit")
            raise SpoolFull(f"temporary file size exceeds {what}",
                            detail="The rows of this session's background jobs waiting to be read would pass it.",
                            hint="Read the rows while the job runs (pg_background_result_v2), return fewer, "
                                 "or give the role a temp_file_limit.")
        if self.file is None and self.spool_dir is not None:
            os.makedirs(self.spool_dir, mode=0o700, exist_ok=True)
        if self.file_wpos // DISK_CHECK_EVERY != (self.file_wpos + n) // DISK_CHECK_EVERY or self.file is None:
            disk_room(self.spool_dir or tempfile.gettempdir(), n)
        if self.file is None:
            self.file = tempfile.TemporaryFile(prefix="plpy_bg_rows_", dir=self.spool_dir)
        self.file.seek(self.file_wpos)
        self.file.write(_LEN.pack(len(row)))  # apart: a copy of a 200 MB row to prepend 4 bytes is too much
        self.file.write(row)
        self.file_wpos = self.file.tell()
        self.file_unread += 1
        self.spooled.add(n)

    def finish(self, final: dict) -> None:
        with self.cond:
            self.finished = True
            self.final = final
            self.cond.notify_all()

    # ---- control ----
    def allow_spill(self) -> None:
        with self.cond:
            self.spill = True
            self.cond.notify_all()

    def drop_rows(self) -> None:
        """The job fails: free its rows, ignore any more, and let the launcher read the error."""
        with self.cond:
            self.dropping = True
            self._clear()
            self.cond.notify_all()

    def discard(self) -> None:
        with self.cond:
            self.discarding = True
            self._clear()
            self.cond.notify_all()

    def _clear(self) -> None:
        self.mem.clear()
        self.budget.give(self.mem_bytes)
        self.mem_bytes = 0
        self._close_file()
        self.file_unread = 0

    def _close_file(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
        self.spooled.give(self.file_wpos)
        self.file_rpos = self.file_wpos = 0

    # ---- reader side (the launcher's fetch requests) ----
    def describe(self, timeout: float) -> tuple[bool, list[tuple[int, int]] | None, dict]:
        """(known, columns, styles): the types of the rows a reader will get and the settings they
        were written under, once final (the first set of a streaming job, the last of a spooled
        one); columns None when the job failed. Takes no row."""
        with self.cond:
            known = lambda: self.finished or (self.streaming and self.columns is not None)
            if not known():
                self.cond.wait(timeout)
            if not known():
                return False, None, {}
            if self.finished and (self.final or {}).get("error"):
                return True, None, {}  # the reader gets the job's error, whatever it declared
            return True, self.columns, self.styles

    def take(self, max_bytes: int, timeout: float) -> tuple[list[bytes], dict | None]:
        """About max_bytes of row chunks (each one or more NUL-separated rows); (chunks, final)
        where final is set once all rows are read."""
        with self.cond:
            readable = lambda: self.finished or (self.streaming and (self.mem or self.file_unread))
            if not readable():
                self.cond.wait(timeout)
            if not readable():
                return [], None
            if not self.finished and self.mem_bytes < min(max_bytes, self.limit) // 2 and not self.file_unread:
                self.cond.wait(0.002)  # let a streaming job fill the batch: fewer round trips
            out: list[bytes] = []
            size = 0
            while self.mem and size < max_bytes:
                r = self.mem.popleft()
                self.mem_bytes -= len(r)
                self.budget.give(len(r))
                out.append(r)
                size += len(r)
            while self.file_unread and size < max_bytes:
                self.file.seek(self.file_rpos)
                (n,) = _LEN.unpack(self.file.read(4))
                r = self.file.read(n)
                self.file_rpos += 4 + n
                self.file_unread -= 1
                out.append(r)
                size += len(r)
            if self.file is not None and not self.file_unread:
                self._close_file()
            self.cond.notify_all()
            done = self.finished and not self.mem and not self.file_unread
            return out, (self.final if done else None)
