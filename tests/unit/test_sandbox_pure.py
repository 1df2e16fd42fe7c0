"""The sandbox's pure logic: settings parsing, role overrides, learned lists."""
import pytest

from plpy_bg.sandbox import config, learn

KNOWN = {"read", "write", "mkdir", "ptrace", "mount", "bpf", "newfstatat", "clone", "openat"}.__contains__


def getter(d):
    return d.get


def test_global_policy_parses_lists_and_default():
    p = config.global_policy(getter({"pgseccomp.global_syscall_error": " ptrace , MOUNT",
                                     "pgseccomp.global_syscall_default": "allow"}), KNOWN)
    assert p.default == "allow" and p.lists["error"] == ("ptrace", "mount")
    assert p.action_of("mount") == "error" and p.action_of("read") == "allow"


@pytest.mark.parametrize("settings, needle", [
    ({"pgseccomp.global_syscall_error": "ptrace,nosuch"}, 'no syscall "nosuch"'),
    ({"pgseccomp.global_syscall_kill": "ptrace;mount"}, "not a syscall name"),
    ({"pgseccomp.global_syscall_default": "deny"}, "pgseccomp.global_syscall_default"),
    ({"pgseccomp.global_syscall_allow": "ptrace", "pgseccomp.global_syscall_kill": "ptrace"}, "both"),
    ({"pgseccomp.global_syscall_allow": "*"}, "Only session lists"),
])
def test_bad_settings_are_errors_that_name_the_setting(settings, needle):
    with pytest.raises(config.ConfigError) as ei:
        config.global_policy(getter(settings), KNOWN)
    e = ei.value
    assert needle in (e.message + (e.detail or "")) and e.sqlstate == "22023"


def test_enabled_is_strict():
    assert config.enabled(getter({"pgseccomp.enabled": "on"}))
    assert not config.enabled(getter({}))
    with pytest.raises(config.ConfigError):
        config.enabled(getter({"pgseccomp.enabled": "maybe"}))


def test_session_lists_inherit_with_star_and_roles_override():
    s = {"pgseccomp.global_syscall_error": "ptrace",
         "pgseccomp.session_syscall_error": "*",
         "pgseccomp.session_syscall_allow": "read,write",
         "pgseccomp.session_syscall_default": "log",
         "pgseccomp.session_roles": "joe, alice",
         "session_syscall_allow.joe": "read,write,clone",
         "session_syscall_default.joe": "log"}
    glob = config.global_policy(getter(s), KNOWN)
    plain = config.session_policy(getter(s), KNOWN, "bob", glob)
    assert plain.default == "log" and plain.lists["allow"] == ("read", "write")
    assert plain.lists["error"] == ("ptrace",)
    joe = config.session_policy(getter(s), KNOWN, "joe", glob)
    assert joe.default == "log" and joe.lists["allow"] == ("read", "write", "clone")
    assert joe.lists["error"] == ("ptrace",)  # not overridden: the session list
    alice = config.session_policy(getter(s), KNOWN, "alice", glob)  # listed, no overrides
    assert alice == plain


def test_learn_parses_strace_output():
    lines = [
        "100 epoll_wait(5, [], 1, 1000) = 0\n",
        "100 clone(child_stack=NULL, flags=CLONE_CHILD_CLEARTID) = 200\n",
        "200 openat(AT_FDCWD, \"base/1\", O_RDONLY) = 7\n",
        "200 read(7, \"\", 8192) = 0\n",
        "200 +++ exited with 0 +++\n",
        "100 <... epoll_wait resumed>[], 1, 1000) = 0\n",
    ]
    everything, session = learn.parse(lines, 100)
    assert everything == {"epoll_wait", "clone", "openat", "read"}
    assert session == {"openat", "read"}
    text = learn.settings_lines(everything, session, KNOWN)
    assert "pgseccomp.session_syscall_allow = 'openat,read'" in text


def test_role_override_wins_over_an_inherited_allow():
    s = {"pgseccomp.session_syscall_allow": "read,mkdir", "pgseccomp.session_syscall_default": "log",
         "pgseccomp.session_roles": "erin", "session_syscall_error.erin": "mkdir"}
    glob = config.global_policy(getter(s), KNOWN)
    erin = config.session_policy(getter(s), KNOWN, "erin", glob)
    assert erin.action_of("mkdir") == "error" and erin.action_of("read") == "allow"


def test_a_filter_that_would_kill_every_backend_is_refused():
    known = lambda n: True  # noqa: E731
    s = {"pgseccomp.global_syscall_default": "error", "pgseccomp.global_syscall_allow": "read,write"}
    with pytest.raises(config.ConfigError, match="every PostgreSQL process needs") as ei:
        config.global_policy(getter(s), known)
    assert "mmap" in ei.value.detail
