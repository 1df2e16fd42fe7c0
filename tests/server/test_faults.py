"""Faults: a killed job backend, a server restart with jobs running, a killed dispatcher."""
import os
import signal

import psycopg
import pytest

from tests.fix_pg import invariants, job_row, launch, result, wait_for

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
    log = own_pg.cluster.logfile
    seen = log.stat().st_size
    os.kill(h[0], signal.SIGKILL)  # the postmaster then restarts every backend
    wait_for(lambda: "ready to accept connections" in log.read_text()[seen:], timeout=30)
    with _reconnect(own_pg, "alice") as c:
        _after_crash(own_pg, c, h)


def _row(server, cookie):
    try:
        return job_row(server, cookie)
    except psycopg.OperationalError:  # the server is still recovering
        return None


def _after_crash(own_pg, c, h):
    wait_for(lambda: (_row(own_pg, h[1]) or {}).get("state") not in (None, "running"), timeout=30)
    row = job_row(own_pg, h[1])
    assert row["state"] in ("failed", "lost") and row["last_error"]
    h2 = launch(c, "SELECT 'after crash'")  # the dispatcher survived and works
    assert result(c, h2) == [("after crash",)]
    assert invariants(own_pg) == []


def test_server_restart_with_jobs_running(own_pg):
    with own_pg.connect("alice") as c:
        hs = [launch(c, "SELECT pg_sleep(30)", fn="pg_background_submit_v2") for _ in range(3)]
    own_pg.cluster.restart()
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
    assert job_row(own_pg, h[1])["state"] in ("lost", "failed")


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
