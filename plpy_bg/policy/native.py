"""Read-only access to the running backend's C state, through ctypes.

PostgreSQL offers no SQL view of its own call stack, so provenance reads the
backend's ``error_context_stack``: every PL call handler pushes an
``ErrorContextCallback`` whose ``arg`` names the running function
(PL/pgSQL: the execstate -> PLpgSQL_function; PL/Python: the execution
context -> PLyProcedure; SQL functions: the FmgrInfo). The callbacks are
static functions with no symbols, so a frame is only believed when the
structure behind ``arg`` carries an oid whose pg_proc row matches in xmin and
ctid (done by `provenance`); anything else is reported as an unknown frame.

A pointer whose meaning is a guess (the ``arg`` of a callback not yet tied to
a function) is followed with `read()`, a write of it into a pipe, so a wrong
guess returns None instead of crashing the backend; structures the backend
hands us itself (the context stack, PL/Python's contexts, the active portal)
are read directly with `peek_*`, which is five times cheaper. We call only C
getters that cannot raise an ERROR (a longjmp through Python would be fatal).

Below the top level, the statement a frame runs is read from its plan: a
PL/pgSQL frame's current statement's expressions (PLpgSQL_execstate.err_stmt),
a SQL function's running PlannedStmt (its SQLFunctionCache), and the
CachedPlanSource behind SPI's own frame (its SPICallbackArg names the query
text, which lives in the plan source's memory context). Each is verified by a
magic number or a pointer back before it is believed.

Layouts were checked with offsetof() against the PostgreSQL 15 headers (and
the private structs of aset.c and functions.c copied beside them); the frame
layouts have been stable since 13. Plan layouts are known for 15 only:
elsewhere the caller records an unknown entry and fails closed.
"""
from __future__ import annotations

import ctypes
import os
import struct
from typing import NamedTuple

_U64 = struct.Struct("<Q")
_INLINE_CELLS = 6
_USER_SPACE_END = 1 << 57  # x86-64 user addresses end below (5-level paging); pread takes a signed offset
_U32 = struct.Struct("<I")
_ECB = struct.Struct("<QQQ")  # ErrorContextCallback: previous, callback, arg

# offsets of the few fields we read, per server major version
_FRAME_LAYOUT = {
    "plpgsql_func": 0,          # PLpgSQL_execstate.func
    "plpgsql_trigdata": 8,      # PLpgSQL_execstate.trigdata
    "plpgsql_evtrigdata": 16,   # PLpgSQL_execstate.evtrigdata
    "plpgsql_fn_signature": 0,  # PLpgSQL_function.fn_signature
    "plpgsql_fn_oid": 8,        # PLpgSQL_function.fn_oid (then fn_xmin, fn_tid)
    "fmgr_fn_addr": 0,          # FmgrInfo.fn_addr
    "fmgr_fn_oid": 8,           # FmgrInfo.fn_oid
    "ply_curr_proc": 0,         # PLyExecutionContext.curr_proc
    "ply_next": 16,             # PLyExecutionContext.next
    "ply_pyname": 16,           # PLyProcedure.pyname
    "ply_fn_xmin": 24,          # PLyProcedure.fn_xmin (then fn_tid)
    "ply_is_procedure": 36,     # PLyProcedure.is_procedure
    "ply_is_trigger": 37,       # PLyProcedure.is_trigger
}
_PORTAL_LAYOUT = {
    15: {"portal_name": 0, "portal_stmts": 88, "portal_status": 132, "portal_active": 3,
         "portal_command_tag": 64, "portal_source": 56, "ps_command_tag": 24,
         "plannedstmt_tag": 237, "plannedstmt_command": 4, "cmd_utility": 6, "plannedstmt_utility": 112,
         "plannedstmt_relation_oids": 88, "plannedstmt_inval_items": 96,
         "planinvalitem_tag": 61, "procoid_cache": 45, "list_length": 4, "list_elements": 16,
         "list_tag": 231, "oid_list_tag": 233, "rawstmt_tag": 235, "rawstmt_stmt": 8,
         # CachedPlanSource (plancache.h) and the memory context it is the first chunk of (aset.c)
         "plansource_magic": 195726186, "ps_raw_parse_tree": 8, "ps_query_string": 16, "ps_context": 80,
         "ps_relation_oids": 96, "ps_inval_items": 104, "ps_gplan": 136,
         "cplan_magic": 953717834, "cplan_stmt_list": 8,
         "aset_keeper": 208, "alloc_block_header": 40, "alloc_chunk_header": 16,
         "spiplan_magic": 569278163, "spiplan_list": 8, "plyplan_plan": 16,
         # PL/pgSQL: PLpgSQL_execstate.err_stmt and .err_var, PLpgSQL_variable.default_val,
         # PLpgSQL_expr.plan and .func, the cond/expr of
         # PLpgSQL_if_elsif, PLpgSQL_case_when and PLpgSQL_raise_option (plpgsql.h)
         "plpgsql_err_stmt": 216, "plpgsql_err_var": 224, "plpgsql_var_default": 24, "plpgsql_expr_plan": 16, "plpgsql_expr_func": 32, "plpgsql_item_expr": 8,
         # SQL functions: FmgrInfo.fn_extra -> SQLFunctionCache.fname/func_state -> execution_state
         "fmgr_fn_extra": 24, "sqlfn_fname": 0, "sqlfn_func_state": 64,
         "es_next": 0, "es_status": 8, "es_running": 1, "es_stmt": 16},
}
# utility statements whose code runs only in PL frames we read (or in a portal of its own)
CALL_TAG = 353
UTILITY_TAGS = {CALL_TAG: "CALL", 264: "DO", 304: "EXECUTE", 260: "FETCH", 270: "TRANSACTION",
                306: "DECLARE CURSOR", 252: "CLOSE"}
