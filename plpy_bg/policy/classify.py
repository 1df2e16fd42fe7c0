"""What a job's SQL would do, read from pglast's parse tree (no catalog access).

`classify(sql)` returns a plain dict (stored with the job): one entry per
statement with its command tag and kind, plus every function and operator the
text names, so `decision` can resolve them against the catalog.

Kinds, from harmless to never allowed (a refusal names the worst statement):
  read, write, setting, maintenance, ddl, transaction, opaque, privilege, server
                            any of them refused when the chain holds an untrusted role
  identity                  SET ROLE and friends: always refused in a job

We parse with ``parse_sql_json`` and walk plain dicts: building pglast's
Python node objects costs ~100 us a statement, the JSON route ~15 us.
"""
from __future__ import annotations

import json
import re
from collections import OrderedDict
from typing import Any, Iterator

from plpy_bg.policy import _pglast as _parser

KINDS_ALWAYS_REFUSED = frozenset({"identity"})

# GUCs whose change is an identity change (set_config('role', ...) included)
IDENTITY_GUCS = frozenset({"role", "session_authorization"})
# GUCs that reach outside the session or weaken the sandbox
SERVER_GUCS = frozenset({"session_preload_libraries", "local_preload_libraries",
                         "session_replication_role", "dynamic_library_path"})
SERVER_GUC_PREFIXES = ("pgseccomp.", "pg_background.", "plpy_bg.")
UNTRUSTED_LANGUAGES = frozenset({"c", "internal", "plpython3u", "plpythonu", "plpython2u",
                                 "plperlu", "pltclu", "plsh", "plv8u", "pljavau", "plrustu"})

# Built-in functions that touch the server's files, processes or configuration
SERVER_FUNCTIONS = frozenset({
    "pg_read_file", "pg_read_binary_file", "pg_stat_file", "pg_ls_dir", "pg_ls_logdir",
    "pg_ls_waldir", "pg_ls_tmpdir", "pg_ls_archive_statusdir", "pg_ls_logicalsnapdir",
    "pg_ls_logicalmapdir", "pg_ls_replslotdir", "lo_import", "lo_export", "pg_file_write",
    "pg_file_rename", "pg_file_unlink", "pg_file_sync", "pg_logdir_ls", "pg_reload_conf",
    "pg_rotate_logfile", "pg_terminate_backend", "pg_cancel_backend", "pg_promote",
    "pg_switch_wal", "pg_create_restore_point", "pg_backup_start", "pg_backup_stop",
    "pg_start_backup", "pg_stop_backup", "pg_log_backend_memory_contexts",
    "pg_replication_origin_create", "pg_create_physical_replication_slot",
    "pg_create_logical_replication_slot", "pg_drop_replication_slot", "pg_wal_replay_pause",
    "pg_wal_replay_resume", "dblink_connect_u", "seccomp_filter", "set_client_filter",
})
# Built-in functions that run SQL text given to them
SQL_TEXT_BUILTINS = frozenset({"query_to_xml", "query_to_xmlschema", "query_to_xml_and_xmlschema",
                               "cursor_to_xml", "cursor_to_xmlschema", "ts_stat", "ts_rewrite"})
# Functions of common extensions that run SQL text given to them (whatever their schema)
SQL_TEXT_EXTENSION_FUNCTIONS = frozenset({"crosstab", "crosstab2", "crosstab3", "crosstab4", "connectby",
                                          "xpath_table"})
# Functions that run SQL text we cannot see at launch
OPAQUE_FUNCTIONS = SQL_TEXT_BUILTINS | frozenset({
    "dblink", "dblink_exec", "dblink_send_query", "dblink_open", "dblink_fetch",
    "dblink_connect", "pg_background_launch", "pg_background_launch_v2", "pg_background_submit_v2",
})

