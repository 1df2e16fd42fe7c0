"""Why is this job being launched? The chain of custody, captured in the launching backend.

The chain lists, outermost first, every principal whose code or text led to
the launch: the session user who typed the statement, views, rules and
(inlined) functions the running statement depends on, then each PL function
frame on the call stack (PL/pgSQL, PL/Python, SQL) with its owner, language
and SECURITY DEFINER flag, ending with the launch function itself.

Frames are found on the backend's ``error_context_stack`` (see `native`) and
believed only when the oid they carry matches a pg_proc row in xmin and
ctid; nothing is read from query text or names. A frame that cannot be tied
to a function (an unknown PL, a C extension callback, a layout we do not
know) is recorded as ``unknown`` and is never trusted.

The SECURITY DEFINER boundary: the innermost SECURITY DEFINER frame owned by
the role the job will run as is where that role's authority was granted, by
the function's own author. Entries before it are kept for the record but
marked ``effective: false``: they only passed data to a function that chose
to act as its owner. Everything from the boundary inwards must be trusted.
"""
from __future__ import annotations

import ctypes
import os
import re
import struct

from plpy_bg.policy import catalog as _catalog
from plpy_bg.policy import native
from plpy_bg.policy.classify import type_names

PROVENANCE_VERSION = 1
_PYNAME_OID = re.compile(r"_(\d+)$")


def _role_entry(cat: _catalog.Catalog, kind: str, oid: int, **extra) -> dict:
    r = cat.role(oid)
    return {"kind": kind, "role_oid": oid, "role": r["name"] if r else None, **extra}


def _function_entry(cat: _catalog.Catalog, oid: int, xmin_tid, how: str, trigger: bool = False) -> dict:
    """A frame tied to pg_proc, or an unknown frame when the tie fails."""
    p = cat.proc(oid) if oid else None
    if p is None or (xmin_tid is not None and (p["xmin"], p["ctid"]) != xmin_tid):
        return {"kind": "unknown", "role_oid": None, "role": None,
                "detail": f"{how} frame for function oid {oid} not found in pg_proc as running"}
    return {"kind": "trigger" if trigger else "function", "oid": oid,
            "name": f'{p["schema"]}.{p["name"]}({p["args"]})', "proname": p["name"], "prokind": p["prokind"],
            "role_oid": p["owner_oid"], "role": p["owner"], "language": p["language"],
            "security_definer": bool(p["security_definer"]), "sets_search_path": p["sets_search_path"]}


def _plpgsql_frame(be: native.Backend, cat, arg: int) -> dict:
    lay = be.frame
    estate = be.read(arg, 24)  # func, trigdata, evtrigdata
    func = struct.unpack_from("<Q", estate, lay["plpgsql_func"])[0] if estate else 0
    head = be.read(func, lay["plpgsql_fn_oid"] + 14) if func else None  # signature .. fn_oid, fn_xmin, fn_tid
    if head is None:
        return {"kind": "unknown", "role_oid": None, "role": None, "detail": "unreadable PL/pgSQL frame"}
    oid, xmin, hi, lo, off = struct.unpack_from("<IIHHH", head, lay["plpgsql_fn_oid"])
    if oid == 0:
        sig = be.cstring(struct.unpack_from("<Q", head, lay["plpgsql_fn_signature"])[0])
        if sig == "inline_code_block":
            return {"kind": "inline", "language": "plpgsql", "role_oid": None, "role": None}
    trig = any(struct.unpack_from("<QQ", estate, lay["plpgsql_trigdata"]))
    return _function_entry(cat, oid, (xmin, ((hi << 16) | lo, off)), "PL/pgSQL", trigger=trig)


