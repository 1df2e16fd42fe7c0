"""Catalog lookups for provenance and policy, cached with PostgreSQL's own invalidation.

A cached answer is used only while the backend's SharedInvalidMessageCounter
is unchanged (any committed catalog change anywhere bumps it when this
backend next accepts invalidations, exactly when its syscache would notice)
and only in a transaction without an xid (one that wrote nothing, so no
uncommitted catalog change of our own can be hiding). Otherwise we query.

These queries run under the launching caller's search_path: every operator,
function and type is named with its schema, so a caller's own `=` or `oid`
(even one in pg_temp) never answers for the catalog.
"""
from __future__ import annotations

import re
from typing import Any

from plpy_bg.errors import LockNotAvailable
from plpy_bg.policy import native
from plpy_bg.policy.classify import SQL_TEXT_BUILTINS

_EQ = "OPERATOR(pg_catalog.=)"
_Q_ROLE = (f"SELECT r.rolname, r.rolsuper FROM pg_catalog.pg_roles r WHERE r.oid {_EQ} $1", ["pg_catalog.oid"])
_Q_ROLE_BY_NAME = (f"SELECT r.oid, r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname {_EQ} $1",
                   ["pg_catalog.name"])
_Q_PROC = (f"""
SELECT n.nspname, p.proname, pg_catalog.pg_get_function_identity_arguments(p.oid) AS args,
       p.proowner, r.rolname AS owner, l.lanname, p.prosecdef, p.prokind,
       p.xmin::pg_catalog.text::pg_catalog.int8 AS xmin, p.ctid::pg_catalog.text AS ctid,
       EXISTS (SELECT FROM pg_catalog.unnest(p.proconfig) c
               WHERE pg_catalog.starts_with(c, 'search_path=')) AS sets_search_path
FROM pg_catalog.pg_proc p
JOIN pg_catalog.pg_namespace n ON n.oid {_EQ} p.pronamespace
JOIN pg_catalog.pg_language l ON l.oid {_EQ} p.prolang
LEFT JOIN pg_catalog.pg_roles r ON r.oid {_EQ} p.proowner
WHERE p.oid {_EQ} $1""", ["pg_catalog.oid"])
_Q_SOURCE = (f"""
SELECT CASE WHEN p.prosqlbody IS NULL THEN p.prosrc ELSE pg_catalog.pg_get_functiondef(p.oid) END AS prosrc,
       l.lanname FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_language l ON l.oid {_EQ} p.prolang
WHERE p.oid {_EQ} $1""", ["pg_catalog.oid"])
_Q_RELS = (f"""
SELECT c.oid, n.nspname, c.relname, c.relkind, c.relhasrules, c.relowner, r.rolname AS owner
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid {_EQ} c.relnamespace
LEFT JOIN pg_catalog.pg_roles r ON r.oid {_EQ} c.relowner
WHERE c.oid {_EQ} ANY($1)""", ["pg_catalog.oid[]"])
# Code a statement on these relations may run with no frame of its author: expressions of row-
# level security policies, column defaults and generated columns, constraints, index expressions,
# rules, trigger conditions and partition keys of the relations, their partitions and inheritance
# children, and the CHECKs and defaults of every domain their columns or those expressions reach
# (through base domains, arrays, composite and range types), when they call code that is not
# built in: a function or an operator's function of a user (the extension's launch and trust
# functions included), or a built-in that runs SQL text. A trigger's own function runs as a frame
# of its owner, on the stack. Every join below goes through an index of the catalogs.
_SQL_TEXT_BUILTINS = "{" + ",".join(sorted(SQL_TEXT_BUILTINS)) + "}"
_CODE_FN = f"""(p.oid OPERATOR(pg_catalog.>=) 16384::pg_catalog.oid
        OR (p.pronamespace {_EQ} 'pg_catalog'::pg_catalog.regnamespace
            AND p.proname {_EQ} ANY('{_SQL_TEXT_BUILTINS}'::pg_catalog.name[])))"""