_TAGS = {
    "SelectStmt": "SELECT", "InsertStmt": "INSERT", "UpdateStmt": "UPDATE",
    "DeleteStmt": "DELETE", "MergeStmt": "MERGE", "TruncateStmt": "TRUNCATE",
    "LockStmt": "LOCK TABLE", "CopyStmt": "COPY", "ExplainStmt": "EXPLAIN",
    "VariableShowStmt": "SHOW", "DeclareCursorStmt": "DECLARE CURSOR", "FetchStmt": "FETCH",
    "ClosePortalStmt": "CLOSE CURSOR", "NotifyStmt": "NOTIFY", "ListenStmt": "LISTEN",
    "UnlistenStmt": "UNLISTEN", "PrepareStmt": "PREPARE", "ExecuteStmt": "EXECUTE",
    "DeallocateStmt": "DEALLOCATE", "CallStmt": "CALL", "DoStmt": "DO",
    "VacuumStmt": "VACUUM", "ClusterStmt": "CLUSTER", "ReindexStmt": "REINDEX",
    "RefreshMatViewStmt": "REFRESH MATERIALIZED VIEW", "CheckPointStmt": "CHECKPOINT",
    "AlterSystemStmt": "ALTER SYSTEM", "LoadStmt": "LOAD", "CreatePLangStmt": "CREATE LANGUAGE",
    "GrantStmt": "GRANT", "GrantRoleStmt": "GRANT ROLE", "CreateRoleStmt": "CREATE ROLE",
    "AlterRoleStmt": "ALTER ROLE", "AlterRoleSetStmt": "ALTER ROLE", "DropRoleStmt": "DROP ROLE",
    "AlterDefaultPrivilegesStmt": "ALTER DEFAULT PRIVILEGES", "ReassignOwnedStmt": "REASSIGN OWNED",
    "DropOwnedStmt": "DROP OWNED", "AlterOwnerStmt": "ALTER OWNER",
    "CreatePolicyStmt": "CREATE POLICY", "AlterPolicyStmt": "ALTER POLICY",
    "CreateStmt": "CREATE TABLE", "IndexStmt": "CREATE INDEX", "ViewStmt": "CREATE VIEW",
    "CreateFunctionStmt": "CREATE FUNCTION", "AlterFunctionStmt": "ALTER FUNCTION",
    "CreateTableAsStmt": "CREATE TABLE AS", "DefineStmt": "CREATE", "DropStmt": "DROP",
    "RenameStmt": "ALTER", "CommentStmt": "COMMENT", "RuleStmt": "CREATE RULE",
    "CreateTrigStmt": "CREATE TRIGGER", "CreateEventTrigStmt": "CREATE EVENT TRIGGER",
    "CreateExtensionStmt": "CREATE EXTENSION", "CreatedbStmt": "CREATE DATABASE",
    "DropdbStmt": "DROP DATABASE", "CreateSchemaStmt": "CREATE SCHEMA",
    "CreateTableSpaceStmt": "CREATE TABLESPACE", "AlterTableStmt": "ALTER TABLE",
    "CreateSeqStmt": "CREATE SEQUENCE", "AlterSeqStmt": "ALTER SEQUENCE",
    "TransactionStmt": "TRANSACTION", "VariableSetStmt": "SET", "DiscardStmt": "DISCARD",
    "SecLabelStmt": "SECURITY LABEL", "ConstraintsSetStmt": "SET CONSTRAINTS",
}
_READ = {"SelectStmt", "VariableShowStmt", "DeclareCursorStmt", "FetchStmt", "ClosePortalStmt",
         "ExplainStmt"}
_WRITE = {"InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt", "TruncateStmt", "LockStmt",
          "NotifyStmt", "ListenStmt", "UnlistenStmt"}
_SETTING = {"DeallocateStmt", "ConstraintsSetStmt", "PrepareStmt"}
_MAINTENANCE = {"VacuumStmt", "ClusterStmt", "ReindexStmt", "RefreshMatViewStmt", "CheckPointStmt"}
_SERVER = {"AlterSystemStmt", "LoadStmt", "CreatePLangStmt", "CreateTableSpaceStmt",
           "DropTableSpaceStmt", "AlterTableSpaceOptionsStmt"}
_PRIVILEGE = {"GrantStmt", "GrantRoleStmt", "CreateRoleStmt", "AlterRoleStmt", "AlterRoleSetStmt",
              "DropRoleStmt", "AlterDefaultPrivilegesStmt", "ReassignOwnedStmt", "DropOwnedStmt",
              "AlterOwnerStmt", "CreatePolicyStmt", "AlterPolicyStmt", "CreateUserMappingStmt",
              "AlterUserMappingStmt", "DropUserMappingStmt", "SecLabelStmt"}
