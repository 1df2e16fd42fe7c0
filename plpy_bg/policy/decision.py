"""The launch-time decision: may this chain make `job_role` run this SQL?

Rules, in order:
1. Identity changes (SET ROLE, SESSION AUTHORIZATION, set_config of them,
   RESET ALL, DISCARD ALL) are refused in every job.
2. A function or operator the job may call, owned by a role the job role
   does not trust and not SECURITY DEFINER, is refused: it would run that
   role's code with the job role's privileges. Which ones a statement calls
   is the server's own answer: its parse analysis under the job's
   search_path (views expanded, overloads and operators resolved), never
   planned or run. Statements it cannot analyze at launch (utility
   statements, objects an earlier statement creates) are resolved by name,
   counting every visible overload a better type match could pick.
3. When the effective chain (see `provenance`) holds a role the job role
   does not trust, the job is refused, whatever its statements: an
   autonomous job escapes the inducer's victim's ROLLBACK and READ ONLY, so
   even a read that writes nothing (it may leak into a table the job can
   write) or a plain INSERT (its triggers run as the victim) is an
   escalation. Callers outside the innermost SECURITY DEFINER frame owned by
   the job role are not effective (`provenance.mark_boundary`): the wrapper's
   author chose to act for them.
4. ... but only with their data: when such a caller is not trusted by the job
   role, the job text must be the trusted side's own constants plus single
   quoted values, numbers or names (`taint`); otherwise the caller's text
   changed the statement and the job is refused.
"""
from __future__ import annotations

import functools

from plpy_bg.errors import InsufficientPrivilege, ObjectNotFound, PgError
from plpy_bg.policy import catalog as _catalog
from plpy_bg.policy import native, taint
from plpy_bg.policy.classify import (KINDS_ALWAYS_REFUSED, OPAQUE_FUNCTIONS, SQL_TEXT_EXTENSION_FUNCTIONS,
                                    ClassifyError, classify, worst_statement)
from plpy_bg.policy.trust import TRUST_FUNCTION, TrustCache

FIRST_NORMAL_OID = 16384


_PATHS: dict[tuple[str | None, str], tuple[str, ...]] = {}


def parse_search_path(path: str | None, role: str) -> tuple[str, ...]:
    """Schemas searched for functions, in order, pg_catalog first unless placed explicitly."""
    hit = _PATHS.get((path, role))
    if hit is None:
        if len(_PATHS) > 256:
            _PATHS.clear()
        hit = _PATHS[(path, role)] = _parse_search_path(path, role)
    return hit


def _parse_search_path(path: str | None, role: str) -> tuple[str, ...]:
    out = [role if n == "$user" else n for n in _catalog.path_items(path)
           if not _catalog.is_temp_schema(n)]  # functions are never looked up in pg_temp unqualified
    if "pg_catalog" not in out:
        out.insert(0, "pg_catalog")
    return tuple(dict.fromkeys(out))


@functools.lru_cache(maxsize=256)
def _without_our_temp(path: str) -> str:
    """The path for analyzing a job's statement here: the job's session has temporary tables of its
    own, so ours are searched last (where the path does not place pg_temp itself) and cannot hide
    a relation the job will find."""
    if any(_catalog.is_temp_schema(n) for n in _catalog.path_items(path)):
        return path
    return f"{path}, pg_temp" if path and path.strip() else "pg_temp"