_USER_FN = f"""((d.refclassid {_EQ} 'pg_catalog.pg_proc'::pg_catalog.regclass AND EXISTS (
            SELECT FROM pg_catalog.pg_proc p WHERE p.oid {_EQ} d.refobjid AND {_CODE_FN}))
        OR (d.refclassid {_EQ} 'pg_catalog.pg_operator'::pg_catalog.regclass AND EXISTS (
            SELECT FROM pg_catalog.pg_operator op JOIN pg_catalog.pg_proc p ON p.oid {_EQ} op.oprcode::pg_catalog.oid
            WHERE op.oid {_EQ} d.refobjid AND {_CODE_FN})))"""
# (what a refusal calls it, the catalog, the class its pg_depend rows name, its object and
# relation columns, a further condition)
_CODE_SOURCES = (
    ("row-level security policy", "pg_policy", "pg_policy", "oid", "polrelid", ""),
    ("column default", "pg_attrdef", "pg_attrdef", "oid", "adrelid", ""),
    ("constraint", "pg_constraint", "pg_constraint", "oid", "conrelid", ""),
    ("index expression", "pg_index", "pg_class", "indexrelid", "indrelid", ""),
    ("rule", "pg_rewrite", "pg_rewrite", "oid", "ev_class", ""),
    ("trigger", "pg_trigger", "pg_trigger", "oid", "tgrelid",
     " AND NOT o.tgisinternal AND d.refobjid OPERATOR(pg_catalog.<>) o.tgfoid"),
    ("partition key", "pg_class", "pg_class", "oid", "oid", " AND d.objsubid OPERATOR(pg_catalog.=) 0"),
)


def _source_deps(where_rel: str, columns: str) -> str:
    """pg_depend rows (`columns` of o and d) of the sources whose relation column matches `where_rel`."""
    return "\n    UNION ALL ".join(
        f"SELECT {columns.format(kind=kind)} FROM pg_catalog.{cat} o JOIN pg_catalog.pg_depend d\n"
        f"      ON d.classid {_EQ} 'pg_catalog.{cls}'::pg_catalog.regclass AND d.objid {_EQ} o.{obj}\n"
        f"      WHERE o.{rel} {where_rel}{extra}"
        for kind, cat, cls, obj, rel, extra in _CODE_SOURCES)


# the function a code dependency runs: the function itself, or the operator's
_FN_OF_DEP = (f"CASE WHEN d.refclassid {_EQ} 'pg_catalog.pg_proc'::pg_catalog.regclass THEN d.refobjid ELSE ("
              f"SELECT op.oprcode::pg_catalog.oid FROM pg_catalog.pg_operator op WHERE op.oid {_EQ} d.refobjid) END")
_CODE_KINDS = _source_deps(f"{_EQ} c.oid AND {_USER_FN}", "'{kind}' AS k, " + _FN_OF_DEP + " AS fn")
# what a type reaches: its base domain, element, fields, range subtype, and the types its domain
# CHECKs and default cast to (a recursive term over `types`)
_TYPE_CHILDREN = f"""SELECT x.child FROM types JOIN pg_catalog.pg_type t ON t.oid {_EQ} types.oid
    CROSS JOIN LATERAL (
        SELECT t.typbasetype WHERE t.typtype {_EQ} 'd'
        UNION ALL SELECT t.typelem WHERE t.typelem OPERATOR(pg_catalog.<>) 0::pg_catalog.oid
        UNION ALL SELECT a.atttypid FROM pg_catalog.pg_attribute a
            WHERE t.typtype {_EQ} 'c' AND a.attrelid {_EQ} t.typrelid
              AND a.attnum OPERATOR(pg_catalog.>) 0 AND NOT a.attisdropped
        UNION ALL SELECT g.rngsubtype FROM pg_catalog.pg_range g WHERE g.rngtypid {_EQ} t.oid
        UNION ALL SELECT g.rngtypid FROM pg_catalog.pg_range g WHERE g.rngmultitypid {_EQ} t.oid
        UNION ALL SELECT d.refobjid FROM pg_catalog.pg_constraint k  -- types a domain's CHECK casts to
            JOIN pg_catalog.pg_depend d ON d.classid {_EQ} 'pg_catalog.pg_constraint'::pg_catalog.regclass
             AND d.objid {_EQ} k.oid AND d.refclassid {_EQ} 'pg_catalog.pg_type'::pg_catalog.regclass
            WHERE k.contypid {_EQ} t.oid
        UNION ALL SELECT d.refobjid FROM pg_catalog.pg_depend d  -- and its default
            WHERE t.typtype {_EQ} 'd' AND d.classid {_EQ} 'pg_catalog.pg_type'::pg_catalog.regclass
              AND d.objid {_EQ} t.oid AND d.refclassid {_EQ} 'pg_catalog.pg_type'::pg_catalog.regclass) x(child)"""
