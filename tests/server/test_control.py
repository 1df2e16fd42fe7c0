"""Handles, survival, non-transactional statements, cancel, wait, list, GUCs and bad input."""
import time

import psycopg
import pytest

from tests.fix_pg import LIST_COLS, invariants, job_row, launch, result, wait, wait_for

pytestmark = pytest.mark.server


# ---- handles ------------------------------------------------------------------

def test_wrong_cookie_and_stale_pid(pg):
    with pg.connect("alice") as c:
        h = launch(c, "SELECT pg_sleep(0.2)")
        # pg_background's answers: a pid this session does not hold is 42704; a stale cookie of a
        # pid it holds is 42704 for results, 55000 for wait, cancel and detach, NULL for progress
        with pytest.raises(psycopg.errors.UndefinedObject, match=r"not attached to this session \(cookie mismatch\)"):
            result(c, (h[0], h[1] ^ 1))
        with pytest.raises(psycopg.errors.UndefinedObject, match=f"PID {h[0] + 100000} is not attached"):
            c.execute("SELECT pg_background_wait_v2(%s, %s)", (h[0] + 100000, h[1]))
        for fn in ("pg_background_detach_v2", "pg_background_wait_v2", "pg_background_cancel_v2"):
            with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match=f"cookie mismatch for PID {h[0]}"):
                c.execute(f"SELECT {fn}(%s, %s)", (h[0], h[1] + 1))
        assert c.execute("SELECT * FROM pg_background_get_progress_v2(%s, %s)", (h[0], h[1] + 1)).fetchone() \
            == (None, None)
        assert wait(c, h)  # the real job was not touched
        assert result(c, h, "r text") == [("",)]


def test_a_pg_background_style_session_counts_as_pg_background(pg):
    """Launch, read, wait, cancel (also of a job that had ended), clean up by list_v2's state, and
    read the stats as pg_background documents them: an outcome counts when the session lets the
    handle go (read to the end or detached); canceled wins when cancel_v2 named the job."""
    with pg.connect("bob") as c:
        st0 = c.execute("SELECT * FROM pg_background_stats_v2()").fetchone()
        ok = launch(c, "SELECT 1")
        bad = launch(c, "SELECT 1/0")
        slow = launch(c, "SELECT pg_sleep(30)")
        ended = launch(c, "SELECT 2")
        assert result(c, ok, "a int") == [(1,)]  # read to the end: counted completed
        assert wait(c, bad) and wait(c, ended)
        c.execute("SELECT pg_background_cancel_v2(%s, %s)", slow)
        c.execute("SELECT pg_background_cancel_v2(%s, %s)", ended)  # after it ended
        assert wait(c, slow)
        st1 = c.execute("SELECT * FROM pg_background_stats_v2()").fetchone()
        assert (st1[0] - st0[0], st1[1] - st0[1], st1[2] - st0[2], st1[3] - st0[3], st1[4] - st0[4]) == (4, 1, 0, 0, 3)
        cleaned = c.execute(f"SELECT pg_background_detach_v2(pid, cookie) FROM pg_background_list_v2() "
                            f"AS ({LIST_COLS}) WHERE state = 'stopped'").fetchall()
        assert len(cleaned) == 3
        assert c.execute(f"SELECT count(*) FROM pg_background_list_v2() AS ({LIST_COLS})").fetchone()[0] == 0
        st2 = c.execute("SELECT * FROM pg_background_stats_v2()").fetchone()
        assert (st2[1] - st0[1], st2[2] - st0[2], st2[3] - st0[3], st2[4] - st0[4]) == (1, 1, 2, 0)
        assert st2[5] > 0  # average milliseconds from launch to release
        with pytest.raises(psycopg.errors.UndefinedObject, match=f"PID {bad[0]} is not attached"):
            c.execute("SELECT pg_background_detach_v2(%s, %s)", bad)


