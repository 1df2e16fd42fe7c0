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
    i = job.index(bad)  # the region is not empty and overlaps what the caller's value changed
    assert r is not None and r[0] < r[1] and r[0] < i + len(bad) and i < r[1], (r, job[r[0]:r[1]] if r else None)


def test_fragments_split_at_placeholders():
    assert taint.fragments("SELECT format('a %s b %1$I c %L', x)", "sql") == ["a ", " b ", " c "]
    assert taint.fragments("x = f'A {y} B'", "plpython3u") == ["A ", " B"]
    assert taint.fragments("SELECT E'it\\'s'", "sql") == ["it's"]
    assert taint.fragments("anything", "c") == []


def test_a_name_or_keyword_where_a_statement_starts_is_no_data():
    src = "BEGIN PERFORM pg_background_submit_v2('SELECT 1; ' || p); END"
    assert region(src, "plpgsql", "SELECT 1; reports") is not None
    assert region(src, "plpgsql", "SELECT 1; commit") is not None
    assert region(src, "plpgsql", "SELECT 1; checkpoint") is not None


ADD_NOTE = "BEGIN RETURN pg_background_launch_v2('INSERT INTO public.notes(s) VALUES (''' || msg || ''')'); END"


def test_offsets_are_characters_not_bytes():
    """Multi-byte characters before a literal must not shift which text counts as inside it."""
    t = "INSERT INTO public.notes(s) VALUES ('')"
    msg = "é'')" * 40 + t + "'); DROP TABLE public.keep; SELECT ('" + t
    job = "INSERT INTO public.notes(s) VALUES ('" + msg + "')"
    assert region(ADD_NOTE, "plpgsql", job) is not None
    assert region(ADD_NOTE, "plpgsql", "INSERT INTO public.notes(s) VALUES ('Müller 日本語')") is None
    assert taint.fragments("BEGIN RAISE NOTICE 'Größe'; PERFORM f('SELECT 1'); END", "plpgsql") == ["Größe", "SELECT 1"]


def test_a_string_the_job_runs_as_code_is_no_data():
    src = "BEGIN PERFORM f('DO $d$ BEGIN INSERT INTO public.notes(s) VALUES (' || id || '); END $d$'); END"
    job = "DO $d$ BEGIN INSERT INTO public.notes(s) VALUES (1); DROP TABLE public.keep; END $d$"
    assert taint.offending_region(job, taint.fragments(src, "plpgsql"), strings_are_data=False) is not None


def test_a_bare_name_in_an_expression_is_no_data():
    src = "BEGIN PERFORM f('DELETE FROM public.keep WHERE x = ' || id); END"
    assert region(src, "plpgsql", "DELETE FROM public.keep WHERE x = x") is not None
    assert region(src, "plpgsql", "DELETE FROM public.keep WHERE x = 3") is None
    fmt = "BEGIN PERFORM f(format('SELECT count(*) FROM public.%I ORDER BY %I', t, c)); END"
    for name in ("reports", "name", "type", "keep", '"Odd"'):
        assert region(fmt, "plpgsql", f"SELECT count(*) FROM public.{name} ORDER BY {name}") is None, name


def test_a_lone_separator_of_the_wrapper_joins_no_second_statement():
    src = ("BEGIN IF purge THEN PERFORM f('DELETE FROM public.keep'); END IF; "
           "PERFORM f(format('SELECT count(*) FROM public.notes WHERE length(s) > %s;', v)); END")
    pieces = taint.fragments(src, "plpgsql")
    assert taint.offending_region("SELECT count(*) FROM public.notes WHERE length(s) > 0;DELETE FROM public.keep",
                                  pieces) is not None
    assert taint.offending_region("SELECT count(*) FROM public.notes WHERE length(s) > 0;", pieces) is None


def test_spacing_around_a_value_is_no_statement():
    src = "BEGIN PERFORM f('SELECT count(*) FROM reports LIMIT ' || n); END"
    assert region(src, "plpgsql", "SELECT count(*) FROM reports LIMIT 5\n") is None
    assert region(src, "plpgsql", "SELECT count(*) FROM reports LIMIT 5\n; DROP TABLE reports") is not None