def _plpython_frame(be: native.Backend, cat, ctx: int) -> dict:
    """`ctx` comes from PLy_current_execution_context(): its structures are real, read them directly."""
    lay = be.frame
    proc = be.peek_ptr(ctx + lay["ply_curr_proc"])
    pyname = be.peek_cstring(be.peek_ptr(proc + lay["ply_pyname"])) if proc else None
    if pyname == "__plpython_inline_block":
        return {"kind": "inline", "language": "plpython3u", "role_oid": None, "role": None}
    m = _PYNAME_OID.search(pyname or "")
    if not m:
        return {"kind": "unknown", "role_oid": None, "role": None, "detail": "unreadable PL/Python frame"}
    trig = bool(ctypes.c_bool.from_address(proc + lay["ply_is_trigger"]).value)
    return _function_entry(cat, int(m.group(1)), be.peek_tid_xmin(proc + lay["ply_fn_xmin"]), "PL/Python",
                           trigger=trig)


def _sql_frame(be: native.Backend, cat, arg: int) -> dict | None:
    """A SQL-language function frame, or None when this callback is not one."""
    lay = be.frame
    if be.ptr(arg + lay["fmgr_fn_addr"]) != be.fmgr_sql:
        return None
    oid = be.u32(arg + lay["fmgr_fn_oid"]) or 0
    entry = _function_entry(cat, oid, None, "SQL")
    if entry["kind"] == "function" and entry["language"] != "sql":
        return {"kind": "unknown", "role_oid": None, "role": None, "detail": f"SQL frame names non-SQL function {oid}"}
    return entry


def _unknown(detail: str) -> dict:
    return {"kind": "unknown", "role_oid": None, "role": None, "detail": detail}


def _trim(text: str, n: int = 60) -> str:
    one = " ".join(text.split())
    return one if len(one) <= n else one[:n - 3] + "..."


class _Level:
    """What one statement on the way to the launch names: the functions its plans call, and
    whether frame-less code of its relations or domains (attributed to their owners) calls
    `caller`, the function whose frame is innermost (the launch)."""

    def __init__(self, caller: int | None):
        self.caller = caller
        self.funcs: set[int] = set()
        self.attributed = False
        self.read = False  # a statement was read at this level
        self.texts: list[str] = []  # its text, for the type names it writes


def _code_entry(r: dict) -> dict:
    """A relation or domain whose frame-less code calls functions (a row of `Catalog.code_of` or
    `Catalog.domains_named`): its owner wrote that code."""
    return {"kind": "table" if r["what"] == "relation" else "domain", "oid": int(r["oid"]),
            "name": f'{r["nspname"]}.{r["relname"]}', "role_oid": int(r["relowner"]),
            "role": r["owner"], "code": list(r["kinds"])}


def _dependency_entries(cat, deps: native.Deps, listed: set, level: _Level | None = None) -> list[dict]:
    """Views, rule-bearing tables, relations and domains with frame-less code, and user functions
    a statement depends on; each object once in a chain (`listed`)."""
    out = []
    rels = sorted(set(deps.rels))
    named = set()
    if level is not None:
        level.read = True
        level.funcs.update(deps.funcs)
    for r in cat.relations(rels) if rels else ():
        if r["relkind"] == "v" or r["relhasrules"]:
            named.add(int(r["oid"]))
            if ("rel", int(r["oid"])) not in listed:
                listed.add(("rel", int(r["oid"])))
                out.append({"kind": "view" if r["relkind"] == "v" else "rule", "oid": int(r["oid"]),
                            "name": f'{r["nspname"]}.{r["relname"]}', "role_oid": int(r["relowner"]),
                            "role": r["owner"]})
    # expressions that run with no frame of their author (a policy, a default, a domain's CHECK
    # calling the launch or trust function): the relation's or domain's owner wrote them
    for r in cat.code_of(rels) if rels else ():
        if level is not None and level.caller in (r["fns"] or ()):
            level.attributed = True
        key = (r["what"], int(r["oid"]))
        if (r["what"] == "relation" and int(r["oid"]) in named) or key in listed:
            continue
        listed.add(key)
        out.append(_code_entry(r))
    for oid in deps.funcs:
        if ("func", oid) in listed:
            continue
        listed.add(("func", oid))
        e = _function_entry(cat, oid, None, "statement")
        if e["kind"] == "unknown":
            continue  # a PROCOID hash of a function dropped since planning
        e["kind"] = "statement function"
        out.append(e)
    return out