def test_consumed_and_detached_handles(pg):
    with pg.connect("alice") as c:
        h = launch(c, "SELECT 1")
        result(c, h, "a int")
        # read to the end, the job is no longer attached (as in pg_background)
        with pytest.raises(psycopg.errors.UndefinedObject, match=f"PID {h[0]} is not attached to this session"):
            result(c, h, "a int")
        with pytest.raises(psycopg.errors.UndefinedObject, match=f"PID {h[0]} is not attached to this session"):
            c.execute("SELECT pg_background_detach_v2(%s, %s)", h)
        h = launch(c, "SELECT 1")
        c.execute("SELECT pg_background_detach_v2(%s, %s)", h)
        with pytest.raises(psycopg.errors.UndefinedObject, match=f"PID {h[0]} is not attached to this session"):
            c.execute("SELECT pg_background_detach_v2(%s, %s)", h)


def test_foreign_handle_is_refused(pg):
    with pg.connect("bob") as b, pg.connect("alice") as a:
        h = launch(b, "SELECT pg_sleep(1)")
        for q in ("SELECT pg_background_cancel_v2(%s, %s)", "SELECT pg_background_wait_v2(%s, %s)",
                  "SELECT * FROM pg_background_get_progress_v2(%s, %s)"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied"):
                a.execute(q, h)
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied"):
            result(a, h)
        assert job_row(pg, h[1])["state"] == "running"  # nothing touched
        assert wait(b, h)
        assert job_row(pg, h[1])["state"] == "completed"


def test_same_role_other_session_may_wait_and_cancel(pg):
    with pg.connect("bob") as b1, pg.connect("bob") as b2:
        h = launch(b1, "SELECT pg_sleep(30)")
        b2.execute("SELECT pg_background_cancel_v2(%s, %s)", h)
        assert wait(b2, h)
        assert job_row(pg, h[1])["state"] == "canceled"
        with pytest.raises(psycopg.errors.UndefinedObject, match="not attached to this session"):
            result(b2, h)


def test_v1_api(pg):
    with pg.connect("alice") as c:
        pid = c.execute("SELECT pg_background_launch('SELECT 42, ''v1''')").fetchone()[0]
        assert c.execute("SELECT * FROM pg_background_result(%s) AS (a int, b text)", (pid,)).fetchall() == [(42, "v1")]
        with pytest.raises(psycopg.errors.UndefinedObject, match="not attached"):
            c.execute("SELECT * FROM pg_background_result(%s) AS (a int, b text)", (pid,))
        pid = c.execute("SELECT pg_background_launch('SELECT pg_sleep(0.1)')").fetchone()[0]
        c.execute("SELECT pg_background_detach(%s)", (pid,))


def test_list_v2_is_per_session_and_view_is_per_role(pg):
    with pg.connect("alice") as a, pg.connect("bob") as b:
        ha = launch(a, "SELECT 'alice secret'")
        hb = launch(b, "SELECT 'bob secret'")
        assert wait(a, ha) and wait(b, hb)
        listed = [r[1] for r in a.execute(f"SELECT * FROM pg_background_list_v2() AS ({LIST_COLS})")]
        assert ha[1] in listed and hb[1] not in listed
        seen = {r[0]: r[1] for r in a.execute("SELECT cookie, sql FROM pg_background_jobs")}
        assert ha[1] in seen and hb[1] not in seen
        assert seen[ha[1]] == "SELECT 'alice secret'"
        all_ = {r[0] for r in pg.sql("SELECT cookie FROM pg_background_jobs")}
        assert {ha[1], hb[1]} <= all_


# ---- survival -------------------------------------------------------------------

SURVIVE_SETUP = """
CREATE TABLE IF NOT EXISTS survived (tag text);
CREATE OR REPLACE FUNCTION note_survival(t text) RETURNS int LANGUAGE sql AS
$$ INSERT INTO survived VALUES (t) RETURNING 1 $$;
CREATE OR REPLACE FUNCTION slow_rows(t text) RETURNS SETOF text LANGUAGE plpgsql AS
$$ BEGIN PERFORM pg_sleep(1); INSERT INTO survived VALUES (t);
         RETURN QUERY SELECT repeat('r', 100) FROM generate_series(1, 5000); END $$;
"""


@pytest.mark.parametrize("how, sql", [
    ("submit", "SELECT pg_sleep(1), note_survival('submit')"),
    ("submit_rows", "SELECT * FROM slow_rows('submit_rows')"),
    ("detached_launch", "SELECT pg_sleep(1), note_survival('detached_launch')"),
    ("attached_launch", "SELECT * FROM slow_rows('attached_launch')"),
])
def test_job_survives_launcher_termination(pg, how, sql):
    pg.sql(SURVIVE_SETUP, user="alice")
    c = pg.connect("alice")
    launcher = c.info.backend_pid
    fn = "pg_background_submit_v2" if how.startswith("submit") else "pg_background_launch_v2"
    h = launch(c, sql, fn=fn)
    if how == "detached_launch":
        c.execute("SELECT pg_background_detach_v2(%s, %s)", h)
    pg.sql("SELECT pg_terminate_backend(%s)", (launcher,))
    wait_for(lambda: job_row(pg, h[1])["state"] != "running", timeout=30)
    c.close()
    row = job_row(pg, h[1])
    assert row["state"] == "completed", row
    assert pg.sql("SELECT count(*) FROM survived WHERE tag = %s", (how,))[0][0] >= 1


# ---- statements that cannot run in a transaction block ------------------------------

def test_vacuum_cic_create_database_from_transaction(pg):
    pg.sql("CREATE TABLE IF NOT EXISTS vt (a int); INSERT INTO vt SELECT generate_series(1, 1000)")
    with pg.connect(autocommit=False) as c:
        hv = launch(c, "VACUUM (ANALYZE) vt")
        hi = launch(c, "CREATE INDEX CONCURRENTLY IF NOT EXISTS vt_a ON vt (a)")
        hd = launch(c, "CREATE DATABASE jobdb")
        c.commit()
        c.autocommit = True
        for h in (hv, hi, hd):  # CIC waits for every older snapshot, so poll in short statements
            wait_for(lambda: c.execute("SELECT pg_background_wait_v2_timeout(%s, %s, 100)", h).fetchone()[0])
        assert result(c, hv) == [("VACUUM",)]
        assert result(c, hi) == [("CREATE INDEX",)]
        assert result(c, hd) == [("CREATE DATABASE",)]
    assert pg.sql("SELECT indisvalid FROM pg_index WHERE indexrelid = 'vt_a'::regclass") == [(True,)]
    pg.sql("DROP DATABASE jobdb")


def test_vacuum_from_a_function(pg):
    pg.sql("""CREATE OR REPLACE FUNCTION maint() RETURNS pg_background_handle LANGUAGE plpgsql AS
              $$ BEGIN RETURN pg_background_launch_v2('VACUUM vt'); END $$""")
    with pg.connect() as c:
        h = c.execute("SELECT * FROM maint()").fetchone()
        assert result(c, h) == [("VACUUM",)]


def test_waiting_on_a_job_this_transaction_blocks_is_an_error_not_a_hang(pg):
    pg.sql("CREATE TABLE IF NOT EXISTS cic (a int)")
    with pg.connect(autocommit=False) as c:
        c.execute("INSERT INTO cic VALUES (1)")
        h = launch(c, "CREATE INDEX CONCURRENTLY cic_a ON cic (a)")
        t = time.monotonic()
        with pytest.raises(psycopg.errors.DeadlockDetected, match="waits for this session"):
            c.execute("SELECT pg_background_wait_v2(%s, %s)", h)
        assert time.monotonic() - t < 10
        c.rollback()
        c.autocommit = True
        wait_for(lambda: c.execute("SELECT pg_background_wait_v2_timeout(%s, %s, 100)", h).fetchone()[0])
    assert job_row(pg, h[1])["state"] == "completed"


def test_result_on_a_blocked_job_is_an_error_not_a_hang(pg):
    pg.sql("CREATE TABLE IF NOT EXISTS locked (a int); INSERT INTO locked VALUES (1)")
    with pg.connect(autocommit=False) as c:
        c.execute("LOCK TABLE locked IN ACCESS EXCLUSIVE MODE")
        h = launch(c, "SELECT count(*) FROM locked")
        with pytest.raises(psycopg.errors.DeadlockDetected):
            result(c, h, "n bigint")
        c.rollback()


# ---- cancel and wait ------------------------------------------------------------------

def test_cancel(pg):
    with pg.connect("alice") as c:
        h = launch(c, "SELECT pg_sleep(60)")
        t = time.monotonic()
        c.execute("SELECT pg_background_cancel_v2(%s, %s)", h)
        assert time.monotonic() - t < 5
        assert job_row(pg, h[1])["state"] == "canceled"
        with pytest.raises(psycopg.errors.QueryCanceled):
            result(c, h)


def test_cancel_grace_terminates_without_crashing_the_cluster(local_pg):
    pm_before = local_pg.cluster.postmaster_pid()
    log_at = local_pg.cluster.logfile.stat().st_size
    local_pg.sql("""CREATE OR REPLACE FUNCTION deaf_sleep(s float8) RETURNS void LANGUAGE plpython3u AS
              $$ import time; time.sleep(s) $$""")  # ignores SIGINT and SIGTERM while it sleeps
    with local_pg.connect() as c:
        h = launch(c, "SELECT deaf_sleep(3)")
        wait_for(lambda: local_pg.sql("SELECT 1 FROM pg_stat_activity WHERE pid = %s AND state = 'active' "
                                      "AND query LIKE '%%deaf_sleep(3)%%'", (h[0],)))
        t = time.monotonic()
        c.execute("SELECT pg_background_cancel_v2_grace(%s, %s, 300)", h)
        assert wait(c, h)
        assert time.monotonic() - t < 8
        assert job_row(local_pg, h[1])["state"] == "canceled"
        # terminated, not canceled: a canceled worker would go back to the pool
        wait_for(lambda: not local_pg.sql("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (h[0],)), timeout=5)
    assert local_pg.cluster.postmaster_pid() == pm_before
    with open(local_pg.cluster.logfile, "rb") as f:
        f.seek(log_at)
        assert b"terminated by signal" not in f.read()
    assert local_pg.sql("SELECT 1") == [(1,)]


def test_wait_with_timeout(pg):
    with pg.connect("alice") as c:
        h = launch(c, "SELECT pg_sleep(1)")
        t = time.monotonic()
        assert c.execute("SELECT pg_background_wait_v2_timeout(%s, %s, 100)", h).fetchone()[0] is False
        assert time.monotonic() - t < 1
        assert c.execute("SELECT pg_background_wait_v2_timeout(%s, %s, 10000)", h).fetchone()[0] is True
        c.execute("SELECT pg_background_wait_v2(%s, %s)", h)


def test_wait_never_hangs_on_a_full_result_queue(pg):
    with pg.connect("alice") as c:
        h = launch(c, "SELECT g, repeat('x', 1000) FROM generate_series(1, 5000) g", 4096)
        assert wait(c, h, 20000)
        assert len(result(c, h, "g int, x text")) == 5000


def test_submit_has_no_results(pg):
    with pg.connect("alice") as c:
        h = launch(c, "SELECT 1", fn="pg_background_submit_v2")
        assert wait(c, h)
        with pytest.raises(psycopg.errors.FeatureNotSupported, match="results are disabled"):
            result(c, h, "a int")


# ---- settings of pg_background ------------------------------------------------------

def test_max_workers(pg):
    with pg.connect("alice") as c:
        c.execute("SET pg_background.max_workers = 2")
        hs = [launch(c, "SELECT pg_sleep(1)") for _ in range(2)]
        with pytest.raises(psycopg.errors.ConfigurationLimitExceeded) as ei:
            launch(c, "SELECT 1")
        assert ei.value.diag.message_hint and "max_workers" in ei.value.diag.message_hint
        assert c.execute("SELECT max_workers FROM pg_background_stats_v2()").fetchone()[0] == 2
        for h in hs:
            wait(c, h)
        launch(c, "SELECT 1")


def test_worker_timeout(pg):
    with pg.connect("alice") as c:
        c.execute("SET pg_background.worker_timeout = '300ms'")
        h = launch(c, "SELECT pg_sleep(30)")
        assert wait(c, h, 10000)
        row = job_row(pg, h[1])
        assert row["state"] == "canceled" and "worker_timeout" in row["last_error"]


def test_default_queue_size(pg):
    with pg.connect("alice") as c:
        c.execute("SET pg_background.default_queue_size = '256kB'")
        h = launch(c, "SELECT 1")
        assert job_row(pg, h[1])["queue_size"] == 262144
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="default_queue_size"):
            c.execute("SET pg_background.default_queue_size = 'lots'")  # the server checks it, as pg_background's


# ---- bad input ---------------------------------------------------------------------

@pytest.mark.parametrize("query, params, err", [
    ("SELECT pg_background_launch_v2(NULL)", None, psycopg.errors.NullValueNotAllowed),
    ("SELECT pg_background_launch_v2('select 1', NULL)", None, psycopg.errors.NullValueNotAllowed),
    ("SELECT pg_background_launch_v2('')", None, psycopg.errors.InvalidParameterValue),
    ("SELECT pg_background_launch_v2('   ')", None, psycopg.errors.InvalidParameterValue),
    ("SELECT pg_background_launch_v2('select 1', -1)", None, psycopg.errors.InvalidParameterValue),
    ("SELECT pg_background_launch_v2(E'select 1\\000')", None, psycopg.errors.CharacterNotInRepertoire),
    ("SELECT pg_background_launch_v2(chr(0))", None, psycopg.errors.ProgramLimitExceeded),
    ("SELECT pg_background_wait_v2_timeout(1, 1, -5)", None, psycopg.errors.InvalidParameterValue),
    ("SELECT pg_background_cancel_v2_grace(1, 1, -5)", None, psycopg.errors.InvalidParameterValue),
    ("SELECT * FROM pg_background_result_v2(NULL, NULL) AS (a int)", None, psycopg.errors.NullValueNotAllowed),
    ("SELECT pg_background_detach_v2(0, 0)", None, psycopg.errors.UndefinedObject),
    ("SELECT pg_background_progress(NULL)", None, psycopg.errors.NullValueNotAllowed),
])
def test_bad_input_gets_a_clear_error(pg, query, params, err):
    with pg.connect("alice") as c:
        with pytest.raises(err):
            c.execute(query, params)
        assert c.execute("SELECT 1").fetchone() == (1,)  # the backend is fine


def test_ten_megabyte_statement(pg):
    big = "SELECT length('" + "x" * (10 * 1024 * 1024) + "')"
    with pg.connect("alice") as c:
        h = launch(c, big)
        assert result(c, h, "n int") == [(10 * 1024 * 1024,)]


def test_no_free_connection_slot(pg):
    pg.sql("DROP ROLE IF EXISTS dave; CREATE ROLE dave LOGIN; GRANT pgbackground_role TO dave")
    pg.sql("SELECT grant_pg_background_privileges('dave')")
    hold = []
    try:
        with pg.connect("dave") as d:
            d.execute("SELECT 1")
            while True:
                try:
                    hold.append(pg.connect("bob"))
                except psycopg.OperationalError:
                    break
            t = time.monotonic()
            with pytest.raises(psycopg.errors.TooManyConnections) as ei:
                launch(d, "SELECT 1")
            assert time.monotonic() - t < 15
            assert ei.value.diag.message_hint
    finally:
        for h in hold:
            h.close()
    with pg.connect("dave") as d:
        assert result(d, launch(d, "SELECT 7"), "a int") == [(7,)]


def test_invariants_after_control(pg):
    assert invariants(pg) == []
