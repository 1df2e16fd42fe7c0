"""Taint inference for SECURITY DEFINER wrappers: the job text is the wrapper's code plus data."""
import pytest

from plpy_bg.policy import taint

CONCAT = """BEGIN
    PERFORM pg_background_submit_v2('SELECT count(*) FROM reports WHERE owner = ''' || p || '''');
END"""
FORMAT = """BEGIN
    PERFORM pg_background_submit_v2(format('SELECT count(*) FROM %I WHERE owner = %L AND n > %s', t, p, n));
END"""
DOLLAR = """BEGIN PERFORM pg_background_submit_v2('SELECT $d$' || p || '$d$'); END"""
COMMENT = """BEGIN PERFORM pg_background_submit_v2('SELECT 1 -- note: ' || p); END"""
PYTHON = '''q = "SELECT count(*) FROM reports WHERE owner = %s" % plpy.quote_literal(p)
plpy.execute(f"SELECT pg_background_submit_v2({plpy.quote_literal(q)})")'''


def region(src, lang, job):
    return taint.offending_region(job, taint.fragments(src, lang))


@pytest.mark.parametrize("src, lang, job", [
    (CONCAT, "plpgsql", "SELECT count(*) FROM reports WHERE owner = 'alice'"),
    (CONCAT, "plpgsql", "SELECT count(*) FROM reports WHERE owner = 'o''brien'"),
    (FORMAT, "plpgsql", 'SELECT count(*) FROM "Weird Table" WHERE owner = \'x\' AND n > 42'),
    (FORMAT, "plpgsql", "SELECT count(*) FROM reports WHERE owner = E'a\\\\b' AND n > -1.5"),
    (DOLLAR, "plpgsql", "SELECT $d$anything ' at all$d$"),
    (PYTHON, "plpython3u", "SELECT count(*) FROM reports WHERE owner = 'alice'"),
    (CONCAT, "plpgsql", "SELECT count(*) FROM reports WHERE owner = ''"),
])
def test_data_only(src, lang, job):
    assert region(src, lang, job) is None


@pytest.mark.parametrize("src, lang, job, bad", [
    (CONCAT, "plpgsql", "SELECT count(*) FROM reports WHERE owner = 'x'; DROP TABLE reports; --'", "; DROP TABLE"),
    (CONCAT, "plpgsql", "SELECT count(*) FROM reports WHERE owner = 'x' OR 'a' = 'a'", " OR "),
    (DOLLAR, "plpgsql", "SELECT $d$x$d$; DROP TABLE reports; SELECT $d$$d$", "; DROP"),
    (COMMENT, "plpgsql", "SELECT 1 -- note: x\nDROP TABLE reports", "x\nDROP"),
    (FORMAT, "plpgsql", "SELECT count(*) FROM reports WHERE owner = 'x' AND n > 1 UNION SELECT 1", " UNION"),
    (CONCAT, "plpgsql", "DO $$ BEGIN EXECUTE 'DROP TABLE reports'; END $$", "DO"),
    (PYTHON, "plpython3u", "SELECT count(*) FROM reports WHERE owner = 'x'; DROP TABLE reports", "; DROP"),
])
def test_changed_statement(src, lang, job, bad):
    r = region(src, lang, job)
    assert r is not None
    assert bad in job.encode()[r[0]:r[1] + 10].decode() or job.encode()[r[0]:r[1]].decode() in bad


def test_fragments_split_at_placeholders():
    assert taint.fragments("SELECT format('a %s b %1$I c %L', x)", "sql") == ["a ", " b ", " c "]
    assert taint.fragments("x = f'A {y} B'", "plpython3u") == ["A ", " B"]
    assert taint.fragments("SELECT E'it\\'s'", "sql") == ["it's"]
    assert taint.fragments("anything", "c") == []


def test_a_bare_name_is_data_a_keyword_is_not():
    src = "BEGIN PERFORM pg_background_submit_v2('SELECT 1; ' || p); END"
    assert region(src, "plpgsql", "SELECT 1; reports") is None  # a syntax error, not a statement
    assert region(src, "plpgsql", "SELECT 1; commit") is not None
    assert region(src, "plpgsql", "SELECT 1; checkpoint") is not None
