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

from plpy_bg.policy import catalog as _catalog
from plpy_bg.policy import native

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
            "name": f'{p["schema"]}.{p["name"]}({p["args"]})', "role_oid": p["owner_oid"],
            "role": p["owner"], "language": p["language"],
            "security_definer": bool(p["security_definer"])}


def _plpgsql_frame(be: native.Backend, cat, arg: int) -> dict:
    lay = be.frame
    func = be.ptr(arg + lay["plpgsql_func"])
    if not func:
        return {"kind": "unknown", "role_oid": None, "role": None, "detail": "unreadable PL/pgSQL frame"}
    oid = be.u32(func + lay["plpgsql_fn_oid"])
    if oid == 0:
        sig = be.cstring(be.ptr(func + lay["plpgsql_fn_signature"]) or 0)
        if sig == "inline_code_block":
            return {"kind": "inline", "language": "plpgsql", "role_oid": None, "role": None}
    xt = be.tid_xmin(func + lay["plpgsql_fn_oid"] + 4)
    trig = bool(be.ptr(arg + lay["plpgsql_trigdata"]) or be.ptr(arg + lay["plpgsql_evtrigdata"]))
    return _function_entry(cat, oid or 0, xt, "PL/pgSQL", trigger=trig)


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


def _stack_entries(be: native.Backend, cat) -> list[dict]:
    """PL frames on the stack, outermost first."""
    if be.frame is None:
        return [{"kind": "unknown", "role_oid": None, "role": None,
                 "detail": f"call stack layout of PostgreSQL {be.major} is not known"}]
    raw = be.error_context_frames()
    if raw is None:
        return [{"kind": "unknown", "role_oid": None, "role": None, "detail": "call stack unreadable"}]
    py_contexts = be.plpython_contexts()
    py_set = set(py_contexts)
    out = []
    for f in raw:
        if f.library == "plpgsql":
            out.append(_plpgsql_frame(be, cat, f.arg))
        elif f.library == "plpython":
            if f.arg in py_set:
                out.append(_plpython_frame(be, cat, f.arg))
            else:  # the inline handler's callback carries no argument
                inline = [c for c in py_contexts if _plpython_frame(be, cat, c)["kind"] == "inline"]
                out.append({"kind": "inline", "language": "plpython3u", "role_oid": None, "role": None}
                           if inline else {"kind": "unknown", "role_oid": None, "role": None,
                                           "detail": "unmatched PL/Python frame"})
        elif f.library == "postgres":
            entry = _sql_frame(be, cat, f.arg)
            if entry is not None:
                out.append(entry)
            # other engine callbacks (SPI, COPY, VACUUM ...) describe work, not authors
        else:
            out.append({"kind": "unknown", "role_oid": None, "role": None,
                        "detail": f"frame of {f.library}"})
    out.reverse()
    return out


def _statement_entries(be: native.Backend, cat, on_stack: set[int]) -> tuple[str, list[dict]]:
    """Views, rule-bearing tables and functions the running statement's plan depends on."""
    deps = be.statement_dependencies()
    if deps is None:
        return "", [{"kind": "unknown", "role_oid": None, "role": None,
                     "detail": f"statement plans of PostgreSQL {be.major} are not inspected"}]
    portal, rels, funcs = deps
    out = []
    named = set()
    for r in cat.relations(rels) if rels else ():
        if r["relkind"] == "v" or r["relhasrules"]:
            named.add(int(r["oid"]))
            out.append({"kind": "view" if r["relkind"] == "v" else "rule", "oid": int(r["oid"]),
                        "name": f'{r["nspname"]}.{r["relname"]}', "role_oid": int(r["relowner"]),
                        "role": r["owner"]})
    # expressions that run with no frame of their author (a policy, a default, a domain's CHECK
    # calling the launch or trust function): the relation's or domain's owner wrote them
    for r in cat.code_of(rels) if rels else ():
        if r["what"] == "relation" and int(r["oid"]) in named:
            continue
        out.append({"kind": "table" if r["what"] == "relation" else "domain", "oid": int(r["oid"]),
                    "name": f'{r["nspname"]}.{r["relname"]}', "role_oid": int(r["relowner"]),
                    "role": r["owner"], "code": list(r["kinds"])})
    seen = set(on_stack)
    for oid in funcs:
        if oid in seen:
            continue
        seen.add(oid)
        e = _function_entry(cat, oid, None, "statement")
        if e["kind"] == "unknown":
            continue  # a PROCOID hash of a function dropped since planning
        e["kind"] = "statement function"
        out.append(e)
    return portal, out


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
    frames = _stack_entries(be, cat)
    on_stack = {e["oid"] for e in frames if "oid" in e}
    portal, stmt_entries = _statement_entries(be, cat, on_stack)
    chain: list[dict] = []
    parent = None
    if parent_job:
        pprov = parent_job.get("provenance") or {}
        for e in pprov.get("chain", ()):
            if e.get("effective", True):
                chain.append({**e, "inherited": True, "effective": True})
        parent = {k: parent_job.get(k) for k in ("pid", "cookie", "role") if k in parent_job}
    chain.append(_role_entry(cat, "session", session))
    if portal == "" or not frames:
        chain.extend(stmt_entries)
        chain.extend(frames)
    else:  # a cursor opened by the innermost function: its statement belongs to that frame
        chain.extend(frames[:-1])
        chain.extend(stmt_entries)
        chain.extend(frames[-1:])
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
