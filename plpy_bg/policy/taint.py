"""Is the job text a SECURITY DEFINER wrapper launches made of its own code plus caller data?

A wrapper owned by the job role acts for its callers; when a caller is not
trusted by the wrapper's owner, what the caller passed in must stay data. The
wrapper's constant fragments are read from the source of every function on
the trusted side of the chain: string constants (SQL, PL/pgSQL: the server's
own lexer through pglast's scanner; PL/Python: Python's own parser),
split at format()/printf/str.format placeholders. Occurrences of those
fragments in the job text are its code; every other stretch of the job text
must lie inside one constant or identifier of the job's token stream (what
format('%L'/'%I'), quote_literal(), quote_ident() and a number produce); a
keyword, even one %I would leave unquoted, is no data: it may start a statement.
Anything else changed the statement.
"""
from __future__ import annotations

import ast
import bisect
import re

from plpy_bg.policy import _pglast as _parser

# placeholders of format() ('%s', '%1$I', '%-10L', '%%'), printf ('%d', '%r') and str.format ('{}', '{0!r:>5}')
_PLACEHOLDER = re.compile(r"%(?:\d+\$)?-?(?:\d+|\*(?:\d+\$)?)?[a-zA-Z%]|\{[^{}]*\}")
# tokens that hold data: constants of every kind and quoted identifiers
_DATA_TOKENS = frozenset({"SCONST", "USCONST", "BCONST", "XCONST", "ICONST", "FCONST", "UIDENT"})
_NUMBERS = frozenset({"ICONST", "FCONST"})


def _sql_constants(source: str) -> list[str]:
    """String constants of SQL or PL/pgSQL source, as the server's lexer reads them."""
    raw = source.encode()
    out = []
    try:
        tokens = _parser.scan(source)
    except _parser.ParseError:
        return []
    for t in tokens:
        if t.name not in ("SCONST", "USCONST"):
            continue
        text = raw[t.start:t.end + 1].decode("utf-8", "replace")
        out.append(_sql_string_value(text))
    return out


def _sql_string_value(text: str) -> str:
    """The value of one string constant token: '...', E'...', $tag$...$tag$, U&'...'."""
    if text.startswith("$"):
        tag = text[:text.index("$", 1) + 1]
        return text[len(tag):-len(tag)]
    if text[:1] in "eE":
        body = text[2:-1]
        return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t", "r": "\r"}.get(m.group(1), m.group(1)),
                      body).replace("''", "'")
    if text[:2] in ("U&", "u&"):
        return text[3:-1].replace("''", "'")  # the escapes stay: fragments only shrink coverage
    return text[1:-1].replace("''", "'")


def _python_constants(source: str) -> list[str]:
    """String constants of a PL/Python body (f-strings' constant parts included)."""
    body = "def __plpy_bg_body__():\n" + "".join(f"    {line}\n" for line in source.splitlines())
    try:
        tree = ast.parse(body)
    except SyntaxError:
        return []
    return [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)]


_FRAGMENTS: dict[tuple[str, str | None], list[str]] = {}


def fragments(source: str | None, language: str | None) -> list[str]:
    """The constant pieces of one function's source, split at placeholders (remembered per source)."""
    if not source:
        return []
    key = (source, language)
    hit = _FRAGMENTS.get(key)
    if hit is None:
        if len(_FRAGMENTS) > 256:
            _FRAGMENTS.clear()
        hit = _FRAGMENTS[key] = _fragments(source, language)
    return hit


def _fragments(source: str, language: str | None) -> list[str]:
    if language in ("sql", "plpgsql"):
        consts = _sql_constants(source)
    elif language and language.startswith("plpython"):
        consts = _python_constants(source)
    else:
        return []
    out = []
    for c in consts:
        out.extend(p for p in _PLACEHOLDER.split(c) if p)
    return out


def _covered(text: bytes, pieces: list[str]) -> bytearray:
    """0 for each byte of `text` no fragment covers, 1 for the others."""
    mark = bytearray(len(text))
    for piece in set(pieces):
        p = piece.encode()
        start = text.find(p)
        while start >= 0:
            mark[start:start + len(p)] = b"\1" * len(p)
            start = text.find(p, start + 1)
    return mark


def _data_spans(sql: str, raw: bytes) -> list[tuple[int, int]] | None:
    """[start, end) of each token that holds data: a constant, or an identifier that is no keyword
    of any kind (what %I leaves unquoted); a minus sign written against a number is part of it."""
    try:
        tokens = list(_parser.scan(sql))
    except _parser.ParseError:
        return None
    spans = []
    for i, t in enumerate(tokens):
        if t.name in _DATA_TOKENS or t.name == "IDENT":
            start = t.start
            if t.name in _NUMBERS and i and tokens[i - 1].name == "ASCII_45" and tokens[i - 1].end + 1 == t.start:
                start = tokens[i - 1].start
            spans.append((start, t.end + 1))
    return spans


_UNCOVERED = re.compile(b"\0+")


def offending_region(sql: str, pieces: list[str]) -> tuple[int, int] | None:
    """The first stretch of `sql` (byte offsets) covered by no fragment and not inside one data
    token, or None when the text is the wrapper's code plus data."""
    raw = sql.encode()
    runs = [(m.start(), m.end()) for m in _UNCOVERED.finditer(_covered(raw, pieces))]
    if not runs:
        return None
    spans = _data_spans(sql, raw)
    if spans is None:
        return runs[0]
    starts = [s for s, _ in spans]
    for i, j in runs:
        k = bisect.bisect_right(starts, i) - 1
        if k < 0 or spans[k][1] < j:
            return i, j
    return None