def _utility_entries(utility: list[tuple[int, str]], analyzed: bool, inner: dict | None) -> list[dict]:
    """Utility statements run code we may not see: refused unless their code runs in frames we read
    (CALL's procedure, DO's block, a portal of their own) or, for a plan source (`analyzed`), in a
    query whose dependencies parse analysis listed (CREATE TABLE AS, EXPLAIN)."""
    out = []
    for tag, command in utility:
        if tag in native.UTILITY_TAGS:
            if tag == native.CALL_TAG and (inner is None or inner.get("prokind") != "p"):
                out.append(_unknown(f"the arguments of a {command} statement are not inspected"))
            continue
        if analyzed and tag in native.ANALYZED_UTILITY_TAGS:
            continue
        out.append(_unknown(f"what the {command} statement runs is not inspected"))
    return out


def _reanalyzed(be: native.Backend, cat, text: str, inner: list[dict]) -> native.Deps | None:
    """Dependencies of a one-shot statement (dynamic SQL, plpy.execute of a string) by the server's
    own parse analysis (`Catalog.analyzed`), under the search_path and user it ran with: only when
    no frame inside it changed either."""
    if any(e.get("security_definer") or e.get("sets_search_path") for e in inner):
        return None
    return cat.analyzed(text, be.search_path())


def _stack_items(be: native.Backend, cat, plpy) -> list[tuple[str, dict | None, native.RawFrame | None]]:
    """The frames on the stack, outermost first: (kind, entry, raw frame); kind is "plpgsql",
    "plpython", "sql", "spi" (a statement run through SPI, no entry of its own) or "other"."""
    if be.frame is None:
        return [("other", _unknown(f"call stack layout of PostgreSQL {be.major} is not known"), None)]
    raw = be.error_context_frames()
    if raw is None:
        return [("other", _unknown("call stack unreadable"), None)]
    py_contexts = be.plpython_contexts()
    py_set = set(py_contexts)
    spi = native.learn_spi_callback(plpy, be)
    items: list = []
    unidentified = False
    for f in reversed(raw):
        if f.library == "plpgsql":
            items.append(("plpgsql", _plpgsql_frame(be, cat, f.arg), f))
        elif f.library == "plpython":
            if f.arg in py_set:
                items.append(("plpython", _plpython_frame(be, cat, f.arg), f))
            else:  # the inline handler's callback carries no argument
                inline = [c for c in py_contexts if _plpython_frame(be, cat, c)["kind"] == "inline"]
                items.append(("plpython", {"kind": "inline", "language": "plpython3u", "role_oid": None,
                                           "role": None} if inline else _unknown("unmatched PL/Python frame"), f))
        elif f.library == "postgres":
            entry = _sql_frame(be, cat, f.arg)
            if entry is not None:
                items.append(("sql", entry, f))
            elif spi is not None and f.callback == spi:
                items.append(("spi", None, f))
            elif spi is None:
                unidentified = True
            # other engine callbacks (COPY, VACUUM ...) describe work, not authors
        else:
            items.append(("other", _unknown(f"frame of {f.library}"), f))
    if unidentified:
        items.insert(0, ("other", _unknown("statements run by functions cannot be told apart (the stack "
                                           "probe plpy_bg.stack_probe() could not run)"), None))
    return items


