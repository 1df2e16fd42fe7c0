"""The dispatcher's job transitions against one another, with a fake worker and no server:
a cancel or termination that meets a job's finish, and a reader that swaps the sink meanwhile."""
import os
import threading
import time
from datetime import datetime, timezone
from types import SimpleNamespace

from plpy_bg.dispatcher import server as D
from plpy_bg.dispatcher.sink import RowSink
from tests.fix_pg import wait_for


class FakeWorker:
    """Records what the dispatcher sends its backend: cancel requests and terminations."""

    def __init__(self):
        self.cancels = 0
        self.terminations = 0
        self.pgconn = SimpleNamespace(get_cancel=lambda: SimpleNamespace(cancel=self._cancel))

    def _cancel(self):
        self.cancels += 1

    def terminate(self) -> bool:
        self.terminations += 1
        return True


class FakeStore:
    def __init__(self):
        self.writes = []

    def write(self, sql, params):
        self.writes.append(params)


def dispatcher() -> D.Dispatcher:
    pm = SimpleNamespace(pid=os.getpid(), alive=lambda: True, stopping=lambda: False)
    d = D.Dispatcher("/tmp", 1, pm, "/tmp/.s.plpy_bg.test")
    d.fake_store = FakeStore()
    d.store = lambda dbk: d.fake_store
    return d


def running_job(d: D.Dispatcher, worker: FakeWorker) -> D.Job:
    job = D.Job(cookie=7, pid=4242, db="db", db_oid=1, role="alice", user_id=10, sql="SELECT 1", preview="SELECT 1",
                queue_size=1 << 16, mode="launch", launcher_pid=1, settings=[], launched_at=datetime.now(timezone.utc),
                session=None, streaming=True)
    job.sink = RowSink(limit=1 << 16, streaming=True)
    job.worker = worker
    d.jobs[job.cookie] = job
    d.by_worker_pid[job.pid] = job
    return job


def test_a_cancel_that_meets_the_finish_never_reaches_the_released_worker():
    """The finish decides the outcome while a cancel comes: the cancel waits, then finds the job
    done and sends nothing to a worker that is the pool's by then (another role's job may run on it)."""
    d, w = dispatcher(), FakeWorker()
    job = running_job(d, w)
    deciding, go_on = threading.Event(), threading.Event()
    real_finish = job.sink.finish

    def slow_finish(final):  # inside the finish's decision, as long as the test says
        deciding.set()
        go_on.wait(5)
        real_finish(final)
    job.sink.finish = slow_finish
    finisher = threading.Thread(target=d._finish, args=(job, None, "SELECT 1", True))
    finisher.start()
    assert deciding.wait(5)
    canceler = threading.Thread(target=d.cancel, args=(job, 0))
    canceler.start()
    time.sleep(0.2)  # an absence window: the cancel must be held while the outcome is decided
    assert canceler.is_alive() and w.cancels == 0
    go_on.set()
    finisher.join(5)
    canceler.join(5)
    assert w.cancels == 0 and job.state == "completed" and job.last_error is None and job.worker is None
    d._terminate(job)  # the watchdog's late grace termination: nothing either
    assert w.terminations == 0


def test_a_cancel_before_the_finish_cancels_and_the_job_ends_canceled():
    d, w = dispatcher(), FakeWorker()
    job = running_job(d, w)
    d.cancel(job, 300)
    assert w.cancels == 1 and job.cancel_requested
    d._finish(job, {"sqlstate": "57014", "message": "canceling statement due to user request"}, None, False)
    assert job.state == "canceled" and job.last_error["sqlstate"] == "57014"
    d._terminate(job)  # the grace passed after the finish: the worker is not the job's any more
    assert w.terminations == 0


def test_the_finish_counts_the_rows_of_its_own_sink_when_a_reader_swaps_it():
    d, w = dispatcher(), FakeWorker()
    job = running_job(d, w)
    job.sink.new_set([(23, -1)], {})
    job.sink.put_many([b"(1)", b"(2)", b"(3)"])
    real_finish = job.sink.finish

    def finish_then_swap(final):  # a reader reads the last row and lets the sink go at once
        real_finish(final)
        job.sink = D.ENDED
    job.sink.finish = finish_then_swap
    d._finish(job, None, "SELECT 3", True)
    wait_for(lambda: d.fake_store.writes, timeout=5)
    assert d.fake_store.writes[-1]["rows"] == 3 and d.fake_store.writes[-1]["state"] == "completed"