_DOMAIN_CTES = f"""domains(oid) AS (
    SELECT t.oid FROM types JOIN pg_catalog.pg_type t ON t.oid {_EQ} types.oid WHERE t.typtype {_EQ} 'd'
), domdeps(dom, kind, refclassid, refobjid) AS (
    SELECT domains.oid, 'domain constraint', d.refclassid, d.refobjid FROM domains
    JOIN pg_catalog.pg_constraint o ON o.contypid {_EQ} domains.oid
    JOIN pg_catalog.pg_depend d ON d.classid {_EQ} 'pg_catalog.pg_constraint'::pg_catalog.regclass AND d.objid {_EQ} o.oid
    UNION ALL
    SELECT domains.oid, 'domain default', d.refclassid, d.refobjid FROM domains
    JOIN pg_catalog.pg_depend d ON d.classid {_EQ} 'pg_catalog.pg_type'::pg_catalog.regclass AND d.objid {_EQ} domains.oid
)"""
_REACH = f"""rels(oid) AS (
    SELECT pg_catalog.unnest($1::pg_catalog.oid[])
    UNION
    SELECT i.inhrelid FROM rels JOIN pg_catalog.pg_inherits i ON i.inhparent {_EQ} rels.oid
), srcdeps(refclassid, refobjid) AS (
    {_source_deps(f"{_EQ} ANY(ARRAY(SELECT rels.oid FROM rels))", "d.refclassid, d.refobjid")}
), types(oid) AS (
    SELECT a.atttypid FROM rels JOIN pg_catalog.pg_attribute a ON a.attrelid {_EQ} rels.oid
    WHERE a.attnum OPERATOR(pg_catalog.>) 0 AND NOT a.attisdropped
    UNION  -- types the stored expressions cast to
    SELECT srcdeps.refobjid FROM srcdeps WHERE srcdeps.refclassid {_EQ} 'pg_catalog.pg_type'::pg_catalog.regclass
    UNION
    {_TYPE_CHILDREN}
), {_DOMAIN_CTES}"""
_DOMAIN_ROWS = f"""SELECT t.oid, n.nspname, t.typname AS relname, t.typowner AS relowner, r.rolname AS owner,
    'domain' AS what, x.kinds, x.fns
FROM domains JOIN pg_catalog.pg_type t ON t.oid {_EQ} domains.oid
JOIN pg_catalog.pg_namespace n ON n.oid {_EQ} t.typnamespace
LEFT JOIN pg_catalog.pg_roles r ON r.oid {_EQ} t.typowner
CROSS JOIN LATERAL (SELECT pg_catalog.array_agg(DISTINCT d.kind) AS kinds, pg_catalog.array_agg(DISTINCT {_FN_OF_DEP}) AS fns
                    FROM domdeps d WHERE d.dom {_EQ} t.oid AND {_USER_FN}) x"""
