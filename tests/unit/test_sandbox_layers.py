"""Identifier lists as PostgreSQL splits them, and the effective action across stacked filters."""
import pytest

from plpy_bg.sandbox import config
from plpy_bg.sandbox.layers import DEFAULT_ROW, Layer, effective, rows

P = config.Policy


def test_lists_split_like_postgres():
    assert config.split_identifiers("x", ' Read , "Joe",b') == ["read", "Joe", "b"]
    assert config.split_identifiers("x", '"a""b"') == ['a"b']


@pytest.mark.parametrize("bad", ["a,,b", "a b", '"a', "a,", ","])
def test_malformed_lists_name_the_setting(bad):
    with pytest.raises(config.ConfigError) as ei:
        config.split_identifiers("pgseccomp.session_roles", bad)
    assert '"pgseccomp.session_roles"' in ei.value.message


def test_setting_names_are_case_insensitive():
    assert config.getter({"Session_Syscall_Allow.joe": "read"})("session_syscall_allow.JOE") == "read"


def test_most_restrictive_wins_and_a_later_layer_wins_a_tie():
    g = Layer("global", P("allow", {"error": ("ptrace",)}))
    s = Layer("session", P("error", {"allow": ("read", "ptrace"), "log": ("mkdir",)}))
    c = Layer("client", P("error", {"allow": ("read",), "error": ("mkdir",)}))
    assert effective([g, s, c], "ptrace") == ("client", "error")  # client default error ties: client
    assert effective([g, s], "ptrace") == ("global", "error")  # the session cannot allow it back
    assert effective([g, s, c], "mkdir") == ("client", "error")
    assert effective([g, s, c], "read") == ("client", "allow")
    assert effective([g, s], None) == ("session", "error")


def test_rows_show_global_then_session():
    g = Layer("global", P("allow", {"error": ("ptrace",)}))
    s = Layer("session", P("error", {"allow": ("read",)}))
    r = rows([g, s])
    assert (DEFAULT_ROW, -1, "global->allow", "global") in r
    assert ("ptrace", 101, "global->error", "global") in r
    assert ("read", 0, "session->allow", "session") in r
    assert (DEFAULT_ROW, -1, "session->error", "session") in r
    assert rows([]) == []
