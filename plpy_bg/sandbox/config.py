"""pgseccomp's settings, parsed strictly into filter policies.

Names, as pgseccomp has them:
  pgseccomp.enabled
  pgseccomp.global_syscall_{allow,log,error,kill,default}
  pgseccomp.session_syscall_{allow,log,error,kill,default}   ('*' = the global list)
  pgseccomp.session_roles = 'joe,alice'
  session_syscall_{allow,log,error,kill,default}.<role>       (overrides for listed roles)
and plpy_bg's own job policy, the same shape, for job workers on top of their role's session:
  plpy_bg.job_syscall_{allow,log,error,kill,default}          ('*' = the role's session list)
  plpy_bg.job_socket_families = 'unix,inet'                     (socket() families a job may open)
  plpy_bg.job_roles = 'etl'
  job_syscall_{allow,...,default}.<role>, job_socket_families.<role>

pgseccomp warns and falls back to an empty list on an unknown syscall name:
a typo silently weakens the filter. Here any unknown name, action word or
malformed list is an error that names the setting and the bad value.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

from plpy_bg.errors import PgError

ACTIONS = ("allow", "log", "error", "kill")
RANK = {a: i for i, a in enumerate(ACTIONS)}  # the kernel applies the most restrictive
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
TRUE = ("on", "true", "yes", "1")
FALSE = ("off", "false", "no", "0", "")


class ConfigError(PgError):
    sqlstate = "22023"


# socket() address families by name (linux/socket.h); a job may open only those its profile names
FAMILIES = {"unix": 1, "inet": 2, "ax25": 3, "ipx": 4, "appletalk": 5, "netrom": 6, "bridge": 7,
            "atmpvc": 8, "x25": 9, "inet6": 10, "rose": 11, "decnet": 12, "netbeui": 13,
            "security": 14, "key": 15, "netlink": 16, "packet": 17, "ash": 18, "econet": 19,
            "atmsvc": 20, "rds": 21, "sna": 22, "irda": 23, "pppox": 24, "wanpipe": 25, "llc": 26,
            "ib": 27, "mpls": 28, "can": 29, "tipc": 30, "bluetooth": 31, "iucv": 32, "rxrpc": 33,
            "isdn": 34, "phonet": 35, "ieee802154": 36, "caif": 37, "alg": 38, "nfc": 39,
            "vsock": 40, "kcm": 41, "qipcrtr": 42, "smc": 43, "xdp": 44, "mctp": 45}
AF_MAX = 46


@dataclass(frozen=True)
class Policy:
    default: str
    lists: dict = field(default_factory=dict)  # action -> tuple of syscall names
    families: tuple | None = None  # socket() families allowed; None: socket() is not limited by family

    def listed_action(self, syscall: str) -> str:
        """What the lists (or the default) say of `syscall`, whatever its arguments."""
        for action in ACTIONS:
            if syscall in self.lists.get(action, ()):
                return action
        return self.default

    def action_of(self, syscall: str, args: tuple = ()) -> str:
        """What the filter does with this call (socket() by its family, when families are limited)."""
        action = self.listed_action(syscall)
        if (syscall == "socket" and self.families is not None and RANK[action] < RANK["error"]
                and (not args or args[0] & 0xFFFFFFFF not in self.families)):
            return "error"
        return action

    def as_dict(self) -> dict:
        d = {"default": self.default, "lists": {a: list(v) for a, v in self.lists.items()}}
        if self.families is not None:
            d["families"] = list(self.families)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Policy":
        fam = d.get("families")
        return cls(d["default"], {a: tuple(v) for a, v in d["lists"].items()},
                   None if fam is None else tuple(fam))


def meet(policies) -> "Policy":
    """The policy that does, for every syscall, what the most restrictive of `policies` does."""
    policies = list(policies)
    default = max((p.default for p in policies), key=RANK.__getitem__)
    names = {s for p in policies for lst in p.lists.values() for s in lst}
    final = {s: max((p.listed_action(s) for p in policies), key=RANK.__getitem__) for s in names}
    fams = [set(p.families) for p in policies if p.families is not None]
    return Policy(default, {a: tuple(sorted(s for s, x in final.items() if x == a)) for a in ACTIONS},
                  tuple(sorted(set.intersection(*fams))) if fams else None)


Getter = Callable[[str], "str | None"]

# a backend denied any of these cannot live: it dies (often by SIGSEGV, which restarts the
# whole cluster) instead of failing one statement, so no filter may deny them
ESSENTIAL = ("read", "write", "close", "openat", "lseek", "pread64", "pwrite64", "newfstatat",
             "mmap", "munmap", "mremap", "mprotect", "brk", "futex", "rt_sigreturn",
             "rt_sigprocmask", "rt_sigaction", "exit", "exit_group", "epoll_wait", "epoll_ctl",
             "epoll_create1", "sendto", "recvfrom", "kill", "getpid")


def check_viable(policy: "Policy", what: str) -> None:
    """Refuse a filter that would deny what every PostgreSQL process needs to live."""
    denied = [sc for sc in ESSENTIAL if policy.action_of(sc) in ("error", "kill")]
    if denied:
        raise ConfigError(f"{what} would deny syscalls every PostgreSQL process needs",
                          detail="Denied: " + ", ".join(denied) + ".",
                          hint="Allow them (or log them) in the filter's lists.")


def enabled(get: Getter) -> bool:
    v = (get("pgseccomp.enabled") or "").strip().lower()
    if v in TRUE:
        return True
    if v in FALSE:
        return False
    raise ConfigError(f'invalid value for parameter "pgseccomp.enabled": "{v}"', hint="Use on or off.")


def parse_action(setting: str, value: str | None, fallback: str | None = None) -> str:
    v = (value or "").strip().lower()
    if not v and fallback is not None:
        return fallback
    if v not in ACTIONS:
        raise ConfigError(f'invalid value for parameter "{setting}": "{value}"',
                          hint="Valid actions are allow, log, error and kill.")
    return v


def split_identifiers(setting: str, value: str) -> list[str]:
    """A comma-separated identifier list as PostgreSQL's SplitIdentifierString reads it.

    Unquoted names are lower-cased, double-quoted ones kept; an empty element,
    a stray quote or text between a name and its comma is malformed.
    """
    out: list[str] = []
    i, n = 0, len(value)
    while True:
        while i < n and value[i].isspace():
            i += 1
        if i < n and value[i] == '"':
            j = i + 1
            name = ""
            while True:
                k = value.find('"', j)
                if k < 0:
                    raise _malformed(setting, value, "A double quote is not closed.")
                name += value[j:k]
                if value[k + 1:k + 2] == '"':  # a doubled quote stands for one
                    name += '"'
                    j = k + 2
                    continue
                i = k + 1
                break
        else:
            j = i
            while i < n and value[i] != "," and not value[i].isspace() and value[i] != '"':
                i += 1
            name = value[j:i].lower()
        if not name:
            raise _malformed(setting, value, "The list has an empty element.")
        out.append(name)
        while i < n and value[i].isspace():
            i += 1
        if i == n:
            return out
        if value[i] != ",":
            raise _malformed(setting, value, f'Unexpected "{value[i]}" after "{name}".')
        i += 1


def _malformed(setting: str, value: str, detail: str) -> "ConfigError":
    return ConfigError(f'invalid value for parameter "{setting}": "{value}"', detail=detail,
                       hint="Give a comma-separated list of names.")


def parse_list(setting: str, value: str | None, known: Callable[[str], bool]) -> tuple[str, ...]:
    """A comma-separated list of syscall names; every name must exist on this architecture."""
    if value is None or not value.strip():
        return ()
    names = split_identifiers(setting, value)
    for n in names:
        if not _NAME.match(n):
            raise ConfigError(f'invalid value for parameter "{setting}": "{value}"',
                              detail=f'"{n}" is not a syscall name.',
                              hint="Give a comma-separated list of syscall names.")
        if not known(n):
            raise ConfigError(f'invalid value for parameter "{setting}": "{value}"',
                              detail=f'There is no syscall "{n}" on this architecture.',
                              hint="Names are the kernel's (newfstatat, getdents64, pipe2, ...).")
    return tuple(dict.fromkeys(names))


def _policy(prefix: str, get: Getter, known, inherit: Policy | None, suffix: str = "",
            base: Policy | None = None) -> Policy:
    lists: dict[str, tuple] = {}
    owner: dict[str, str] = {}
    for action in ACTIONS:
        name = f"{prefix}_{action}{suffix}"
        raw = get(name)
        if raw is None and base is not None:  # a role without this override: the session list
            lists[action] = base.lists.get(action, ())
            continue
        if raw is not None and raw.strip() == "*":
            if inherit is None:
                raise ConfigError(f'invalid value for parameter "{name}": "*"',
                                  detail="Only session lists can inherit the global list.")
            lists[action] = inherit.lists.get(action, ())
            continue
        lists[action] = parse_list(name, raw, known)
        for sc in lists[action]:  # one scope may not say two things of a syscall
            if sc in owner and owner[sc] != action:
                raise ConfigError(f'syscall "{sc}" is listed for both "{owner[sc]}" and "{action}"',
                                  detail=f"In {prefix}_{owner[sc]}{suffix} and {name}.",
                                  hint="List each syscall under one action.")
            owner[sc] = action
    # between inherited and overriding lists the most restrictive action wins, as in the kernel
    final: dict[str, str] = {}
    for action in ACTIONS:
        for sc in lists[action]:
            final[sc] = action
    lists = {a: tuple(sc for sc in lists[a] if final[sc] == a) for a in ACTIONS}
    dname = f"{prefix}_default{suffix}"
    fallback = base.default if base is not None else (inherit.default if inherit is not None else "allow")
    return Policy(parse_action(dname, get(dname), fallback), lists)


def global_policy(get: Getter, known) -> Policy:
    p = _policy("pgseccomp.global_syscall", get, known, None)
    check_viable(p, "the global filter (pgseccomp.global_syscall_*)")
    return p


def session_roles(get: Getter) -> tuple[str, ...]:
    raw = get("pgseccomp.session_roles") or ""
    return tuple(split_identifiers("pgseccomp.session_roles", raw)) if raw.strip() else ()


def session_policy(get: Getter, known, role: str | None, glob: Policy) -> Policy:
    """The session filter for `role`: the session lists, overridden by the role's own."""
    sess = _policy("pgseccomp.session_syscall", get, known, glob)
    check_viable(sess, "the session filter (pgseccomp.session_syscall_*)")
    if role is not None and role in session_roles(get):
        p = _policy("session_syscall", get, known, glob, suffix=f".{role}", base=sess)
        check_viable(p, f'the session filter of role "{role}" (session_syscall_*.{role})')
        return p
    return sess