_OPAQUE = {"DoStmt", "ExecuteStmt"}
_TXN_TAGS = {
    "TRANS_STMT_BEGIN": "BEGIN", "TRANS_STMT_START": "START TRANSACTION",
    "TRANS_STMT_COMMIT": "COMMIT", "TRANS_STMT_ROLLBACK": "ROLLBACK",
    "TRANS_STMT_SAVEPOINT": "SAVEPOINT", "TRANS_STMT_RELEASE": "RELEASE",
    "TRANS_STMT_ROLLBACK_TO": "ROLLBACK TO SAVEPOINT", "TRANS_STMT_PREPARE": "PREPARE TRANSACTION",
    "TRANS_STMT_COMMIT_PREPARED": "COMMIT PREPARED", "TRANS_STMT_ROLLBACK_PREPARED": "ROLLBACK PREPARED",
}
_PRIVILEGE_ALTER_TABLE = {"AT_ChangeOwner", "AT_EnableRowSecurity", "AT_DisableRowSecurity",
                          "AT_ForceRowSecurity", "AT_NoForceRowSecurity"}
_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")


class ClassifyError(ValueError):
    """The text does not parse; the job would fail with the server's own syntax error."""


def _walk(node: Any) -> Iterator[tuple[str, dict]]:
    """Every (node type, node body) pair under `node`, depth first."""
    stack = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, dict):
            for k, v in n.items():
                if isinstance(v, dict):
                    if k[:1].isupper():
                        yield k, v
                    stack.append(v)
                elif isinstance(v, list):
                    stack.extend(v)
        elif isinstance(n, list):
            stack.extend(n)


def _names(lst: list | None) -> list[str]:
    return [x["String"]["sval"] for x in lst or () if "String" in x]


def _const_str(node: dict) -> str | None:
    c = node.get("A_Const")
    if c and "sval" in c:
        return c["sval"].get("sval", "")
    tc = node.get("TypeCast")
    if tc:
        return _const_str(tc.get("arg", {}))
    return None


def _generic_tag(node_type: str) -> str:
    return _CAMEL.sub(" ", node_type.removesuffix("Stmt")).upper()


def _defelem(args: list | None, name: str) -> str | None:
    for d in args or ():
        de = d.get("DefElem", {})
        if de.get("defname") == name:
            arg = de.get("arg", {})
            if "String" in arg:
                return arg["String"].get("sval")
    return None


