"""sql_preview: literals hidden, always short, never raises."""
from __future__ import annotations

import pytest

from plpy_bg.policy.preview import PREVIEW_LEN, preview


@pytest.mark.parametrize("sql, expected", [
    ("SELECT * FROM t WHERE pw = 'hunter2' AND n = 42", "SELECT * FROM t WHERE pw = $1 AND n = $2"),
    ("ALTER ROLE bob PASSWORD 'hunter2'", "ALTER ROLE bob PASSWORD $1"),
    ("COPY t FROM PROGRAM 'curl -H secret'", "COPY t FROM PROGRAM $1"),
    ("DO $$ BEGIN PERFORM f('secret'); END $$", "DO $1"),
    ("SELECT $tag$secret$tag$, E'se\\'cret', x'ff', B'101', 1.5e3", "SELECT $1, $2, $3, $4, $5"),
    ("SELECT 1 /* token=abc */ -- key=xyz\n, 2", "SELECT $1 , $2"),
    ("SELECT\n\n   a\t FROM t", "SELECT a FROM t"),
    ("", ""),
])
def test_literals_hidden(sql, expected):
    assert preview(sql) == expected


@pytest.mark.parametrize("sql", ["SELECT 'unterminated secret", "SELECT $$ never closed secret",
                                 "INSERT INTO t VALUES ('a\x00b')", "SELEC 'x' 'secret' 7"])
def test_unparsable_text_is_redacted(sql):
    p = preview(sql)
    assert "secret" not in p and "7" not in p


def test_non_text_and_huge_inputs():
    assert preview(None) == ""
    assert preview(12) == ""
    big = "SELECT '" + "s" * 10_000_000 + "'"
    p = preview(big)
    assert len(p) <= PREVIEW_LEN and "s" * 10 not in p


def test_long_statement_is_cut():
    p = preview("SELECT " + ", ".join(f"col{i}" for i in range(500)) + " FROM t")
    assert len(p) == PREVIEW_LEN and p.endswith("…")
