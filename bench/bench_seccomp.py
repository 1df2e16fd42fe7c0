#!/usr/bin/env python3
"""What the seccomp sandbox costs: pgbench TPS with session policies in force for every client.

    /usr/bin/python3 bench/bench_seccomp.py [--seconds 3] [--rounds 15]

Two clusters run side by side: one plain, one started through the preload helper
with the shipped global deny and job-worker profiles and a session policy for every
client (pgseccomp.session_syscall_error: no programs, no links, no device nodes),
answered by a supervisor of the bench's own. Rounds interleave the variants (TPS
varies 6-18% between runs here); the table shows median ratios of sandboxed to
plain for pgbench's select-only and TPC-B-like scripts, with a connection per
transaction (-C) too, the notifications the supervisor answered per second and
its time per answer (the identification of each new backend, up to the answer's
send), and the cost of one notified syscall (access(R_OK) in a PL/Python loop,
sandboxed minus plain). With -C the supervisor's cost is a few percent at most
and TPS varies more than that between runs: take many short rounds (3 s x 15). Prints a table and adds it, dated, under "## seccomp" in bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import datetime
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from plpy_bg.cluster import PG_BIN, Cluster  # noqa: E402
from plpy_bg.sandbox import supervision  # noqa: E402
from tests.server import test_seccomp_sandbox as T  # noqa: E402  (the suite's cluster recipe)

SCALE = 2
# no programs, no links, no device nodes (mkdir must stay: the server makes base/pgsql_tmp on demand)
SESSION_POLICY = "pgseccomp.session_syscall_error = 'execve,execveat,link,linkat,symlink,symlinkat,mknod,mknodat'\n"
ACCESS_LOOP = """CREATE OR REPLACE FUNCTION access_loop(n int) RETURNS float8 LANGUAGE plpython3u AS $$
import os, time
t = time.perf_counter()
for _ in range(n):
    os.access("/", os.R_OK)  # handed over whatever the policies (the postmaster asks it of its binary)
