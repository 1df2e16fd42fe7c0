"""The job engine's bounds, in one place: what one session or one job may hold of the server.

Where pg_background has a bound, the same one (queue size, max_workers, progress and error
lengths, grace period); where plpy_bg holds memory pg_background does not (the dispatcher),
a bound of its own, documented in README ("Security model").
"""
from plpy_bg.errors import cut_utf8

DEFAULT_QUEUE = 65536
MIN_QUEUE = 4096
MAX_QUEUE = 256 << 20  # pg_background: "queue size must not exceed 268435456 bytes"
DEFAULT_MAX_WORKERS = 16
MAX_MAX_WORKERS = 1000  # pg_background.max_workers accepts 1 to 1000
GRACE_CAP_MS = 3_600_000
PROGRESS_MSG_LIMIT = 63  # bytes of a progress message kept, as pg_background's progress_msg[64]
LAST_ERROR_LIMIT = 512  # bytes of last_error in listings and the job table, as pg_background
ERROR_FIELD_LIMIT = 8192  # bytes kept of each field of a job's error (message, detail, hint, context)
SESSION_MAX_JOBS = 1024  # jobs a session tracks at once: running, or holding unread results
SESSION_ROW_BYTES = 64 << 20  # unread rows of one session held in the dispatcher's memory
ALL_ROW_BYTES = 512 << 20  # ... and of all sessions: beyond it, rows wait in the spool files
DISPATCHER_DATABASES = 64  # databases served at once (two job-table sessions each) ...
DATABASES_PER_CONNECTIONS = 8  # ... and at most max_connections / 8 of them: a quarter of the slots
JOB_SQL_STORED = 1 << 20  # bytes of a job's text kept in the job table (the worker runs all of it)


def stored_sql(sql: str) -> str:
    """The job text as the job table keeps it: whole up to 1 MB, else its head and a note."""
    n = len(sql.encode())
    if n <= JOB_SQL_STORED:
        return sql
    return (f"{cut_utf8(sql, JOB_SQL_STORED)}\n"
            f"-- plpy_bg: the job table keeps the first {JOB_SQL_STORED} of {n} bytes of this text")