def _frame_statement(be: native.Backend, cat, kind: str, entry: dict | None, f: native.RawFrame,
                     inner: list[dict], listed: set, cursor_running: bool, outer_kind: str | None,
                     level: _Level) -> list[dict] | None:
    """Entries for the statement a frame is running, the one that leads inwards to the launch;
    None for a PL/pgSQL statement that only fetches from a cursor."""
    nxt = inner[0] if inner else None
    if kind == "plpgsql" and entry["kind"] in ("function", "trigger", "inline"):
        sources = be.plpgsql_statement_plan_sources(f.arg)
        if sources is not None and not sources and cursor_running:
            return None  # FETCH or FOR over a cursor: the running cursor's plan, if it is this one's
        if not sources:
            return [_unknown(f'the running statement of {entry.get("name") or "a DO block"} is unreadable')]
        out = []
        for ps in sources:
            level.texts.append(be.plansource_text(ps))
            deps = be.plansource_deps(ps, cat.any_sql_function)
            if deps is None:
                return [_unknown(f'a plan of {entry.get("name") or "a DO block"} is unreadable')]
            out += _dependency_entries(cat, deps, listed, level) + _utility_entries(deps.utility, True, nxt)
        return out
    if kind == "sql" and entry["kind"] == "function":
        deps = be.sql_function_statement(f.arg, entry["proname"])
        level.texts.append((cat.source(entry["oid"]) or ("", ""))[0])
        if deps is None:
            return [_unknown(f'the running statement of SQL function {entry["name"]} is unreadable')]
        return _dependency_entries(cat, deps, listed, level) + _utility_entries(deps.utility, False, nxt)
    if kind == "spi":
        if outer_kind not in ("plpgsql", "plpython"):
            return [_unknown("a statement run through SPI by built-in code (query_to_xml, ts_stat ...) "
                             "has no author on the stack")]
        got = be.spi_statement_text(f.arg)
        if got is None:
            return [_unknown("a statement run through SPI is unreadable")]
        qs, text = got
        level.texts.append(text)
        ps = be.plansource_of_text(qs)
        deps = be.plansource_deps(ps, cat.any_sql_function) if ps is not None else _reanalyzed(be, cat, text, inner)
        if deps is None:
            return [_unknown(f'dynamic statement "{_trim(text)}" could not be analyzed (it takes parameters, '
                             'or a function inside it changes the user or the search_path)')]
        return _dependency_entries(cat, deps, listed, level) + _utility_entries(deps.utility, True, nxt)
    return []


def _stored_query_author(be: native.Backend, cat, portal: int, top: int | None, frames: list[dict]) -> list[dict]:
    """A cursor or prepared statement may have been made earlier by anyone's code in this session
    (a function returning a refcursor, an EXECUTE 'PREPARE ...'): its query counts as written by
    the frames on the stack only when it is text of one of them or of the top-level statement."""
    text = be.portal_text(portal).strip().rstrip(";").strip()
    if not text:
        return [_unknown("a cursor or prepared statement without text")]
    if top and text in be.portal_text(top):
        return []
    for e in frames:
        src = cat.source(e["oid"]) if e.get("kind") in ("function", "trigger") and "oid" in e else None
        if src and text in src[0]:
            return []
    return [_unknown(f'a cursor or prepared statement made earlier, "{_trim(text)}", whose query is no code '
                     f'on the stack')]


