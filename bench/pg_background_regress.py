#!/usr/bin/env python3
"""Run pg_background's own regression file against plpy_bg, as pg_regress would.

    python3 bench/pg_background_regress.py /path/to/pg_background-checkout

Reads `sql/pg_background.sql` and `expected/pg_background.out` from a pg_background
checkout (never copied into this repository). The one change is `CREATE EXTENSION
pg_background` becoming `CREATE EXTENSION plpy_bg CASCADE`. It runs the file with `psql -a -q`
on a throwaway cluster (build.py serve), in a database of its own, and compares the output as
pg_regress does (`diff -w`). It prints the sections (split at pg_background's `-- ----`
rulers) that differ and exits 1 if any besides the CREATE EXTENSION line does.
"""
from __future__ import annotations

import difflib
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import build  # noqa: E402
from plpy_bg.cluster import PG_BIN  # noqa: E402

RULER = re.compile(r"^-- -{10,}")


def sections(lines: list[str]) -> list[list[str]]:
    out: list[list[str]] = [[]]
    for line in lines:
        if RULER.match(line) and out[-1] and not RULER.match(out[-1][-1]):
            out.append([])
        out[-1].append(line)
    return out


def squash(lines: list[str]) -> list[str]:
    return [re.sub(r"\s+", "", line) for line in lines]  # diff -w


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    src = Path(sys.argv[1])
    sql = (src / "sql" / "pg_background.sql").read_text()
    expected = (src / "expected" / "pg_background.out").read_text().splitlines()
    sql = sql.replace("CREATE EXTENSION pg_background;", "CREATE EXTENSION plpy_bg CASCADE;", 1)
    base = Path(tempfile.mkdtemp(prefix="plpy_bg_regress_"))
    base.chmod(0o755)  # the OS user postgres makes the cluster in it and reads the file
    c = build.serve(str(base / "cluster"), None)
    try:
        c.psql("CREATE DATABASE pg_background_regress")
        infile = base / "in.sql"
        infile.write_text(sql)
        infile.chmod(0o644)
        # one stream, as pg_regress sees it (psql writes errors to stderr)
        r = subprocess.run([str(PG_BIN / "psql"), "-X", "-a", "-q", "-h", "127.0.0.1", "-p", str(c.port),
                            "-U", "postgres", "-d", "pg_background_regress", "-f", str(infile)],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           env={"PGOPTIONS": "-c lc_messages=C", "PATH": "/usr/bin:/bin"})
        got = [re.sub(r"^psql:[^:]*:\d+: ", "", line) for line in r.stdout.splitlines()]
    finally:
        c.destroy()
    want_s, got_s = sections(expected), sections(got)
    bad = []
    for i, (w, g) in enumerate(zip(want_s, got_s)):
        if squash(w) != squash(g):
            bad.append(i)
            print(f"--- section {i + 1} differs:")
            print("\n".join(difflib.unified_diff(w, g, "pg_background", "plpy_bg", lineterm="", n=1)))
    if len(want_s) != len(got_s):
        print(f"section count differs: pg_background {len(want_s)}, plpy_bg {len(got_s)}")
    print(f"{len(want_s) - len(bad)} of {len(want_s)} sections match (diff -w)")
    return 0 if bad in ([], [0]) and len(want_s) == len(got_s) else 1


if __name__ == "__main__":
    sys.exit(main())