def job_roles(get: Getter) -> tuple[str, ...]:
    raw = get("plpy_bg.job_roles") or ""
    return tuple(split_identifiers("plpy_bg.job_roles", raw)) if raw.strip() else ()


def parse_families(setting: str, value: str | None) -> tuple[int, ...]:
    if value is None or not value.strip():
        return ()
    if value.strip() == "*":
        return tuple(range(AF_MAX))
    out = []
    for n in split_identifiers(setting, value):
        if n not in FAMILIES:
            raise ConfigError(f'invalid value for parameter "{setting}": "{value}"',
                              detail=f'"{n}" is not a socket address family.',
                              hint="Use names such as unix, inet, inet6 and netlink, or '*' for all.")
        out.append(FAMILIES[n])
    return tuple(sorted(set(out)))


def job_policy(get: Getter, known, role: str | None, session: Policy) -> Policy:
    """A job worker's own filter for `role`: the job lists ('*' = the role's session list), the
    role's overrides when it is in plpy_bg.job_roles, and the socket families jobs may open."""
    base = _policy("plpy_bg.job_syscall", get, known, session, base=session)
    fam_setting, fam = "plpy_bg.job_socket_families", get("plpy_bg.job_socket_families")
    if role is not None and role in job_roles(get):
        base = _policy("job_syscall", get, known, session, suffix=f".{role}", base=base)
        if get(f"job_socket_families.{role}") is not None:
            fam_setting, fam = f"job_socket_families.{role}", get(f"job_socket_families.{role}")
    p = Policy(base.default, base.lists, parse_families(fam_setting, fam))
    check_viable(p, f'the job filter{f" of role {role!r}" if role else ""} (plpy_bg.job_syscall_*)')
    return p


