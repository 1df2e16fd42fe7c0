"""Import pglast safely inside a PostgreSQL backend.

pglast links its own copy of PostgreSQL's parser (libpg_query), whose
symbols (palloc, MemoryContext*, errstart, ...) the backend also exports.
Loaded the default way, libpg_query calls into the server's functions and
the backend dies with SIGSEGV on the first parse. RTLD_DEEPBIND makes the
extension module resolve its own symbols first. This module must be the
first import of pglast in a backend; everything in plpy_bg imports the
parser from here.
"""
from __future__ import annotations

import os
import sys

if "pglast" not in sys.modules:
    _flags = sys.getdlopenflags()
    sys.setdlopenflags(os.RTLD_NOW | os.RTLD_LOCAL | os.RTLD_DEEPBIND)
    try:
        import pglast  # noqa: F401
        from pglast import parser  # noqa: F401
    finally:
        sys.setdlopenflags(_flags)

from pglast import parser  # noqa: E402

ParseError = parser.ParseError
parse_sql_json = parser.parse_sql_json
scan = parser.scan
