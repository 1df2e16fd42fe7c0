"""pg_background's three settings, defined in this backend as its C library defines them.

A C extension defines its settings when its library loads; PL/Python has no such hook, so
the first plpy_bg call in a backend (and CREATE EXTENSION) defines them through the
server's own DefineCustomIntVariable: SHOW, current_setting and ALTER SYSTEM then know
their type, range and unit, and a value set earlier as a placeholder (postgresql.conf,
ALTER DATABASE ... SET, SET) is checked and kept. A name some library already defined (the
C pg_background loaded in the same backend) is left alone: defining it again would ERROR
out of native code.
"""
from __future__ import annotations

import ctypes

from plpy_bg.jobs.limits import DEFAULT_MAX_WORKERS, DEFAULT_QUEUE, MAX_MAX_WORKERS, MAX_QUEUE, MIN_QUEUE

PGC_USERSET = 6
GUC_CUSTOM_PLACEHOLDER = 0x0080
GUC_UNIT_BYTE = 0x8000
GUC_UNIT_MS = 0x10000
INT_MAX = 2**31 - 1

# (name, short description, long description, default, min, max, unit flags): pg_background 1.8's
SETTINGS = (
    ("pg_background.max_workers", "Maximum number of concurrent background workers per session.",
     "Prevents resource exhaustion from excessive worker creation.", DEFAULT_MAX_WORKERS, 1, MAX_MAX_WORKERS, 0),
    ("pg_background.default_queue_size", "Default shared memory queue size for workers.",
     "Can be overridden per-worker. Larger sizes support bigger result sets.", DEFAULT_QUEUE, MIN_QUEUE, MAX_QUEUE,
     GUC_UNIT_BYTE),
    ("pg_background.worker_timeout", "Maximum execution time for background workers.",
     "Workers exceeding this timeout are terminated. 0 means no limit.", 0, 0, INT_MAX, GUC_UNIT_MS),
)

_kept: list = []  # what the server keeps pointers to (values, descriptions): alive as long as the process


def define(lib) -> None:
    """Define the settings not yet defined in this backend (`lib`: the server's symbols)."""
    if _kept:
        return
    get = lib.GetConfigOption
    get.restype, get.argtypes = ctypes.c_char_p, [ctypes.c_char_p, ctypes.c_bool, ctypes.c_bool]
    flags_of = lib.GetConfigOptionFlags
    flags_of.restype, flags_of.argtypes = ctypes.c_int, [ctypes.c_char_p, ctypes.c_bool]
    define_int = lib.DefineCustomIntVariable
    define_int.restype = None
    define_int.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_int),
                           ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                           ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    for name, short, long, boot, low, high, unit in SETTINGS:
        key = name.encode()
        # neither call raises: missing_ok, and no privileged restriction
        if get(key, True, False) is not None and not flags_of(key, True) & GUC_CUSTOM_PLACEHOLDER:
            continue  # defined already, by a library or by us
        value = ctypes.c_int(boot)
        texts = (ctypes.create_string_buffer(short.encode()), ctypes.create_string_buffer(long.encode()))
        _kept.append((value, texts))
        define_int(key, texts[0], texts[1], ctypes.byref(value), boot, low, high, PGC_USERSET, unit,
                   None, None, None)
    _kept.append(None)  # done for this process, whatever was left alone
