#!/usr/bin/env python3
"""Build, install, try and test plpy_bg. Standard library only.

    python3 build.py install        apt packages, server-side Python packages, extension files
    python3 build.py demo           a short demo on a throwaway cluster
    python3 build.py test [ARGS]    the whole test suite against a real server (pytest ARGS)
    python3 build.py serve --dir D [--port P]   start a throwaway cluster; prints its DSN last
    python3 build.py stop --dir D   stop it again
    python3 build.py sql            write the install script to build/ and print its path
    python3 build.py debian --cluster 15/main   pg_ctlcluster starts that cluster under the sandbox
    python3 build.py supervisor     start the seccomp supervisor (root) the sandboxed server needs

Every action is a function below; its docstring is its help.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

# the one version list, oldest first: the last is the version this checkout builds (the control
# file's default_version, plpy_bg.__version__, the install script and the versioned package
# directory); every earlier one is released, rebuilt from its commit for CREATE EXTENSION ... VERSION
VERSIONS = ["0.1.0", "0.2.0"]
VERSION = VERSIONS[-1]
RELEASED = {"0.1.0": "2a1376ace07af13f19a80799b01c15b1f0985321"}
# the incremental files of released versions, applied once by every install: never edited again
FROZEN = {"001-jobs.sql": ("0.1.0", "e5187b189868e391a592534d37a4fac56f3742e3711d0cb7bdba6e8501a45330"),
          "030-policy.sql": ("0.1.0", "90c31cfab8a0a9b01f63b38f55f4dd044301f3cc2c69d9d5a91b7e8a2b3be78a")}
EXT = "plpy_bg"
SERVER_PYTHON = "/usr/bin/python3"  # the interpreter plpython3u embeds on Debian 12
PG_CONFIG = os.environ.get("PG_CONFIG", "/usr/lib/postgresql/15/bin/pg_config")
LIBDIR = Path(os.environ.get("PLPY_BG_LIBDIR", "/usr/local/lib/plpy_bg")) / VERSION
APT_PACKAGES = ["postgresql-15", "postgresql-plpython3-15", "postgresql-contrib", "libseccomp2",
                "strace", "python3-venv", "python3-pip", "postgresql-client-15",
                "git",  # released versions are rebuilt from their commits
                "gcc"]  # gcc: the sandbox tests build the background worker an attacker would load
SERVER_REQUIREMENTS = ["psycopg[binary]>=3.1,<4", "pglast>=7,<9", "pyseccomp>=0.1.2,<0.2"]
TEST_REQUIREMENTS = SERVER_REQUIREMENTS + ["pytest>=7", "hypothesis>=6"]
VENV = ROOT / ".venv"


def fatal(msg: str) -> None:
    print(f"build.py: {msg}", file=sys.stderr)
    sys.exit(1)


def run(cmd: list[str], **kw) -> None:
    print("+", " ".join(cmd), flush=True)
    r = subprocess.run(cmd, **kw)
    if r.returncode != 0:
        fatal(f"command failed ({r.returncode}): {' '.join(cmd)}")


def pg_config(flag: str) -> str:
    return subprocess.run([PG_CONFIG, flag], capture_output=True, text=True, check=True).stdout.strip()


# ---- the install script ---------------------------------------------------------

PREAMBLE = """\
if GD.get('plpy_bg.path') != {libdir!r}:
    import sys
    if 'plpy_bg.path' in GD:
        plpy.error('plpy_bg ' + {version!r} + ' cannot run in a session that loaded ' + GD['plpy_bg.path'],
                   hint='Reconnect after ALTER EXTENSION plpy_bg UPDATE.')
    if {libdir!r} not in sys.path:
        sys.path.insert(0, {libdir!r})
    GD['plpy_bg.path'] = {libdir!r}"""


MIGRATION_TABLE = """CREATE TABLE IF NOT EXISTS plpy_bg.migration (
    name pg_catalog.text PRIMARY KEY,
    applied_at_version pg_catalog.text NOT NULL,
    applied_at pg_catalog.timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    body pg_catalog.text NOT NULL)"""

# a table counts only as this extension's member: a database owner may have made a schema
# plpy_bg with tables of these names before a superuser installs the extension
MEMBER = """EXISTS (SELECT FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_extension e ON e.oid OPERATOR(pg_catalog.=) d.refobjid
            WHERE d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass
              AND d.objid OPERATOR(pg_catalog.=) pg_catalog.to_regclass('{table}')
              AND d.deptype OPERATOR(pg_catalog.=) 'e' AND e.extname OPERATOR(pg_catalog.=) 'plpy_bg')"""

# 0.1.0 had no migration table: an install of it has applied its incremental files
SEED_0_1_0 = """-- an install of 0.1.0 predates the migration table: it applied 0.1.0's incremental files
DO $seed$
BEGIN
    IF {jobs_member} AND pg_catalog.to_regclass('plpy_bg.migration') IS NULL THEN
        EXECUTE $ddl${table}$ddl$;
{inserts}
    END IF;
