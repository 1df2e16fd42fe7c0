#!/usr/bin/env python3
"""Soak the job engine: many mixed jobs from many sessions with faults, then count what was lost.

    python3 build.py install && .venv/bin/python bench/soak.py [--jobs 10000] [--sessions 20]

Each session launches a random mix: short, long, failing, canceled, detached and
big-result jobs, reading results where it keeps them. Faults are injected at
random: the launching session is terminated (pg_terminate_backend) with jobs in
flight. At the end every job must reach its expected terminal state:

  short, long, detached, big   completed (even when the launcher was terminated)
  failing                      failed
  canceled                     canceled, or completed when it ended before the cancel

anything else is an unexplained loss. The dispatcher's invariants are checked, and
the memory of the long-lived processes (dispatcher, postmaster) is read at start
and end. Prints a table and appends it, dated, to bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import collections
import datetime
import random
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402

import build  # noqa: E402
from bench_jobs import status_kb  # noqa: E402
from plpy_bg.cluster import Cluster  # noqa: E402

KINDS = {
    "short": ("SELECT 1", 0.40),
    "long": ("SELECT pg_sleep(random() * 0.5)", 0.15),
    "failing": ("SELECT 1 / 0", 0.10),
    "canceled": ("SELECT pg_sleep(5)", 0.10),
    "detached": ("INSERT INTO soak_sink SELECT 1", 0.15),
    "big": ("SELECT g, md5(g::text) FROM generate_series(1, 20000) g", 0.10),
}
EXPECTED = {"short": {"completed"}, "long": {"completed"}, "failing": {"failed"},
            "canceled": {"canceled", "completed"}, "detached": {"completed"}, "big": {"completed"}}


def rss_kb(pid: int) -> int:
    return status_kb(pid, "VmRSS")


class Session(threading.Thread):
    def __init__(self, c: Cluster, n: int, fault_rate: float, seed: int, launched: list, lock):
        super().__init__(daemon=True)
        self.c, self.n, self.fault_rate = c, n, fault_rate
        self.rng = random.Random(seed)
        self.launched, self.lock = launched, lock
        self.errors = collections.Counter()
        self.terminated = 0

    def connect(self):
        return psycopg.connect(self.c.dsn("soak"), autocommit=True)

    def run(self) -> None:
        conn = self.connect()
        kinds = list(KINDS)
        weights = [KINDS[k][1] for k in kinds]
        for _ in range(self.n):
            kind = self.rng.choices(kinds, weights)[0]
            sql = KINDS[kind][0]
            try:
                fn = "pg_background_submit_v2" if kind == "detached" else "pg_background_launch_v2"
                h = conn.execute(f"SELECT * FROM {fn}(%s)", (sql,)).fetchone()
                with self.lock:
                    self.launched.append((h[1], kind))
                if self.rng.random() < self.fault_rate:  # the launcher dies with the job in flight
                    with psycopg.connect(self.c.dsn(), autocommit=True) as admin:
                        admin.execute("SELECT pg_terminate_backend(%s)", (conn.info.backend_pid,))
                    self.terminated += 1
                    conn.close()
                    conn = self.connect()
                    continue
                if kind == "canceled":
                    conn.execute("SELECT pg_background_cancel_v2(%s, %s)", h)
                elif kind in ("short", "big", "failing"):
                    try:
                        conn.execute("SELECT count(*) FROM pg_background_result_v2(%s, %s) AS (a text, b text)"
                                     if kind == "big" else
                                     "SELECT * FROM pg_background_result_v2(%s, %s) AS (a text)", h).fetchall()
                    except psycopg.errors.DivisionByZero:
                        pass
                elif kind == "long":
                    conn.execute("SELECT pg_background_detach_v2(%s, %s)", h)
            except psycopg.OperationalError as e:
                self.errors[type(e).__name__] += 1
                conn.close()
                conn = self.connect()
            except psycopg.Error as e:
                self.errors[e.sqlstate or type(e).__name__] += 1
        conn.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=10000)
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--fault-rate", type=float, default=0.02)
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    build.action_install(argparse.Namespace(no_apt=True))
    c = Cluster.create(settings={"max_connections": "150"})
    build.use_profile(c, "global-deny")
    build.use_profile(c, "worker-allow")
    c.start(wrapper=build.preload_wrapper())
    try:
        with psycopg.connect(c.dsn(), autocommit=True) as k:
            k.execute("CREATE EXTENSION plpy_bg CASCADE; CREATE ROLE soak LOGIN; GRANT pgbackground_role TO soak")
            k.execute("SELECT grant_pg_background_privileges('soak'); CREATE TABLE soak_sink (i int);"
                      "GRANT INSERT ON soak_sink TO soak")
        with psycopg.connect(c.dsn("soak"), autocommit=True) as k:  # starts the dispatcher
            h = k.execute("SELECT * FROM pg_background_launch_v2('SELECT 1')").fetchone()
            k.execute("SELECT * FROM pg_background_result_v2(%s, %s) AS (a int)", h).fetchall()
        disp = int(next(c.sockdir.glob(".s.plpy_bg.*.lock")).read_text().strip())
        pm = c.postmaster_pid()
        mem0 = {"dispatcher": rss_kb(disp), "postmaster": rss_kb(pm)}
        launched: list = []
        lock = threading.Lock()
        t0 = time.monotonic()
        ss = [Session(c, args.jobs // args.sessions, args.fault_rate, i, launched, lock)
              for i in range(args.sessions)]
        for s in ss:
            s.start()
        curve = []  # (jobs launched so far, dispatcher RSS): flat memory means a flat second half
        while any(s.is_alive() for s in ss):
            time.sleep(2)
            curve.append((len(launched), rss_kb(disp)))
        for s in ss:
            s.join()
        with psycopg.connect(c.dsn(), autocommit=True) as k:
            deadline = time.monotonic() + 120
            while k.execute("SELECT count(*) FROM plpy_bg.jobs WHERE state = 'running'").fetchone()[0]:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            elapsed = time.monotonic() - t0
            states = dict(k.execute("SELECT cookie, state FROM plpy_bg.jobs").fetchall())
            violations = [r[0] for r in k.execute("SELECT * FROM plpy_bg.check_invariants()")]
            pooled = [r[0] for r in k.execute("SELECT pid FROM plpy_bg.pool_workers()")]
        mem1 = {"dispatcher": rss_kb(disp), "postmaster": rss_kb(pm)}
        worker_kb = sorted(rss_kb(p) for p in pooled)
    finally:
        c.destroy()
    by_kind = collections.defaultdict(collections.Counter)
    lost = []
    for cookie, kind in launched:
        st = states.get(cookie, "missing")
        by_kind[kind][st] += 1
        if st not in EXPECTED[kind]:
            lost.append((cookie, kind, st))
    errors = sum((s.errors for s in ss), collections.Counter())
    lines = [f"| {len(launched)} jobs from {args.sessions} sessions in {elapsed:.0f} s, "
             f"{sum(s.terminated for s in ss)} launchers terminated mid-job | |", "|---|---|"]
    for kind in KINDS:
        lines.append(f"| {kind} | {dict(by_kind[kind])} |")
    lines.append(f"| unexplained losses | {len(lost)} |")
    lines.append(f"| invariant violations | {len(violations)} |")
    lines.append(f"| client-side errors (SQLSTATE: count) | {dict(errors) or 'none'} |")
    lines.append(f"| RSS kB at start / end | dispatcher {mem0['dispatcher']} / {mem1['dispatcher']}, "
                 f"postmaster {mem0['postmaster']} / {mem1['postmaster']} |")
    if worker_kb:
        lines.append(f"| pooled worker backends at end: count, RSS kB min / max | {len(worker_kb)}, "
                     f"{worker_kb[0]} / {worker_kb[-1]} |")
    if curve:
        pts = [curve[int(len(curve) * q / 8)] for q in range(1, 8)] + [curve[-1]]
        lines.append("| dispatcher RSS kB along the run (jobs: kB) | "
                     + ", ".join(f"{n}: {kb}" for n, kb in pts) + " |")
    table = "\n".join(lines)
    print(table)
    for x in lost[:20]:
        print("lost:", x)
    if not args.no_record:
        stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
        with open(ROOT / "bench" / "RESULTS.md", "a") as f:
            f.write(f"\n## soak — {stamp}\n\n{table}\n")


if __name__ == "__main__":
    main()