# Domains whose code calls functions that are not built in, reached from type names a statement
# writes (a cast, CAST ... AS, a record's type): their CHECKs run with no frame as the caller.
_Q_TYPE_DOMAINS = (f"""
WITH RECURSIVE types(oid) AS (
    SELECT t.oid FROM pg_catalog.unnest($1::pg_catalog.text[]) n
    CROSS JOIN LATERAL (SELECT pg_catalog.to_regtype(n)::pg_catalog.oid AS oid) t
    WHERE t.oid OPERATOR(pg_catalog.>=) 16384::pg_catalog.oid
    UNION  -- an unqualified name, in any schema: the statement may have been parsed under another
           -- path; but none shadows a pg_catalog type while pg_catalog comes first ($3)
    SELECT t.oid FROM pg_catalog.pg_type t WHERE t.typname {_EQ} ANY($2::pg_catalog.name[])
      AND t.oid OPERATOR(pg_catalog.>=) 16384::pg_catalog.oid
      AND NOT ($3 AND EXISTS (SELECT FROM pg_catalog.pg_type b WHERE b.typname {_EQ} t.typname
                              AND b.typnamespace {_EQ} 'pg_catalog'::pg_catalog.regnamespace))
    UNION
    {_TYPE_CHILDREN}
), {_DOMAIN_CTES}
{_DOMAIN_ROWS}""", ["pg_catalog.text[]", "pg_catalog.name[]", "pg_catalog.bool"])
_Q_CODE = (f"""
WITH RECURSIVE {_REACH}
SELECT c.oid, n.nspname, c.relname, c.relowner, r.rolname AS owner, 'relation' AS what, x.kinds, x.fns
FROM rels JOIN pg_catalog.pg_class c ON c.oid {_EQ} rels.oid
JOIN pg_catalog.pg_namespace n ON n.oid {_EQ} c.relnamespace
LEFT JOIN pg_catalog.pg_roles r ON r.oid {_EQ} c.relowner
CROSS JOIN LATERAL (SELECT pg_catalog.array_agg(DISTINCT y.k) AS kinds, pg_catalog.array_agg(DISTINCT y.fn) AS fns
                    FROM ({_CODE_KINDS}) y) x
UNION ALL
{_DOMAIN_ROWS}
""", ["pg_catalog.oid[]"])
# The user functions that code runs (the same sources, the domains' too) and, for a statement that
# writes, the relations' triggers: what a job's statement calls beyond what its plan names.
_Q_CODE_FUNCS = (f"""
WITH RECURSIVE {_REACH}, deps(refclassid, refobjid) AS (
    SELECT srcdeps.refclassid, srcdeps.refobjid FROM srcdeps
    UNION ALL SELECT domdeps.refclassid, domdeps.refobjid FROM domdeps
)
SELECT p.oid FROM deps JOIN pg_catalog.pg_proc p ON p.oid {_EQ} deps.refobjid
WHERE deps.refclassid {_EQ} 'pg_catalog.pg_proc'::pg_catalog.regclass AND p.oid OPERATOR(pg_catalog.>=) 16384::pg_catalog.oid
UNION
SELECT p.oid FROM deps JOIN pg_catalog.pg_operator op ON op.oid {_EQ} deps.refobjid
JOIN pg_catalog.pg_proc p ON p.oid {_EQ} op.oprcode::pg_catalog.oid
WHERE deps.refclassid {_EQ} 'pg_catalog.pg_operator'::pg_catalog.regclass AND p.oid OPERATOR(pg_catalog.>=) 16384::pg_catalog.oid
UNION
SELECT g.tgfoid FROM rels JOIN pg_catalog.pg_trigger g ON g.tgrelid {_EQ} rels.oid
WHERE $2 AND NOT g.tgisinternal AND g.tgenabled OPERATOR(pg_catalog.<>) 'D'
""", ["pg_catalog.oid[]", "pg_catalog.bool"])
_Q_MEMBER = ("SELECT pg_catalog.pg_has_role($1, $2, 'MEMBER') AS m", ["pg_catalog.oid", "pg_catalog.oid"])
_Q_FUNCS = (f"""
SELECT p.oid, n.nspname, p.proname, pg_catalog.pg_get_function_identity_arguments(p.oid) AS args,
       p.proowner, r.rolname AS owner, p.prosecdef, p.pronargs, p.pronargdefaults,
       p.provariadic OPERATOR(pg_catalog.<>) 0::pg_catalog.oid AS variadic, l.lanname
FROM pg_catalog.pg_proc p
JOIN pg_catalog.pg_namespace n ON n.oid {_EQ} p.pronamespace
JOIN pg_catalog.pg_language l ON l.oid {_EQ} p.prolang
LEFT JOIN pg_catalog.pg_roles r ON r.oid {_EQ} p.proowner
WHERE p.proname {_EQ} $1 AND n.nspname {_EQ} ANY($2)
  AND NOT coalesce(r.rolsuper, false)  -- superusers are trusted by everyone""",
            ["pg_catalog.name", "pg_catalog.name[]"])