END
$seed$;
"""

MIGRATION = """DO $migration$
DECLARE
    _body pg_catalog.text := $body${body}$body$;
    _done pg_catalog.bool := false;
BEGIN
    IF {migration_member} THEN  -- not there before the first file
        EXECUTE 'SELECT EXISTS (SELECT FROM plpy_bg.migration WHERE name OPERATOR(pg_catalog.=) $1)'
            INTO _done USING '{name}';
    END IF;
    IF _done THEN
        RETURN;  -- applied by an earlier install or upgrade
    END IF;
    EXECUTE _body;
    EXECUTE $ddl${table}$ddl$;
    INSERT INTO plpy_bg.migration (name, applied_at_version, body) VALUES ('{name}', '{version}', _body);
END
$migration$;
"""


def incremental_files() -> list[Path]:
    return sorted((ROOT / "sql" / "incremental").glob("*.sql"))


def idempotent_files() -> list[Path]:
    return sorted((ROOT / "sql" / "idempotent").glob("*.sql"))


def frozen_changes() -> list[str]:
    """Released incremental files whose text is not what was released."""
    bad = []
    for name, (_, digest) in FROZEN.items():
        f = ROOT / "sql" / "incremental" / name
        if not f.exists() or hashlib.sha256(f.read_bytes()).hexdigest() != digest:
            bad.append(name)
    return bad


def _quoted_body(f: Path) -> str:
    text = f.read_text()
    for tag in ("$body$", "$migration$", "$seed$", "$ddl$"):
        if tag in text:
            fatal(f"{f.name} may not contain {tag}: the install script quotes it with that tag")
    return text


def build_sql(libdir: Path = LIBDIR) -> str:
    """The full install script, which is also every upgrade script: head, each incremental file
    once (recorded in plpy_bg.migration), then the idempotent files, rerun every time."""
    edited = frozen_changes()
    if edited:
        fatal(f"released incremental files were edited: {edited}; add a new file instead")
    pre = PREAMBLE.format(libdir=str(libdir), version=VERSION)
    parts = [(ROOT / "sql" / "head.sql").read_text()]
    seeded = [n for n, (v, _) in sorted(FROZEN.items()) if v == "0.1.0"]
    parts.append(SEED_0_1_0.format(table=MIGRATION_TABLE, jobs_member=MEMBER.format(table="plpy_bg.jobs"), inserts="\n".join(
        f"        INSERT INTO plpy_bg.migration (name, applied_at_version, body)\n"
        f"            VALUES ('{n}', '0.1.0', $body${_quoted_body(ROOT / 'sql' / 'incremental' / n)}$body$);"
        for n in seeded)))
    for f in incremental_files():
        parts.append(f"-- {f.relative_to(ROOT)}\n" + MIGRATION.format(
            body=_quoted_body(f), name=f.name, version=VERSION, table=MIGRATION_TABLE,
            migration_member=MEMBER.format(table="plpy_bg.migration")))
    for f in idempotent_files():
        parts.append(f"-- {f.relative_to(ROOT)}\n" + ENTRY_CALL.sub(_entry_call, f.read_text().replace("#PLPY_BG_PREAMBLE", pre)))
    return "\n".join(parts)


# a PL/Python body's one call into the package: its errors are raised again from the body itself, so
# their CONTEXT holds one line of Python ("Traceback ...") instead of a frame per function passed
ENTRY_CALL = re.compile(r"^(return )?((?:api|sql_api|progress)\.\w+\(.*\))$", re.M)


def _entry_call(m: re.Match) -> str:
    return (f"try:\n    {m.group(1) or ''}{m.group(2)}\n"
            f"except plpy.Error as _e:\n    raise _e.with_traceback(None) from None")


def upgrade_scripts() -> list[str]:
    """The upgrade scripts' names: from every released version to this one, each a copy of the
    full script (install and upgrade cannot drift apart)."""
    return [f"{EXT}--{v}--{VERSION}.sql" for v in VERSIONS[:-1]]


def control() -> str:
    return (f"# plpy_bg: background SQL jobs, a seccomp sandbox and provenance checks\n"
            f"comment = 'background SQL jobs (pg_background 1.8 API), seccomp sandbox, provenance policy'\n"
            f"default_version = '{VERSION}'\n"
            f"relocatable = false\n"
            f"requires = 'plpython3u'\n"
            f"superuser = true\n")


def action_sql(args) -> None:
    """Write the control file and install script to build/ and print the script's path."""
    out = ROOT / "build"
    out.mkdir(exist_ok=True)
    (out / f"{EXT}.control").write_text(control())
    p = out / f"{EXT}--{VERSION}.sql"
    p.write_text(build_sql())
    for name in upgrade_scripts():
        (out / name).write_text(p.read_text())
    print(p)


