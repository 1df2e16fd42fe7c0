"""How a job's SQL is counted and shown: statement count and a literal-free preview.

The preview is what other viewers of the job list see, so literal values are
replaced by placeholders (`$1`, `$2`, ...) with libpg_query's normalizer; text
that does not parse is shown only as its first keyword.
"""
from __future__ import annotations

import re

PREVIEW_LIMIT = 200

from plpy_bg.pglast_loader import parser as _parser

try:
    _pg = _parser()
except ImportError:  # pure-Python unit tests without pglast
    _pg = None


def statement_count(sql: str) -> int:
    if _pg is not None:
        try:
            return max(1, len(_pg.split(sql)))
        except Exception:
            return 2  # unparsable: treat as several, so rows are kept until the end
    return max(1, sql.count(";"))


def preview(sql: str) -> str:
    text = None
    if _pg is not None:
        try:
            text = _pg.normalize(sql)
        except Exception:
            text = None
    if text is None:
        m = re.match(r"\s*([A-Za-z]+)", sql)
        text = (m.group(1).upper() + " ...") if m else "..."
    text = " ".join(text.split())
    return text if len(text) <= PREVIEW_LIMIT else text[:PREVIEW_LIMIT - 3] + "..."


def summarize(sql: str) -> tuple[int, str]:
    return statement_count(sql), preview(sql)
