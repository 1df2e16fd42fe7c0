"""Throwaway PostgreSQL clusters for the demo, the tests and the benchmarks.

One path starts every cluster the project runs: `build.py serve`, the pytest
fixture and the bench scripts all call `Cluster.create()` / `start()` /
`stop()`. The server refuses to run as root, so when we are root every server
command runs as the OS user ``postgres`` through ``runuser``.

Authentication of a throwaway cluster:
- ``local all all peer map=plpy_bg``: job workers log in over the Unix socket
  as the job's own role (the map lines are kept by the dispatcher);
- ``host all all 127.0.0.1/32 trust``: tests and demos connect over loopback
  as any role without passwords. Never use this line in production.
"""
from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

PG_BIN = Path(os.environ.get("PLPY_BG_PG_BIN", "/usr/lib/postgresql/15/bin"))
OS_USER = "postgres"

HBA = """\
# plpy_bg throwaway cluster: job workers authenticate by peer map, tests by loopback trust
local   all   all                 peer map=plpy_bg
host    all   all   127.0.0.1/32  trust
host    all   all   ::1/128       trust
host    replication   all   127.0.0.1/32  trust
"""

SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "max_connections": "120",
    "shared_buffers": "'128MB'",
    "fsync": "off",  # throwaway clusters: durability is not what they test
    "full_page_writes": "off",
    "log_min_messages": "warning",
    "log_line_prefix": "'%m [%p] %q%u@%d '",
    "logging_collector": "off",
    "max_wal_size": "'1GB'",
}


class ClusterError(RuntimeError):
    pass