# ---- install --------------------------------------------------------------------

def _missing_apt() -> list[str]:
    missing = []
    for pkg in APT_PACKAGES:
        r = subprocess.run(["dpkg-query", "-W", "-f=${Status}", pkg], capture_output=True, text=True)
        if "install ok installed" not in r.stdout:
            missing.append(pkg)
    return missing


def install_apt() -> None:
    missing = _missing_apt()
    if not missing:
        return
    if os.geteuid() != 0:
        fatal(f"missing packages {missing}; run as root or install them")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    run(["apt-get", "update", "-q"], env=env)
    run(["apt-get", "install", "-y", "-q", "--no-install-recommends"] + missing, env=env)


def source_stamp() -> str:
    h = hashlib.sha256()
    h.update("\n".join(SERVER_REQUIREMENTS).encode())
    for p in sorted((ROOT / EXT).rglob("*")):
        if p.is_file() and "__pycache__" not in p.parts:
            h.update(str(p.relative_to(ROOT)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def install_python() -> None:
    """Server-side packages for the server's own Python, in the versioned directory."""
    deps = LIBDIR.parent / f".deps-{VERSION}"
    req_stamp = hashlib.sha256("\n".join(SERVER_REQUIREMENTS).encode()).hexdigest()
    if not (deps / ".stamp").exists() or (deps / ".stamp").read_text() != req_stamp:
        shutil.rmtree(deps, ignore_errors=True)
        deps.mkdir(parents=True)
        run([SERVER_PYTHON, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
             "--no-warn-script-location", "--target", str(deps)] + SERVER_REQUIREMENTS)
        (deps / ".stamp").write_text(req_stamp)
    stamp = source_stamp()
    if (LIBDIR / ".stamp").exists() and (LIBDIR / ".stamp").read_text() == stamp:
        return
    place_package(ROOT / EXT, deps, LIBDIR, stamp)
    print(f"installed the plpy_bg package into {LIBDIR}")


def place_package(package: Path, deps: Path, target: Path, stamp: str) -> None:
    """Replace `target` with the server-side packages and `package`, readable by the server."""
    tmp = target.with_name(target.name + ".new")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(deps, tmp, symlinks=True)
    shutil.copytree(package, tmp / EXT, ignore=shutil.ignore_patterns("__pycache__"))
    (tmp / ".stamp").write_text(stamp)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    for p in [target] + list(target.rglob("*")):
        os.chmod(p, 0o755 if p.is_dir() else 0o644)


def install_sandboxed_binary() -> None:
    """An execute-only, root-owned copy of postgres (same size and time) that the preload helper
    runs the sandboxed server as: a process running a binary it cannot read is not dumpable, so
    no server process can open another's /proc/<pid>/mem (see sandbox/preload.py)."""
    src = Path(pg_config("--bindir")) / "postgres"
    dst = src.parent.parent / "plpy_bg-bin" / "postgres"
    dst.parent.mkdir(mode=0o755, exist_ok=True)
    s = src.stat()
    if dst.exists() and (dst.stat().st_size, dst.stat().st_mtime_ns) == (s.st_size, s.st_mtime_ns):
        return
    tmp = dst.with_name("postgres.new")
    shutil.copy2(src, tmp)
    os.chown(tmp, 0, 0)
    os.chmod(tmp, 0o111)
    os.utime(tmp, ns=(s.st_atime_ns, s.st_mtime_ns))
    tmp.rename(dst)
    print(f"installed the sandboxed server binary {dst} (mode 0111)")


def install_extension_files() -> None:
    ext = Path(pg_config("--sharedir")) / "extension"
    script = build_sql()
    (ext / f"{EXT}.control").write_text(control())
    for name in [f"{EXT}--{VERSION}.sql"] + upgrade_scripts():
        (ext / name).write_text(script)
    print(f"installed {EXT}.control, {EXT}--{VERSION}.sql and {len(upgrade_scripts())} upgrade script(s) into {ext}")


def install_released() -> None:
    """Each released version's package and install script, rebuilt from its commit (git history),
    so CREATE EXTENSION plpy_bg VERSION '<released>' works and installs can be upgraded."""
    ext = Path(pg_config("--sharedir")) / "extension"
    for version, commit in RELEASED.items():
        target = LIBDIR.parent / version
        script = ext / f"{EXT}--{version}.sql"
        if script.exists() and (target / ".stamp").exists() and (target / ".stamp").read_text() == commit:
            continue
        src = Path(tempfile.mkdtemp(prefix=f"plpy_bg-{version}-"))
        try:
            archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit, "build.py", "sql", EXT],
                                     capture_output=True)
            if archive.returncode != 0:
                fatal(f"cannot rebuild released version {version} from commit {commit}: "
                      f"{archive.stderr.decode().strip()} (a checkout with its history is needed)")
            subprocess.run(["tar", "-x", "-C", str(src)], input=archive.stdout, check=True)
            env = dict(os.environ, PLPY_BG_LIBDIR=str(LIBDIR.parent))
            built = subprocess.run([sys.executable, str(src / "build.py"), "sql"], capture_output=True, text=True,
                                   env=env, cwd=str(src))
            if built.returncode != 0:
                fatal(f"building released version {version} failed: {built.stderr.strip()}")
            shutil.copy(src / "build" / f"{EXT}--{version}.sql", script)
            place_package(src / EXT, LIBDIR.parent / f".deps-{VERSION}", target, commit)
            print(f"installed released version {version} (commit {commit[:12]}) into {target} and {script}")
        finally:
            shutil.rmtree(src, ignore_errors=True)


