"""The server the dispatcher serves, seen from the operating system.

The dispatcher runs as the server's OS user, so what needs no SQL is done
without SQL, where no database owner can shape it: the postmaster and each
worker backend are held by a pidfd (a signal never reaches a recycled pid),
a reload is the postmaster's SIGHUP, a grace termination is a backend's
SIGTERM (what pg_terminate_backend sends), and the server's state is read
from the data directory's postmaster.pid.
"""
from __future__ import annotations

import functools
import os
import select
import signal
import time

# line 8 of postmaster.pid (PostgreSQL's LOCK_FILE_LINE_PM_STATUS)
PM_STATUS_LINE = 7
PM_STATUS_STOPPING = "stopping"


class Process:
    """A process held by a pidfd, opened while it is known to be the one we mean."""

    def __init__(self, pid: int):
        self.pid = pid
        self.fd: int | None = os.pidfd_open(pid)

    def alive(self) -> bool:
        # a pidfd becomes readable when its process exits
        return self.fd is not None and not select.select([self.fd], [], [], 0)[0]

    def signal(self, sig: int) -> bool:
        if self.fd is None:
            return False
        try:
            signal.pidfd_send_signal(self.fd, sig)
            return True
        except ProcessLookupError:
            return False

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


@functools.cache
def _boot_time() -> float:
    """From the uptime, to 10 ms (/proc/stat's btime is whole seconds)."""
    with open("/proc/uptime") as f:
        return time.time() - float(f.read().split()[0])


def proc_stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, start time in seconds since the epoch, to a clock tick) of `pid`, or None once gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[1]), _boot_time() + int(fields[19]) / os.sysconf("SC_CLK_TCK")


class Postmaster(Process):
    """The postmaster, its data directory and its announced state."""

    def __init__(self, pid: int, datadir: str):
        super().__init__(pid)
        # named by the backend that started the dispatcher (its working directory), not read from
        # /proc/<pid>/cwd, which a sandboxed (not dumpable) postmaster does not show; its
        # postmaster.pid must name this postmaster
        self.datadir = datadir
        if self._pidfile_line(0) != str(pid):
            self.close()
            raise RuntimeError(f"process {pid} is not the postmaster of {self.datadir}")

    def _pidfile_line(self, n: int) -> str | None:
        try:
            with open(os.path.join(self.datadir, "postmaster.pid")) as f:
                lines = f.read().split("\n")
        except OSError:
            return None
        return lines[n].strip() if len(lines) > n else None

    def stopping(self) -> bool:
        """The server began a shutdown (smart, fast or immediate): it takes no new connections."""
        return not self.alive() or self._pidfile_line(PM_STATUS_LINE) == PM_STATUS_STOPPING

    def reload(self) -> bool:
        """What pg_reload_conf() does: the postmaster rereads its configuration, pg_ident.conf included."""
        return self.signal(signal.SIGHUP)

    @property
    def spool_dir(self) -> str:
        """The server's own directory for temporary files, inside the data directory (mode 0700)."""
        return os.path.join(self.datadir, "base", "pgsql_tmp")
