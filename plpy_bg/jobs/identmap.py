"""Lines of the ``plpy_bg`` peer map that let job workers log in as the job's role.

Every backend runs as the OS user postgres, so the dispatcher (also postgres)
logs in as role R through ``local ... peer map=plpy_bg`` and one map line
``plpy_bg postgres R``. PostgreSQL 15 takes neither regular expressions nor
``all`` in the database-user column, hence one line per role; the identity
line keeps ordinary peer logins working.
"""
from __future__ import annotations

import re

MAP_NAME = "plpy_bg"
IDENTITY_LINE = r"/^(.*)$ \1"
BEGIN = "# plpy_bg: job worker logins (managed; one line per role)"
_SAFE = re.compile(r'^[^\s"#\\]+$')


def map_line(os_user: str, role: str) -> str:
    """One map line; roles with blanks, quotes or # are written quoted."""
    quoted = role if _SAFE.match(role) else '"' + role.replace('"', '""') + '"'
    return f"{MAP_NAME} {os_user} {quoted}"


def add_roles(text: str, os_user: str, roles: list[str]) -> str | None:
    """The ident file text with lines for `roles` added, or None when all are present."""
    lines = text.splitlines()
    present = {ln.strip() for ln in lines}
    missing = [map_line(os_user, r) for r in roles if map_line(os_user, r) not in present]
    if not missing:
        return None
    if BEGIN not in present:
        lines.append(BEGIN)
    idx = max(i for i, ln in enumerate(lines) if ln.strip() == BEGIN or ln.startswith(f"{MAP_NAME} {os_user} "))
    lines[idx + 1:idx + 1] = missing
    return "\n".join(lines) + "\n"
