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
a function) is followed with `read()`, a pread of /proc/self/mem, so a wrong
guess returns None instead of crashing the backend; structures the backend
hands us itself (the context stack, PL/Python's contexts, the active portal)
are read directly with `peek_*`, which is five times cheaper. We call only C
getters that cannot raise an ERROR (a longjmp through Python would be fatal).

Layouts were checked with offsetof() against the PostgreSQL 15 headers; the
frame layouts have been stable since 13. Portal/PlannedStmt offsets are
known for 15 only: elsewhere `statement_relations()` returns None and the
caller fails closed.
"""
from __future__ import annotations

import ctypes
import os
import struct
from typing import NamedTuple

_U64 = struct.Struct("<Q")
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
    15: {"portal_name": 0, "portal_stmts": 88, "plannedstmt_tag": 237,
         "plannedstmt_relation_oids": 88, "plannedstmt_inval_items": 96,
         "planinvalitem_tag": 61, "procoid_cache": 45, "list_length": 4, "list_elements": 16},
}
SUPPORTED_MAJORS = range(13, 19)


class RawFrame(NamedTuple):
    library: str      # "postgres", "plpgsql", "plpython", or the object file's name
    callback: int
    arg: int


class Backend:
    """Handles on the backend's symbols; one per process (see `backend()`)."""

    def __init__(self, major: int):
        self.major = major
        self.lib = ctypes.CDLL(None)
        self._mem = os.open("/proc/self/mem", os.O_RDONLY | os.O_CLOEXEC)
        self._ecs = ctypes.c_void_p.in_dll(self.lib, "error_context_stack")
        self._sinval = ctypes.c_uint64.in_dll(self.lib, "SharedInvalidMessageCounter")
        self._portal = ctypes.c_void_p.in_dll(self.lib, "ActivePortal")
        self._search_path = ctypes.c_char_p.in_dll(self.lib, "namespace_search_path")
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
        if not addr or addr < 4096:
            return None
        try:
            data = os.pread(self._mem, size, addr)
        except OSError:
            return None
        return data if len(data) == size else None

    def ptr(self, addr: int) -> int | None:
        b = self.read(addr, 8)
        return _U64.unpack(b)[0] if b else None

    def u32(self, addr: int) -> int | None:
        b = self.read(addr, 4)
        return _U32.unpack(b)[0] if b else None

    def cstring(self, addr: int, limit: int = 200) -> str | None:
        if not addr:
            return None
        first = min(limit, 4096 - addr % 4096)  # never cross into a page we may not own
        b = self.read(addr, first)
        if b is None:
            return None
        if b"\0" not in b and first < limit:
            b += self.read(addr + first, limit - first) or b""
        return b.split(b"\0", 1)[0].decode("utf-8", "replace")

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

    def tid_xmin(self, addr: int) -> tuple[int, tuple[int, int]] | None:
        """(xmin, (block, offset)) from a TransactionId followed by an ItemPointerData."""
        b = self.read(addr, 10)
        if b is None:
            return None
        xmin, hi, lo, off = struct.unpack("<IHHH", b)
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

    def error_context_frames(self, limit: int = 256) -> list[RawFrame] | None:
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

    def plpython_contexts(self, limit: int = 256) -> list[int]:
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

    def statement_dependencies(self) -> tuple[str, list[int], list[int]] | None:
        """(portal name, relation oids, user function oids) the active portal's plans depend on.

        Views stay in a plan's relationOids after rewriting, and the planner
        records every user function it calls or inlines in invalItems as a
        PROCOID hash, which is murmurhash32(oid): a bijection we invert.
        None when this server version's layout is unknown.
        """
        lay = self.portal
        if lay is None:
            return None
        portal = self._portal.value
        if not portal:
            return "", [], []
        name = self.peek_cstring(self.peek_ptr(portal + lay["portal_name"])) or ""
        stmts = self.peek_ptr(portal + lay["portal_stmts"])
        rels: list[int] = []
        funcs: list[int] = []
        for stmt in self._list_ptrs(stmts):
            if self.peek_u32(stmt) != lay["plannedstmt_tag"]:
                continue  # a utility statement wrapper carries no plan
            rels.extend(self._list_oids(self.peek_ptr(stmt + lay["plannedstmt_relation_oids"])))
            for item in self._list_ptrs(self.peek_ptr(stmt + lay["plannedstmt_inval_items"])):
                tag, cache_id, hash_value = struct.unpack("<iiI", ctypes.string_at(item, 12))
                if tag == lay["planinvalitem_tag"] and cache_id == lay["procoid_cache"]:
                    funcs.append(unmurmur32(hash_value))
        return name, rels, funcs

    def _list_cells(self, lst: int | None) -> tuple[int, int]:
        if not lst:
            return 0, 0
        lay = self.portal
        return self.peek_u32(lst + lay["list_length"]), self.peek_ptr(lst + lay["list_elements"])

    def _list_ptrs(self, lst: int | None) -> list[int]:
        n, cells = self._list_cells(lst)
        return list(struct.unpack(f"<{n}Q", ctypes.string_at(cells, 8 * n))) if n else []

    def _list_oids(self, lst: int | None) -> list[int]:
        n, cells = self._list_cells(lst)
        return [v & 0xFFFFFFFF for v in struct.unpack(f"<{n}Q", ctypes.string_at(cells, 8 * n))] if n else []


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


def backend(plpy) -> Backend:
    """The process's Backend, built on first use (asks the server its version once)."""
    global _BACKEND
    if _BACKEND is None or _BACKEND.lib is None:
        major = int(plpy.execute("SELECT pg_catalog.current_setting('server_version_num') AS v")[0]["v"]) // 10000
        _BACKEND = Backend(major)
    return _BACKEND