def action_install(args) -> None:
    """Install everything: apt packages when missing, server-side Python packages, extension files."""
    if not getattr(args, "no_apt", False):
        install_apt()
    install_python()
    install_sandboxed_binary()
    install_extension_files()
    install_released()


# ---- throwaway clusters -----------------------------------------------------------

def _cluster_mod():
    from plpy_bg import cluster
    return cluster


PROFILES = LIBDIR / EXT / "sandbox" / "profiles"


def preload_wrapper(supervisor: str | None = None) -> list[str]:
    """The command that loads the global seccomp filter and then execs postgres."""
    return (["env", f"PYTHONPATH={LIBDIR}", SERVER_PYTHON, "-m", "plpy_bg.sandbox.preload"] +
            (["--supervisor", supervisor] if supervisor else []) + ["--"])


SUPERVISOR_LOG = Path("/var/log/plpy_bg-supervisor.log")
SYSTEMD_UNIT = Path("/etc/systemd/system/plpy-bg-seccomp.service")


def supervisor_command(socket_path: str | None = None) -> list[str]:
    """The root service that answers the global filter's notifications (see sandbox/supervisor.py)."""
    from plpy_bg.sandbox import supervision
    return ["env", f"PYTHONPATH={LIBDIR}", SERVER_PYTHON, "-m", "plpy_bg.sandbox.supervisor",
            "--socket", socket_path or supervision.DEFAULT_SOCKET]


def supervisor_info(socket_path: str | None = None) -> dict | None:
    from plpy_bg.sandbox import supervision
    try:
        return supervision.whoami(socket_path)
    except (OSError, ValueError):
        return None


_daemons: list = []  # it outlives this process; kept so that no Popen is collected while it runs