_Q_OPS = (f"""
SELECT o.oid, n.nspname, o.oprname, o.oprowner, ro.rolname AS opowner,
       o.oprleft, o.oprright, o.oprcode::pg_catalog.oid AS func, p.proowner, rp.rolname AS funcowner,
       p.prosecdef, pg_catalog.format('%s(%s)', o.oprname,
         pg_catalog.concat_ws(', ', o.oprleft::pg_catalog.regtype, o.oprright::pg_catalog.regtype)) AS signature
FROM pg_catalog.pg_operator o
JOIN pg_catalog.pg_namespace n ON n.oid {_EQ} o.oprnamespace
JOIN pg_catalog.pg_proc p ON p.oid {_EQ} o.oprcode
LEFT JOIN pg_catalog.pg_roles ro ON ro.oid {_EQ} o.oprowner
LEFT JOIN pg_catalog.pg_roles rp ON rp.oid {_EQ} p.proowner
WHERE o.oprname {_EQ} $1 AND n.nspname {_EQ} ANY($2)
  AND NOT (coalesce(ro.rolsuper, false) AND coalesce(rp.rolsuper, false))""",
          ["pg_catalog.name", "pg_catalog.name[]"])
_Q_NO_JIT = ("SELECT pg_catalog.set_config('jit', 'off', true), "
             "pg_catalog.set_config('plan_cache_mode', 'force_generic_plan', true)", [])
_Q_ANALYSIS_SETTINGS = ("SELECT pg_catalog.set_config('search_path', $1, true), "
                        "pg_catalog.set_config('lock_timeout', '50ms', true)", ["pg_catalog.text"])
_Q_TRUST = (f"SELECT t.trustee::pg_catalog.oid AS trustee FROM plpy_bg.trust t WHERE t.truster {_EQ} $1",
             ["pg_catalog.oid"])
_Q_HAS_TRUST = ("SELECT pg_catalog.to_regclass('plpy_bg.trust') IS NOT NULL AS ok", [])


_PATH_ITEM = re.compile(r'\s*("(?:[^"]|"")*"|[^,]*)\s*(?:,|$)')


def path_items(search_path: str | None) -> list[str]:
    """The schema names of a search_path value, as the server splits it (quoted names keep their
    case and commas, unquoted ones are folded to lower case; "$user" stays as written)."""
    out = []
    for m in _PATH_ITEM.finditer(search_path or ""):
        item = m.group(1).strip()
        if item:
            out.append(item[1:-1].replace('""', '"') if item.startswith('"') else item.lower())
    return out


def is_temp_schema(name: str) -> bool:
    return name == "pg_temp" or name.startswith("pg_temp_")


def pg_catalog_first(search_path: str) -> bool:
    """Whether the path searches pg_catalog before any schema of a user (it does, implicitly,
    unless the path names it after another)."""
    names = path_items(search_path)
    if "pg_catalog" not in names:
        return True
    return all(is_temp_schema(n) for n in names[:names.index("pg_catalog")])