return (time.perf_counter() - t) / n * 1e6
$$"""


def pgbench(c: Cluster, args: list[str]) -> float:
    env = {"PGHOST": "127.0.0.1", "PGPORT": str(c.port), "PGUSER": "postgres", "PATH": "/usr/bin:/bin"}
    r = subprocess.run([str(PG_BIN / "pgbench"), *args, "postgres"], env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"pgbench failed: {r.stderr[-2000:]}")
    line = next(x for x in r.stdout.splitlines() if x.startswith("tps"))
    return float(line.split("=")[1].split()[0])


def notifications(sup: T.Supervisor, pm: int) -> tuple[int, float]:
    """(notifications answered, seconds spent answering them) for the server of postmaster `pm`."""
    s = supervision.connect(sup.socket)
    try:
        servers = supervision.request(s, {"op": "stats"})["servers"]
    finally:
        s.close()
    x = next(x for x in servers if x["postmaster"] == pm)
    return x["notifications"], x["answering_s"]


def access_cost(c: Cluster, n: int = 20000) -> float:
    out = c.psql(ACCESS_LOOP + f";\nSELECT access_loop({n});").split()
    return float(out[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = ap.parse_args()

    pkg = T.package_copy()
    path = f"{pkg}:{T.deps_dir()}"
    sup = T.Supervisor(path)
    plain = Cluster.create(tempfile.mkdtemp(prefix="plpy_bg_bsc_"))
    filt = Cluster.create(tempfile.mkdtemp(prefix="plpy_bg_bsf_"))
    try:
        extra = filt.datadir / "bench.conf"
        extra.write_text(SESSION_POLICY)
        subprocess.run(["chown", "postgres:postgres", str(extra)], check=True)
        with open(filt.datadir / "postgresql.conf", "a") as f:
            f.write(f"include '{T.PROFILES / 'global-deny.conf'}'\ninclude '{T.PROFILES / 'worker-allow.conf'}'\n"
                    "include 'bench.conf'\n")
        plain.start(wrapper=T.wrapper(path, sup.socket))  # pgseccomp.enabled off: the helper just execs
        filt.start(wrapper=T.wrapper(path, sup.socket))
        for c in (plain, filt):
            c.psql("CREATE EXTENSION plpython3u")
            subprocess.run([str(PG_BIN / "pgbench"), "-i", "-s", str(SCALE), "-q", "-h", "127.0.0.1",
                            "-p", str(c.port), "-U", "postgres", "postgres"], check=True, capture_output=True)
        common = ["-T", str(args.seconds), "-c", "2", "-j", "2"]
        workloads = {"select-only (-S)": ["-S"], "TPC-B-like": [], "select-only, -C": ["-S", "-C"],
                     "TPC-B-like, -C": ["-C"]}
        tps = {(w, v): [] for w in workloads for v in ("plain", "sandboxed")}
        rate = {w: [] for w in workloads}
        cost = {w: [] for w in workloads}  # the supervisor's seconds per notification
        pm = filt.postmaster_pid()
        for r in range(args.rounds):
            order = [(w, v) for w in workloads for v in ("plain", "sandboxed")]
            for w, v in (order if r % 2 == 0 else list(reversed(order))):
                c = plain if v == "plain" else filt
                (n0, a0), t0 = notifications(sup, pm), time.monotonic()
                tps[(w, v)].append(pgbench(c, common + workloads[w]))
                if v == "sandboxed":
                    n1, a1 = notifications(sup, pm)
                    rate[w].append((n1 - n0) / (time.monotonic() - t0))
                    if n1 - n0 >= 100:
                        cost[w].append((a1 - a0) / (n1 - n0))
            print(f"round {r + 1}: " + ", ".join(f"{w}/{v} {x[-1]:.0f}" for (w, v), x in tps.items()), flush=True)
        per_call = statistics.median(access_cost(filt) - access_cost(plain) for _ in range(3))
    finally:
        plain.destroy()
        filt.destroy()
        sup.stop()
        shutil.rmtree(pkg, ignore_errors=True)

    lines = [
        f"### {datetime.datetime.now():%Y-%m-%d %H:%M}: bench_seccomp.py, {args.rounds} interleaved rounds of "
        f"{args.seconds} s, pgbench -c 2 -j 2 -s {SCALE}, {os.cpu_count()} cores, PostgreSQL 15",
        "",
        "Sandboxed: global deny + job-worker profiles, a session policy for every client (no exec, no "
        "links, no device nodes), the supervisor answering; plain: no filter.",
        "",
        "| workload | plain TPS | sandboxed TPS | median ratio | notifications/s | µs per notification |",
        "|---|---|---|---|---|---|",
    ]
    for w in workloads:
        ratios = [s / p for s, p in zip(tps[(w, "sandboxed")], tps[(w, "plain")])]
        per = f"{statistics.median(cost[w]) * 1e6:.0f}" if cost[w] else "-"
        lines.append(f"| {w} | {statistics.median(tps[(w, 'plain')]):,.0f} | "
                     f"{statistics.median(tps[(w, 'sandboxed')]):,.0f} | {statistics.median(ratios):.3f} | "
                     f"{statistics.median(rate[w]):,.0f} | {per} |")
    lines += ["", f"One notified syscall (access(R_OK) in a PL/Python loop, sandboxed minus plain): "
                  f"{per_call:.1f} µs.", ""]
    table = "\n".join(lines)
    print(table)
    if not args.no_write:
        write_results(table)


def write_results(block: str) -> None:
    """Add `block` at the top of the "## seccomp" section of bench/RESULTS.md; other sections stay."""
    path = ROOT / "bench" / "RESULTS.md"
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    head = "## seccomp\n"
    if head in text:
        i = text.index(head) + len(head)
        text = text[:i] + "\n" + block + text[i:]
    else:
        text = text.rstrip("\n") + "\n\n" + head + "\n" + block
    path.write_text(text)
    print(f"added to {path}")


if __name__ == "__main__":
    main()