def ensure_supervisor(socket_path: str | None = None, replace_stale: bool = False) -> None:
    """Start the supervisor in the background (as root) unless one answers on its socket; with
    `replace_stale`, a supervisor of other installed code is stopped first (its servers' sandboxes
    then fail closed: for tests of this checkout, never for a production server)."""
    info = supervisor_info(socket_path)
    stamp = (LIBDIR / ".stamp").read_text().strip() if (LIBDIR / ".stamp").exists() else ""
    if info is not None and replace_stale and info.get("stamp") != stamp:
        os.kill(int(info["supervisor_pid"]), signal.SIGTERM)
        deadline = time.monotonic() + 10
        while supervisor_info(socket_path) is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        info = None
    if info is not None:
        return
    if os.geteuid() != 0:
        fatal("the seccomp supervisor must be started by root: sudo python3 build.py supervisor")
    r, w = os.pipe()
    with open(SUPERVISOR_LOG, "ab") as logf:
        _daemons.append(subprocess.Popen(supervisor_command(socket_path) + ["--ready-fd", str(w)], pass_fds=(w,),
                                         stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                                         start_new_session=True, cwd="/"))
    os.close(w)
    with os.fdopen(r) as f:
        if f.readline().strip() != "ready":
            fatal(f"the seccomp supervisor did not start; see {SUPERVISOR_LOG}")


def action_supervisor(args) -> None:
    """Start the seccomp supervisor (root) unless it runs; the sandboxed server needs it."""
    action_install(argparse.Namespace(no_apt=True))
    if args.foreground:
        os.execvp("env", supervisor_command())
    ensure_supervisor()
    print(f"the seccomp supervisor runs (log: {SUPERVISOR_LOG})")


def use_profile(c, name: str = "global-deny") -> None:
    """Include a shipped seccomp profile in the cluster's postgresql.conf."""
    with open(c.datadir / "postgresql.conf", "a") as f:
        f.write(f"include '{PROFILES / (name + '.conf')}'\n")


def serve(base: str | None, port: int | None, settings: dict | None = None):
    """Create (or reuse) and start a cluster with the extension installed; return it."""
    cl = _cluster_mod()
    base_p = Path(base).resolve() if base else None
    if base_p is not None and (base_p / "data" / "PG_VERSION").exists():
        conf = (base_p / "data" / "postgresql.conf").read_text()
        import re
        ports = re.findall(r"^port = (\d+)", conf, re.M)
        c = cl.Cluster(base=base_p, port=int(ports[-1]))
        if not c.is_running():
            ensure_supervisor()
            c.start(wrapper=preload_wrapper())
        return c
    ensure_supervisor()
    c = cl.Cluster.create(base_p, port, settings=settings)
    use_profile(c)  # secure by default: the global filter for every process,
    use_profile(c, "worker-allow")  # and job workers limited to what jobs need (no exec)
    c.start(wrapper=preload_wrapper())
    c.psql("CREATE EXTENSION IF NOT EXISTS plpy_bg CASCADE")
    return c


def action_serve(args) -> None:
    """Start a throwaway cluster (as OS user postgres) with plpy_bg installed; print its DSN last."""
    action_install(argparse.Namespace(no_apt=True))
    c = serve(args.dir, args.port)
    print(f"data directory: {c.datadir}\nserver log: {c.logfile}\nstop with: python3 build.py stop --dir {c.base}")
    print(c.dsn())


def action_stop(args) -> None:
    """Stop a cluster started by serve (--destroy also removes its directory)."""
    cl = _cluster_mod()
    c = cl.Cluster(base=Path(args.dir).resolve(), port=0)
    if args.destroy:
        c.destroy()
    else:
        c.stop()
    print(f"stopped {c.datadir}")


def action_demo(args) -> None:
    """Run a short demo of the job API on an embedded throwaway cluster, then remove it."""
    action_install(args)
    c = serve(None, None)
    try:
        script = (ROOT / "demo" / "demo.sql")
        r = subprocess.run(["/usr/lib/postgresql/15/bin/psql", "-X", "-h", "127.0.0.1", "-p", str(c.port),
                            "-U", "postgres", "-d", "postgres", "-v", "ON_ERROR_STOP=0", "-e",
                            "-f", str(script)], text=True)
        if r.returncode not in (0, 3):
            fatal("the demo failed")
    finally:
        c.destroy()


def sandbox_wrapper_script() -> Path:
    """An executable that pg_ctl can run as its postgres (-p): the preload helper, then postgres."""
    path = LIBDIR / "bin" / "postgres-seccomp"
    path.parent.mkdir(parents=True, exist_ok=True)
    command = " ".join(preload_wrapper() + [f"{pg_config('--bindir')}/postgres"])
    path.write_text("#!/bin/sh\n# plpy_bg: load the global seccomp filter, then become postgres (pg_ctl -p)\n"
                    f'exec {command} "$@"\n')
    path.chmod(0o755)
    return path


