"""Lines of the ``plpy_bg`` peer map that let job workers and the dispatcher log in.

Every backend runs as the OS user postgres, so the dispatcher (also postgres)
logs in as role R through ``local ... peer map=plpy_bg`` and one map line
``plpy_bg postgres "R"``. PostgreSQL 15 takes neither regular expressions nor
``all`` in the database-user column, hence one line per role; the identity
line keeps ordinary peer logins working.

The role is always written double-quoted (a quote doubled): PostgreSQL then
reads it literally, never as a list (comma), a comment (#), a line
continuation (trailing backslash), a group (+) or a regular expression (/).
Only printable names are written: a control character or a Unicode line or
paragraph separator could end the line for some reader of the file (Python's
splitlines() splits on eleven of them), so such a name is refused. The file
is split into lines at LF only, as PostgreSQL reads it, and replaced
atomically under a lock, so it is never left half written or unreadable.
"""
from __future__ import annotations

import fcntl
import os
import pwd

from plpy_bg.errors import PgError

DISPATCHER_ROLE = "plpy_bg_dispatcher"  # created by the extension; see sql/idempotent/015-dispatcher.sql
SHADOW_PREFIX = "plpy_bg_job_"  # + a NOLOGIN role's oid: the login its jobs run under (plpy_bg.job_login)


def shadow_name(role_oid: int) -> str:
    return f"{SHADOW_PREFIX}{int(role_oid)}"
MAP_NAME = "plpy_bg"
IDENTITY_LINE = r"/^(.*)$ \1"
BEGIN = "# plpy_bg: job worker logins (managed; one line per role)"


class UnrepresentableName(PgError):
    sqlstate = "42602"


def os_user() -> str:
    """The OS user this process runs as: the server's, for backends and the dispatcher alike."""
    return pwd.getpwuid(os.geteuid()).pw_name


def check_role_name(role: str) -> str:
    """The name as given, or an error when a map line cannot hold it unambiguously."""
    if not role or not role.isprintable():  # str.isprintable: no control, separator but space
        raise UnrepresentableName(
            f"role name {role!r} cannot be written to pg_ident.conf",
            detail="A peer-map line holds printable characters only: no control character "
                   "(carriage return, line feed, tab, NUL, ...) and no Unicode line or paragraph separator.",
            hint="Rename the role (ALTER ROLE ... RENAME TO ...) before granting it background jobs.")
    return role


def map_line(os_user: str, role: str) -> str:
    check_role_name(role)
    return f'{MAP_NAME} {os_user} "{role.replace(chr(34), chr(34) * 2)}"'


def _token(text: str, i: int) -> tuple[str | None, int]:
    """The next field of a map line from `i`: (value, end), quotes resolved as PostgreSQL does."""
    n = len(text)
    while i < n and text[i] in " \t\r":  # PostgreSQL's blanks
        i += 1
    if i >= n or text[i] == "#":
        return None, n
    out, quoted = [], False
    while i < n and (quoted or text[i] not in " \t\r"):
        c = text[i]
        if c == '"':
            if quoted and i + 1 < n and text[i + 1] == '"':
                out.append('"')
                i += 1
            else:
                quoted = not quoted
        elif c == "#" and not quoted:
            break
        else:
            out.append(c)
        i += 1
    return "".join(out), i


def mapped_role(line: str, os_user: str) -> str | None:
    """The role a line maps `os_user` to in map plpy_bg, or None for any other line."""
    fields, i = [], 0
    while len(fields) < 4:
        tok, i = _token(line, i)
        if tok is None:
            break
        fields.append(tok)
    if len(fields) == 3 and fields[0] == MAP_NAME and fields[1] == os_user:
        return fields[2]
    return None


def with_roles(text: str, os_user: str, add: list[str] = (), remove: list[str] = ()) -> str | None:
    """The ident file text with lines for `add` present and lines for `remove` gone; None when unchanged."""
    for r in list(add) + list(remove):
        check_role_name(r)
    lines = text.split("\n")  # as PostgreSQL reads the file: splitlines() would split at more
    if lines and lines[-1] == "":
        lines.pop()
    drop = set(remove) - set(add)
    kept = [ln for ln in lines if mapped_role(ln, os_user) not in drop]
    present = {mapped_role(ln, os_user) for ln in kept}
    missing = [map_line(os_user, r) for r in dict.fromkeys(add) if r not in present]
    if not missing and len(kept) == len(lines):
        return None
    if missing:
        if BEGIN not in (ln.strip() for ln in kept):
            kept.append(BEGIN)
        idx = max(i for i, ln in enumerate(kept) if ln.strip() == BEGIN or mapped_role(ln, os_user) is not None)
        kept[idx + 1:idx + 1] = missing
    return "\n".join(kept) + "\n"


def update_file(path: str, os_user: str, add: list[str] = (), remove: list[str] = ()) -> bool:
    """Rewrite the ident file at `path` atomically; True when it changed (the server must reload)."""
    directory = os.path.dirname(path) or "."
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(dfd, fcntl.LOCK_EX)  # the dispatcher and backends may write at once
        try:
            with open(path) as f:
                text = f.read()
            mode = os.stat(path).st_mode & 0o777
        except FileNotFoundError:
            text, mode = "", 0o640
        new = with_roles(text, os_user, add, remove)
        if new is None:
            return False
        tmp = f"{path}.plpy_bg.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            f.write(new)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
        return True
    finally:
        os.close(dfd)  # releases the lock