# utility statements whose query parse analysis reads (their plan sources list its dependencies)
ANALYZED_UTILITY_TAGS = {278: "CREATE TABLE AS (or SELECT INTO)", 277: "EXPLAIN"}
# raw statements that are planned: INSERT, DELETE, UPDATE, MERGE, SELECT, PL/pgSQL assignment
PLANNABLE_TAGS = frozenset({238, 239, 240, 241, 242, 244})
# command tags of plan sources that are no utility statement (SELECT INTO is one, but parse analysis
# lists what its query depends on)
_PLANNABLE_COMMANDS = frozenset({"SELECT", "INSERT", "DELETE", "UPDATE", "MERGE"})


class Deps(NamedTuple):
    """What a statement's plans depend on: relation oids, user function oids, and the node tags of
    its utility statements (whose queries, if any, are not in the plan)."""
    rels: list[int]
    funcs: list[int]
    utility: list[tuple[int, str]]  # (node tag, command name)
SUPPORTED_MAJORS = range(13, 19)


class RawFrame(NamedTuple):
    library: str      # "postgres", "plpgsql", "plpython", or the object file's name
    callback: int
    arg: int


_PIPE_CHUNK = 65536  # a pipe's default capacity


class Backend:
    """Handles on the backend's symbols; one per process (see `backend()`)."""

    def __init__(self, major: int):
        self.major = major
        self.lib = ctypes.CDLL(None)
        # memory is read by writing it into a pipe: a bad address is EFAULT, never a crash (a
        # sandboxed backend is not dumpable, so even it may not open its own /proc/self/mem)
        self._pipe = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._write = ctypes.CDLL(None, use_errno=True).write
        self._write.restype = ctypes.c_ssize_t
        self._write.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t]
        self._ecs = ctypes.c_void_p.in_dll(self.lib, "error_context_stack")
        self._sinval = ctypes.c_uint64.in_dll(self.lib, "SharedInvalidMessageCounter")
        self._portal = ctypes.c_void_p.in_dll(self.lib, "ActivePortal")
        self._search_path = ctypes.c_char_p.in_dll(self.lib, "namespace_search_path")
        self._get_portal = self.lib.GetPortalByName  # a hash lookup: raises no ERROR
        self._get_portal.restype = ctypes.c_void_p
        self._get_portal.argtypes = [ctypes.c_char_p]
        self.spi_callback: int | None = None  # learned by `learn_spi_callback`
        self.spi_probed = False
        self._command_name = self.lib.GetCommandTagName  # an array lookup
        self._command_name.restype = ctypes.c_char_p
        self._command_name.argtypes = [ctypes.c_int]
        for name in ("GetUserId", "GetSessionUserId", "GetAuthenticatedUserId",
                     "GetOuterUserId", "GetTopTransactionIdIfAny"):
            getattr(self.lib, name).restype = ctypes.c_uint32
            getattr(self.lib, name).argtypes = []
        self.fmgr_sql = ctypes.cast(self.lib.fmgr_sql, ctypes.c_void_p).value
        try:
            ply = self.lib.PLy_current_execution_context
            ply.restype = ctypes.c_void_p
            ply.argtypes = []
            self._ply_current = ply
        except AttributeError:  # plpython not loaded in this backend (cannot happen when called from it)
            self._ply_current = None
        self._dladdr = self.lib.dladdr
        self._dladdr.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        self._dladdr.restype = ctypes.c_int
        self._engine_base = self._object_of(ctypes.cast(self.lib.GetUserId, ctypes.c_void_p).value)[1]
        self._libraries: dict[int, str] = {}
        self.frame = _FRAME_LAYOUT if major in SUPPORTED_MAJORS else None
        self.portal = _PORTAL_LAYOUT.get(major)

    # -- safe memory access -------------------------------------------------
    def read(self, addr: int, size: int) -> bytes | None:
        if not addr or addr < 4096 or addr >= _USER_SPACE_END:  # a guessed word may be any number
            return None
        out = bytearray()
        while len(out) < size:
            n = min(size - len(out), _PIPE_CHUNK)
            w = self._write(self._pipe[1], addr + len(out), n)
            got = 0
            while got < max(w, 0):  # the pipe was empty: all that went in comes out
                chunk = os.read(self._pipe[0], w - got)
                out += chunk
                got += len(chunk)
            if w != n:
                return None  # an unmapped page on the way
        return bytes(out)

    def ptr(self, addr: int) -> int | None:
        b = self.read(addr, 8)
        return _U64.unpack(b)[0] if b else None

    def u32(self, addr: int) -> int | None:
        b = self.read(addr, 4)
        return _U32.unpack(b)[0] if b else None

    def cstring(self, addr: int, limit: int = 200) -> str | None:
        """The NUL-terminated string at `addr`, read a page at a time (never into a page it does
        not reach); None when unreadable or not ended within `limit` bytes."""
        if not addr:
            return None
        chunks = []
        at = addr
        while at - addr < limit:
            b = self.read(at, min(4096 - at % 4096, limit - (at - addr)))
            if b is None:
                return None
            end = b.find(b"\0")
            if end >= 0:
                chunks.append(b[:end])
                return b"".join(chunks).decode("utf-8", "replace")
            chunks.append(b)
            at += len(b)
        return None

    # -- direct reads, only for addresses the backend itself handed us ---------
    @staticmethod
    def peek_ptr(addr: int) -> int:
        return ctypes.c_uint64.from_address(addr).value

    @staticmethod
    def peek_u32(addr: int) -> int:
        return ctypes.c_uint32.from_address(addr).value

    @staticmethod
    def peek_cstring(addr: int) -> str | None:
        return ctypes.string_at(addr).decode("utf-8", "replace") if addr else None

    @staticmethod
    def peek_tid_xmin(addr: int) -> tuple[int, tuple[int, int]]:
        xmin, hi, lo, off = struct.unpack("<IHHH", ctypes.string_at(addr, 10))
        return xmin, ((hi << 16) | lo, off)

    # -- identity and cache state ------------------------------------------
    def user_id(self) -> int:
        return self.lib.GetUserId()

    def session_user_id(self) -> int:
        return self.lib.GetSessionUserId()

    def authenticated_user_id(self) -> int:
        return self.lib.GetAuthenticatedUserId()

    def outer_user_id(self) -> int:
        return self.lib.GetOuterUserId()

    def search_path(self) -> str:
        """The search_path setting in force (the GUC's string, as SHOW prints it)."""
        v = self._search_path.value
        return v.decode("utf-8", "replace") if v else ""

    def sinval_counter(self) -> int:
        """Bumps whenever this backend processes catalog invalidations (ours to key caches on)."""
        return self._sinval.value

    def has_xid(self) -> bool:
        """True when this transaction wrote something, so the catalog may hold our own uncommitted changes."""
        return self.lib.GetTopTransactionIdIfAny() != 0

    # -- the stack -----------------------------------------------------------
    def _object_of(self, addr: int) -> tuple[str, int]:
        class DlInfo(ctypes.Structure):
            _fields_ = [("fname", ctypes.c_char_p), ("fbase", ctypes.c_void_p),
                        ("sname", ctypes.c_char_p), ("saddr", ctypes.c_void_p)]
        info = DlInfo()
        if not self._dladdr(ctypes.c_void_p(addr), ctypes.byref(info)):
            return "?", 0
        return (info.fname or b"?").decode(errors="replace"), info.fbase or 0

    def library_of(self, addr: int) -> str:
        lib = self._libraries.get(addr)
        if lib is None:
            fname, base = self._object_of(addr)
            if base and base == self._engine_base:
                lib = "postgres"
            else:
                short = os.path.basename(fname)
                lib = short.split(".so", 1)[0]
                if lib.startswith("plpython"):
                    lib = "plpython"
            self._libraries[addr] = lib
        return lib

    def error_context_frames(self, limit: int = 100_000) -> list[RawFrame] | None:
        """Callbacks on error_context_stack, innermost first; None when the walk broke."""
        out = []
        addr = self._ecs.value or 0
        while addr:
            if len(out) >= limit:
                return None
            previous, callback, arg = _ECB.unpack(ctypes.string_at(addr, _ECB.size))
            out.append(RawFrame(self.library_of(callback), callback, arg))
            addr = previous
        return out

    def plpython_contexts(self, limit: int = 100_000) -> list[int]:
        """PL/Python execution contexts, innermost first."""
        if self._ply_current is None:
            return []
        out = []
        ctx = self._ply_current() or 0
        nxt = self.frame["ply_next"] if self.frame else 16
        while ctx and len(out) < limit:
            out.append(ctx)
            ctx = self.peek_ptr(ctx + nxt)
        return out

    # -- plans of statements (read with pread where pointers are guesses) --------------------
    def _get(self, addr: int, size: int, sure: bool) -> bytes | None:
        """`size` bytes at `addr`: read directly when the backend handed us the structure (`sure`),
        with pread otherwise."""
        if sure:
            return ctypes.string_at(addr, size) if addr else None
        return self.read(addr, size)

    def _list_safe(self, lst: int | None, tag: int, limit: int = 100_000, sure: bool = False) -> list[int] | None:
        """A List's cells as 64-bit words, or None when `lst` is not a List of that tag."""
        if not lst:
            return []
        # a short List keeps its cells right after its head: one pread for both
        head = self._get(lst, 24, True) if sure else (self.read(lst, 24 + 8 * _INLINE_CELLS) or self.read(lst, 24))
        if head is None:
            return None
        t, n = struct.unpack_from("<iI", head)
        if t != tag or n > limit:
            return None
        if n == 0:
            return []
        elements = _U64.unpack_from(head, 16)[0]
        if elements == lst + 24 and n <= _INLINE_CELLS and len(head) > 24:
            return list(struct.unpack_from(f"<{n}Q", head, 24))
        cells = self._get(elements, 8 * n, sure)
        return list(struct.unpack(f"<{n}Q", cells)) if cells else None

    def _funcs_of(self, items: list[int], sure: bool = False) -> list[int] | None:
        """Function oids of PlanInvalItems (PROCOID hashes; PostgreSQL 15 records no domains)."""
        lay = self.portal
        funcs = []
        for item in items:
            b = self._get(item, 12, sure)
            if b is None:
                return None
            tag, cache_id, hash_value = struct.unpack("<iiI", b)
            if tag != lay["planinvalitem_tag"]:
                return None
            if cache_id == lay["procoid_cache"]:
                funcs.append(unmurmur32(hash_value))
        return funcs

    def command_name(self, tag: int | None) -> str:
        """GetCommandTagName() of a CommandTag read from a verified structure."""
        return (self._command_name(tag) or b"?").decode() if tag is not None and 0 <= tag < 1000 else "?"

    def _deps_of_lists(self, rel_list: int, item_list: int, sure: bool = False) -> Deps | None:
        lay = self.portal
        rels = self._list_safe(rel_list, lay["oid_list_tag"], sure=sure)
        items = self._list_safe(item_list, lay["list_tag"], sure=sure)
        funcs = None if items is None else self._funcs_of(items, sure)
        if rels is None or funcs is None:
            return None
        return Deps([r & 0xFFFFFFFF for r in rels], funcs, [])

    def planned_deps(self, stmt: int, command: str = "?", sure: bool = False) -> Deps | None:
        """Dependencies of one PlannedStmt (one read of its head)."""
        lay = self.portal
        head = self._get(stmt, lay["plannedstmt_utility"] + 8, sure)
        if head is None or _U32.unpack_from(head)[0] != lay["plannedstmt_tag"]:
            return None
        if _U32.unpack_from(head, 4)[0] == lay["cmd_utility"]:
            node = _U64.unpack_from(head, lay["plannedstmt_utility"])[0]
            tag = self.u32(node) if node else None
            return None if tag is None else Deps([], [], [(tag, ANALYZED_UTILITY_TAGS.get(tag, command))])
        return self._deps_of_lists(_U64.unpack_from(head, lay["plannedstmt_relation_oids"])[0],
                                   _U64.unpack_from(head, lay["plannedstmt_inval_items"])[0], sure)

    def plansource_deps(self, ps: int, may_inline=None) -> Deps | None:
        """Dependencies of a CachedPlanSource found by parse analysis (views and rules expanded,
        every function called), plus those of its generic plan (functions the planner inlined),
        read only when `may_inline(functions)` says one of them may have been inlined."""
        lay = self.portal
        head = self.read(ps, lay["ps_gplan"] + 8)
        if head is None or _U32.unpack_from(head)[0] != lay["plansource_magic"]:
            return None
        word = lambda off: _U64.unpack_from(head, off)[0]  # noqa: E731
        deps = self._deps_of_lists(word(lay["ps_relation_oids"]), word(lay["ps_inval_items"]))
        if deps is None:
            return None
        raw = word(lay["ps_raw_parse_tree"])
        command = self.command_name(_U32.unpack_from(head, lay["ps_command_tag"])[0])
        if raw and command not in _PLANNABLE_COMMANDS:
            node = self.read(raw, lay["rawstmt_stmt"] + 8)
            if node is None or _U32.unpack_from(node)[0] != lay["rawstmt_tag"]:
                return None
            stmt = _U64.unpack_from(node, lay["rawstmt_stmt"])[0]
            tag = self.u32(stmt) if stmt else None
            if tag is None:
                return None
            if tag not in PLANNABLE_TAGS:
                deps.utility.append((tag, command))
        gplan = word(lay["ps_gplan"])
        if gplan and (may_inline is None or may_inline(deps.funcs)):
            cplan = self.read(gplan, lay["cplan_stmt_list"] + 8)
            if cplan and _U32.unpack_from(cplan)[0] == lay["cplan_magic"]:
                for stmt in self._list_safe(_U64.unpack_from(cplan, lay["cplan_stmt_list"])[0], lay["list_tag"]) or ():
                    d = self.planned_deps(stmt)
                    if d is not None:
                        deps.rels.extend(d.rels)
                        deps.funcs.extend(d.funcs)
        return deps

    def plansource_text(self, ps: int, limit: int = 1 << 20) -> str:
        """The query text of a verified CachedPlanSource."""
        return self.cstring(self.ptr(ps + self.portal["ps_query_string"]) or 0, limit) or ""

    def plansource_of_text(self, qs: int) -> int | None:
        """The CachedPlanSource whose query_string is `qs`: CreateCachedPlan makes it the first
        chunk of its own memory context and copies the text into that context, so the text's chunk
        names the context, whose keeper block starts with the plan source. Verified by its magic
        and by its query_string and context pointing back."""
        lay = self.portal
        aset = self.ptr(qs - 8)
        keeper = self.ptr(aset + lay["aset_keeper"]) if aset else None
        if not keeper:
            return None
        ps = keeper + lay["alloc_block_header"] + lay["alloc_chunk_header"]
        if (self.u32(ps) == lay["plansource_magic"] and self.ptr(ps + lay["ps_query_string"]) == qs
                and self.ptr(ps + lay["ps_context"]) == aset):
            return ps
        return None

    def plpy_plan_sources(self, plan_object) -> list[int] | None:
        """CachedPlanSources of a PL/Python plan object (PLyPlanObject.plan)."""
        return self.spi_plan_sources(self.peek_ptr(id(plan_object) + self.portal["plyplan_plan"]))

    def plpgsql_statement_plan_sources(self, estate: int) -> list[int] | None:
        """Plan sources of every expression of the statement a PL/pgSQL frame is running (its
        current statement's expressions, found by their pointer back to the frame's function)."""
        lay = self.portal
        head = self.read(estate, lay["plpgsql_err_var"] + 8)
        if head is None:
            return None
        func = _U64.unpack_from(head, self.frame["plpgsql_func"])[0]
        stmt = _U64.unpack_from(head, lay["plpgsql_err_stmt"])[0]
        var = _U64.unpack_from(head, lay["plpgsql_err_var"])[0]
        words = self.read(stmt + 8, 8 * 8) if func and stmt else None  # at most 8 pointers after the header
        if words is None:
            return None
        f_off, list_tag, item_off = lay["plpgsql_expr_func"], lay["list_tag"], lay["plpgsql_item_expr"]
        exprs = []
        pointers = struct.unpack("<8Q", words)
        if var:  # a variable's initializer in a DECLARE section
            pointers += (self.ptr(var + lay["plpgsql_var_default"]) or 0,)
        for w in pointers:
            b = self.read(w, f_off + 8) if w else None  # as an expression (func at 32) or a List (tag, length)
            if b is None:
                continue
            if _U64.unpack_from(b, f_off)[0] == func:
                exprs.append(b)
            elif _U32.unpack_from(b)[0] == list_tag:
                for cell in self._list_safe(w, list_tag, 10_000) or ():
                    c = self.read(cell, f_off + 8)
                    if c is not None and _U64.unpack_from(c, f_off)[0] == func:
                        exprs.append(c)
                    elif c is not None:  # an ELSIF, a WHEN or a RAISE option holding one expression
                        inner = _U64.unpack_from(c, item_off)[0]
                        e = self.read(inner, f_off + 8) if inner else None
                        if e is not None and _U64.unpack_from(e, f_off)[0] == func:
                            exprs.append(e)
        out = []
        for e in exprs:
            out.extend(self.spi_plan_sources(_U64.unpack_from(e, lay["plpgsql_expr_plan"])[0]) or ())
        return out

    def spi_plan_sources(self, plan: int) -> list[int] | None:
        """CachedPlanSources of an SPIPlan (magic checked)."""
        lay = self.portal
        head = self.read(plan, lay["spiplan_list"] + 8) if plan else None
        if head is None or _U32.unpack_from(head)[0] != lay["spiplan_magic"]:
            return None
        return self._list_safe(_U64.unpack_from(head, lay["spiplan_list"])[0], lay["list_tag"])

    def sql_function_statement(self, flinfo: int, name: str) -> Deps | None:
        """Dependencies of the statement a SQL function frame is running (its cache checked by
        the function's name)."""
        lay = self.portal
        cache = self.ptr(flinfo + lay["fmgr_fn_extra"])
        if not cache or self.cstring(self.ptr(cache + lay["sqlfn_fname"]) or 0) != name:
            return None
        for es in self._list_safe(self.ptr(cache + lay["sqlfn_func_state"]), lay["list_tag"], 10_000) or ():
            hops = 0
            while es and hops < 10_000:
                if self.u32(es + lay["es_status"]) == lay["es_running"]:
                    return self.planned_deps(self.ptr(es + lay["es_stmt"]) or 0)
                es = self.ptr(es + lay["es_next"])
                hops += 1
        return None

    def spi_statement_text(self, arg: int, limit: int = 1 << 20) -> tuple[int, str] | None:
        """(address, text) of the statement an SPI frame runs (its SPICallbackArg.query)."""
        qs = self.ptr(arg)
        text = self.cstring(qs, limit) if qs else None
        return None if text is None else (qs, text)

    def top_level_portal(self) -> int | None:
        """The unnamed portal when it is running (the top-level statement while a cursor runs)."""
        p = self._get_portal(b"")
        if p and self.peek_u32(p + self.portal["portal_status"]) == self.portal["portal_active"]:
            return p
        return None

    def portal_deps(self, portal: int) -> tuple[str, Deps]:
        lay = self.portal
        name = self.peek_cstring(self.peek_ptr(portal + lay["portal_name"])) or ""
        command = self.command_name(self.peek_u32(portal + lay["portal_command_tag"]))
        deps = Deps([], [], [])
        for stmt in self._list_ptrs(self.peek_ptr(portal + lay["portal_stmts"])):
            d = self.planned_deps(stmt, command, sure=True)  # an active portal's plans are real
            if d is None:
                deps.utility.append((-1, command))
                continue
            deps.rels.extend(d.rels)
            deps.funcs.extend(d.funcs)
            deps.utility.extend(d.utility)
        return name, deps

    def portal_text(self, portal: int, limit: int = 1 << 20) -> str:
        """The query text a portal was made from (a cursor's, a prepared statement's)."""
        addr = self.peek_ptr(portal + self.portal["portal_source"])
        return ctypes.string_at(addr).decode("utf-8", "replace")[:limit] if addr else ""

    def active_portal(self) -> int | None:
        return self._portal.value

    def _list_cells(self, lst: int | None) -> tuple[int, int]:
        if not lst:
            return 0, 0
        lay = self.portal
        return self.peek_u32(lst + lay["list_length"]), self.peek_ptr(lst + lay["list_elements"])

    def _list_ptrs(self, lst: int | None) -> list[int]:
        n, cells = self._list_cells(lst)
        return list(struct.unpack(f"<{n}Q", ctypes.string_at(cells, 8 * n))) if n else []


