#!/usr/bin/env python3
"""What the seccomp sandbox costs: pgbench TPS with and without filters, and filter build+load time.

    /usr/bin/python3 bench/bench_seccomp.py [--seconds 5] [--rounds 3]

Two clusters run side by side: one plain, one started through the preload helper
with the shipped global deny profile, where role `wrk` has the job-worker profile as
its per-role session lists. Rounds interleave the variants (TPS varies 6-18% between
runs here) and the table shows median ratios:
  global   builtin scripts, global filter vs none
  worker   each transaction calls plpy_bg.install_worker_filter() (a no-op after the
           first): role wrk gets the worker filter on top of the global one, against
           the same script as postgres, for whom the call loads nothing
Prints a table and adds it, dated, under "## seccomp" in bench/RESULTS.md.
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
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from plpy_bg.cluster import PG_BIN, Cluster  # noqa: E402
from tests.server import test_seccomp_sandbox as T  # noqa: E402  (the suite's cluster recipe)

SELECT_CALL = """SELECT plpy_bg.install_worker_filter();
\\set aid random(1, 100000 * {scale})
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
"""
SCALE = 2


def pgbench(c: Cluster, args: list[str], user: str = "postgres") -> float:
    env = {"PGHOST": "127.0.0.1", "PGPORT": str(c.port), "PGUSER": user, "PATH": "/usr/bin:/bin"}
    r = subprocess.run([str(PG_BIN / "pgbench"), *args, "postgres"], env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"pgbench failed: {r.stderr[-2000:]}")
    line = next(x for x in r.stdout.splitlines() if x.startswith("tps"))
    return float(line.split("=")[1].split()[0])


def filter_costs(path: str, n: int = 30) -> dict[str, tuple[float, float]]:
    """Median ms to build and to load each profile's filter, in fresh forked processes."""
    code = f"""
import os, sys, time, json
sys.path[:0] = {path.split(':')!r}
from plpy_bg.sandbox import config, engine
def policy(profile, scope):
    get = config.getter(config.profile_settings(os.path.join({str(T.PROFILES)!r}, profile)))
    g = config.global_policy(get, engine.known)
    return g if scope == "global" else config.session_policy(get, engine.known, None, g)
out = {{}}
for name, profile, scope in (("global deny", "global-deny.conf", "global"),
                             ("job worker", "worker-allow.conf", "session")):
    p = policy(profile, scope)
    b, l = [], []
    for _ in range({n}):
        r, w = os.pipe()
        if os.fork() == 0:
            t0 = time.perf_counter(); f = engine.build(p); t1 = time.perf_counter(); f.load()
            t2 = time.perf_counter(); os.write(w, json.dumps([t1 - t0, t2 - t1]).encode()); os._exit(0)
        os.close(w); x = json.loads(os.read(r, 200)); os.wait(); os.close(r)
        b.append(x[0] * 1000); l.append(x[1] * 1000)
    b.sort(); l.sort()
    out[name] = (b[len(b) // 2], l[len(l) // 2])
print(json.dumps(out))
"""
    r = subprocess.run([T.SERVER_PYTHON, "-c", code], capture_output=True, text=True, check=True)
    import json
    return {k: tuple(v) for k, v in json.loads(r.stdout).items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = ap.parse_args()

    pkg = T.package_copy()
    path = f"{pkg}:{T.deps_dir()}"
    plain = Cluster.create(tempfile.mkdtemp(prefix="plpy_bg_bsc_"))
    filt = Cluster.create(tempfile.mkdtemp(prefix="plpy_bg_bsf_"))
    script = Path(tempfile.mkdtemp(prefix="plpy_bg_bss_"))
    os.chmod(script, 0o755)
    (script / "select_call.sql").write_text(SELECT_CALL.format(scale=SCALE))
    try:
        extra = filt.datadir / "bench.conf"
        extra.write_text("pgseccomp.session_roles = 'wrk'\n" + T.as_role_overrides("wrk", "worker-allow.conf"))
        subprocess.run(["chown", "postgres:postgres", str(extra)], check=True)
        with open(filt.datadir / "postgresql.conf", "a") as f:
            f.write(f"include '{T.PROFILES / 'global-deny.conf'}'\ninclude 'bench.conf'\n")
        plain.start(wrapper=T.wrapper(path))  # the helper with pgseccomp.enabled off: it just execs
        filt.start(wrapper=T.wrapper(path))
        setup = "CREATE EXTENSION plpython3u;\n" + T.sandbox_sql(path) + "CREATE ROLE wrk LOGIN SUPERUSER;"
        for c in (plain, filt):
            c.psql(setup)
            subprocess.run(
                [str(PG_BIN / "pgbench"), "-i", "-s", str(SCALE), "-q", "-h", "127.0.0.1", "-p", str(c.port),
                 "-U", "postgres", "postgres"], check=True, capture_output=True)
        common = ["-T", str(args.seconds), "-c", "2", "-j", "2"]
        cases = {  # name -> (cluster, pgbench args, user)
            ("select-only", "none"): (plain, common + ["-S"], "postgres"),
            ("select-only", "global"): (filt, common + ["-S"], "postgres"),
            ("TPC-B", "none"): (plain, common + ["-N"], "postgres"),
            ("TPC-B", "global"): (filt, common + ["-N"], "postgres"),
            ("select + call", "global"): (filt, common + ["-f", str(script / "select_call.sql")], "postgres"),
            ("select + call", "worker"): (filt, common + ["-f", str(script / "select_call.sql")], "wrk"),
        }
        tps: dict[tuple, list[float]] = {k: [] for k in cases}
        for r in range(args.rounds):
            order = list(cases) if r % 2 == 0 else list(reversed(cases))
            for k in order:
                c, a, user = cases[k]
                tps[k].append(pgbench(c, a, user))
            print(f"round {r + 1}: " + ", ".join(f"{k[0]}/{k[1]} {v[-1]:.0f}" for k, v in tps.items()), flush=True)
        costs = filter_costs(path)
    finally:
        plain.destroy()
        filt.destroy()
        shutil.rmtree(pkg, ignore_errors=True)
        shutil.rmtree(script, ignore_errors=True)

    def ratio(w, a, b):
        rs = [x / y for x, y in zip(tps[(w, a)], tps[(w, b)])]
        return statistics.median(rs)

    med = {k: statistics.median(v) for k, v in tps.items()}
    lines = [
        f"### {datetime.datetime.now():%Y-%m-%d %H:%M}: bench_seccomp.py, {args.rounds} interleaved rounds of "
        f"{args.seconds} s, pgbench -c 2 -j 2 -s {SCALE}, {os.cpu_count()} cores, PostgreSQL 15",
        "",
        "| workload | variant | median TPS | median ratio |",
        "|---|---|---|---|",
        f"| select-only (-S) | none | {med[('select-only', 'none')]:,.0f} | 1 |",
        f"| select-only (-S) | global deny profile | {med[('select-only', 'global')]:,.0f} | "
        f"{ratio('select-only', 'global', 'none'):.3f} |",
        f"| TPC-B (-N) | none | {med[('TPC-B', 'none')]:,.0f} | 1 |",
        f"| TPC-B (-N) | global deny profile | {med[('TPC-B', 'global')]:,.0f} | {ratio('TPC-B', 'global', 'none'):.3f} |",
        f"| select + install_worker_filter() call | global only | {med[('select + call', 'global')]:,.0f} | 1 |",
        f"| select + install_worker_filter() call | global + job-worker session filter | "
        f"{med[('select + call', 'worker')]:,.0f} | {ratio('select + call', 'worker', 'global'):.3f} |",
        "",
        "| filter | rules | build ms (median) | load ms (median) |",
        "|---|---|---|---|",
    ]
    rules = {"global deny": len(T.profile_settings("global-deny.conf")["pgseccomp.global_syscall_error"].split(",")),
             "job worker": len(T.profile_settings("worker-allow.conf")["pgseccomp.session_syscall_allow"].split(","))}
    for name, (b, l) in costs.items():
        lines.append(f"| {name} | {rules[name]} | {b:.3f} | {l:.3f} |")
    table = "\n".join(lines) + "\n"
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
