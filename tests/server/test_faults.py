"""Faults: a killed job backend, a server restart with jobs running, a killed dispatcher."""
import os
import time
import signal

import psycopg
import pytest

from tests.fix_pg import LIST_COLS, dispatcher_log, invariants, job_row, launch, result, wait, wait_for

pytestmark = [pytest.mark.server, pytest.mark.slow]


def _reconnect(server, user="postgres", timeout=30):
    return wait_for(lambda: _try_connect(server, user), timeout=timeout, interval=0.2)


def _try_connect(server, user):
    try:
        c = server.connect(user)
        c.execute("SELECT 1")
        return c
    except psycopg.OperationalError:
        return None


def test_sigkill_of_a_job_backend(own_pg):
    with own_pg.connect("alice") as c:
        h = launch(c, "SELECT pg_sleep(30)")
    dispatcher = _dispatcher_pid(own_pg)
    log = own_pg.cluster.logfile
    seen = log.stat().st_size
    os.kill(h[0], signal.SIGKILL)  # the postmaster then restarts every backend
    wait_for(lambda: "ready to accept connections" in log.read_text()[seen:], timeout=30)
    with _reconnect(own_pg, "alice") as c:
        _after_crash(own_pg, c, h)
    assert _dispatcher_pid(own_pg) == dispatcher  # not a child of the postmaster: it lives on


def _dispatcher_pid(server) -> int:
    return int(next(server.cluster.sockdir.glob(".s.plpy_bg.*.lock")).read_text().split()[0])


def _row(server, cookie):
    try:
        return job_row(server, cookie)
    except psycopg.OperationalError:  # the server is still recovering
        return None


def _after_crash(own_pg, c, h):
    wait_for(lambda: (_row(own_pg, h[1]) or {}).get("state") not in (None, "running"), timeout=30)
    row = job_row(own_pg, h[1])
    assert row["state"] == "failed" and "connection" in row["last_error"], row  # seen by the dispatcher, not lost
    h2 = launch(c, "SELECT 'after crash'")  # the dispatcher survived and works
    assert result(c, h2) == [("after crash",)]
    assert invariants(own_pg) == []


def test_server_restart_with_jobs_running(own_pg):
    with own_pg.connect("alice") as c:
        hs = [launch(c, "SELECT pg_sleep(30)", fn="pg_background_submit_v2") for _ in range(3)]
    own_pg.restart()
    with _reconnect(own_pg, "alice") as c:
        _after_restart(own_pg, c, hs)


def _after_restart(own_pg, c, hs):
    h = launch(c, "SELECT 'after restart'")  # starts a new dispatcher, which reconciles
    assert result(c, h) == [("after restart",)]
    for old in hs:
        wait_for(lambda: job_row(own_pg, old[1])["state"] != "running", timeout=30)
        row = job_row(own_pg, old[1])
        assert row["state"] in ("failed", "lost") and row["last_error"]
    assert invariants(own_pg) == []


def test_killed_dispatcher_is_replaced_and_its_jobs_recorded(own_pg):
    with own_pg.connect("alice") as c:
        h = launch(c, "SELECT pg_sleep(30)", fn="pg_background_submit_v2")
        lock = next(own_pg.cluster.sockdir.glob(".s.plpy_bg.*.lock"))
        pid = int(lock.read_text().strip())
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(psycopg.errors.ConnectionFailure, match="dispatcher was lost"):
            launch(c, "SELECT 1")
        h2 = launch(c, "SELECT 'new dispatcher'")
        assert result(c, h2) == [("new dispatcher",)]
    wait_for(lambda: job_row(own_pg, h[1])["state"] != "running", timeout=30)
    assert job_row(own_pg, h[1])["state"] == "lost"
    # where DBAs look: the server's log says the dispatcher died and which job was lost
    log = dispatcher_log(own_pg)
    assert f"the previous dispatcher (pid {pid}) ended without being stopped" in log
    assert f"background job {h[1]} (worker pid {h[0]}, role alice) in database postgres recorded as lost" in log


