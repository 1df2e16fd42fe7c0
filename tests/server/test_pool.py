"""The warm pool: nothing of one job is seen by the next, workers are never shared across
roles, idle workers are bounded per role and in total by settings and reaped when idle."""
import time

import pytest

from tests.fix_pg import dispatcher_log, invariants, launch, pool_settings, result, wait_for

pytestmark = [pytest.mark.server]


def workers(server, **match):
    rows = server.sql("SELECT pid, database, role, profile, state, seccomp_filters FROM plpy_bg.pool_workers()")
    out = [dict(zip(("pid", "database", "role", "profile", "state", "filters"), r)) for r in rows]
    return [w for w in out if all(w[k] == v for k, v in match.items())]


def idle_pids(server, role):
    return {w["pid"] for w in workers(server, role=role, state="idle")}


def on_worker(server, conn, pid, sql, coldef):
    """Run `sql` as a job on the idle worker `pid`: hold every idle worker of the role at once."""
    role = conn.execute("SELECT current_user").fetchone()[0]
    wait_for(lambda: pid in idle_pids(server, role))
    n = len(idle_pids(server, role))
    hs = [launch(conn, f"SELECT pg_sleep(0.3); {sql}") for _ in range(n)]
    out = {h[0]: result(conn, h, coldef) for h in hs}
    assert pid in out, f"no job ran on worker {pid}: {sorted(out)}"
    return out[pid]


LEAVE_STATE = """
SET work_mem = '77MB';
SELECT set_config('myapp.leak', 'x', false);
CREATE TEMP TABLE t_leak (x int);
PREPARE p_leak AS SELECT 1;
SELECT pg_advisory_lock(4242);
LISTEN leak_chan;
DECLARE c_leak CURSOR WITH HOLD FOR SELECT 1;
SELECT pg_backend_pid()::text
"""

PROBE = """SELECT current_setting('work_mem'), coalesce(current_setting('myapp.leak', true), ''),
 to_regclass('pg_temp.t_leak') IS NULL,
 (SELECT count(*) FROM pg_prepared_statements),
 (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()),
 (SELECT count(*) FROM pg_listening_channels()),
 (SELECT count(*) FROM pg_cursors)"""
PROBE_COLS = "work_mem text, leak text, no_temp bool, prepared int8, advisory int8, listening int8, cursors int8"


def test_nothing_of_a_job_is_seen_by_the_next(own_pg):
    with own_pg.connect("alice") as c:
        h = launch(c, LEAVE_STATE)
        pid = int(result(c, h)[0][0])
        assert pid == h[0]
        seen = on_worker(own_pg, c, pid, PROBE, PROBE_COLS)
    assert seen == [("4MB", "", True, 0, 0, 0, 0)]
    assert invariants(own_pg) == []


def test_a_launcher_setting_does_not_stay_on_the_worker(own_pg):
    with own_pg.connect("alice") as a, own_pg.connect("alice") as b:
        a.execute("SET work_mem = '77MB'")
        a.execute("SET myapp.tenant = 'acme'")
        a.execute("SET plpy_bg.inherit_settings = 'myapp.tenant'")
        h = launch(a, "SELECT current_setting('work_mem') || ' ' || current_setting('myapp.tenant', true)")
        assert result(a, h) == [("77MB acme",)]
        got = on_worker(own_pg, b, h[0], "SELECT current_setting('work_mem'), "
                                          "coalesce(current_setting('myapp.tenant', true), '')", "w text, t text")
        assert got == [("4MB", "")]
        # and back: the first launcher's settings are applied again on the same worker
        got = on_worker(own_pg, a, h[0], "SELECT current_setting('work_mem')", "w text")
        assert got == [("77MB",)]


def test_never_shared_across_roles(own_pg):
    pids = {"alice": set(), "bob": set()}
    with own_pg.connect("alice") as a, own_pg.connect("bob") as b:
        for _ in range(8):
            for role, c in (("alice", a), ("bob", b)):
                h = launch(c, "SELECT current_user::text, session_user::text")
                assert result(c, h, "u text, s text") == [(role, role)]
                pids[role].add(h[0])
    assert not pids["alice"] & pids["bob"]
    for w in workers(own_pg):  # the pool agrees: each worker belongs to the role that used it
        for role, used in pids.items():
            if w["pid"] in used:
                assert w["role"] == role
    assert invariants(own_pg) == []


