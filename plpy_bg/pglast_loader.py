"""Import pglast's parser so that it can run inside a PostgreSQL backend.

pglast's extension module embeds libpg_query, which exports the same symbols
as the postgres executable (AllocSetAlloc, palloc, ...). Loaded normally in a
backend, its calls bind to the server's own functions of another version and
the backend segfaults; RTLD_DEEPBIND makes the module prefer its own symbols.
Every module of this package gets pglast through `parser()`.
"""
from __future__ import annotations

import os
import sys


def parser():
    mod = sys.modules.get("pglast.parser")
    if mod is None:
        old = sys.getdlopenflags()
        sys.setdlopenflags(old | os.RTLD_DEEPBIND)
        try:
            import pglast.parser as mod
        finally:
            sys.setdlopenflags(old)
    return mod
