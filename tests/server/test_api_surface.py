"""The installed SQL API matches pg_background 1.8: names, arguments, defaults, types, privileges."""
import pytest

pytestmark = pytest.mark.server

EXPECTED = {
    "pg_background_launch": ("sql text, queue_size integer DEFAULT 0", "integer"),
    "pg_background_result": ("pid integer", "SETOF record"),
    "pg_background_detach": ("pid integer", "void"),
    "pg_background_launch_v2": ("sql text, queue_size integer DEFAULT 0", "pg_background_handle"),
    "pg_background_submit_v2": ("sql text, queue_size integer DEFAULT 0", "pg_background_handle"),
    "pg_background_result_v2": ("pid integer, cookie bigint", "SETOF record"),
    "pg_background_detach_v2": ("pid integer, cookie bigint", "void"),
    "pg_background_cancel_v2": ("pid integer, cookie bigint", "void"),
    "pg_background_cancel_v2_grace": ("pid integer, cookie bigint, grace_ms integer", "void"),
    "pg_background_wait_v2": ("pid integer, cookie bigint", "void"),
    "pg_background_wait_v2_timeout": ("pid integer, cookie bigint, timeout_ms integer", "boolean"),
    "pg_background_list_v2": ("", "SETOF record"),
    "pg_background_stats_v2": ("", "pg_background_stats"),
    "pg_background_progress": ("pct integer, msg text DEFAULT NULL::text", "void"),
    "pg_background_get_progress_v2": ("pid integer, cookie bigint", "pg_background_progress"),
    "grant_pg_background_privileges": ("role_name text, print_commands boolean DEFAULT false", "boolean"),
    "revoke_pg_background_privileges": ("role_name text, print_commands boolean DEFAULT false", "boolean"),
    "pg_background_drop_executor_role": ("", "void"),
}

TYPES = {
    "pg_background_handle": [("pid", "integer"), ("cookie", "bigint")],
    "pg_background_stats": [("workers_launched", "bigint"), ("workers_completed", "bigint"),
                            ("workers_failed", "bigint"), ("workers_canceled", "bigint"),
                            ("workers_active", "integer"), ("avg_execution_ms", "double precision"),
                            ("max_workers", "integer")],
    "pg_background_progress": [("progress_pct", "integer"), ("progress_msg", "text")],
}


def test_function_signatures(pg):
    rows = pg.sql("""
        SELECT p.proname, pg_get_function_arguments(p.oid), pg_get_function_result(p.oid)
        FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname = 'public' AND p.proname = ANY(%s)""", (list(EXPECTED),))
    got = {r[0]: (r[1], r[2]) for r in rows}
    assert got == EXPECTED


def test_composite_types(pg):
    for typ, cols in TYPES.items():
        rows = pg.sql("""SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a
                         WHERE a.attrelid = %s::regclass AND a.attnum > 0 ORDER BY a.attnum""", (typ,))
        assert [tuple(r) for r in rows] == cols


def test_nothing_granted_to_public(pg):
    rows = pg.sql("""
        SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname IN ('public', 'plpy_bg') AND p.proname LIKE ANY(ARRAY['pg_background%%', '%%privileges'])
          AND has_function_privilege('mallory', p.oid, 'EXECUTE')""")
    assert rows == []
    assert pg.sql("SELECT has_table_privilege('mallory', 'plpy_bg.jobs', 'SELECT')")[0][0] is False


def test_executor_role_holds_execute(pg):
    assert pg.sql("SELECT rolcanlogin FROM pg_roles WHERE rolname = 'pgbackground_role'") == [(False,)]
    rows = pg.sql("""SELECT count(*) FROM pg_proc p WHERE p.proname = ANY(%s)
                     AND has_function_privilege('pgbackground_role', p.oid, 'EXECUTE')""",
                  ([k for k in EXPECTED if not k.endswith(("privileges", "executor_role"))],))
    assert rows[0][0] == len(EXPECTED) - 3
    assert pg.sql("SELECT has_function_privilege('pgbackground_role', "
                  "'pg_background_await(int4, int8, int4)', 'EXECUTE')") == [(True,)]


def test_every_function_pins_search_path_or_says_why(pg):
    rows = pg.sql("""
        SELECT p.proname, p.proconfig FROM pg_proc p JOIN pg_depend d ON d.objid = p.oid
        JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'plpy_bg'""")
    launchers = {"pg_background_launch", "pg_background_launch_v2", "pg_background_submit_v2"}
    assert {r[0] for r in rows} >= launchers | {"pg_background_await", "pg_background_result_v2"}
    for name, config in rows:
        if name in launchers:
            assert config is None  # the job inherits the caller's search_path
        elif name == "pg_background_await":
            assert config is None  # a procedure with a SET clause cannot commit
        elif name != "api_objects" or config:
            assert config and any(c.startswith("search_path=pg_catalog") for c in config), name


def test_mallory_cannot_launch(pg):
    import psycopg

    with pg.connect("mallory") as c:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute("SELECT pg_background_launch_v2('select 1')")


def test_revoke_and_grant_helpers(pg):
    pg.sql("CREATE ROLE carol LOGIN")
    try:
        assert pg.sql("SELECT grant_pg_background_privileges('carol', true)") == [(True,)]
        assert pg.sql("SELECT has_function_privilege('carol', 'pg_background_launch_v2(text,int4)', 'EXECUTE')") == [(True,)]
        assert pg.sql("SELECT revoke_pg_background_privileges('carol')") == [(True,)]
        assert pg.sql("SELECT has_function_privilege('carol', 'pg_background_launch_v2(text,int4)', 'EXECUTE')") == [(False,)]
        assert pg.sql("SELECT grant_pg_background_privileges('no_such_role')") == [(False,)]
    finally:
        pg.sql("DROP OWNED BY carol; DROP ROLE carol")
