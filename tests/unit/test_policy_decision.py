"""Pure parts of the decision: search_path parsing, chain wording, SECURITY DEFINER boundary."""
from __future__ import annotations

from plpy_bg.policy.decision import chain_detail, parse_search_path
from plpy_bg.policy.provenance import mark_boundary


def test_search_path_parsing():
    assert parse_search_path('"$user", public', "alice") == ("pg_catalog", "alice", "public")
    assert parse_search_path('app, pg_catalog, "My Schema"', "a") == ("app", "pg_catalog", "My Schema")
    assert parse_search_path("pg_temp, Public", "a") == ("pg_catalog", "public")
    assert parse_search_path("", "a") == ("pg_catalog",)


def chain():
    return [
        {"kind": "session", "role": "alice", "role_oid": 10},
        {"kind": "function", "role": "admin", "role_oid": 20, "name": "app.wrap()", "language": "plpgsql",
         "security_definer": True},
        {"kind": "function", "role": "alice", "role_oid": 10, "name": "public.helper()", "language": "plpgsql",
         "security_definer": False},
        {"kind": "function", "role": "postgres", "role_oid": 1, "name": "public.launch()", "language": "plpython3u",
         "security_definer": False},
    ]


def test_boundary_is_innermost_security_definer_of_job_role():
    c = chain()
    mark_boundary(c, 20)
    assert [e["effective"] for e in c] == [False, True, True, True]
    c = chain()
    mark_boundary(c, 99)  # no frame established this role: the whole chain counts
    assert all(e["effective"] for e in c)


def test_detail_marks_where_the_untrusted_role_enters():
    c = chain()
    mark_boundary(c, 20)
    d = chain_detail(c, "admin", 2)
    lines = d.splitlines()
    assert lines[0] == "Chain of custody, outermost first:"
    assert lines[1] == '  1. session user "alice"   (outside the SECURITY DEFINER boundary)'
    assert lines[3] == ('  3. function public.helper() owned by "alice" (plpgsql, SECURITY INVOKER)'
                        '   <-- not trusted by "admin": it enters here')
    assert lines[-1] == 'The job would run as "admin".'


def test_our_temporary_schema_is_searched_last_when_analyzing_a_job():
    from plpy_bg.policy.decision import _without_our_temp
    assert _without_our_temp('"$user", public') == '"$user", public, pg_temp'
    assert _without_our_temp("pg_temp, public") == "pg_temp, public"
    assert _without_our_temp('public, "pg_temp_3"') == 'public, "pg_temp_3"'
    assert _without_our_temp("") == "pg_temp"


def test_pg_catalog_is_searched_first_unless_the_path_names_it_later():
    from plpy_bg.policy.catalog import pg_catalog_first
    assert pg_catalog_first('"$user", public')
    assert pg_catalog_first("pg_temp, pg_catalog, public")
    assert not pg_catalog_first("evil, pg_catalog")
    assert pg_catalog_first("")
