"""Time the provenance capture and policy decision inside a real backend.

Measures, per call, inside one backend (the launch path's real conditions):
  check 1 stmt     classify + decide for a one-statement job (spec target < 100 us),
                   with the text seen before (LRU hit) and new (full pglast parse and the
                   server's parse analysis of the statement)
  capture+check    the whole policy cost of a plain top-level launch
  check 20 stmts   a 20-statement migration (DDL, VACUUM, functions)
  N-frame chain    capture + check below N-1 distinct PL/pgSQL functions (each one's running
                   statement read from its plan)
  taint            capture + check when an untrusted role calls a SECURITY DEFINER wrapper
                   (two frames; the job text checked against the wrapper's own constants)
  cold             the first call in a fresh session (catalog cache empty)
Prints a table and appends it, dated, to bench/RESULTS.md under "## policy".

    python3 build.py install && .venv/bin/python bench/bench_policy.py [--iterations N]
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402

import build  # noqa: E402
from plpy_bg.cluster import Cluster  # noqa: E402

ONE = "UPDATE accounts SET balance = balance + 1 WHERE id = 42"
MIGRATION = ";\n".join([
    "CREATE TABLE app.orders_new (id bigint PRIMARY KEY, customer int, total numeric)",
    "INSERT INTO app.orders_new SELECT id, customer, total FROM app.orders",
    "CREATE INDEX CONCURRENTLY orders_customer ON app.orders_new (customer)",
    "ALTER TABLE app.orders_new ADD COLUMN note text",
    "UPDATE app.orders_new SET note = lower(note) WHERE total > 100",
    "VACUUM (ANALYZE) app.orders_new",
    "COMMENT ON TABLE app.orders_new IS 'new orders'",
    "CREATE VIEW app.big_orders AS SELECT * FROM app.orders_new WHERE total > 1000",
    "SELECT count(*) FROM app.orders_new",
    "DELETE FROM app.orders_new WHERE total < 0",
    "ALTER TABLE app.orders RENAME TO orders_old",
    "ALTER TABLE app.orders_new RENAME TO orders",
    "CREATE INDEX orders_total ON app.orders (total)",
    "ANALYZE app.orders",
    "SELECT app.touch(1)",
    "UPDATE app.orders SET total = round(total, 2)",
    "DROP VIEW app.big_orders",
    "SET statement_timeout = '5min'",
    "REINDEX TABLE app.orders",
    "SELECT now()",
])

SETUP = """
CREATE EXTENSION plpy_bg CASCADE;
CREATE SCHEMA app;
CREATE ROLE admin LOGIN;
-- nest_k: a chain of k distinct PL/pgSQL functions above the measuring function
DO $$ BEGIN FOR i IN 1..19 LOOP
    EXECUTE format($f$CREATE FUNCTION public.nest_%%s(mode text, sql text, n int) RETURNS text
        LANGUAGE plpgsql AS $b$ BEGIN RETURN %%s; END $b$ $f$, i,
        CASE WHEN i = 1 THEN 'public.bench(mode, sql, n)' ELSE format('public.nest_%%s(mode, sql, n)', i - 1) END);
    EXECUTE format('GRANT EXECUTE ON FUNCTION public.nest_%%s(text, text, int) TO admin', i);
END LOOP; END $$;
CREATE FUNCTION app.touch(int) RETURNS int LANGUAGE sql AS 'SELECT $1';
-- the tables the jobs name exist, so the server's parse analysis resolves their statements
CREATE TABLE public.accounts (id int PRIMARY KEY, balance numeric);
CREATE TABLE app.orders (id bigint PRIMARY KEY, customer int, total numeric);
GRANT ALL ON public.accounts, app.orders TO admin;
CREATE FUNCTION public.bench(mode text, sql text, n int) RETURNS text LANGUAGE plpython3u AS $python$
import sys
if %(root)r not in sys.path: sys.path.insert(0, %(root)r)
import json, time
from plpy_bg import policy
role = plpy.execute("SELECT current_user AS u")[0]["u"]
prov = policy.capture_provenance(plpy)
times = []
for _ in range(n):
    t = time.perf_counter()
    if mode == "check":
        policy.check(plpy, sql, prov, role)
    elif mode == "fresh":  # a text never seen before: no classification cache hit
        policy.check(plpy, sql + " -- " + str(_), prov, role)
    else:
        policy.check(plpy, sql, policy.capture_provenance(plpy), role)
    times.append(time.perf_counter() - t)
