"""What a DBA does to a database whose jobs run: drops that would take the job table with them."""
import os
import time

import psycopg
import psycopg.sql
import pytest

import build
from plpy_bg.cluster import Cluster
from tests.fix_pg import dispatcher_log, invariants, launch, result, wait, wait_for

pytestmark = pytest.mark.server


def test_a_drop_that_could_take_the_job_table_waits_for_running_jobs(own_pg):
    own_pg.sql("CREATE DATABASE drop_ext")
    with own_pg.connect(dbname="drop_ext") as c:
        c.execute("CREATE EXTENSION plpy_bg CASCADE")
        h = launch(c, "SELECT pg_sleep(60)")
        wait_for(lambda: c.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s AND state = 'active'",
                                   (h[0],)).fetchone()[0] == 1)
        for q in ("DROP EXTENSION plpy_bg", "DROP EXTENSION plpy_bg CASCADE", "DROP SCHEMA public CASCADE",
                  "DROP OWNED BY postgres"):
            with pytest.raises(psycopg.errors.ObjectInUse) as ei:
                c.execute(q)
            assert str(h[0]) in ei.value.diag.message_detail and "cancel" in ei.value.diag.message_hint
        c.execute("SET session_replication_role = replica")  # event triggers that are not ALWAYS sleep
        with pytest.raises(psycopg.errors.ObjectInUse):
            c.execute("DROP EXTENSION plpy_bg")
        c.execute("RESET session_replication_role")
        assert c.execute("SELECT state FROM plpy_bg.jobs WHERE cookie = %s", (h[1],)).fetchone() == ("running",)
        c.execute("SELECT pg_background_cancel_v2(%s, %s)", h)
        wait(c, h)  # the job table is written just after: until then the drop is still refused
        wait_for(lambda: c.execute("SELECT state FROM plpy_bg.jobs WHERE cookie = %s",
                                   (h[1],)).fetchone() == ("canceled",))
        c.execute("DROP EXTENSION plpy_bg")  # the outcome is recorded: nothing runs now
        assert c.execute("SELECT count(*) FROM pg_extension WHERE extname = 'plpy_bg'").fetchone() == (0,)


def test_a_job_may_drop_its_own_schema_and_other_databases_are_not_held(own_pg):
    own_pg.sql("CREATE DATABASE drop_other")
    with own_pg.connect() as c, own_pg.connect(dbname="drop_other") as o:
        elsewhere = launch(c, "SELECT pg_sleep(60)")  # a job of another database
        o.execute("CREATE EXTENSION plpy_bg CASCADE")
        h = launch(o, "CREATE SCHEMA job_own_s; DROP SCHEMA job_own_s")  # a job's own DROP is not refused
        assert wait(o, h)
        wait_for(lambda: o.execute("SELECT state FROM plpy_bg.jobs WHERE cookie = %s",
                                   (h[1],)).fetchone() == ("completed",))
        o.execute("DROP EXTENSION plpy_bg")
        c.execute("SELECT pg_background_cancel_v2(%s, %s)", elsewhere)


OLD_JOBS = """
INSERT INTO plpy_bg.jobs (cookie, pid, user_id, mode, queue_size, state, sql, sql_preview, launched_at, finished_at,
                         dispatcher_epoch)
SELECT c, 1, 10, 'launch', 65536, 'completed', 'SELECT ''secret-' || c || '''', 'SELECT $1',
       now() - age, now() - age, 'a dispatcher of the past'
FROM (VALUES (1, interval '10 days'), (2, interval '2 days'), (3, interval '1 minute')) AS v(c, age)
"""


def test_history_and_its_full_sql_are_kept_as_long_as_the_settings_say(own_pg):
    own_pg.sql("CREATE DATABASE retain")
    own_pg.sql("ALTER DATABASE retain SET plpy_bg.history_sql_retention = '1 hour'")
    with own_pg.connect(dbname="retain") as c:
        c.execute("CREATE EXTENSION plpy_bg CASCADE")
        c.execute(OLD_JOBS)
        h = launch(c, "SELECT 1")  # the dispatcher's first writes in this database purge at once
        wait(c, h)
        rows = lambda: c.execute("SELECT cookie, sql FROM plpy_bg.jobs WHERE cookie < 4 ORDER BY cookie").fetchall()
        wait_for(lambda: len(rows()) == 2)  # older than 7 days (the default) is gone
        assert rows() == [(2, "SELECT $1"), (3, "SELECT 'secret-3'")]  # older than an hour: no literals


def test_a_bad_retention_is_logged_and_the_default_kept(own_pg):
    own_pg.sql("CREATE DATABASE retain_bad")
    own_pg.sql("ALTER DATABASE retain_bad SET plpy_bg.history_retention = 'soon'")
    log_at = own_pg.cluster.logfile.stat().st_size
    with own_pg.connect(dbname="retain_bad") as c:
        c.execute("CREATE EXTENSION plpy_bg CASCADE")
        c.execute(OLD_JOBS)
        wait(c, launch(c, "SELECT 1"))
        wait_for(lambda: c.execute("SELECT count(*) FROM plpy_bg.jobs WHERE cookie < 4").fetchone() == (2,))

    def logged():
        with open(own_pg.cluster.logfile, "rb") as f:
            f.seek(log_at)
            return b'invalid value for parameter "plpy_bg.history_retention": "soon"' in f.read()
    wait_for(logged)