def _chain_body(be: native.Backend, cat, plpy) -> list[dict]:
    """Everything after the session user, outermost first: the top-level statement's dependencies,
    then each frame followed by the dependencies of the statement it runs."""
    items = _stack_items(be, cat, plpy)
    frames = [e for _, e, _ in items if e is not None]
    listed = {("func", e["oid"]) for e in frames if "oid" in e}
    if be.portal is None:
        return [_unknown(f"statement plans of PostgreSQL {be.major} are not inspected")] + frames
    out: list[dict] = []
    outer = frames[0] if frames else None
    active = be.active_portal()
    cursor: list[dict] = []
    cursor_running = False
    levels: list[_Level] = []  # the statements on the way to the launch, outermost first
    caller = frames[-1] if frames else None
    caller_oid = caller.get("oid") if caller else None
    cursor_level = _Level(caller_oid)
    if not active:
        out.append(_unknown("the launch runs while a statement is planned, outside any portal"))
    else:
        name, deps = be.portal_deps(active)
        top = active if name == "" else be.top_level_portal()
        if top and top != active:
            _, top_deps = be.portal_deps(top)
            levels.append(_Level(caller_oid))
            levels[-1].texts.append(be.portal_text(top))
            out += _dependency_entries(cat, top_deps, listed, levels[-1]) + _utility_entries(top_deps.utility, False, outer)
        if top == active:
            levels.append(cursor_level)
        cursor_level.texts.append(be.portal_text(active))
        here = _dependency_entries(cat, deps, listed, cursor_level) + _utility_entries(deps.utility, False, outer)
        if top == active:
            out += here
        else:  # a cursor or a prepared statement: run by the innermost function before the launch
            cursor = here + _stored_query_author(be, cat, active, top, frames)
            cursor_running = True
    parts: list = []
    for i, (kind, entry, f) in enumerate(items):
        if i == len(items) - 1:
            parts.append(cursor)
            if cursor_running:
                levels.append(cursor_level)
        if entry is not None:
            parts.append([entry])
        if f is not None:
            inner = [e for _, e, _ in items[i + 1:] if e is not None]
            outer_kind = items[i - 1][0] if i else None
            level = _Level(caller_oid)
            part = _frame_statement(be, cat, kind, entry, f, inner, listed, cursor_running, outer_kind, level)
            if level.read:
                levels.append(level)
            parts.append(part)
    if levels and caller_oid is not None:
        last = levels[-1]
        # domains the statement makes values of by name (a cast, a record's type, a call the server
        # reads as a cast): their CHECKs run with no frame, as the caller
        names = {n for t in last.texts for n in type_names(t) if n[0] != "pg_catalog"}
        domains = []
        for r in cat.domains_named(tuple(sorted(names))) if names else ():
            last.attributed = last.attributed or caller_oid in (r["fns"] or ())
            if ("domain", int(r["oid"])) not in listed:
                listed.add(("domain", int(r["oid"])))
                domains.append(_code_entry(r))
        if domains:
            parts.insert(len(parts) - 2, domains)
        if caller_oid not in last.funcs and not last.attributed:
            parts.insert(len(parts) - 2, [_unknown(
                "the statement that calls the launch does not name it, and no code of its relations or "
                "domains we know of does (a domain's CHECK reached through a cast or a record's input ...)")])
    # the running cursor is the innermost fetch's: an outer frame's fetch is of a portal not active
    fetches = [i for i, p in enumerate(parts) if p is None]
    for i in fetches[:-1]:
        parts[i] = [_unknown("a cursor fetched by an outer PL/pgSQL frame is not inspected")]
    for i in fetches[-1:]:
        parts[i] = []
    for p in parts:
        out += p
    return out if items else out + cursor


def mark_boundary(chain: list[dict], job_role_oid: int) -> None:
    """Set `effective` on each entry: false before the innermost SECURITY DEFINER frame owned by the job role."""
    start = 0
    for i, e in enumerate(chain):
        if e.get("security_definer") and e.get("role_oid") == job_role_oid and e["kind"] in ("function", "trigger"):
            start = i
    for i, e in enumerate(chain):
        if not e.get("inherited"):
            e["effective"] = i >= start


def capture_provenance(plpy, parent_job: dict | None = None) -> dict:
    """The provenance of a launch from this backend, as a JSON-able dict.

    `parent_job` is what the dispatcher knows of the job this backend runs
    (``dispatcher_client.job_info(plpy)``), when the launcher is a job worker:
    its effective chain is inherited so a nested launch cannot launder it.
    """
    be = native.backend(plpy)
    cat = _catalog.catalog(plpy)
    cat.refresh()
    user = be.user_id()
    session = be.session_user_id()
    body = _chain_body(be, cat, plpy)
    chain: list[dict] = []
    parent = None
    if parent_job:
        pprov = parent_job.get("provenance") or {}
        for e in pprov.get("chain", ()):
            if e.get("effective", True):
                chain.append({**e, "inherited": True, "effective": True})
        parent = {k: parent_job.get(k) for k in ("pid", "cookie", "role") if k in parent_job}
    chain.append(_role_entry(cat, "session", session))
    chain.extend(body)
    mark_boundary(chain, user)
    auth = be.authenticated_user_id()
    cu = cat.role(user)
    return {
        "version": PROVENANCE_VERSION,
        "backend_pid": os.getpid(),
        "session_user": _role_entry(cat, "session", session)["role"],
        "session_user_oid": session,
        "authenticated_user": (cat.role(auth) or {}).get("name"),
        "current_user": cu["name"] if cu else None,
        "current_user_oid": user,
        "chain": chain,
        "parent_job": parent,
        "complete": not any(e["kind"] == "unknown" for e in chain),
    }