class Catalog:
    """Cached lookups for one backend; `catalog(plpy)` returns the shared instance."""

    def __init__(self, plpy, be: native.Backend):
        self.plpy = plpy
        self.be = be
        self._plans: dict[str, Any] = {}
        self._cache: dict[tuple, Any] = {}
        self._tag: int | None = None
        self._use = False  # set by refresh() at the start of each capture and check
        self.queries = 0  # for tests and the benchmark: how often we went to SPI

    def refresh(self) -> None:
        """Decide once per capture or check whether cached answers may be used."""
        if self.be.has_xid():
            self._use = False
            return
        tag = self.be.sinval_counter()
        if tag != self._tag:
            self._cache.clear()
            self._tag = tag
        self._use = True

    def _cacheable(self) -> bool:
        return self._use

    def _run(self, q: tuple[str, list[str]], *args) -> list:
        plan = self._plans.get(q[0])
        if plan is None:
            plan = self._plans[q[0]] = self.plpy.prepare(q[0], q[1])
        self.queries += 1
        return list(self.plpy.execute(plan, list(args)))

    def _cached(self, key: tuple, q: tuple[str, list[str]], *args, heavy: bool = False) -> list:
        use = self._cacheable()
        if use and key in self._cache:
            return self._cache[key]
        rows = self._run_without_jit(q, *args) if heavy else [dict(r) for r in self._run(q, *args)]
        if use:
            self._cache[key] = rows
        return rows

    def _rolled_back(self, work):
        """What `work()` returns, computed in a subtransaction that is then rolled back: the
        settings it changed and the locks it took go with it."""
        class Rollback(Exception):
            pass

        out: list = []
        try:
            with self.plpy.subtransaction():
                out.append(work())
                raise Rollback
        except Rollback:
            return out[0]

    def _run_without_jit(self, q: tuple[str, list[str]], *args) -> list[dict]:
        """A query whose many subplans the planner costs high enough to JIT-compile (a second spent
        compiling a 10 ms query), planned once: run with jit off and a generic plan."""
        def work():
            self._run(_Q_NO_JIT)
            return [dict(r) for r in self._run(q, *args)]
        return self._rolled_back(work)

    def role(self, oid: int) -> dict | None:
        rows = self._cached(("role", oid), _Q_ROLE, oid)
        return {"oid": oid, "name": rows[0]["rolname"], "superuser": rows[0]["rolsuper"]} if rows else None

    def role_by_name(self, name: str) -> dict | None:
        rows = self._cached(("rolename", name), _Q_ROLE_BY_NAME, name)
        return {"oid": int(rows[0]["oid"]), "name": name, "superuser": rows[0]["rolsuper"]} if rows else None

    def proc(self, oid: int) -> dict | None:
        rows = self._cached(("proc", oid), _Q_PROC, oid)
        if not rows:
            return None
        r = rows[0]
        block, off = r["ctid"].strip("()").split(",")
        return {"oid": oid, "schema": r["nspname"], "name": r["proname"], "args": r["args"],
                "owner_oid": int(r["proowner"]), "owner": r["owner"], "language": r["lanname"],
                "security_definer": r["prosecdef"], "prokind": r["prokind"],
                "sets_search_path": r["sets_search_path"],
                "xmin": int(r["xmin"]), "ctid": (int(block), int(off))}

    def source(self, oid: int) -> tuple[str, str] | None:
        """(source text, language) of a function."""
        rows = self._cached(("source", oid), _Q_SOURCE, oid)
        return (rows[0]["prosrc"], rows[0]["lanname"]) if rows else None

    def any_sql_function(self, oids: list[int]) -> bool:
        """Whether one of these functions is written in SQL (only those the planner inlines)."""
        return any((self.proc(f) or {}).get("language") == "sql" for f in oids)

    def relations(self, oids: list[int]) -> list[dict]:
        key = ("rels", tuple(sorted(set(oids))))
        return self._cached(key, _Q_RELS, list(key[1]))

    def code_of(self, oids: list[int]) -> list[dict]:
        """Relations among `oids`, and domains of their columns, whose expressions call functions
        that are not built in: (oid, name, owner, what, kinds) for those that do."""
        key = ("code", tuple(sorted(set(oids))))
        return [r for r in self._cached(key, _Q_CODE, list(key[1]), heavy=True) if r["kinds"]]

    def domains_named(self, names: tuple[tuple[str, ...], ...], search_path: str | None = None) -> list[dict]:
        """Domains with code that the named types reach: a qualified name, an unqualified one in
        any schema (the statement may have been parsed under another search_path) unless a
        pg_catalog type has the name and `search_path` (the current one by default) searches
        pg_catalog first."""
        quoted = sorted({".".join('"' + p.replace('"', '""') + '"' for p in n) for n in names if len(n) > 1})
        bare = sorted({n[0] for n in names if len(n) == 1})
        first = pg_catalog_first(self.be.search_path() if search_path is None else search_path)
        key = ("typedoms", tuple(quoted), tuple(bare), first)
        return [r for r in self._cached(key, _Q_TYPE_DOMAINS, quoted, bare, first, heavy=True) if r["kinds"]]

    def code_functions(self, oids: list[int], writes: bool) -> list[int]:
        """User functions that frame-less code of these relations (their partitions and children,
        and the domains of their columns) calls, and, for a statement that writes, their triggers'."""
        key = ("codefns", tuple(sorted(set(oids))), writes)
        return [int(r["oid"]) for r in self._cached(key, _Q_CODE_FUNCS, list(key[1]), writes, heavy=True)]

    def can_become(self, member: int, role: int) -> bool:
        """True when `member` may SET ROLE to `role` (superusers may become anyone)."""
        rows = self._cached(("member", member, role), _Q_MEMBER, member, role)
        return bool(rows and rows[0]["m"])

    def functions_named(self, name: str, schemas: tuple[str, ...]) -> list[dict]:
        return self._cached(("funcs", name, schemas), _Q_FUNCS, name, list(schemas))

    def operators_named(self, name: str, schemas: tuple[str, ...]) -> list[dict]:
        return self._cached(("ops", name, schemas), _Q_OPS, name, list(schemas))

    def analyzed(self, text: str, search_path: str) -> native.Deps | None:
        """What one statement depends on, by the server's own parse analysis and rewriting under
        `search_path` as the current user: views expanded, operators and overloads resolved as the
        statement will resolve them. Nothing is planned or run (the planner would fold IMMUTABLE
        calls), and a subtransaction that is rolled back releases the locks analysis takes; a
        relation another session locks is waited for 50 ms at most. None when the statement does
        not analyze (an object an earlier statement creates, a parameter); LockNotAvailable when a
        relation it names is locked by another session (the caller must not guess instead)."""
        key = ("analyzed", text, search_path, self.be.user_id())
        use = self._cacheable()
        if use and key in self._cache:
            return self._cache[key]
        deps = self._analyze(text, search_path)
        if use:
            self._cache[key] = deps
        return deps

    def _analyze(self, text: str, search_path: str) -> native.Deps | None:
        def work():
            self._run(_Q_ANALYSIS_SETTINGS, search_path)
            plan = self.plpy.prepare(text)  # held: its plan sources die with it
            return [self.be.plansource_deps(ps) for ps in self.be.plpy_plan_sources(plan) or [0] if ps] or [None]

        try:
            found = self._rolled_back(work)
        except self.plpy.SPIError as e:
            if getattr(e, "sqlstate", None) == "55P03":
                raise LockNotAvailable(
                    "could not check a background job's statement: a relation it names is locked by another session",
                    detail=f"Statement: {text[:200]}",
                    hint="Launch again once the other session's lock is released.") from None
            if not native.analysis_error(e):
                raise  # a cancel or a statement_timeout stops the launch
            return None
        if any(d is None for d in found):
            return None
        return native.Deps([r for d in found for r in d.rels], [f for d in found for f in d.funcs],
                           [u for d in found for u in d.utility])

    def declared_trustees(self, truster: int) -> set[int]:
        """Roles `truster` declared trust in; never cached (plain DML sends no invalidation)."""
        ok = self._cached(("has_trust",), _Q_HAS_TRUST)
        if not (ok and ok[0]["ok"]):
            return set()
        return {int(r["trustee"]) for r in self._run(_Q_TRUST, truster)}


_CATALOG: Catalog | None = None


def catalog(plpy) -> Catalog:
    global _CATALOG
    if _CATALOG is None or _CATALOG.plpy is not plpy:
        _CATALOG = Catalog(plpy, native.backend(plpy))
    return _CATALOG