def test_launcher_terminated_while_rows_stream(own_pg):
    """The launcher dies with rows in flight: the job finishes, its rows are drained and dropped."""
    import threading

    c = own_pg.connect("alice")
    launcher = c.info.backend_pid
    h = c.execute("SELECT * FROM pg_background_launch_v2(%s, 4096)",
                  ("SELECT g, repeat('x', 200) FROM generate_series(1, 300000) g",)).fetchone()
    errors = []

    def read():
        try:
            c.execute("SELECT count(*) FROM pg_background_result_v2(%s, %s) AS (g int, x text)", h).fetchone()
        except psycopg.Error as e:
            errors.append(e)

    t = threading.Thread(target=read)
    t.start()
    wait_for(lambda: (_row(own_pg, h[1]) or {}).get("consumed"), timeout=20)  # rows are flowing
    with own_pg.connect() as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (launcher,))
    t.join(30)
    c.close()
    assert errors and isinstance(errors[0], psycopg.OperationalError)
    wait_for(lambda: (_row(own_pg, h[1]) or {}).get("state") not in (None, "running"), timeout=60)
    assert job_row(own_pg, h[1])["state"] == "completed"
    assert invariants(own_pg) == []


def test_launcher_terminated_before_its_job_starts(own_pg):
    """The launch is held up (the job table is locked); the launcher dies before the job starts.
    The job is started, recorded and runs to the end, detached."""
    import threading

    own_pg.sql("CREATE TABLE IF NOT EXISTS early (tag text); GRANT ALL ON early TO alice")
    c = own_pg.connect("alice")
    launcher = c.info.backend_pid
    errors = []

    def go():
        try:
            launch(c, "INSERT INTO early VALUES ('ran')", fn="pg_background_submit_v2")
        except psycopg.Error as e:
            errors.append(e)

    with own_pg.connect(autocommit=False) as locker:
        locker.execute("LOCK TABLE plpy_bg.jobs IN EXCLUSIVE MODE")  # the launch waits for its row
        t = threading.Thread(target=go)
        t.start()
        wait_for(lambda: own_pg.sql("SELECT 1 FROM pg_locks WHERE relation = 'plpy_bg.jobs'::regclass "
                                    "AND NOT granted"))
        own_pg.sql("SELECT pg_terminate_backend(%s)", (launcher,))
        wait_for(lambda: not own_pg.sql("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (launcher,)), timeout=10)
        locker.rollback()
    t.join(30)
    c.close()
    assert not t.is_alive() and errors and isinstance(errors[0], psycopg.OperationalError), errors
    wait_for(lambda: own_pg.sql("SELECT 1 FROM early WHERE tag = 'ran'"), timeout=20)
    rows = own_pg.sql("SELECT state FROM plpy_bg.jobs WHERE launcher_pid = %s", (launcher,))
    wait_for(lambda: own_pg.sql("SELECT state FROM plpy_bg.jobs WHERE launcher_pid = %s", (launcher,))
             == [("completed",)])
    assert rows
    assert invariants(own_pg) == []


# a refusal of the job table as the server would give it (disk full, read-only), switched by a flag
REFUSE = """
CREATE TABLE IF NOT EXISTS public.refuse_flag (sqlstate text);
GRANT SELECT ON public.refuse_flag TO plpy_bg_dispatcher;
INSERT INTO public.refuse_flag SELECT NULL WHERE NOT EXISTS (SELECT FROM public.refuse_flag);
CREATE OR REPLACE FUNCTION public.plpy_bg_test_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE s text := (SELECT f.sqlstate FROM public.refuse_flag f);
BEGIN
    IF s = '53100' THEN
        RAISE EXCEPTION 'could not extend file "base/5/16384": No space left on device' USING ERRCODE = s;
    ELSIF s IS NOT NULL THEN
        RAISE EXCEPTION 'cannot execute INSERT in a read-only transaction' USING ERRCODE = s;
    END IF;
    RETURN NEW;
END $$;
CREATE OR REPLACE TRIGGER refuse BEFORE INSERT OR UPDATE ON plpy_bg.jobs
    FOR EACH ROW EXECUTE FUNCTION public.plpy_bg_test_refuse();
"""


def _fault(server, sqlstate: str | None) -> None:
    """Make the job table refuse every write with `sqlstate` (None: accept again)."""
    server.sql("UPDATE public.refuse_flag SET sqlstate = %s", (sqlstate,))


@pytest.mark.parametrize("sqlstate, error", [
    ("25006", psycopg.errors.ReadOnlySqlTransaction),
    ("53100", psycopg.errors.DiskFull),
])
def test_job_table_refuses_writes(own_pg, sqlstate, error):
    """Launches are refused with the server's error while the job table cannot be written; a job
    that ends meanwhile keeps its outcome in the dispatcher and records it once writes work again."""
    own_pg.sql(REFUSE)
    with own_pg.connect("alice") as c:
        h = launch(c, "SELECT pg_sleep(1.5), 'outcome kept'")
        _fault(own_pg, sqlstate)
        try:
            with pytest.raises(error, match="could not record the background job"):
                launch(c, "SELECT 'refused'")
            assert [r[0] for r in c.execute(f"SELECT pid FROM pg_background_list_v2() AS ({LIST_COLS})")] \
                == [h[0]]  # the refused launch left nothing behind
            assert result(c, h, "s text, t text") == [("", "outcome kept")]
            wait_for(lambda: any("failing" in v for v in invariants(own_pg)), timeout=10)
            assert job_row(own_pg, h[1])["state"] == "running"  # not yet written, not lost
        finally:
            _fault(own_pg, None)
        wait_for(lambda: job_row(own_pg, h[1])["state"] == "completed", timeout=20)
        h2 = launch(c, "SELECT 'writable again'")
        assert result(c, h2) == [("writable again",)]
    own_pg.sql("DROP TRIGGER refuse ON plpy_bg.jobs")
    assert invariants(own_pg) == []


def test_a_new_dispatcher_ends_orphaned_backends_and_settles_every_database(own_pg):
    """After a dispatcher's death its worker backends run on; the next dispatcher terminates them
    before recording their jobs lost (a job that could still commit is never called lost), in every
    database at its start, not when someone next launches there."""
    own_pg.sql("CREATE DATABASE orphan_b")
    with own_pg.connect(dbname="orphan_b") as c:
        c.execute("CREATE EXTENSION plpy_bg CASCADE")
        c.execute("SELECT grant_pg_background_privileges('alice')")
    own_pg.sql("DROP TABLE IF EXISTS orphan_marks; CREATE TABLE orphan_marks (v text); GRANT ALL ON orphan_marks TO alice")
    with own_pg.connect("alice") as a, own_pg.connect("alice", dbname="orphan_b") as b:
        ha = launch(a, "SELECT pg_sleep(8); INSERT INTO orphan_marks VALUES ('committed late')",
                    fn="pg_background_submit_v2")
        hb = launch(b, "SELECT pg_sleep(60)", fn="pg_background_submit_v2")
        active = "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s) AND state = 'active'"
        wait_for(lambda: own_pg.sql(active, ([ha[0], hb[0]],)) == [(2,)])
        os.kill(_dispatcher_pid(own_pg), signal.SIGKILL)
    with own_pg.connect("alice") as a:
        assert result(a, launch(a, "SELECT 'a new dispatcher'")) == [("a new dispatcher",)]
    wait_for(lambda: job_row(own_pg, ha[1])["state"] == "lost", timeout=30)
    with own_pg.connect(dbname="orphan_b") as c:  # settled without a launch there
        wait_for(lambda: c.execute("SELECT state FROM plpy_bg.jobs WHERE cookie = %s",
                                   (hb[1],)).fetchone() == ("lost",), timeout=30)
    assert own_pg.sql("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", ([ha[0], hb[0]],)) == [(0,)]
    time.sleep(8)  # the terminated job would have committed by now
    assert own_pg.sql("SELECT count(*) FROM orphan_marks") == [(0,)]
    log = dispatcher_log(own_pg)
    assert f"terminating backend {ha[0]}, which still runs background job {ha[1]}" in log
    assert f"terminating backend {hb[0]}, which still runs background job {hb[1]}" in log
    assert invariants(own_pg) == []


REFUSE_DISPATCHER_UPDATES = """
CREATE OR REPLACE FUNCTION public.refuse_dispatcher_updates() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'the dispatcher may not write now' USING ERRCODE = '25006'; END $$;
CREATE TRIGGER refuse_dispatcher BEFORE UPDATE ON plpy_bg.jobs
    FOR EACH ROW WHEN (current_user = 'plpy_bg_dispatcher') EXECUTE FUNCTION public.refuse_dispatcher_updates();
"""


def test_a_committed_job_is_never_recorded_lost(own_pg):
    """A job whose statements run in one transaction records its outcome in that transaction: when
    its dispatcher dies before writing the outcome (here it cannot write), the job is `completed`,
    not `lost`; a job whose transaction rolls back never reads `completed`."""
    own_pg.sql("DROP TABLE IF EXISTS committed_marks; CREATE TABLE committed_marks (v text); "
               "GRANT ALL ON committed_marks TO alice")
    own_pg.sql(REFUSE_DISPATCHER_UPDATES)
    try:
        with own_pg.connect("alice") as c:
            h = launch(c, "INSERT INTO committed_marks VALUES ('done')", fn="pg_background_submit_v2")
            bad = launch(c, "INSERT INTO committed_marks VALUES ('rolled back'); SELECT 1/0",
                         fn="pg_background_submit_v2")
            wait_for(lambda: own_pg.sql("SELECT v FROM committed_marks") == [("done",)])
            wait_for(lambda: job_row(own_pg, h[1])["state"] == "completed")  # with the job's own commit
            assert wait(c, bad)  # the dispatcher knows it failed
            assert job_row(own_pg, bad[1])["state"] == "running"  # its failure is not written yet
            os.kill(_dispatcher_pid(own_pg), signal.SIGKILL)
    finally:
        own_pg.sql("DROP TRIGGER refuse_dispatcher ON plpy_bg.jobs")
    with own_pg.connect("alice") as c:
        assert result(c, launch(c, "SELECT 'next'")) == [("next",)]
    wait_for(lambda: job_row(own_pg, bad[1])["state"] == "lost")
    assert job_row(own_pg, h[1])["state"] == "completed"
    assert own_pg.sql("SELECT v FROM committed_marks") == [("done",)]


def test_a_job_holding_its_own_row_does_not_hold_up_another_roles_outcome(own_pg):
    """alice's job records its outcome early in its own transaction (job_committed) and keeps that
    transaction open: its row stays locked, and the dispatcher's writes to it wait. bob's outcome,
    queued after them, is still written at once (found by fresh eyes: it read `running`)."""
    own_pg.sql("GRANT CREATE ON SCHEMA public TO alice")
    with own_pg.connect("alice") as a:
        a.execute("""CREATE OR REPLACE FUNCTION alice_hold(secs float8) RETURNS int LANGUAGE plpgsql AS $$
DECLARE c int8;
BEGIN
    SELECT cookie INTO c FROM plpy_bg.jobs WHERE pid = pg_backend_pid() AND state = 'running';
    CALL plpy_bg.job_committed(c);
    PERFORM pg_background_progress(10, 'holding');
    PERFORM pg_sleep(secs);
    RETURN 1;
END $$""")
        hold = launch(a, "SELECT alice_hold(40)")
        try:
            wait_for(lambda: own_pg.sql("SELECT 1 FROM pg_stat_activity WHERE application_name = "
                                        "'plpy_bg dispatcher' AND wait_event_type = 'Lock'"), timeout=15)
            with own_pg.connect("bob") as b:
                h = launch(b, "SELECT 1", fn="pg_background_submit_v2")
                assert wait(b, h)
            wait_for(lambda: job_row(own_pg, h[1])["state"] == "completed", timeout=5)
        finally:
            a.execute("SELECT pg_background_cancel_v2(%s, %s)", hold)
    wait_for(lambda: job_row(own_pg, hold[1])["state"] != "running", timeout=20)