def test_a_job_that_adds_a_seccomp_filter_retires_its_worker(own_pg):
    with own_pg.connect() as c:
        h = launch(c, "SELECT set_client_filter('allow', NULL, NULL, 'personality', NULL); "
                      "SELECT (SELECT count(*) FROM seccomp_filter())::text")
        result(c, h)
        baseline = {w["filters"] for w in workers(own_pg, role="postgres")}
        wait_for(lambda: h[0] not in {w["pid"] for w in workers(own_pg)})
        assert not own_pg.sql("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (h[0],))
        h2 = launch(c, "SELECT '1'")
        assert result(c, h2) == [("1",)]
        assert h2[0] != h[0]
    for w in workers(own_pg, role="postgres"):
        assert w["filters"] in baseline
    assert invariants(own_pg) == []


def _burst(conn, n, sql="SELECT pg_sleep(0.4)"):
    hs = [launch(conn, sql) for _ in range(n)]
    for h in hs:
        result(conn, h, "r text")
    return {h[0] for h in hs}


def test_idle_workers_are_bounded_per_role_and_in_total(own_pg):
    pool_settings(own_pg, pool_max_idle_per_role=2, pool_max_idle=3)
    try:
        with own_pg.connect("alice") as a, own_pg.connect("bob") as b:
            _burst(a, 5)
            time.sleep(0.5)  # late prewarms land or are closed
            assert len(idle_pids(own_pg, "alice")) <= 2
            _burst(b, 4)
            time.sleep(0.5)  # late prewarms land or are closed
            assert len(idle_pids(own_pg, "bob")) <= 2
            assert len(workers(own_pg, state="idle")) <= 3
            assert len(idle_pids(own_pg, "bob")) >= 1  # still a pool, not none
        assert invariants(own_pg) == []
    finally:
        pool_settings(own_pg, pool_max_idle_per_role=None, pool_max_idle=None)


def test_idle_workers_are_reaped(own_pg):
    with own_pg.connect("alice") as a:
        used = _burst(a, 3, "SELECT '1'")
    pool_settings(own_pg, pool_idle_timeout="1s")
    try:
        wait_for(lambda: not workers(own_pg, state="idle"), timeout=10)
        gone = lambda: not own_pg.sql("SELECT 1 FROM pg_stat_activity WHERE pid = ANY(%s)", (list(used),))
        wait_for(gone, timeout=10)
        assert invariants(own_pg) == []
    finally:
        pool_settings(own_pg, pool_idle_timeout=None)


def test_an_unset_pool_setting_is_back_to_its_default(own_pg):
    log = lambda: dispatcher_log(own_pg)  # noqa: E731
    with own_pg.connect("alice") as a:
        _burst(a, 1, "SELECT '1'")
        pool_settings(own_pg, pool_idle_timeout="7s")
        wait_for(lambda: "7.0 s idle limit" in log(), timeout=10)
        pool_settings(own_pg, pool_idle_timeout=None)
        _burst(a, 1, "SELECT '1'")
        wait_for(lambda: "60.0 s idle limit" in log().rsplit("pool bounds:", 1)[-1], timeout=10)


@pytest.mark.parametrize("name, value", [("pool_max_idle", "lots"), ("pool_max_idle_per_role", "-3"),
                                         ("pool_idle_timeout", "forever"), ("pool_idle_timeout", "0")])
def test_bad_pool_settings_keep_the_defaults(own_pg, name, value):
    pool_settings(own_pg, **{name: value})
    try:
        with own_pg.connect("alice") as a:
            h = launch(a, "SELECT 'still works'")
            assert result(a, h) == [("still works",)]
        # a fresh dispatcher has no session to ask until the launch: it reads them on its next tick
        wait_for(lambda: f"plpy_bg.{name} = {value!r} is not in" in dispatcher_log(own_pg), timeout=10)
    finally:
        pool_settings(own_pg, **{name: None})


def test_a_worker_killed_while_idle_is_not_handed_out(own_pg):
    with own_pg.connect("alice") as a:
        _burst(a, 1, "SELECT '1'")
        killed = list(idle_pids(own_pg, "alice"))
        own_pg.sql("SELECT pg_terminate_backend(p) FROM unnest(%s::int[]) p", (killed,))
        wait_for(lambda: not own_pg.sql("SELECT 1 FROM pg_stat_activity WHERE pid = ANY(%s)", (killed,)))
        h = launch(a, "SELECT 'fresh'")
        assert result(a, h) == [("fresh",)]
    assert invariants(own_pg) == []


def test_the_dispatchers_log_level_is_a_setting(own_pg):
    with own_pg.connect("alice") as a:
        _burst(a, 1, "SELECT '1'")
        try:
            pool_settings(own_pg, log_level="loud")
            wait_for(lambda: 'invalid value for parameter "plpy_bg.log_level": "loud"' in dispatcher_log(own_pg))
            pool_settings(own_pg, log_level="warning")
            pool_settings(own_pg, pool_idle_timeout="9s")  # applied, but its LOG line is below the level
            _burst(a, 1, "SELECT '1'")
            assert "9.0 s idle limit" not in dispatcher_log(own_pg)
            pool_settings(own_pg, log_level="info", pool_idle_timeout="8s")
            wait_for(lambda: "8.0 s idle limit" in dispatcher_log(own_pg), timeout=10)
        finally:
            pool_settings(own_pg, log_level=None, pool_idle_timeout=None)
