#!/usr/bin/env python3
"""Job engine benchmarks on one throwaway server, side by side in one run.

    python3 bench/bench_jobs.py [--runs 300] [--submits 3000] [--rows 1000000] [--no-record]
    python3 bench/bench_jobs.py --runs 20 --sessions '' --concurrent '' --rows 10000000

Measures, from a client over loopback:
- launch + result of `SELECT 1`: plpy_bg, a fresh dblink connection, and
  pg_background when its build is installed on the machine (never built here);
  then from 1, 10 and 50 sessions at once (latency and jobs/s in all);
- submit throughput: jobs/s from submit of the first INSERT until all committed,
  from 1, 10 and 50 concurrent launching sessions;
- a large result: rows/s, the peak memory of the launcher and the worker, and
  the dispatcher's memory sampled while the rows flow (bounded by queue_size).
Prints a table and appends it, dated, to bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402

import build  # noqa: E402
from plpy_bg.cluster import Cluster  # noqa: E402


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def timed(conn, sql, runs, params=None, setup=None):
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        conn.execute(sql, params).fetchall()
        out.append((time.perf_counter() - t) * 1000)
    return out


def launch_result(conn, runs):
    """launch_v2 + result_v2 of SELECT 1, by whichever extension the search_path finds."""
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        h = conn.execute("SELECT * FROM pg_background_launch_v2('SELECT 1')").fetchone()
        conn.execute("SELECT * FROM pg_background_result_v2(%s, %s) AS (x int)", h).fetchall()
        out.append((time.perf_counter() - t) * 1000)
    return out


def cold(c: Cluster, runs: int, setup: str | None = None, body=launch_result) -> list[float]:
    """The first call in a new session (its connection, and a first `SELECT 1`, not counted)."""
    out = []
    for _ in range(runs):
        with psycopg.connect(c.dsn(), autocommit=True) as k:
            k.execute(setup or "SELECT 1")
            out += body(k, 1)
    return out


def plpython_start(conn, runs):
    """PL/Python's own first call in a session: the floor under plpy_bg's cold launch."""
    return timed(conn, "SELECT plpy_bg_bench_noop()", runs)


def at_once(conns, body) -> float:
    """Run body(conn) in a thread per session, all released together; returns the release time
    (time.perf_counter()) once all have ended."""
    start = threading.Barrier(len(conns) + 1)

    def run(k):
        start.wait()
        body(k)

    ts = [threading.Thread(target=run, args=(k,)) for k in conns]
    for t in ts:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in ts:
        t.join()
    return t0


def submit_throughput(c: Cluster, sessions: int, total: int) -> float:
    with psycopg.connect(c.dsn(), autocommit=True) as a:
        a.execute("DROP TABLE IF EXISTS bench_sink; CREATE TABLE bench_sink (i int)")
    per = total // sessions
    conns = [psycopg.connect(c.dsn(), autocommit=True) for _ in range(sessions)]
    for k in conns:  # warm: session set-up and dispatcher connection
        k.execute("SELECT * FROM pg_background_submit_v2('SELECT 1')").fetchone()
    time.sleep(0.5)

    def submit(k):
        for _ in range(per):
            k.execute("SELECT pg_background_submit_v2('INSERT INTO bench_sink VALUES (1)')").fetchone()

    t0 = at_once(conns, submit)
    with psycopg.connect(c.dsn(), autocommit=True) as a:
        while a.execute("SELECT count(*) FROM bench_sink").fetchone()[0] < per * sessions:
            time.sleep(0.002)
    dt = time.perf_counter() - t0
    for k in conns:
        k.close()
    return per * sessions / dt


def concurrent_latency(c: Cluster, sessions: int, per: int) -> tuple[list[float], float]:
    """launch+result of SELECT 1 from `sessions` sessions at once: every latency, and jobs/s."""
    conns = [psycopg.connect(c.dsn(), autocommit=True) for _ in range(sessions)]
    for k in conns:
        launch_result(k, 2)
    out: list[float] = []
    lock = threading.Lock()

    def measure(k):
        xs = launch_result(k, per)
        with lock:
            out.extend(xs)

    t0 = at_once(conns, measure)
    dt = time.perf_counter() - t0
    for k in conns:
        k.close()
    return out, len(out) / dt


def status_kb(pid: int, field: str = "VmHWM") -> int:
    """A memory field of /proc/<pid>/status in kB (VmHWM: peak RSS); 0 when the process is gone."""
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def big_result(c: Cluster, rows: int) -> dict:
    with psycopg.connect(c.dsn(), autocommit=True) as k:
        me = k.info.backend_pid
        h = k.execute("SELECT * FROM pg_background_launch_v2(%s)",
                      (f"SELECT g, md5(g::text) FROM generate_series(1, {rows}) g",)).fetchone()
        disp = int(next(c.sockdir.glob(".s.plpy_bg.*.lock")).read_text().strip())
        before = status_kb(disp, "VmRSS")
        peak = [before]
        stop = threading.Event()

        def sample():  # the dispatcher's lifetime peak says nothing about this result: sample it
            while not stop.is_set():
                peak[0] = max(peak[0], status_kb(disp, "VmRSS"))
                time.sleep(0.05)

        threading.Thread(target=sample, daemon=True).start()
        t = time.perf_counter()
        n = 0
        with k.cursor(name="big") as cur:
            k.autocommit = False
            cur.execute("SELECT * FROM pg_background_result_v2(%s, %s) AS (g int, m text)", h)
            while True:
                batch = cur.fetchmany(10000)
                if not batch:
                    break
                n += len(batch)
        k.commit()
        dt = time.perf_counter() - t
        stop.set()
        return {"rows": n, "rows_per_s": n / dt, "launcher_peak_kb": status_kb(me),
                "worker_peak_kb": status_kb(h[0]), "dispatcher_kb": f"{before} before, {peak[0]} at most during"}


def dblink_rows(c: Cluster, rows: int) -> float:
    with psycopg.connect(c.dsn(), autocommit=True) as k:
        t = time.perf_counter()
        k.execute("SELECT count(*) FROM dblink(%s, %s) AS t(g int, m text)",
                  (f"host={c.sockdir} port={c.port} dbname=postgres user=postgres",
                   f"SELECT g, md5(g::text) FROM generate_series(1, {rows}) g")).fetchone()
        return rows / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--submits", type=int, default=3000)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--sessions", default="1,10,50", help="submit throughput from this many sessions")
    ap.add_argument("--concurrent", default="1,10,50", help="launch+result latency from this many sessions")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    build.action_install(argparse.Namespace(no_apt=True))
    c = Cluster.create(settings={"max_connections": "200", "fsync": "on", "synchronous_commit": "on"})
    c.start()
    lines = []
    try:
        with psycopg.connect(c.dsn(), autocommit=True) as k:
            k.execute("CREATE EXTENSION plpy_bg CASCADE; CREATE EXTENSION dblink")
            has_pgbg = k.execute("SELECT count(*) FROM pg_available_extensions WHERE name = 'pg_background'").fetchone()[0]
            for _ in range(20):
                launch_result(k, 1)
            ours = launch_result(k, args.runs)
            dbl = timed(k, "SELECT * FROM dblink(%s, 'SELECT 1') AS t(x int)", args.runs,
                        (f"host={c.sockdir} port={c.port} dbname=postgres user=postgres",))
            plain = timed(k, "SELECT 1", args.runs)
            k.execute("CREATE FUNCTION plpy_bg_bench_noop() RETURNS int LANGUAGE plpython3u AS 'return 1'")
        rows = [("plpy_bg launch+result SELECT 1", ours), ("dblink connect+query+disconnect", dbl),
                ("plain SELECT 1 round trip", plain)]
        if has_pgbg:
            with psycopg.connect(c.dsn(), autocommit=True) as k:
                k.execute("CREATE SCHEMA pgbg; CREATE EXTENSION pg_background SCHEMA pgbg")
                k.execute("SET search_path = pgbg, public")
                rows.append(("pg_background launch+result SELECT 1", launch_result(k, args.runs)))
        # a new session's first launch+result, interleaved in blocks so both meet the same machine
        n_cold = max(10, args.runs // 10)
        ours_cold, theirs_cold, floor = [], [], []
        for _ in range(0, n_cold, 5):
            ours_cold += cold(c, 5)
            floor += cold(c, 5, body=plpython_start)
            if has_pgbg:
                theirs_cold += cold(c, 5, setup="SET search_path = pgbg, public")
        rows.append((f"plpy_bg first launch+result in a new session (N={len(ours_cold)})", ours_cold))
        rows.append(("PL/Python's first call in a new session (the floor under it)", floor))
        if has_pgbg:
            rows.append((f"pg_background first launch+result in a new session (N={len(theirs_cold)})", theirs_cold))
        lines.append(f"| measure (N={args.runs}) | median ms | p95 ms |")
        lines.append("|---|---|---|")
        for name, xs in rows:
            lines.append(f"| {name} | {statistics.median(xs):.3f} | {pct(xs, 95):.3f} |")
        if not has_pgbg:
            lines.append("| pg_background 1.8 (not installed here; measured earlier on this platform) | 2.25 | 3.4 |")
        if args.concurrent:
            lines.append("")
            lines.append("| launch+result SELECT 1, concurrent sessions | median ms | p95 ms | jobs/s in all |")
            lines.append("|---|---|---|---|")
            for s in [int(x) for x in args.concurrent.split(",")]:
                xs, rate = concurrent_latency(c, s, max(20, args.runs // s))
                lines.append(f"| {s} session(s) | {statistics.median(xs):.3f} | {pct(xs, 95):.3f} | {rate:.0f} |")
        if args.sessions:
            lines.append("")
            lines.append("| submit throughput (INSERT jobs, until all committed) | jobs/s |")
            lines.append("|---|---|")
        for s in [int(x) for x in args.sessions.split(",") if x]:
            lines.append(f"| {s} session(s), {args.submits} jobs | {submit_throughput(c, s, args.submits):.0f} |")
        if args.sessions:
            lines.append("| pg_background 1.8 (measured earlier on this platform) | 470 |")
        if args.rows:
            big = big_result(c, args.rows)
            dbr = dblink_rows(c, args.rows)
            lines.append("")
            lines.append(f"| {args.rows:,}-row result | rows/s | peak RSS kB |")
            lines.append("|---|---|---|")
            lines.append(f"| plpy_bg result_v2 | {big['rows_per_s']:.0f} | launcher {big['launcher_peak_kb']}, "
                         f"worker {big['worker_peak_kb']}; dispatcher RSS {big['dispatcher_kb']} |")
            lines.append(f"| dblink | {dbr:.0f} | |")
    finally:
        c.destroy()
    table = "\n".join(lines)
    print(table)
    if not args.no_record:
        stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
        with open(ROOT / "bench" / "RESULTS.md", "a") as f:
            f.write(f"\n## jobs — {stamp} ({os.cpu_count()} cores, PostgreSQL 15, fsync on)\n\n{table}\n")


if __name__ == "__main__":
    main()