def named_at_start(session_roles: dict, job_roles: dict) -> bool:
    """Whether every backend must be named as it starts, its title read before any of its code
    runs: only when some role has lists of its own, since only then does the role a title names
    decide a policy. Otherwise all client backends share their policies, and a process is named
    when it first makes a notified syscall (native code that retitles a backend gains nothing)."""
    return bool(session_roles or job_roles)


def names(roles: tuple[str, ...] = (), jroles: tuple[str, ...] = ()) -> list[str]:
    """Every setting name this module reads, for readers that must ask one by one."""
    out = ["pgseccomp.enabled", "pgseccomp.session_roles", "plpy_bg.job_roles",
           "plpy_bg.job_socket_families", "cluster_name"]
    for scope in ("pgseccomp.global", "pgseccomp.session", "plpy_bg.job"):
        out += [f"{scope}_syscall_{a}" for a in ACTIONS + ("default",)]
    for r in roles:
        out += [f"session_syscall_{a}.{r}" for a in ACTIONS + ("default",)]
    for r in jroles:
        out += [f"job_syscall_{a}.{r}" for a in ACTIONS + ("default",)] + [f"job_socket_families.{r}"]
    return out


def getter(values: dict[str, str]) -> Getter:
    """A getter over name -> value; setting names are case-insensitive, as in PostgreSQL."""
    lower = {k.lower(): v for k, v in values.items()}
    return lambda name: lower.get(name.lower())


_PROFILE_LINE = re.compile(r"^\s*([\w.]+)\s*=\s*'([^']*)'")


def profile_settings(path) -> dict[str, str]:
    """The settings of a shipped profile file (name = 'value' lines)."""
    out = {}
    with open(path) as f:
        for line in f:
            m = _PROFILE_LINE.match(line)
            if m:
                out[m.group(1)] = m.group(2)
    return out
