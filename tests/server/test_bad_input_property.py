"""Random bad input at every API function: each call works or raises a PostgreSQL error
with an SQLSTATE, the backend survives, and the dispatcher's invariants hold."""
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fix_pg import invariants

pytestmark = [pytest.mark.server, pytest.mark.slow]

INT4 = st.one_of(st.none(), st.integers(-2**31, 2**31 - 1), st.sampled_from([0, -1, 1, 2**31 - 1]))
INT8 = st.one_of(st.none(), st.integers(-2**63, 2**63 - 1), st.sampled_from([0, -1, 1]))
TEXT = st.one_of(
    st.none(),
    st.text(max_size=200).map(lambda s: s.replace("\x00", "")),  # the driver itself refuses NUL
    st.sampled_from(["", " ", ";", "SELECT 1", "SELECT 1; SELECT 2", "VACUUM", "BEGIN", "COMMIT",
                     "SELECT pg_sleep(0.01)", "SELECT 1/0", "COPY (SELECT 1) TO STDOUT",
                     "SELECT repeat('x', 100000)", "$$", "'", "/*", "SELECT E'\\x01'",
                     "SELECT pg_background_progress(50)", "SELECT * FROM generate_series(1, 5000)",
                     "SELECT chr(0)", "SELECT E'\\000'"]),
)

CALLS = [
    ("SELECT pg_background_launch_v2(%s, %s)", (TEXT, INT4)),
    ("SELECT pg_background_submit_v2(%s, %s)", (TEXT, INT4)),
    ("SELECT pg_background_launch(%s, %s)", (TEXT, INT4)),
    ("SELECT * FROM pg_background_result_v2(%s, %s) AS (x text)", (INT4, INT8)),
    ("SELECT * FROM pg_background_result(%s) AS (x text)", (INT4,)),
    ("SELECT pg_background_detach_v2(%s, %s)", (INT4, INT8)),
    ("SELECT pg_background_detach(%s)", (INT4,)),
    ("SELECT pg_background_cancel_v2(%s, %s)", (INT4, INT8)),
    ("SELECT pg_background_cancel_v2_grace(%s, %s, %s)", (INT4, INT8, INT4)),
    ("SELECT pg_background_wait_v2_timeout(%s, %s, %s)", (INT4, INT8, st.one_of(st.none(), st.integers(-10, 50)))),
    ("SELECT * FROM pg_background_get_progress_v2(%s, %s)", (INT4, INT8)),
    ("SELECT pg_background_progress(%s, %s)", (INT4, TEXT)),
]


@st.composite
def api_call(draw):
    sql, arg_strategies = draw(st.sampled_from(CALLS))
    return sql, tuple(draw(s) for s in arg_strategies)


@pytest.fixture(scope="module")
def conn(pg):
    c = pg.connect("alice")
    yield c
    c.close()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(call=api_call())
def test_every_call_works_or_raises_with_an_sqlstate(pg, conn, call):
    sql, args = call
    pid = conn.info.backend_pid
    try:
        conn.execute("SET statement_timeout = '5s'")
        conn.execute(sql, args).fetchall()
    except psycopg.errors.QueryCanceled:
        pass
    except psycopg.Error as e:
        assert e.sqlstate and len(e.sqlstate) == 5, (sql, args, e)
        assert e.sqlstate not in ("XX000", "XX001", "XX002"), (sql, args, e)  # never an internal error
    assert conn.execute("SELECT pg_backend_pid()").fetchone()[0] == pid  # the backend survived


def test_invariants_after_the_sweep(pg, conn):
    conn.execute("SELECT 1")
    assert invariants(pg) == []
