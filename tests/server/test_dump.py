"""pg_dump and pg_restore as a DBA runs them: the trust declarations (security configuration)
survive, by role name; the job history is not dumped (README says why)."""
import subprocess

import pytest

from plpy_bg.cluster import PG_BIN
from tests.fix_pg import launch, result

pytestmark = pytest.mark.server

TRUST = "SELECT truster::text, trustee::text, trustee::oid FROM plpy_bg.trust ORDER BY 1, 2"


def tool(server, name: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(PG_BIN / name), "-h", "127.0.0.1", "-p", str(server.cluster.port), "-U", "postgres",
                           *args], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def dumped(own_pg, tmp_path_factory):
    """A database with trust declared and a job run, dumped with pg_dump -Fc. Trust in a role
    dropped since (its row holds a bare oid, someone else's in another cluster) is not dumped."""
    own_pg.sql("CREATE ROLE dump_trustee LOGIN")
    own_pg.sql("CREATE ROLE dump_ghost LOGIN")
    own_pg.sql("CREATE DATABASE dump_src")
    with own_pg.connect(dbname="dump_src") as c:
        c.execute("CREATE EXTENSION plpy_bg CASCADE")
        c.execute("SELECT grant_pg_background_privileges('alice')")
    with own_pg.connect("alice", dbname="dump_src") as c:
        c.execute("SELECT pg_background_trust('dump_trustee'), pg_background_trust('dump_ghost')")
    own_pg.sql("DROP ROLE dump_ghost")
    assert own_pg.sql("SELECT count(*) FROM plpy_bg.trust", dbname="dump_src") == [(2,)]  # its row stays here
    with own_pg.connect("alice", dbname="dump_src") as c:
        assert result(c, launch(c, "SELECT 'ran'::text"), "r text") == [("ran",)]
    path = tmp_path_factory.mktemp("dump") / "src.dump"
    r = tool(own_pg, "pg_dump", "-Fc", "-f", str(path), "dump_src")
    assert r.returncode == 0, r.stderr
    return path


def restore(server, path, db: str) -> subprocess.CompletedProcess:
    server.sql(f"CREATE DATABASE {db}")
    return tool(server, "pg_restore", "-d", db, str(path))


def check_restored(server, db: str) -> None:
    trustee_oid = server.sql("SELECT oid FROM pg_roles WHERE rolname = 'dump_trustee'")[0][0]
    assert server.sql(TRUST, dbname=db) == [("alice", "dump_trustee", trustee_oid)]
    assert server.sql("SELECT count(*) FROM plpy_bg.jobs", dbname=db) == [(0,)]  # history stays behind
    with server.connect("alice", dbname=db) as c:  # the restored install runs jobs
        assert result(c, launch(c, "SELECT 'again'::text"), "r text") == [("again",)]


def test_trust_survives_a_restore_into_another_database(own_pg, dumped):
    r = restore(own_pg, dumped, "dump_same")
    assert r.returncode == 0, r.stderr
    check_restored(own_pg, "dump_same")


def test_trust_is_restored_by_role_name_in_another_cluster(own_pg, other_pg, dumped):
    # the same names hold other oids there: an oid copied across would name another role
    other_pg.sql("CREATE ROLE oid_shift_1; CREATE ROLE oid_shift_2; CREATE ROLE dump_trustee LOGIN")
    assert (other_pg.sql("SELECT oid FROM pg_roles WHERE rolname = 'dump_trustee'")
            != own_pg.sql("SELECT oid FROM pg_roles WHERE rolname = 'dump_trustee'"))
    r = restore(other_pg, dumped, "dump_other")
    assert r.returncode == 0, r.stderr
    check_restored(other_pg, "dump_other")


def test_a_restore_where_a_trusted_role_is_missing_restores_no_trust(own_pg, other_pg, dumped):
    own_pg.sql("CREATE ROLE dump_trustee_gone LOGIN")  # never made in the other cluster
    with own_pg.connect("alice", dbname="dump_src") as c:
        c.execute("SELECT pg_background_trust('dump_trustee_gone')")
    path = dumped.with_name("missing.dump")
    assert tool(own_pg, "pg_dump", "-Fc", "-f", str(path), "dump_src").returncode == 0
    r = restore(other_pg, path, "dump_missing")
    assert r.returncode != 0 and 'role "dump_trustee_gone" does not exist' in r.stderr
    assert other_pg.sql("SELECT count(*) FROM plpy_bg.trust", dbname="dump_missing") == [(0,)]