def murmurhash32(h: int) -> int:
    """PostgreSQL's murmurhash32 (the catcache hash of an oid key)."""
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & 0xFFFFFFFF
    return h ^ (h >> 16)


def unmurmur32(h: int) -> int:
    """The oid whose murmurhash32 is `h`."""
    h ^= h >> 16
    h = (h * 0x7ED1B41D) & 0xFFFFFFFF
    h ^= (h >> 13) ^ (h >> 26)
    h = (h * 0xA5CB9243) & 0xFFFFFFFF
    return h ^ (h >> 16)


_BACKEND: Backend | None = None
PROBE_SQL = "SELECT plpy_bg.stack_probe() -- plpy_bg: where SPI statements sit on the stack"


def learn_spi_callback(plpy, be: Backend) -> int | None:
    """SPI's error callback (a static function) found once per backend: a probe function called
    through SPI finds the frame whose statement text is the probe's own."""
    if not be.spi_probed and be.portal is not None:
        be.spi_probed = True  # once per backend, found or not
        try:
            plpy.execute(PROBE_SQL)
        except plpy.SPIError as e:
            if not analysis_error(e):
                raise  # a cancel or a shutdown is not ours to swallow
            return None  # no USAGE on schema plpy_bg: SPI frames stay unidentified (fail closed)
    return be.spi_callback


def analysis_error(e) -> bool:
    """An SPI error that says the statement does not analyze or may not be read (syntax,
    undefined or forbidden objects, unsupported features, bad literals, limits), as opposed to a
    cancel, a timeout, a shutdown or a lack of resources, which must reach the caller."""
    return (getattr(e, "sqlstate", None) or "XX")[:2] in ("42", "0A", "22", "3F", "3D", "54")


def note_spi_callback(plpy) -> None:
    """Body of plpy_bg.stack_probe(): the first engine frame below it that runs PROBE_SQL is SPI's."""
    be = backend(plpy)
    for f in (be.error_context_frames() or ())[1:8]:
        if f.library == "postgres" and f.arg:
            got = be.spi_statement_text(f.arg, 4096)
            if got and got[1] == PROBE_SQL:
                be.spi_callback = f.callback
                return


def backend(plpy) -> Backend:
    """The process's Backend, built on first use (asks the server its version once)."""
    global _BACKEND
    if _BACKEND is None or _BACKEND.lib is None:
        major = int(plpy.execute("SELECT pg_catalog.current_setting('server_version_num') AS v")[0]["v"]) // 10000
        _BACKEND = Backend(major)
    return _BACKEND
