"""`sql_preview`: a short job text that hides literal values from other viewers.

Constants of every form (strings, dollar quotes, numbers, bit strings) become
``$1``, ``$2`` ... as in pg_stat_statements, comments vanish and blanks are
collapsed. We use pglast's scanner rather than ``normalize()`` because the
scanner also works on text that does not parse and redacts the strings
``normalize()`` keeps (``COPY ... PROGRAM 'cmd'``, ``DO $$ body $$``).
"""
from __future__ import annotations

import re

from plpy_bg.policy import _pglast as _parser

PREVIEW_LEN = 200
_SCAN_LIMIT = 8192  # the preview shows 200 characters: never scan 10 MB
_CONSTANTS = frozenset({"SCONST", "USCONST", "BCONST", "XCONST", "ICONST", "FCONST", "PARAM"})
_COMMENTS = frozenset({"C_COMMENT", "SQL_COMMENT"})
_BLANKS = re.compile(r"\s+")
_UNSAFE_FROM = re.compile(r"['$]|\b[eEbBxXuUnN]&?'|/\*|--|\d")


def _cut(text: str, limit: int = PREVIEW_LEN) -> str:
    return text if len(text) <= limit else text[:limit - 1].rstrip() + "…"


def _redact_unscannable(text: str) -> str:
    """Text before the first quote, digit or comment; the rest is withheld."""
    m = _UNSAFE_FROM.search(text)
    head = text[:m.start()] if m else text
    head = _BLANKS.sub(" ", head).strip()
    return (head + " …" if m else head) if head else "…"


def preview(sql: object) -> str:
    """A normalized, literal-free preview of `sql`, at most ~200 characters; never raises."""
    try:
        if not isinstance(sql, str) or not sql:
            return ""
        text = sql[:_SCAN_LIMIT].replace("\x00", " ")
        try:
            tokens = _parser.scan(text)
        except Exception:
            return _cut(_redact_unscannable(text))
        out: list[str] = []
        n = 0
        prev_end = 0
        for tok in tokens:
            gap = text[prev_end:tok.start]
            if gap and out:
                out.append(" ")
            prev_end = tok.end + 1
            if tok.name in _COMMENTS:
                continue
            if tok.name in _CONSTANTS:
                n += 1
                out.append(f"${n}")
            else:
                out.append(text[tok.start:tok.end + 1])
        if len(sql) > _SCAN_LIMIT:
            out.append(" …")
        return _cut(_BLANKS.sub(" ", "".join(out)).strip())
    except Exception:  # a listing must never fail because of one odd job text
        return "…"
