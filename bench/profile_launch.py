#!/usr/bin/env python3
"""Where a launch spends its time: cProfile inside a backend, and the pieces timed apart.

    python3 build.py install && .venv/bin/python bench/profile_launch.py [--runs 300]

Runs launch_v2 + result_v2 of `SELECT 1` through the installed package, from a
PL/Python function in the backend under cProfile (the launcher's share), and
times from a client the same call, its launch alone, and the job-table INSERT
the dispatcher waits for. Prints the report; records nothing.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402

import build  # noqa: E402
from plpy_bg.cluster import Cluster  # noqa: E402

PROFILE_FN = """
CREATE OR REPLACE FUNCTION profile_launch(n int, sort text) RETURNS text LANGUAGE plpython3u AS $$
import cProfile, io, pstats, sys
if %(libdir)r not in sys.path:
    sys.path.insert(0, %(libdir)r)
from plpy_bg import api
def run():
    for _ in range(n):
        h = api.launch_v2(plpy, GD, 'SELECT 1', 0)
        list(api.result_v2(plpy, GD, h['pid'], h['cookie']))
run()  # warm: plans, the dispatcher connection, a pooled worker
pr = cProfile.Profile()
pr.enable()
run()
pr.disable()
out = io.StringIO()
pstats.Stats(pr, stream=out).sort_stats(sort).print_stats(35)
return out.getvalue()
$$
"""


def med(conn, sql, runs, params=None):
    xs = []
    for _ in range(runs):
        t = time.perf_counter()
        cur = conn.execute(sql, params)
        if cur.description:
            cur.fetchall()
        xs.append((time.perf_counter() - t) * 1000)
    return statistics.median(xs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--sort", default="tottime")
    args = ap.parse_args()
    c = Cluster.create()
    c.start(wrapper=build.preload_wrapper())
    try:
        with psycopg.connect(c.dsn(), autocommit=True) as k:
            k.execute("CREATE EXTENSION plpy_bg CASCADE")
            k.execute(PROFILE_FN % {"libdir": str(build.LIBDIR)})
            for sql in ("SELECT 1", "SELECT * FROM pg_background_launch_v2('SELECT 1')"):
                med(k, sql, 20)
            t_launch = med(k, "SELECT * FROM pg_background_launch_v2('SELECT 1')", args.runs)
            t_submit = med(k, "SELECT * FROM pg_background_submit_v2('SELECT 1')", args.runs)
            t_select = med(k, "SELECT 1", args.runs)
            t_ctx = med(k, "SELECT count(*) FROM (SELECT pg_catalog.current_setting(name) FROM pg_settings "
                           "WHERE context IN ('user', 'superuser')) s", args.runs)
            k.execute("SET synchronous_commit = off")
            t_insert = med(k, """INSERT INTO plpy_bg.jobs (cookie, pid, user_id, launcher_pid, mode, queue_size,
                state, sql, sql_preview, launched_at, dispatcher_epoch)
                VALUES ((random() * 1e15)::int8, 1, 10, 1, 'launch', 65536, 'completed', 'SELECT 1', 'SELECT 1',
                now(), 'x')""", args.runs)
            report = k.execute("SELECT profile_launch(%s, %s)", (args.runs, args.sort)).fetchone()[0]
        print(f"median ms over {args.runs}: launch_v2 {t_launch:.3f}, submit_v2 {t_submit:.3f}, "
              f"SELECT 1 {t_select:.3f}, job-row INSERT (async commit) {t_insert:.3f}, "
              f"reading the user settings {t_ctx:.3f}")
        print(report)
    finally:
        c.destroy()


if __name__ == "__main__":
    main()
