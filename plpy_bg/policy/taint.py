"""Is the job text a SECURITY DEFINER wrapper launches made of its own code plus caller data?

A wrapper owned by the job role acts for its callers; when a caller is not
trusted by the wrapper's owner, what the caller passed in must stay data. The
wrapper's constant fragments are read from the source of every function on
the trusted side of the chain: string constants (SQL, PL/pgSQL: the server's
own lexer through pglast's scanner; PL/Python: Python's own parser),
split at format()/printf/str.format placeholders. Occurrences of those
fragments in the job text are its code; every other stretch of the job text
must lie inside one data token of the job's token stream: a string constant,
a number, a quoted identifier, or a bare name where the statement expects a
name (what format('%L'/'%I'), quote_literal(), quote_ident() and a number
produce). A bare name in an expression is a column (WHERE x = x), a keyword
may start a statement, and a string the job runs as code (DO, EXECUTE,
dblink, a function body) is no data. A statement separator must come from a
fragment that holds words, so a lone ';' of the wrapper's cannot join a
second statement the caller wrote.
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
    out = []
    try:
        tokens = _parser.scan(source)
    except _parser.ParseError:
        return []
    for t in tokens:  # the scanner's offsets count characters
        if t.name in ("SCONST", "USCONST"):
            out.append(_sql_string_value(source[t.start:t.end + 1]))
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


def _covered(text: str, pieces: list[str]) -> tuple[bytearray, bytearray]:
    """Per character of `text`: covered by a fragment (1) or not (0), and covered by a fragment
    holding a letter or digit (so more than punctuation)."""
    mark = bytearray(len(text))
    strong = bytearray(len(text))
    for piece in set(pieces):
        words = any(ch.isalnum() for ch in piece)
        start = text.find(piece)
        while start >= 0:
            mark[start:start + len(piece)] = b"\1" * len(piece)
            if words:
                strong[start:start + len(piece)] = b"\1" * len(piece)
            start = text.find(piece, start + 1)
    return mark, strong


# a bare name is data only where the statement expects a name, not an expression (where it would
# be a column: WHERE x = x): after these keywords, or after a dot
_NAME_BEFORE = frozenset({"FROM", "JOIN", "INTO", "UPDATE", "TABLE", "ONLY", "BY", "INDEX", "VIEW",
                          "SEQUENCE", "SCHEMA", "TRUNCATE", "ANALYZE", "VACUUM", "ASCII_46"})
_STRINGS = frozenset({"SCONST", "USCONST", "BCONST", "XCONST"})


def _data_spans(sql: str, tokens: list, strings_are_data: bool) -> list[tuple[int, int]]:
    """[start, end) (characters) of each token that holds data: a string constant (unless the job
    runs strings as code), a number with its minus sign, a quoted identifier, a bare name where a
    name is expected (what %I leaves unquoted, unreserved keywords included)."""
    spans = []
    for i, t in enumerate(tokens):
        prev = tokens[i - 1] if i else None
        if t.name in _STRINGS:
            data = strings_are_data
        elif t.name in _NUMBERS:
            data = True
            if prev is not None and prev.name == "ASCII_45" and prev.end + 1 == t.start:
                spans.append((prev.start, t.end + 1))
                continue
        elif t.name == "UIDENT" or (t.name == "IDENT" and sql[t.start] == '"'):
            data = True
        elif t.name == "IDENT" or t.kind == "UNRESERVED_KEYWORD":
            data = prev is not None and prev.name in _NAME_BEFORE
        else:
            data = False
        if data:
            spans.append((t.start, t.end + 1))
    return spans


_UNCOVERED = re.compile(b"\0+")


def offending_region(sql: str, pieces: list[str], strings_are_data: bool = True) -> tuple[int, int] | None:
    """The first stretch of `sql` (character offsets) that is the caller's and changes the
    statement, or None when the text is the wrapper's code plus data: a stretch covered by no
    fragment must lie inside one data token, and a statement separator the caller may have
    supplied must be part of a fragment holding words (or end the text)."""
    mark, strong = _covered(sql, pieces)
    runs = [(m.start(), m.end()) for m in _UNCOVERED.finditer(mark)]
    if not runs:
        return None
    try:
        tokens = list(_parser.scan(sql))
    except _parser.ParseError:
        return runs[0]
    spans = _data_spans(sql, tokens, strings_are_data)
    starts = [s for s, _ in spans]
    for i, j in runs:
        while i < j and sql[i].isspace():  # spacing around a value changes nothing
            i += 1
        while j > i and sql[j - 1].isspace():
            j -= 1
        if i == j:
            continue
        k = bisect.bisect_right(starts, i) - 1
        if k < 0 or spans[k][1] < j:
            return i, j
    for t in tokens:
        if t.name == "ASCII_59" and not strong[t.start] and sql[t.end + 1:].strip():
            return t.start, t.end + 1
    return None
