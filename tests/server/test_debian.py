"""A Debian-managed cluster set up as README's "Production setup" says, step by step: made by
pg_createcluster, started and restarted by pg_ctlcluster (through the seccomp helper that
`build.py debian` configures), jobs run by an application role through a DBA's wrapper, logs in
/var/log/postgresql, then pg_dropcluster."""
import socket
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

import build
from tests.fix_pg import wait_for

pytestmark = [pytest.mark.server, pytest.mark.own_cluster]  # clusters of Debian's tools

VERSION, NAME = "15", "plpy_bg_test"
ETC = Path("/etc/postgresql") / VERSION / NAME
LOG = Path("/var/log/postgresql") / f"postgresql-{VERSION}-{NAME}.log"

WRAPPER = """
CREATE ROLE app_dba LOGIN PASSWORD 'dba';
CREATE ROLE app_user LOGIN PASSWORD 'user';
SELECT grant_pg_background_privileges('app_dba');
CREATE TABLE public.refreshes (at timestamptz, by text);
ALTER TABLE public.refreshes OWNER TO app_dba;
CREATE FUNCTION public.refresh_later() RETURNS int LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, public
AS $$ SELECT (pg_background_submit_v2('INSERT INTO public.refreshes VALUES (now(), current_user)')).pid $$;
ALTER FUNCTION public.refresh_later() OWNER TO app_dba;
REVOKE ALL ON FUNCTION public.refresh_later() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION public.refresh_later() TO app_user;
"""


def run(*cmd: str) -> subprocess.CompletedProcess:
    r = subprocess.run(list(cmd), capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, f"{cmd}: {r.stdout}\n{r.stderr}"
    return r


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def seccomp_mode(pid: int) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Seccomp:"):
            return line.split()[1]
    return "?"


@pytest.fixture
def debian_cluster():
    subprocess.run(["pg_dropcluster", VERSION, NAME, "--stop"], capture_output=True)  # a leftover of a killed run
    port = free_port()
    run("pg_createcluster", VERSION, NAME, "-p", str(port))
    try:
        yield port
    finally:
        subprocess.run(["pg_dropcluster", VERSION, NAME, "--stop"], capture_output=True, timeout=120)


def postmaster_pid() -> int:
    return int(Path(f"/var/lib/postgresql/{VERSION}/{NAME}/postmaster.pid").read_text().split()[0])


def test_readme_production_setup_on_a_pg_createcluster_cluster(debian_cluster):
    port = debian_cluster
    # step 2: the peer map line before the other local lines
    hba = ETC / "pg_hba.conf"
    hba.write_text("local   all   all   peer map=plpy_bg\n" + hba.read_text())
    with open(ETC / "pg_ident.conf", "a") as f:  # ordinary peer logins stay as they were
        f.write("plpy_bg   /^(.*)$   \\1\n")
    # step 3: the sandbox profiles, then build.py debian, then a restart by pg_ctlcluster
    profiles = build.LIBDIR / "plpy_bg" / "sandbox" / "profiles"
    with open(ETC / "postgresql.conf", "a") as f:
        f.write(f"include '{profiles / 'global-deny.conf'}'\ninclude '{profiles / 'worker-allow.conf'}'\n")
    run(sys.executable, str(build.ROOT / "build.py"), "debian", "--cluster", f"{VERSION}/{NAME}")
    run("pg_ctlcluster", VERSION, NAME, "start")
    assert seccomp_mode(postmaster_pid()) == "2"
    dsn = f"host=127.0.0.1 port={port} dbname=postgres"
    run("runuser", "-u", "postgres", "--", "psql", "-X", "-q", "-p", str(port), "-v", "ON_ERROR_STOP=1",
        "-c", "CREATE EXTENSION plpy_bg CASCADE", "-c", WRAPPER)
    for attempt in ("first start", "after pg_ctlcluster restart"):
        with psycopg.connect(dsn + " user=app_user password=user", autocommit=True) as c:
            c.execute("SELECT public.refresh_later()")
        with psycopg.connect(dsn + " user=app_dba password=dba", autocommit=True) as c:
            wait_for(lambda: c.execute("SELECT count(*) FROM public.refreshes").fetchone()[0] >= 1, timeout=30)
            assert c.execute("SELECT DISTINCT by FROM public.refreshes").fetchall() == [("app_dba",)], attempt
            c.execute("TRUNCATE public.refreshes")
        if attempt == "first start":
            run("pg_ctlcluster", VERSION, NAME, "restart")
            assert seccomp_mode(postmaster_pid()) == "2"
    # the dispatcher's lines are in the cluster's own log, where logrotate and the DBA look
    wait_for(lambda: " plpy_bg dispatcher LOG:  " in LOG.read_text(errors="replace"), timeout=10)
    run("pg_ctlcluster", VERSION, NAME, "stop", "-m", "smart")  # completes: the dispatcher leaves
    wait_for(lambda: "down" in run("pg_lsclusters", "-h").stdout.split(NAME, 1)[1].splitlines()[0])
