"""Migrations as a DBA runs them: psql -1 -f, jobs submitted inside, CALL pg_background_await after."""
import subprocess
import time

import psycopg
import pytest

from plpy_bg.cluster import PG_BIN
from tests.fix_pg import launch, wait, wait_for

pytestmark = pytest.mark.server

SETUP = """
DROP TABLE IF EXISTS mig_items, mig_audit;
CREATE TABLE mig_items (id int PRIMARY KEY, v text);
INSERT INTO mig_items SELECT g, 'x' || g FROM generate_series(1, 5000) g;
CREATE TABLE mig_audit (at timestamptz DEFAULT now(), what text);
GRANT ALL ON mig_items, mig_audit TO alice;
ALTER TABLE mig_items OWNER TO alice;
"""

MIGRATION = """
\\set ON_ERROR_STOP 1
ALTER TABLE mig_items ADD COLUMN note text;
-- an audit row of its own transaction: it stays whatever becomes of the migration
SELECT pid FROM pg_background_submit_v2('INSERT INTO mig_audit (what) VALUES (''migration {tag} started'')');
-- work that cannot run in a transaction block, started now, run once this one commits
SELECT pid AS cic_pid, cookie AS cic_cookie
  FROM pg_background_submit_v2('CREATE INDEX CONCURRENTLY mig_items_v_{tag} ON mig_items (v)') \\gset
SELECT pid AS vac_pid, cookie AS vac_cookie FROM pg_background_submit_v2('VACUUM (ANALYZE) mig_items') \\gset
\\o {awaits}
\\qecho CALL pg_background_await(:cic_pid, :cic_cookie);
\\qecho CALL pg_background_await(:vac_pid, :vac_cookie);
\\o
{tail}
"""


def psql(pg, *args, user: str = "alice", timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(PG_BIN / "psql"), "-X", "-d", pg.dsn(user), *args], capture_output=True, text=True,
                          timeout=timeout)


def test_a_migration_awaits_create_index_concurrently_after_its_commit(pg, tmp_path):
    """The await starts while CREATE INDEX CONCURRENTLY still waits (for an old snapshot of
    another session): it must hold no snapshot of its own for CIC to wait for in turn."""
    pg.sql(SETUP)
    mig, awaits = tmp_path / "migrate.sql", tmp_path / "await.sql"
    mig.write_text(MIGRATION.format(tag="ok", awaits=awaits, tail=""))
    with pg.connect("postgres", autocommit=False) as old:
        old.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        old.execute("SELECT count(*) FROM pg_class")  # a snapshot CIC must wait out
        r = psql(pg, "-v", "ON_ERROR_STOP=1", "-1", "-f", str(mig))
        assert r.returncode == 0, r.stderr
        cmd = [str(PG_BIN / "psql"), "-X", "-d", pg.dsn("alice"), "-v", "ON_ERROR_STOP=1", "-f", str(awaits)]
        waiter = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for(lambda: pg.sql("SELECT 1 FROM pg_stat_activity WHERE query LIKE 'CALL pg_background_await(%%' "
                                "AND state = 'active'"))
        wait_for(lambda: pg.sql("SELECT 1 FROM pg_stat_activity WHERE query LIKE 'CREATE INDEX CONCURRENTLY%%' "
                                "AND wait_event_type = 'Lock'"))
        time.sleep(0.3)  # an absence window: the await must not end while CIC waits for `old`
        assert waiter.poll() is None  # CIC waits for `old`, the await for CIC
        assert pg.sql("SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'CREATE INDEX CONCURRENTLY%%'"
                      )[0][0] == 1
        old.rollback()
    out, err = waiter.communicate(timeout=60)  # a new session, after the COMMIT
    assert waiter.returncode == 0, err
    assert pg.sql("SELECT i.indisvalid FROM pg_index i WHERE i.indexrelid = 'mig_items_v_ok'::regclass") == [(True,)]
    assert pg.sql("SELECT count(*) FROM pg_stat_user_tables WHERE relname = 'mig_items' AND last_vacuum IS NOT NULL"
                  )[0][0] == 1
    assert pg.sql("SELECT count(*) FROM mig_audit WHERE what = 'migration ok started'")[0][0] == 1


def test_a_failed_migration_keeps_its_audit_row(pg, tmp_path):
    pg.sql(SETUP)
    mig, awaits = tmp_path / "migrate.sql", tmp_path / "await.sql"
    mig.write_text(MIGRATION.format(tag="bad", awaits=awaits, tail="SELECT 1/0;"))
    r = psql(pg, "-v", "ON_ERROR_STOP=1", "-1", "-f", str(mig))
    assert r.returncode == 3 and "division by zero" in r.stderr
    assert pg.sql("SELECT count(*) FROM information_schema.columns WHERE table_name = 'mig_items' "
                  "AND column_name = 'note'")[0][0] == 0  # rolled back
    wait_for(lambda: pg.sql("SELECT count(*) FROM mig_audit WHERE what = 'migration bad started'")[0][0] == 1)


def test_await_raises_the_jobs_error_times_out_and_refuses_a_transaction_block(pg):
    with pg.connect("alice") as c:
        bad = launch(c, "SELECT 1/0", fn="pg_background_submit_v2")
        with pytest.raises(psycopg.errors.DivisionByZero, match=f"background job {bad[0]}"):
            c.execute("CALL pg_background_await(%s, %s)", bad)
        slow = launch(c, "SELECT pg_sleep(30)", fn="pg_background_submit_v2")
        t = time.monotonic()
        with pytest.raises(psycopg.errors.QueryCanceled, match="did not end within 300 ms"):
            c.execute("CALL pg_background_await(%s, %s, 300)", slow)
        assert time.monotonic() - t < 5
        c.execute("SELECT pg_background_cancel_v2(%s, %s)", slow)
    with pg.connect("alice", autocommit=False) as c:
        h = launch(c, "SELECT 1", fn="pg_background_submit_v2")
        with pytest.raises(psycopg.errors.ActiveSqlTransaction) as ei:
            c.execute("CALL pg_background_await(%s, %s)", h)
        assert "pg_background_wait_v2" in ei.value.diag.message_hint


def test_another_session_of_the_role_learns_how_a_released_job_ended(pg):
    """Once its launcher detached it (or is gone), a job is answered from the job table: wait
    says it ended, await says how, instead of 42704."""
    with pg.connect("alice") as a:
        ok = launch(a, "SELECT 1", fn="pg_background_submit_v2")
        bad = launch(a, "SELECT 1/0", fn="pg_background_submit_v2")
        assert wait(a, ok) and wait(a, bad)
        a.execute("SELECT pg_background_detach_v2(%s, %s)", ok)
        a.execute("SELECT pg_background_detach_v2(%s, %s)", bad)
    with pg.connect("alice") as b:
        b.execute("SELECT pg_background_wait_v2(%s, %s)", ok)
        assert b.execute("SELECT pg_background_wait_v2_timeout(%s, %s, 100)", bad).fetchone()[0] is True
        b.execute("CALL pg_background_await(%s, %s)", ok)
        with pytest.raises(psycopg.errors.DivisionByZero):
            b.execute("CALL pg_background_await(%s, %s)", bad)
    with pg.connect("bob") as other:  # not bob's: the table shows him nothing
        with pytest.raises(psycopg.errors.UndefinedObject):
            other.execute("SELECT pg_background_wait_v2(%s, %s)", ok)