def _classify_statement(node_type: str, body: dict) -> tuple[str, str, list[str]]:
    """(kind, command tag, reasons) of one top-level statement."""
    tag = _TAGS.get(node_type) or _generic_tag(node_type)
    reasons: list[str] = []
    if node_type == "VariableSetStmt":
        name = (body.get("name") or "").lower()
        kind = body.get("kind")
        if kind == "VAR_RESET_ALL":
            return "identity", "RESET ALL", ["RESET ALL resets the role"]
        verb = "RESET" if kind == "VAR_RESET" else "SET"
        if name in IDENTITY_GUCS:
            return "identity", f"{verb} {name.replace('_', ' ').upper()}", []
        if name in SERVER_GUCS or name.startswith(SERVER_GUC_PREFIXES):
            return "server", f"{verb} {name}", []
        return "setting", f"{verb} {name}" if name else verb, []
    if node_type == "DiscardStmt":
        if body.get("target") == "DISCARD_ALL":
            return "identity", "DISCARD ALL", ["DISCARD ALL resets the session authorization"]
        return "setting", "DISCARD", []
    if node_type == "TransactionStmt":
        return "transaction", _TXN_TAGS.get(body.get("kind", ""), "TRANSACTION"), []
    if node_type == "CopyStmt":
        direction = "FROM" if body.get("is_from") else "TO"
        if body.get("is_program"):
            return "server", f"COPY {direction} PROGRAM", []
        if body.get("filename"):
            return "server", f"COPY {direction} FILE", []
        return ("write" if body.get("is_from") else "read"), "COPY", []
    if node_type == "SelectStmt" and body.get("intoClause"):
        return "ddl", "SELECT INTO", []
    if node_type == "AlterTableStmt":
        subtypes = {c.get("AlterTableCmd", {}).get("subtype") for c in body.get("cmds", ())}
        if subtypes & _PRIVILEGE_ALTER_TABLE:
            return "privilege", "ALTER TABLE", ["changes owner or row security"]
        return "ddl", "ALTER TABLE", []
    if node_type == "CreateFunctionStmt":
        lang = (_defelem(body.get("options"), "language") or "sql").lower()
        tag = "CREATE PROCEDURE" if body.get("is_procedure") else "CREATE FUNCTION"
        if lang in UNTRUSTED_LANGUAGES:
            return "server", tag, [f"untrusted language {lang}"]
        return "ddl", tag, []
    if node_type == "DoStmt":
        lang = (_defelem(body.get("args"), "language") or "plpgsql").lower()
        if lang in UNTRUSTED_LANGUAGES:
            return "server", "DO", [f"untrusted language {lang}"]
        return "opaque", "DO", ["anonymous code block"]
    if node_type == "ExplainStmt":
        inner = body.get("query") or {}
        analyze = any(d.get("DefElem", {}).get("defname") == "analyze" for d in body.get("options", ()))
        for t, b in inner.items():
            k, itag, r = _classify_statement(t, b)
            if analyze or k in KINDS_ALWAYS_REFUSED:
                return k, f"EXPLAIN {itag}", r
        return "read", "EXPLAIN", []
    if node_type == "CreateExtensionStmt":
        return "server", tag, ["an extension may load shared libraries"]
    for group, kind in ((_READ, "read"), (_WRITE, "write"), (_SETTING, "setting"),
                        (_MAINTENANCE, "maintenance"), (_SERVER, "server"),
                        (_PRIVILEGE, "privilege"), (_OPAQUE, "opaque")):
        if node_type in group:
            if node_type == "VacuumStmt" and not body.get("is_vacuumcmd"):
                tag = "ANALYZE"
            return kind, tag, reasons
    if node_type == "CallStmt":
        return "write", "CALL", []
    return "ddl", tag, reasons


_ORDER = ["read", "setting", "write", "maintenance", "ddl", "transaction", "opaque", "privilege",
          "server", "identity"]
_RANK = {k: i for i, k in enumerate(_ORDER)}


def _worse(a: str, b: str) -> str:
    return a if _RANK[a] >= _RANK[b] else b


def worst_statement(statements: list[dict]) -> dict:
    """The statement of the most dangerous kind (the first of them), to name in a refusal."""
    return max(statements, key=lambda st: _RANK[st["kind"]]) if statements else {"command": "?", "kind": "read"}


def _inspect_expressions(stmt: dict, entry: dict) -> None:
    """Fold functions, operators and nested commands of one statement into `entry`."""
    funcs = entry["functions"]
    ops = entry["operators"]
    types: set[tuple[str, ...]] = set()
    for t, b in _walk(stmt):
        _note_type_names(t, b, types)
        if t == "FuncCall":
            parts = _names(b.get("funcname"))
            nargs = len(b.get("args") or ())
            if b.get("agg_star"):
                nargs = 0
            funcs.append({"name": parts, "nargs": nargs,
                          "variadic": bool(b.get("func_variadic"))})
            base = parts[-1] if parts else ""
            if len(parts) == 1 or parts[0] == "pg_catalog" or base.startswith("pg_background"):
                if base == "set_config":
                    args = b.get("args") or []
                    guc = _const_str(args[0]) if args else None
                    if guc is None or guc.lower() in IDENTITY_GUCS:
                        entry["kind"] = "identity"
                        entry["command"] = f"set_config('{guc}')" if guc else "set_config"
                        entry["reasons"].append("set_config of an identity setting")
                    elif guc.lower() == "search_path" and len(args) > 1:
                        path = _const_str(args[1])
                        entry.setdefault("sets_search_path", path if path is not None else "?")
                    elif guc.lower() in SERVER_GUCS or guc.lower().startswith(SERVER_GUC_PREFIXES):
                        entry["kind"] = _worse(entry["kind"], "server")
                        entry["reasons"].append(f"set_config('{guc}')")
                if base in SERVER_FUNCTIONS:
                    entry["kind"] = _worse(entry["kind"], "server")
                    entry["reasons"].append(f"calls {base}()")
                    entry["dangerous_calls"].append(base)
                elif base in OPAQUE_FUNCTIONS:
                    entry["kind"] = _worse(entry["kind"], "opaque")
                    entry["reasons"].append(f"calls {base}() which runs SQL text")
                    entry["dangerous_calls"].append(base)
        elif t == "A_Expr":
            name = _names(b.get("name"))
            if name and b.get("kind") in (None, "AEXPR_OP", "AEXPR_OP_ANY", "AEXPR_OP_ALL",
                                          "AEXPR_IN", "AEXPR_LIKE", "AEXPR_ILIKE", "AEXPR_SIMILAR",
                                          "AEXPR_BETWEEN", "AEXPR_NOT_BETWEEN", "AEXPR_DISTINCT",
                                          "AEXPR_NOT_DISTINCT", "AEXPR_NULLIF"):
                ops.append({"name": name})
        elif t in ("InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt"):
            entry["kind"] = _worse(entry["kind"], "write")
    entry["type_names"] = sorted(list(n) for n in types)