times.sort()
return json.dumps({"median": times[len(times) // 2], "p90": times[int(len(times) * 0.9)], "min": times[0]})
$python$;
CREATE FUNCTION public.cold(sql text) RETURNS float8 LANGUAGE plpython3u AS $python$
import sys
if %(root)r not in sys.path: sys.path.insert(0, %(root)r)
from plpy_bg import policy
import time
policy.classify(sql)  # the import and first parse are not the policy's per-launch cost
policy.preview(sql)
t = time.perf_counter()
policy.check(plpy, sql + ' ', policy.capture_provenance(plpy), plpy.execute("SELECT current_user AS u")[0]["u"])
return time.perf_counter() - t
$python$;
GRANT EXECUTE ON FUNCTION public.bench(text, text, int), public.cold(text) TO admin;
GRANT USAGE ON SCHEMA plpy_bg TO admin;
GRANT pgbackground_role TO admin;
-- a SECURITY DEFINER wrapper of admin called by a role admin does not trust: taint inference runs
CREATE ROLE caller LOGIN;
CREATE FUNCTION public.bench_sd(n int) RETURNS text LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN RETURN public.bench('full', 'UPDATE accounts SET balance = balance + 1 WHERE id = 42', n); END $$;
ALTER FUNCTION public.bench_sd(int) OWNER TO admin;
GRANT EXECUTE ON FUNCTION public.bench_sd(int) TO caller;
GRANT USAGE ON SCHEMA app TO admin;
"""


def us(x: float) -> str:
    return f"{x * 1e6:,.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=2000)
    ap.add_argument("--no-record", action="store_true", help="do not append to bench/RESULTS.md")
    args = ap.parse_args()
    c = Cluster.create()
    rows = []
    try:
        c.start()
        with psycopg.connect(c.dsn(), autocommit=True) as su:
            su.execute(SETUP % {"root": str(build.LIBDIR)})  # the installed package and its dependencies
        with psycopg.connect(c.dsn("admin"), autocommit=True) as conn:
            for label, mode, sql in (("check, 1 statement (text seen before)", "check", ONE),
                                     ("check, 1 statement (new text: parse)", "fresh", ONE),
                                     ("capture + check, 1 statement", "full", ONE),
                                     ("check, 20-statement migration", "check", MIGRATION),
                                     ("check, 20 statements (new text: parse)", "fresh", MIGRATION),
                                     ("capture + check, 20 statements", "full", MIGRATION)):
                r = json.loads(conn.execute("SELECT public.bench(%s, %s, %s)",
                                            (mode, sql, args.iterations)).fetchone()[0])
                rows.append((label, us(r["median"]), us(r["p90"]), us(r["min"])))
            for depth in (2, 20):
                r = json.loads(conn.execute(f"SELECT public.nest_{depth - 1}('full', %s, %s)",
                                            (ONE, args.iterations)).fetchone()[0])
                rows.append((f"capture + check, 1 statement, {depth}-frame chain", us(r["median"]),
                             us(r["p90"]), us(r["min"])))
        with psycopg.connect(c.dsn("caller"), autocommit=True) as conn:
            r = json.loads(conn.execute("SELECT public.bench_sd(%s)", (args.iterations,)).fetchone()[0])
            rows.append(("capture + check + taint, untrusted caller of a definer wrapper", us(r["median"]),
                         us(r["p90"]), us(r["min"])))
        for label, sql in (("cold session, 1 statement", ONE), ("cold session, 20 statements", MIGRATION)):
            with psycopg.connect(c.dsn("admin"), autocommit=True) as conn:
                t = conn.execute("SELECT public.cold(%s)", (sql,)).fetchone()[0]
                rows.append((label, us(t), "", ""))
    finally:
        c.destroy()
    head = ("case", "median us", "p90 us", "min us")
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(4)]
    table = ["| " + " | ".join(str(v).ljust(w) for v, w in zip(head, widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    table += ["| " + " | ".join(str(v).ljust(w) for v, w in zip(r, widths)) + " |" for r in rows]
    print("\n".join(table))
    if not args.no_record:
        record("\n".join(table), args.iterations)


def record(table: str, n: int) -> None:
    path = ROOT / "bench" / "RESULTS.md"
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    block = (f"\n### {dt.date.today().isoformat()}: bench_policy.py, {n} iterations, in-backend, PostgreSQL 15\n\n"
             f"{table}\n")
    lines = text.splitlines(keepends=True)
    start = next((i for i, ln in enumerate(lines) if ln.strip().lower() == "## policy"), None)
    if start is None:
        text = text.rstrip("\n") + "\n\n## policy\n" + block
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        section = "".join(lines[start:end]).rstrip("\n") + "\n" + block + ("\n" if end < len(lines) else "")
        text = "".join(lines[:start]) + section + "".join(lines[end:])
    path.write_text(text)


if __name__ == "__main__":
    main()
