"""The job-table writer's lane with a fake connection: what it retries and what it gives up."""
import contextlib
import time

import psycopg
import pytest

from plpy_bg.dispatcher import store as S


class FakeConn:
    """Answers execute() from a script (an exception to raise once, or None for success), and
    raises `always[sql]` every time that statement comes."""

    def __init__(self, script: list, always: dict | None = None):
        self.script = script
        self.always = always or {}
        self.closed = self.broken = False
        self.autocommit = False
        self.prepare_threshold = None
        self.executed: list = []

    def execute(self, sql, params=None):
        outcome = self.always.get(sql) or (self.script.pop(0) if self.script else None)
        if outcome is not None:
            if isinstance(outcome, psycopg.OperationalError) and not outcome.sqlstate:
                self.broken = True  # as psycopg leaves a connection whose server went away
            raise outcome
        self.executed.append(sql)

    def close(self):
        self.closed = True

    def transaction(self):
        return contextlib.nullcontext()


def lane(*conns) -> S.Lane:
    """A durable lane whose connects return `conns` in turn (an exception is raised instead)."""
    pending = list(conns)

    def connect(dbname):
        c = pending.pop(0)
        if isinstance(c, Exception):
            raise c
        return c
    return S.Lane(connect, "db", "epoch", durable=True)


def test_a_fault_of_ours_fails_the_write_instead_of_wedging_the_lane():
    ln = lane(FakeConn([], {"UPDATE x": TypeError("a bug in a parameter")}))
    t = time.monotonic()
    with pytest.raises(TypeError, match="a bug"):
        S.Lane.wait(ln.submit("UPDATE x", {}), timeout=5)
    assert time.monotonic() - t < 2
    S.Lane.wait(ln.submit("UPDATE y", {}), timeout=5)  # the next write goes on, on the same lane
    assert ln.conn.executed == ["UPDATE y"]


def test_a_lost_connection_is_retried_until_the_write_is_taken():
    gone = psycopg.OperationalError("server closed the connection unexpectedly")
    later = FakeConn([])
    ln = lane(FakeConn([gone]), psycopg.OperationalError("connection refused"), later)
    S.Lane.wait(ln.submit("UPDATE x", {}), timeout=10)
    assert later.executed == ["UPDATE x"]


def test_the_server_refusing_a_write_fails_it_when_someone_waits():
    refused = psycopg.errors.InsufficientPrivilege("permission denied for table jobs")
    ln = lane(FakeConn([], {"UPDATE x": refused}))
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        S.Lane.wait(ln.submit("UPDATE x", {}), timeout=5)


def test_the_writer_thread_outlives_a_fault_between_writes(monkeypatch):
    ln = lane(FakeConn([]))
    calls = []
    real = ln._resolve

    def resolve_once_broken(item):
        if not calls:
            calls.append(item)
            raise RuntimeError("a fault while batching")
        return real(item)
    monkeypatch.setattr(ln, "_resolve", resolve_once_broken)
    ln.write("UPDATE lost", {})  # dropped with the fault, and logged
    deadline = time.monotonic() + 5
    while not calls and time.monotonic() < deadline:
        time.sleep(0.01)
    S.Lane.wait(ln.submit("UPDATE after", {}), timeout=5)
    assert ln.conn.executed == ["UPDATE after"]
    assert ln.thread is not None and ln.thread.is_alive()


def test_no_answer_is_a_connection_failure_only():
    assert S.no_answer(psycopg.OperationalError("x"))
    assert S.no_answer(ConnectionResetError())
    assert not S.no_answer(TypeError("x"))
    assert not S.no_answer(psycopg.errors.UniqueViolation("x"))
    assert not S.no_answer(psycopg.errors.AdminShutdown("x"))  # a refusal by its class (57): transient
    assert not S.no_answer(psycopg.ProgrammingError("x"))


def test_a_write_to_a_locked_row_is_put_aside_and_the_writes_after_it_go_on():
    """A job's own transaction holds its row (lock_timeout ends the write): that write waits aside
    and is tried again alone; another role's outcome, queued after it, is written at once."""
    locked = psycopg.errors.LockNotAvailable("canceling statement due to lock timeout")
    conn = FakeConn([], {"UPDATE held": locked})
    ln = lane(conn)
    ln.write("UPDATE held", {})
    deadline = time.monotonic() + 5
    while not ln.deferred and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ln.deferred and ln.pending() == 1
    t = time.monotonic()
    S.Lane.wait(ln.submit("UPDATE other", {}), timeout=5)
    assert time.monotonic() - t < 1 and "UPDATE other" in conn.executed
    del conn.always["UPDATE held"]  # the job's transaction ends
    deadline = time.monotonic() + 5
    while "UPDATE held" not in conn.executed and time.monotonic() < deadline:
        time.sleep(0.05)
    assert conn.executed.count("UPDATE held") == 1 and ln.pending() == 0
