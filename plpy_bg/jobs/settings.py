"""Which of the launcher's settings a job inherits, read cheaply on every launch.

pg_background copies the whole GUC state. Reading `pg_settings` costs about
0.8 ms, so it is read once per session: the names of the settings a role may
set, and which of them the session had already changed (session, role or
database values). Each launch then compares the current values with those
(`current_setting()`, inside the launch's one query, with the names and values
as constants of the session's plan) and sends the settings that were
non-default then or differ from their value then.
Custom placeholders (myapp.tenant) are not in pg_settings; they are named in
`plpy_bg.inherit_settings`.
"""
from __future__ import annotations

import re

from plpy_bg.errors import InvalidParameter

# always sent, even at their defaults: the job must run with exactly these
ALWAYS = ("search_path", "statement_timeout", "lock_timeout", "idle_in_transaction_session_timeout",
          "TimeZone", "DateStyle", "IntervalStyle", "application_name", "extra_float_digits",
          "bytea_output")
# never sent: connection-level, identity or transaction state
# (standard_conforming_strings: a job's text is lexed as the policy read it, always on)
NEVER = ("client_encoding", "session_authorization", "role", "standard_conforming_strings", "transaction_isolation",
         "transaction_read_only", "transaction_deferrable", "seed", "is_superuser", "idle_session_timeout")
_NEVER_LOWER = frozenset(n.lower() for n in NEVER)  # setting names are case-insensitive

# run under the caller's search_path: every operator and type is named with its schema
BASELINE_SQL = """
SELECT s.name, s.context, pg_catalog.current_setting(s.name) AS value,
       (s.source OPERATOR(pg_catalog.=) ANY ('{session,client,database,user,"database user"}'::pg_catalog.text[])
        OR s.name OPERATOR(pg_catalog.=) ANY($1)) AS changed
FROM pg_catalog.pg_settings s
WHERE s.context OPERATOR(pg_catalog.=) ANY ('{user,superuser}'::pg_catalog.text[])
  AND s.name OPERATOR(pg_catalog.<>) ALL($2)
  AND NOT pg_catalog.starts_with(s.name, 'pgseccomp.') AND NOT pg_catalog.starts_with(s.name, 'plpy_bg.')
ORDER BY s.name COLLATE pg_catalog."C"
"""


def literal(text: str) -> str:
    """A string literal whatever standard_conforming_strings says."""
    return "E'" + text.replace("\\", "\\\\").replace("'", "''") + "'"

PLACEHOLDERS_SQL = """
SELECT n, pg_catalog.current_setting(n, true) AS v FROM pg_catalog.unnest($1::pg_catalog.text[]) AS n
"""

GD_KEY = "plpy_bg.settings"
GD_PLAN = "plpy_bg.settings.placeholders"


class Baseline:
    def __init__(self, rows):
        self.names = [r["name"] for r in rows]
        self.superuser_only = [r["context"] == "superuser" for r in rows]
        self.values = [r["value"] for r in rows]
        self.changed = [bool(r["changed"]) for r in rows]

    def values_sql(self) -> str:
        """An expression the launch query evaluates: 'i:value' for each setting to send, i.e. those
        changed already at the baseline and those whose value differs from it now. The names and
        baseline values are constants in the session's prepared plan: nothing is passed or
        converted per launch but what differs."""
        items = []
        for i, n in enumerate(self.names):
            cur = f"pg_catalog.current_setting({literal(n)})"
            item = f"pg_catalog.textcat('{i}:', {cur})"
            if self.changed[i]:
                expr = item
            else:  # current_setting() of a listed setting is never NULL: <> is IS DISTINCT FROM here
                expr = f"CASE WHEN {cur} OPERATOR(pg_catalog.<>) {literal(self.values[i])} THEN {item} END"
            if self.superuser_only[i]:  # read only for a superuser (after SET ROLE some may not be read)
                expr = f"CASE WHEN r.rolsuper THEN {expr} END"
            items.append(expr)
        return f"pg_catalog.array_remove(ARRAY[{', '.join(items)}]::pg_catalog.text[], NULL)"

    def inherit(self, items: list[str], superuser: bool) -> list[list[str]]:
        """[name, value] pairs the job must set, from what values_sql() gave at launch."""
        out = []
        for item in items:
            i, v = item.split(":", 1)
            i = int(i)
            if superuser or not self.superuser_only[i]:
                out.append([self.names[i], v])
        return out


def baseline(plpy, GD) -> Baseline:
    b = GD.get(GD_KEY)
    if b is None:
        plan = plpy.prepare(BASELINE_SQL, ["pg_catalog.text[]", "pg_catalog.text[]"])
        b = GD[GD_KEY] = Baseline(plan.execute([list(ALWAYS), list(NEVER)]))
    return b


def placeholders(plpy, GD, names_csv: str | None) -> list[list[str]]:
    """[name, value] of the custom settings named in plpy_bg.inherit_settings that are set."""
    names = [n.strip() for n in (names_csv or "").split(",") if n.strip() and n.strip().lower() not in _NEVER_LOWER]
    if not names:
        return []
    plan = GD.get(GD_PLAN)
    if plan is None:
        plan = GD[GD_PLAN] = plpy.prepare(PLACEHOLDERS_SQL, ["pg_catalog.text[]"])
    return [[x["n"], x["v"]] for x in plan.execute([names]) if x["v"] is not None]


UNITS_BYTES = {"b": 1, "kb": 1024, "mb": 1024 ** 2, "gb": 1024 ** 3, "tb": 1024 ** 4}
UNITS_MS = {"us": 0.001, "ms": 1, "s": 1000, "min": 60_000, "h": 3_600_000, "d": 86_400_000}


def parse_setting(name: str, raw: str | None, default: int, units: dict, base: str) -> int:
    """An integer setting with optional unit (as PostgreSQL writes them), e.g. '256kB', '5min'."""
    if raw is None or raw == "":
        return default
    m = re.fullmatch(r"\s*(-?\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", raw)
    unit = (m.group(2).lower() if m else "") or base
    if not m or unit not in units:
        raise InvalidParameter(f'invalid value for parameter "{name}": "{raw}"',
                               hint=f"Valid units are {', '.join(units)}.")
    val = int(float(m.group(1)) * units[unit])
    if val < 0:
        raise InvalidParameter(f'invalid value for parameter "{name}": "{raw}"', detail="It must not be negative.")
    return val