def _lit(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def _describe(e: dict) -> str:
    k = e["kind"]
    role = f'"{e.get("role")}"'
    if k == "session":
        return f"session user {role}"
    if k == "unknown":
        return f'unidentified code ({e.get("detail", "no detail")})'
    if k == "inline":
        return f'anonymous code block ({e.get("language")})'
    if k in ("view", "rule"):
        what = "view" if k == "view" else "table with rules"
        return f'{what} {e.get("name")} owned by {role}'
    if k in ("table", "domain"):
        return f'{k} {e.get("name")} owned by {role} (its {", ".join(e.get("code") or ())} call functions)'
    if k == "job":
        return f'parent job (pid {e.get("pid")}) running as {role}'
    sd = "SECURITY DEFINER" if e.get("security_definer") else "SECURITY INVOKER"
    what = {"trigger": "trigger function", "statement function": "function used by the statement"}.get(k, "function")
    lang = f'{e["language"]}, ' if e.get("language") else ""
    return f'{what} {e.get("name")} owned by {role} ({lang}{sd})'


def chain_detail(chain: list[dict], job_role: str, culprit: int | None) -> str:
    lines = ["Chain of custody, outermost first:"]
    for i, e in enumerate(chain):
        mark = ""
        if e.get("inherited"):
            mark = "   (inherited from the parent job)"
        elif not e.get("effective", True):
            mark = "   (outside the SECURITY DEFINER boundary)"
        if i == culprit:
            mark += f'   <-- not trusted by "{job_role}": it enters here'
        lines.append(f"  {i + 1}. {_describe(e)}{mark}")
    lines.append(f'The job would run as "{job_role}".')
    return "\n".join(lines)


def _induce(who: str | None, job_role: str, command: str, detail: str, hint: str | None) -> InsufficientPrivilege:
    subject = f'user "{who}"' if who else "unidentified code"
    return InsufficientPrivilege(f'{subject} may not induce user "{job_role}" to execute "{command}"',
                                 detail=detail, hint=hint)


def _trust_hint(job_role: str, who: str | None) -> str:
    if who is None:
        return ("Call the launch function from a plain statement (SELECT, INSERT, UPDATE, DELETE, CALL, DO) or from "
                "a PL/pgSQL, PL/Python or SQL function, not from a query that CREATE TABLE AS, EXPLAIN or COPY "
                "runs; build dynamic SQL with format() and %L instead of parameters, so its origin can be established.")
    return (f'If "{job_role}" trusts "{who}", run SELECT {TRUST_FUNCTION}({_lit(who)}) '
            f'as "{job_role}", or launch the job from code "{job_role}" trusts.')


def _plausible(c: dict, nargs: int) -> bool:
    lo = int(c["pronargs"]) - int(c["pronargdefaults"])
    return lo <= nargs <= int(c["pronargs"]) or (bool(c["variadic"]) and nargs >= int(c["pronargs"]) - 1)


# statements the server's parse analysis resolves completely (their functions, operators, views)
_ANALYZABLE = frozenset({"SelectStmt", "InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt",
                         "CreateTableAsStmt", "ExplainStmt"})


def _function_judged(c: dict, tc: TrustCache, job_oid: int, resolved: list, bad: list) -> None:
    entry = {"kind": "function", "name": c["name"], "oid": c["oid"], "role_oid": c["owner_oid"],
             "role": c["owner"], "language": c["language"], "security_definer": bool(c["security_definer"])}
    resolved.append(entry)
    if not c["security_definer"] and tc.reason(job_oid, c["owner_oid"]) is None:
        bad.append(entry)


def _analyzed_functions(cat, tc: TrustCache, job_oid: int, deps, resolved: list, bad: list) -> None:
    """Functions (operators' included) the server resolved for one statement."""
    for oid in dict.fromkeys(deps.funcs):
        p = cat.proc(oid)
        if p is not None:
            _function_judged({**p, "name": f'{p["schema"]}.{p["name"]}({p["args"]})'}, tc, job_oid, resolved, bad)


def _named_functions(cat, tc: TrustCache, job_oid: int, st: dict, path: tuple[str, ...],
                     resolved: list, bad: list) -> None:
    """Functions and operators a statement names, resolved by name against `path`, counting every
    visible overload a better type match could pick: for statements the server cannot analyze now
    (utility statements, or objects an earlier statement of the job creates)."""
    refs = [("function", f["name"], f["nargs"]) for f in st["functions"]] + \
           [("operator", o["name"], None) for o in st["operators"]]
    for what, parts, nargs in refs:
        if not parts:
            continue
        schemas = (parts[0],) if len(parts) > 1 else path
        name = parts[-1]
        if what == "function":
            for c in cat.functions_named(name, schemas):
                if _plausible(c, nargs):
                    _function_judged({"name": f'{c["nspname"]}.{c["proname"]}({c["args"]})', "oid": int(c["oid"]),
                                      "owner_oid": int(c["proowner"]), "owner": c["owner"], "language": c["lanname"],
                                      "security_definer": c["prosecdef"]}, tc, job_oid, resolved, bad)
            continue
        for c in cat.operators_named(name, schemas):
            builtin_types = int(c["oprleft"]) < FIRST_NORMAL_OID and int(c["oprright"]) < FIRST_NORMAL_OID
            if len(parts) == 1 and not builtin_types:
                continue  # only operands of the owner's own types can pick it
            entry = {"kind": "operator", "name": f'{c["nspname"]}.{c["signature"]}',
                     "oid": int(c["oid"]), "role_oid": int(c["proowner"]), "role": c["funcowner"],
                     "operator_owner": c["opowner"], "security_definer": bool(c["prosecdef"])}
            resolved.append(entry)
            for owner, role in ((int(c["proowner"]), c["funcowner"]), (int(c["oprowner"]), c["opowner"])):
                if (owner == int(c["proowner"]) and c["prosecdef"]) or tc.reason(job_oid, owner):
                    continue
                bad.append({**entry, "role_oid": owner, "role": role})
                break


def _risky_functions(cat, tc: TrustCache, job_oid: int, sql: str, statements: list[dict], start_path: str,
                     job_role: str) -> tuple[list[dict], list[dict]]:
    """(functions/operators the job's statements call, with owners; the untrusted ones). Each
    statement under the search_path it will run with (a SET search_path earlier in the job
    included): analyzed by the server when it can be, else resolved by name."""
    resolved: list[dict] = []
    bad: list[dict] = []
    raw = sql.encode()
    path = start_path
    in_block = changed_in_block = False
    for st in statements:
        if st["node"] == "TransactionStmt":
            if st["command"] in ("BEGIN", "START TRANSACTION"):
                in_block, changed_in_block = True, False
            elif st["command"] not in ("SAVEPOINT", "RELEASE"):
                if changed_in_block:  # a ROLLBACK undoes the change, a COMMIT ends a SET LOCAL
                    path = "?"
                in_block = changed_in_block = False
            continue
        if "sets_search_path" in st:
            p = st["sets_search_path"]
            path = start_path if p is None else p
            changed_in_block = changed_in_block or in_block or st.get("local", False)
        if path == "?":
            if st["node"] in _ANALYZABLE or st["functions"] or st["operators"]:
                bad.append({"name": "search_path", "role": None, "role_oid": None,
                            "detail": "The job sets search_path to a value computed at run time, or changes it "
                                      "inside a transaction block it then ends"})
                break
            continue
        deps = None
        if st["node"] in _ANALYZABLE:
            loc, ln = st["location"], st["length"]
            deps = cat.analyzed((raw[loc:loc + ln] if ln else raw[loc:]).decode(), _without_our_temp(path))
        if deps is not None and not deps.utility:
            _analyzed_functions(cat, tc, job_oid, deps, resolved, bad)
            if deps.rels:  # defaults, constraints, policies, triggers of the relations it touches
                more = cat.code_functions(deps.rels, st["kind"] != "read")
                _analyzed_functions(cat, tc, job_oid, deps._replace(funcs=more), resolved, bad)
        elif st["functions"] or st["operators"]:
            _named_functions(cat, tc, job_oid, st, parse_search_path(path, job_role), resolved, bad)
        # domains the statement makes values of by name (PostgreSQL 15 plans do not list them):
        # their CHECKs and defaults run as the job's role
        names = {tuple(n) for n in st["type_names"] if n[0] != "pg_catalog"}
        for r in cat.domains_named(tuple(sorted(names)), path) if names else ():
            _analyzed_functions(cat, tc, job_oid, native.Deps([], list(r["fns"] or ()), []), resolved, bad)
    return resolved, bad


def check(plpy, sql: str, provenance: dict, job_role: str, search_path: str | None = None,
          job_oid: int | None = None) -> dict:
    """Classify `sql`, decide, and return the classification to store with the job.

    Raises InsufficientPrivilege (42501) when the job is refused. `search_path`
    is the path the job will start with (default: this session's).
    """
    try:
        cls = classify(sql)
    except ClassifyError as e:
        raise PgError("syntax error in background job SQL", detail=str(e), sqlstate="42601") from None
    cat = _catalog.catalog(plpy)
    cat.refresh()
    role = cat.role(job_oid) if job_oid is not None else cat.role_by_name(job_role)
    if role is None:
        raise ObjectNotFound(f'role "{job_role}" does not exist')
    job_oid = role["oid"]
    tc = TrustCache(cat)
    chain = provenance.get("chain") or []
    culprit = None
    for i, e in enumerate(chain):
        if not e.get("effective", True) or e["kind"] == "inline":
            continue  # inline code is authored by whoever ran it, already in the chain
        if tc.reason(job_oid, e.get("role_oid")) is None:
            culprit = i
            break
    statements = cls["statements"]
    detail = None

    def lazy_detail() -> str:
        return chain_detail(chain, job_role, culprit)

    for st in statements:
        if st["kind"] in KINDS_ALWAYS_REFUSED:
            if culprit is not None:
                who = chain[culprit].get("role")
                raise _induce(who, job_role, st["command"], lazy_detail(), _trust_hint(job_role, who))
            raise InsufficientPrivilege(
                f'background job may not execute "{st["command"]}"',
                detail=f'A job runs as the role that launched it ("{job_role}") and may not change its identity.',
                hint="Launch the job as the role it should run as.")

    start_path = cat.be.search_path() if search_path is None else search_path
    resolved, bad = _risky_functions(cat, tc, job_oid, sql, statements, start_path, job_role)
    if bad and "kind" not in bad[0]:
        raise InsufficientPrivilege(
            "background job calls functions under a search_path the policy cannot know",
            detail=bad[0]["detail"] + ".",
            hint="Set search_path to a constant with SET outside a transaction block the job ends, or "
                 "qualify the functions and operators with their schema.")
    if bad:
        b = bad[0]
        detail = (f'{_describe(b) if b["kind"] == "function" else "operator " + b["name"]} '
                  f'would run with the privileges of "{job_role}", who does not trust "{b.get("role")}".\n'
                  + lazy_detail())
        raise _induce(b.get("role"), job_role, b["name"], detail, _trust_hint(job_role, b.get("role")))
    if culprit is not None:  # an untrusted chain launches nothing
        worst = worst_statement(statements)
        who = chain[culprit].get("role")
        raise _induce(who, job_role, worst["command"], lazy_detail(), _trust_hint(job_role, who))
    _require_data_only(cat, tc, job_oid, job_role, sql, chain, statements, resolved)
    return {
        **cls,
        "job_role": job_role,
        "job_role_oid": job_oid,
        "chain_trusted": culprit is None,
        "untrusted_entry": culprit,
        "untrusted_role": chain[culprit].get("role") if culprit is not None else None,
        "resolved": resolved,
        "decision": "allowed",
    }


# statements and functions that run a string as code: a caller's value inside one is no data
_RUNS_STRINGS = frozenset({"DoStmt", "CreateFunctionStmt"})
_SQL_TEXT_RUNNERS = OPAQUE_FUNCTIONS | SQL_TEXT_EXTENSION_FUNCTIONS


def _runs_strings(statements: list[dict], resolved: list[dict]) -> bool:
    """Whether the job may run a string constant of its text as code: a DO block, a function
    body, a function known to run SQL text (named in any schema), or a function of an extension
    written in C (it may, and we cannot read it)."""
    for st in statements:
        if st["kind"] in ("opaque", "server") or st["node"] in _RUNS_STRINGS:
            return True
        for f in st["functions"]:
            if f["name"] and f["name"][-1] in _SQL_TEXT_RUNNERS:
                return True
    return any(r.get("language") in ("c", "internal") for r in resolved)


def _require_data_only(cat, tc: TrustCache, job_oid: int, job_role: str, sql: str, chain: list[dict],
                       statements: list[dict], resolved: list[dict]) -> None:
    """Below a SECURITY DEFINER wrapper of the job role, a caller it does not trust may pass data
    only: the job text must be the trusted side's code plus single quoted values (`taint`)."""
    caller = next((i for i, e in enumerate(chain) if not e.get("effective", True) and not e.get("inherited")
                   and e["kind"] != "inline" and tc.reason(job_oid, e.get("role_oid")) is None), None)
    if caller is None:
        return
    pieces: list[str] = []
    for e in chain[:-1]:  # the last entry is the launch function itself
        if e.get("effective", True) and e["kind"] in ("function", "trigger", "statement function") and "oid" in e:
            src = cat.source(e["oid"])
            if src:
                pieces += taint.fragments(*src)
    strings_are_data = not _runs_strings(statements, resolved)
    region = taint.offending_region(sql, pieces, strings_are_data)
    if region is None:
        return
    who = chain[caller].get("role")
    piece = sql[region[0]:region[1]]
    shown = piece if len(piece) <= 80 else piece[:77] + "..."
    runs = "" if strings_are_data else " (the job runs strings as code: DO, EXECUTE, dblink or a function body)"
    raise InsufficientPrivilege(
        f'text supplied by user "{who}" changes the statement launched by "{job_role}"',
        detail=(f'The job text has {shown!r} at character {region[0]}: it is no text of the code "{job_role}" '
                f'trusts and not one quoted value, number or name{runs}.\n' + chain_detail(chain, job_role, caller)),
        hint=(f'Build the statement with format() and %L (values) or %I (names), or quote_literal() and '
              f'quote_ident(); or, if "{job_role}" trusts "{who}", run SELECT {TRUST_FUNCTION}({_lit(who or "")}) '
              f'as "{job_role}".'))


def require_trusted_chain(plpy, provenance: dict, role: str, command: str, hint: str | None = None) -> None:
    """Raise the induce error unless every effective entry of `provenance` is trusted by `role`."""
    cat = _catalog.catalog(plpy)
    cat.refresh()
    r = cat.role_by_name(role)
    if r is None:
        raise ObjectNotFound(f'role "{role}" does not exist')
    tc = TrustCache(cat)
    chain = provenance.get("chain") or []
    for i, e in enumerate(chain):
        if not e.get("effective", True) or e["kind"] == "inline":
            continue
        if tc.reason(r["oid"], e.get("role_oid")) is None:
            who = e.get("role")
            raise _induce(who, role, command, chain_detail(chain, role, i),
                          hint or _trust_hint(role, who))