def _as_postgres(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    """Run a server command as the OS user postgres (the server refuses root)."""
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", OS_USER, "--"] + cmd
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def _chown_postgres(path: Path) -> None:
    if os.geteuid() == 0:
        pw = pwd.getpwnam(OS_USER)
        os.chown(path, pw.pw_uid, pw.pw_gid)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Cluster:
    base: Path  # holds data/, sock/ and server.log
    port: int
    proc: subprocess.Popen | None = field(default=None, repr=False, compare=False)

    @property
    def datadir(self) -> Path:
        return self.base / "data"

    @property
    def sockdir(self) -> Path:
        return self.base / "sock"

    @property
    def logfile(self) -> Path:
        return self.base / "server.log"

    def dsn(self, user: str = "postgres", dbname: str = "postgres") -> str:
        return f"host=127.0.0.1 port={self.port} user={user} dbname={dbname}"

    @classmethod
    def create(cls, base: str | Path | None = None, port: int | None = None,
               settings: dict[str, str] | None = None) -> "Cluster":
        """initdb a new cluster owned by the OS user postgres."""
        if base is None:
            base = tempfile.mkdtemp(prefix="plpy_bg_")
        base = Path(base).resolve()
        base.mkdir(parents=True, exist_ok=True)
        if (base / "data" / "PG_VERSION").exists():
            raise ClusterError(f"a cluster already exists in {base / 'data'}")
        os.chmod(base, 0o755)
        _chown_postgres(base)
        c = cls(base=base, port=port or _free_port())
        if len(str(c.sockdir)) > 90:
            raise ClusterError(f"socket directory path too long for a Unix socket: {c.sockdir}")
        for d in (c.sockdir,):
            d.mkdir(exist_ok=True)
            os.chmod(d, 0o700)
            _chown_postgres(d)
        r = _as_postgres([str(PG_BIN / "initdb"), "-D", str(c.datadir), "-U", OS_USER,
                          "--auth-local=peer", "--auth-host=trust", "-E", "UTF8",
                          "--locale=C.UTF-8", "--no-instructions"])
        if r.returncode != 0:
            raise ClusterError(f"initdb failed:\n{r.stdout}\n{r.stderr}")
        conf = dict(SETTINGS)
        conf["port"] = str(c.port)
        conf["unix_socket_directories"] = f"'{c.sockdir}'"
        conf.update(settings or {})
        with open(c.datadir / "postgresql.conf", "a") as f:
            f.write("\n# plpy_bg throwaway cluster\n")
            for k, v in conf.items():
                f.write(f"{k} = {v}\n")
        (c.datadir / "pg_hba.conf").write_text(HBA)
        from plpy_bg.jobs.identmap import IDENTITY_LINE, MAP_NAME

        (c.datadir / "pg_ident.conf").write_text(
            f"# MAPNAME  SYSTEM-USERNAME  PG-USERNAME\n{MAP_NAME} {IDENTITY_LINE}\n")
        for f in ("pg_hba.conf", "pg_ident.conf"):
            _chown_postgres(c.datadir / f)
        return c

    @classmethod
    def standby_of(cls, primary: "Cluster", base: str | Path) -> "Cluster":
        """A hot standby of `primary` (pg_basebackup -R), on a port and socket directory of its own."""
        base = Path(base).resolve()
        base.mkdir(parents=True, exist_ok=True)
        os.chmod(base, 0o755)
        _chown_postgres(base)
        c = cls(base=base, port=_free_port())
        c.sockdir.mkdir(exist_ok=True)
        os.chmod(c.sockdir, 0o700)
        _chown_postgres(c.sockdir)
        r = _as_postgres([str(PG_BIN / "pg_basebackup"), "-D", str(c.datadir), "-R", "-X", "stream", "-c", "fast",
                          "-h", "127.0.0.1", "-p", str(primary.port), "-U", OS_USER])
        if r.returncode != 0:
            raise ClusterError(f"pg_basebackup failed:\n{r.stdout}\n{r.stderr}")
        with open(c.datadir / "postgresql.auto.conf", "a") as f:  # read last: its own port and socket
            f.write(f"port = {c.port}\nunix_socket_directories = '{c.sockdir}'\nhot_standby = on\n")
        return c

    def start(self, wrapper: list[str] | None = None, timeout: float = 60) -> None:
        """Start the server; `wrapper` runs before postgres (the seccomp preload helper)."""
        if self.logfile.exists():
            self.logfile.unlink()
        self.logfile.touch()
        _chown_postgres(self.logfile)
        pg = [str(PG_BIN / "postgres"), "-D", str(self.datadir)]
        cmd = (wrapper or []) + pg
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", OS_USER, "--"] + cmd
        with open(self.logfile, "ab") as log:
            proc = self.proc = subprocess.Popen(cmd, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                                start_new_session=True, cwd="/")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise ClusterError(f"server exited with {proc.returncode}:\n{self.logfile.read_text()[-4000:]}")
            r = subprocess.run([str(PG_BIN / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)])
            if r.returncode == 0:
                return
            time.sleep(0.1)
        raise ClusterError(f"server did not start in {timeout}s:\n{self.logfile.read_text()[-4000:]}")

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.datadir / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None

    def is_running(self) -> bool:
        return _as_postgres([str(PG_BIN / "pg_ctl"), "status", "-D", str(self.datadir)]).returncode == 0

    def stop(self, mode: str = "fast", timeout: int = 60) -> None:
        if not self.datadir.exists():
            return
        _as_postgres([str(PG_BIN / "pg_ctl"), "stop", "-D", str(self.datadir), "-m", mode,
                      "-t", str(timeout), "-w"])
        if self.proc is not None:
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
            self.proc = None

    def restart(self, wrapper: list[str] | None = None) -> None:
        self.stop()
        self.start(wrapper=wrapper)

    def destroy(self) -> None:
        self.stop(mode="immediate")
        shutil.rmtree(self.base, ignore_errors=True)

    def psql(self, sql: str, user: str = "postgres", dbname: str = "postgres") -> str:
        r = subprocess.run([str(PG_BIN / "psql"), "-X", "-v", "ON_ERROR_STOP=1", "-At",
                            "-h", "127.0.0.1", "-p", str(self.port), "-U", user, "-d", dbname,
                            "-c", sql], capture_output=True, text=True)
        if r.returncode != 0:
            raise ClusterError(r.stderr.strip())
        return r.stdout