def _row_text_ok(node_type: str, body: dict) -> bool:
    """A plain query that may run as a subquery (its rows then come back as record text):
    no SELECT INTO, no data-modifying WITH (both must stay at the top level)."""
    if node_type != "SelectStmt" or body.get("intoClause"):
        return False
    for cte in (body.get("withClause") or {}).get("ctes", ()):
        q = (cte.get("CommonTableExpr") or {}).get("ctequery") or {}
        if set(q) != {"SelectStmt"} or not _row_text_ok("SelectStmt", q["SelectStmt"]):
            return False
    return True


# statements that never commit on their own: a job made only of them runs in one transaction
_ONE_TRANSACTION = frozenset({"SelectStmt", "InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt"})


def commits_its_outcome(classification: dict) -> bool:
    """A job that runs in one transaction and may write: it records its outcome in that transaction."""
    stmts = classification["statements"]
    return all(s["node"] in _ONE_TRANSACTION for s in stmts) and any(s["kind"] != "read" for s in stmts)


def row_statement(sql: str, classification: dict) -> str | None:
    """The job's one plain query, which the worker runs wrapped to write each row as a record
    literal (protocol.row_text_sql), or None when the job is not one plain query."""
    stmts = classification["statements"]
    if len(stmts) != 1 or not stmts[0].get("row_text"):
        return None
    raw = sql.encode()
    loc, ln = stmts[0]["location"], stmts[0]["length"]
    return (raw[loc:loc + ln] if ln else raw[loc:]).decode()


def _parse(sql: str) -> list[dict]:
    try:
        return json.loads(_parser.parse_sql_json(sql)).get("stmts", [])
    except _parser.ParseError as e:
        raise ClassifyError(str(e)) from None


def _token_name(sql: str, tok) -> str:
    text = sql[tok.start:tok.end + 1]
    return text[1:-1].replace('""', '"') if text.startswith('"') else text.lower()


_TYPE_NAMES: OrderedDict[str, tuple] = OrderedDict()
_TYPE_FIELDS = ("typeName", "returnType", "argType")


def _note_type_names(t: str, b: dict, found: set) -> None:
    """Type names one parse node writes (a cast's, a column's, a function's argument or result)
    and the name of a one-argument call, which the server reads as a cast when a type is named so."""
    for k in _TYPE_FIELDS:
        v = b.get(k)
        if isinstance(v, dict) and "names" in v:
            found.add(tuple(_names(v["names"])))
    if t == "TypeName" and "names" in b:
        found.add(tuple(_names(b["names"])))
    elif t == "FuncCall" and len(b.get("args") or ()) == 1 and not b.get("agg_star"):
        found.add(tuple(_names(b.get("funcname"))))


def _type_names_of(tree: Any) -> set[tuple[str, ...]]:
    found: set[tuple[str, ...]] = set()
    for t, b in _walk(tree):
        _note_type_names(t, b, found)
    return found


