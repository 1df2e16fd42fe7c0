#!/usr/bin/env python3
"""Learn the job-worker allow profile from real work; writes plpy_bg/sandbox/profiles/worker-allow.conf.

    python3 build.py install && .venv/bin/python bench/learn_worker_profile.py

Starts a throwaway cluster, attaches `plpy_bg.sandbox.learn` (strace) to it and runs
pgbench (init and TPC-B), VACUUM, CREATE INDEX (CONCURRENTLY), COPY to and from files,
sorts that spill to temp files, parallel query, and PL/Python jobs through the job API.
The session list it learned becomes the allow list of job workers (default error).
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402

import build  # noqa: E402
from plpy_bg.cluster import PG_BIN, Cluster  # noqa: E402
from plpy_bg.sandbox import config, engine, learn  # noqa: E402

WORK_SQL = [
    "CREATE TABLE IF NOT EXISTS w (id int, t text)",
    "INSERT INTO w SELECT g, md5(g::text) FROM generate_series(1, 200000) g",
    "VACUUM (ANALYZE) w",
    "CREATE INDEX CONCURRENTLY IF NOT EXISTS w_id ON w (id)",
    "CREATE INDEX IF NOT EXISTS w_t ON w (t)",
    "COPY w TO '/tmp/plpy_bg_learn_copy.csv' (FORMAT csv)",
    "TRUNCATE w",
    "COPY w FROM '/tmp/plpy_bg_learn_copy.csv' (FORMAT csv)",
    "SET work_mem = '64kB'; SELECT count(*) FROM (SELECT t FROM w ORDER BY t) s",
    "SET parallel_setup_cost = 0; SET parallel_tuple_cost = 0; SET min_parallel_table_scan_size = 0; "
    "SELECT count(*), sum(id) FROM w",
    "SELECT pg_background_progress(50, 'half'); SELECT pg_sleep(0.1)",
    "SELECT py_job()",
    "CREATE TEMP TABLE tt AS SELECT * FROM w LIMIT 1000; SELECT count(*) FROM tt",
    "SELECT pg_advisory_lock(1); SELECT pg_advisory_unlock(1)",
    "CLUSTER w USING w_id",
    "REINDEX TABLE w",
    "SELECT * FROM w WHERE id = 5",
    "ANALYZE w",
]

PY_JOB = """CREATE OR REPLACE FUNCTION py_job() RETURNS text LANGUAGE plpython3u AS $$
import json, hashlib, os, tempfile, decimal, datetime
plpy.execute("SELECT 1")
return hashlib.sha256(json.dumps({"t": str(datetime.datetime.now())}).encode()).hexdigest()
$$"""


def workload(dsn: str, port: int) -> int:
    env = {"PGHOST": "127.0.0.1", "PGPORT": str(port), "PGUSER": "postgres", "PATH": "/usr/bin:/bin"}
    subprocess.run([str(PG_BIN / "pgbench"), "-i", "-s", "2", "-q", "postgres"], env=env, check=True,
                   capture_output=True)
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(PY_JOB)
        for round_ in range(2):
            for sql in WORK_SQL:  # each as a job, so job workers make these calls
                h = c.execute("SELECT * FROM pg_background_launch_v2(%s)", (sql,)).fetchone()
                c.execute("SELECT pg_background_wait_v2(%s, %s)", h)
            h = c.execute("SELECT * FROM pg_background_launch_v2('SELECT g FROM generate_series(1, 100000) g')").fetchone()
            c.execute("SELECT count(*) FROM pg_background_result_v2(%s, %s) AS (g int)", h).fetchone()
    subprocess.run([str(PG_BIN / "pgbench"), "-T", "5", "-c", "4", "-j", "2", "postgres"], env=env,
                   check=True, capture_output=True)
    subprocess.run([str(PG_BIN / "pgbench"), "-T", "3", "-c", "2", "-S", "postgres"], env=env,
                   check=True, capture_output=True)
    return 0


# benign calls a backend makes on paths the workload may not hit: logging to stderr, fsync when
# the checkpointer's queue is full, spinlock back-off, waits, sockets of PL code, file metadata
MARGIN = ("write", "writev", "fsync", "fdatasync", "sync_file_range", "exit", "restart_syscall",
          "nanosleep", "clock_nanosleep", "poll", "ppoll", "select", "pselect6", "dup", "dup2", "dup3",
          "pipe2", "madvise", "fstatfs", "statfs", "getcwd", "umask", "sched_yield", "getrusage",
          "times", "unlinkat", "renameat", "renameat2", "mkdirat", "statx", "lstat", "readlinkat",
          "shutdown", "recvmsg", "sendmsg", "getsockname", "getpeername", "setsockopt", "uname",
          "getppid", "tgkill", "rt_sigsuspend", "rt_sigtimedwait", "sigaltstack", "flock",
          "clock_getres", "msync", "sched_getaffinity", "pread64", "preadv", "close_range",
          "epoll_pwait", "eventfd2", "wait4", "getpgid", "getsid",
          # a job worker reports progress to, and answers the DDL guard through, the dispatcher's socket
          "socket", "connect", "sendto", "recvfrom", "getsockopt",
          # CREATE INDEX CONCURRENTLY zero-fills a new WAL segment and renames it; abort() on PANIC
          "pwritev", "rename", "gettid",
          # libpq and Python ask who they run as
          "geteuid", "getuid", "getgid", "getegid", "readlink",
          # set_client_filter() inside a job adds a filter: it can only tighten
          "seccomp")

# never allowed even when seen: no new processes or programs (no COPY ... PROGRAM, no subprocess),
# and no ioctl (a large kernel surface; Python's isatty() gets EPERM and carries on)
NEVER = ("clone", "clone3", "fork", "vfork", "execve", "execveat", "ioctl")

HEADER = """# plpy_bg job-worker allow profile: default error, learned by bench/learn_worker_profile.py
# (strace of a cluster running pgbench, VACUUM, CREATE INDEX (CONCURRENTLY), COPY files, temp
# files, parallel query and PL/Python jobs) plus a margin of benign calls that script lists
# with reasons (pwritev and rename for new WAL segments, gettid for abort() on PANIC, ...).
# Include it after global-deny.conf:
# job workers then may make only these {n} of the architecture's {total} syscalls; anything
# else fails with EPERM. Denied on purpose even when seen: clone, fork, execve (no COPY ...
# PROGRAM, no subprocess) and ioctl. No socket of any family (no dblink, postgres_fdw or
# PL sockets: a job cannot open a backend the sandbox does not govern); progress reports use
# the connection the worker opened before its filter. A role whose jobs need sockets gets
# its own lines, e.g.  plpy_bg.job_roles = 'etl'  and  job_socket_families.etl = 'inet,inet6'.
# These are job filters: client sessions keep pgseccomp's session settings. Re-learn it for
# your own workload with python3 -m plpy_bg.sandbox.learn.
pgseccomp.enabled = on
plpy_bg.job_syscall_default = 'error'
plpy_bg.job_syscall_log = ''
plpy_bg.job_syscall_kill = ''
plpy_bg.job_syscall_error = '*'
plpy_bg.job_socket_families = ''
plpy_bg.job_roles = ''
"""


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--workload":
        sys.exit(workload(sys.argv[2], int(sys.argv[3])))
    build.action_install(build.argparse.Namespace(no_apt=True))
    c = Cluster.create(settings={"max_connections": "60"})
    c.start()
    try:
        with psycopg.connect(c.dsn(), autocommit=True) as k:
            k.execute("CREATE EXTENSION plpy_bg CASCADE; CREATE ROLE warmup LOGIN SUPERUSER")
        # start the dispatcher before tracing, as another role: the workload's workers are all new
        with psycopg.connect(c.dsn("warmup"), autocommit=True) as k:
            k.execute("SELECT 1 FROM pg_background_launch_v2('SELECT 1')")
        lines = learn.trace(c.postmaster_pid(), None,
                            [sys.executable, __file__, "--workload", c.dsn(), str(c.port)])
        everything, session = learn.parse(lines, c.postmaster_pid())
    finally:
        c.destroy()
    sess = sorted({n for n in session | set(MARGIN) | set(config.ESSENTIAL)
                   if engine.known(n) and n not in NEVER})
    total = len(engine.all_syscalls())
    text = HEADER.format(n=len(sess), total=total) + f"plpy_bg.job_syscall_allow = '{','.join(sess)}'\n"
    out = ROOT / "plpy_bg" / "sandbox" / "profiles" / "worker-allow.conf"
    out.write_text(text)
    print(text)
    print(f"wrote {out}: {len(sess)} of {total} syscalls allowed in job workers")


if __name__ == "__main__":
    main()