def debian_cluster(cluster: str) -> Path:
    """Make pg_ctlcluster (and the systemd unit, which calls it) start `cluster` (version/name)
    through the preload helper: pg_ctl_options = '-p <wrapper>' in its pg_ctl.conf."""
    version, name = cluster.split("/", 1)
    conf = Path("/etc/postgresql") / version / name / "pg_ctl.conf"
    if not conf.exists():
        fatal(f"no cluster {cluster}: {conf} does not exist (see pg_lsclusters)")
    wrapper = sandbox_wrapper_script()
    lines = [ln for ln in conf.read_text().splitlines() if not ln.strip().startswith("pg_ctl_options")]
    lines.append(f"pg_ctl_options = '-p {wrapper}'  # plpy_bg: every server process starts filtered")
    conf.write_text("\n".join(lines) + "\n")
    return conf


def supervisor_unit() -> Path:
    """A systemd unit that runs the supervisor before PostgreSQL starts (the wrapper needs it)."""
    SYSTEMD_UNIT.parent.mkdir(parents=True, exist_ok=True)
    SYSTEMD_UNIT.write_text(
        "[Unit]\nDescription=plpy_bg seccomp supervisor (answers the PostgreSQL sandbox's notifications)\n"
        "Before=postgresql.service postgresql@.service\n\n"
        f"[Service]\nExecStart={' '.join(supervisor_command())}\nRestart=on-failure\nUser=root\n\n"
        "[Install]\nWantedBy=multi-user.target postgresql.service\n")
    return SYSTEMD_UNIT


def action_debian(args) -> None:
    """Start a Debian cluster (pg_ctlcluster, systemd) under the seccomp preload helper."""
    action_install(argparse.Namespace(no_apt=True))
    conf = debian_cluster(args.cluster)
    version, name = args.cluster.split("/", 1)
    unit = supervisor_unit()
    if Path("/run/systemd/system").is_dir():  # systemd runs this machine
        run(["systemctl", "daemon-reload"])
        run(["systemctl", "enable", "--now", unit.name])
    else:
        ensure_supervisor()
    print(f"{conf}: pg_ctl_options = '-p {sandbox_wrapper_script()}'\n{unit}: the seccomp supervisor\n"
          f"restart the cluster to apply: pg_ctlcluster {version} {name} restart")


# ---- tests ------------------------------------------------------------------------

def ensure_venv() -> Path:
    py = VENV / "bin" / "python"
    stamp = VENV / ".stamp"
    want = "\n".join(TEST_REQUIREMENTS)
    if not py.exists():
        run([SERVER_PYTHON, "-m", "venv", str(VENV)])
    if not stamp.exists() or stamp.read_text() != want:
        run([str(py), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"] + TEST_REQUIREMENTS)
        stamp.write_text(want)
    return py


def action_test(args) -> None:
    """Install, then run the whole suite (unit and real-server tests) with pytest."""
    action_install(args)
    py = ensure_venv()
    cmd = [str(py), "-m", "pytest", "-p", "no:cacheprovider", str(ROOT / "tests")] + args.pytest_args
    print("+", " ".join(cmd), flush=True)
    sys.exit(subprocess.run(cmd, cwd=ROOT).returncode)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="action", required=True)
    for name, fn in [("install", action_install), ("demo", action_demo), ("test", action_test),
                     ("serve", action_serve), ("stop", action_stop), ("sql", action_sql),
                     ("debian", action_debian), ("supervisor", action_supervisor)]:
        p = sub.add_parser(name, help=fn.__doc__.splitlines()[0])
        p.set_defaults(fn=fn)
        if name in ("install", "demo", "test"):
            p.add_argument("--no-apt", action="store_true", help="do not install apt packages")
        if name == "serve":
            p.add_argument("--dir", help="cluster directory (default: a new temporary one)")
            p.add_argument("--port", type=int, help="port (default: a free one)")
        if name == "stop":
            p.add_argument("--dir", required=True)
            p.add_argument("--destroy", action="store_true")
        if name == "supervisor":
            p.add_argument("--foreground", action="store_true", help="run in the foreground (systemd)")
        if name == "debian":
            p.add_argument("--cluster", required=True, help="version/name, as pg_lsclusters shows it (15/main)")
    args, extra = ap.parse_known_args()
    if args.action == "test":
        args.pytest_args = extra  # everything else goes to pytest
    elif extra:
        ap.error(f"unrecognized arguments: {' '.join(extra)}")
    args.fn(args)


if __name__ == "__main__":
    main()