def type_names(sql: str) -> tuple[tuple[str, ...], ...]:
    """The type names a text writes (casts, CAST ... AS, column definitions), as name parts, and the
    names of one-argument calls, which the server reads as a cast when a type is named so and no
    function fits. A text that does not parse alone (a PL/pgSQL expression) is read with the
    scanner: names after '::' and names before '('."""
    hit = _TYPE_NAMES.get(sql)
    if hit is not None:
        return hit
    found: set[tuple[str, ...]] = set()
    try:
        found.update(_type_names_of(_parse(sql)))
    except ClassifyError:
        try:
            tokens = list(_parser.scan(sql))
        except _parser.ParseError:
            tokens = []
        for i, tok in enumerate(tokens):
            if tok.name == "ASCII_40" and i and (tokens[i - 1].name == "IDENT" or tokens[i - 1].kind != "NO_KEYWORD"):
                k = i - 1  # a call: its name, qualified or not
                while k >= 2 and tokens[k - 1].name == "ASCII_46":
                    k -= 2
                found.add(tuple(_token_name(sql, tokens[m]) for m in range(k, i, 2)))
                continue
            if tok.name != "TYPECAST":
                continue
            parts, j = [], i + 1
            while j < len(tokens) and (tokens[j].name == "IDENT" or tokens[j].kind != "NO_KEYWORD"):
                parts.append(_token_name(sql, tokens[j]))
                if j + 1 < len(tokens) and tokens[j + 1].name == "ASCII_46":
                    j += 2
                    continue
                break
            if parts:
                found.add(tuple(parts))
    hit = _TYPE_NAMES[sql] = tuple(sorted(found))
    if len(_TYPE_NAMES) > _CACHE_SIZE:
        _TYPE_NAMES.popitem(last=False)
    return hit


_CACHE: OrderedDict[str, dict] = OrderedDict()
_CACHE_SIZE = 512


def classify(sql: str) -> dict:
    """Classification of `sql`; raises ClassifyError on text that does not parse.

    The result is shared by a small LRU cache: treat it as read-only.
    """
    hit = _CACHE.get(sql)
    if hit is not None:
        _CACHE.move_to_end(sql)
        return hit
    statements = []
    for raw in _parse(sql):
        stmt = raw.get("stmt") or {}
        (node_type, body), = stmt.items() if stmt else (("EmptyStmt", {}),)
        kind, tag, reasons = _classify_statement(node_type, body)
        entry = {"node": node_type, "command": tag, "kind": kind, "reasons": list(reasons),
                 "functions": [], "operators": [], "dangerous_calls": [],
                 "location": raw.get("stmt_location", 0), "length": raw.get("stmt_len", 0),
                 "row_text": _row_text_ok(node_type, body), "type_names": []}
        if node_type == "VariableSetStmt" and (body.get("name") or "").lower() == "search_path":
            if body.get("kind") == "VAR_SET_VALUE":
                # the server quotes each value as an identifier (GUC_LIST_QUOTE): "Tools" stays Tools
                vals = ['"' + (_const_str(a) or "").replace('"', '""') + '"' for a in body.get("args", ())]
                entry["sets_search_path"] = ", ".join(vals)
            else:
                entry["sets_search_path"] = None  # RESET / DEFAULT: back to the inherited path
            entry["local"] = bool(body.get("is_local"))
        if node_type == "CallStmt":
            call = body.get("funccall") or {}
            entry["functions"].append({"name": _names(call.get("funcname")),
                                       "nargs": len(call.get("args") or ()), "variadic": False,
                                       "procedure": True})
            _inspect_expressions({"args": call.get("args") or []}, entry)
        else:
            _inspect_expressions(stmt, entry)
        statements.append(entry)
    worst = "read"
    for s in statements:
        worst = _worse(worst, s["kind"])
    result = {
        "statements": statements,
        "statement_count": len(statements),
        "multi_statement": len(statements) > 1,
        "kinds": sorted({s["kind"] for s in statements}, key=_RANK.__getitem__),
        "worst": worst,
    }
    _CACHE[sql] = result
    if len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return result