def test_a_hot_standby_refuses_launches_at_once_and_launches_once_promoted(own_pg, tmp_path_factory):
    base = tmp_path_factory.mktemp("standby")
    for d in (base, base.parent, base.parent.parent):  # the OS user postgres makes the copy in it
        os.chmod(d, 0o755)
    standby = Cluster.standby_of(own_pg.cluster, base / "c")
    standby.start(wrapper=build.preload_wrapper())
    try:
        with psycopg.connect(standby.dsn("alice"), autocommit=True) as c:
            t = time.monotonic()
            with pytest.raises(psycopg.errors.ReadOnlySqlTransaction, match="server in recovery") as ei:
                launch(c, "SELECT 1")
            assert time.monotonic() - t < 2 and "primary" in ei.value.diag.message_hint
            with psycopg.connect(standby.dsn(), autocommit=True) as admin:
                admin.execute("SELECT pg_promote()")
            wait_for(lambda: not c.execute("SELECT pg_is_in_recovery()").fetchone()[0])
            assert result(c, launch(c, "SELECT 'promoted'::text")) == [("promoted",)]
    finally:
        standby.destroy()


def test_a_read_only_database_refuses_launches_at_once_until_reset(own_pg):
    own_pg.sql("CREATE DATABASE ro_db")
    with own_pg.connect(dbname="ro_db") as c:
        c.execute("CREATE EXTENSION plpy_bg CASCADE; SELECT grant_pg_background_privileges('alice')")
    own_pg.sql("ALTER DATABASE ro_db SET default_transaction_read_only = on")
    try:
        with own_pg.connect("alice", dbname="ro_db") as c:
            t = time.monotonic()
            with pytest.raises(psycopg.errors.ReadOnlySqlTransaction, match="read-only transaction") as ei:
                launch(c, "SELECT 1")
            assert time.monotonic() - t < 2 and "default_transaction_read_only" in ei.value.diag.message_hint
    finally:
        own_pg.sql("ALTER DATABASE ro_db RESET default_transaction_read_only")
    with own_pg.connect("alice", dbname="ro_db") as c:  # a new session: writable again, nothing to restart
        assert result(c, launch(c, "SELECT 'writable'::text")) == [("writable",)]
    assert invariants(own_pg) == []


def test_a_name_holding_a_newline_makes_no_log_record_of_its_own(own_pg):
    """The dispatcher writes into the server's log: a database name (chosen by any CREATEDB role)
    with a newline continues its line, as the server's own records do, never starts one."""
    forged = "2031-01-01 00:00:00.000 UTC [4242] LOG:  forged"
    name = psycopg.sql.Identifier(f"inj\n{forged}")
    own_pg.sql(psycopg.sql.SQL("CREATE DATABASE {}").format(name))
    with psycopg.connect(own_pg.cluster.dsn(), dbname=f"inj\n{forged}", autocommit=True) as c:
        c.execute("CREATE EXTENSION plpy_bg CASCADE")
        assert result(c, launch(c, "SELECT 'x'::text")) == [("x",)]
    own_pg.sql(psycopg.sql.SQL("ALTER DATABASE {} RENAME TO inj_renamed").format(name))  # released: logged
    wait_for(lambda: "released database inj" in dispatcher_log(own_pg))
    assert not any(line.startswith("2031-") for line in own_pg.cluster.logfile.read_text().splitlines())


def test_a_sql_ascii_database_records_outcomes_with_any_characters(own_pg):
    """jsonb there refuses \\u escapes of non-ASCII characters: a job failing with one in its
    message must still read `failed`, never stay `running` (found by fresh eyes)."""
    own_pg.sql("CREATE DATABASE ascii_db ENCODING SQL_ASCII TEMPLATE template0 LC_COLLATE 'C' LC_CTYPE 'C'")
    with own_pg.connect(dbname="ascii_db") as c:
        c.execute("CREATE EXTENSION plpy_bg CASCADE")
        c.execute("SELECT grant_pg_background_privileges('alice')")
    with own_pg.connect("alice", dbname="ascii_db") as a:
        h = launch(a, "DO $$BEGIN RAISE EXCEPTION 'caf\u00e9'; END$$")
        assert wait(a, h)
        with pytest.raises(psycopg.errors.RaiseException):
            result(a, h)
        ok = launch(a, "SELECT 'fine'")
        assert result(a, ok) == [(b"fine",)]  # psycopg reads a SQL_ASCII database's text as bytes
    wait_for(lambda: own_pg.sql("SELECT state FROM plpy_bg.jobs WHERE cookie = %s", (h[1],), dbname="ascii_db")
             == [(b"failed",)], timeout=15)
    assert own_pg.sql("SELECT error->>'message' FROM plpy_bg.jobs WHERE cookie = %s", (h[1],),
                      dbname="ascii_db") == [("caf\u00e9".encode(),)]
