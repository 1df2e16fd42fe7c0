"""The filters in force in this process, and the table `seccomp_filter()` shows.

A process carries a stack of filters and the kernel applies the most
restrictive action of all of them. Here that stack is:
  global   loaded by the preload helper into the postmaster before exec, handed
           to every backend in the environment (PLPY_BG_SECCOMP_GLOBAL)
  session  the role's session policy, applied by the supervisor to every client
           backend from its start (asked once per backend: `supervised_layer`)
  job      the job filter, loaded by `worker.install` in job workers
  client   loaded once by `set_client_filter()`
This module records what this process loaded (module state lives as long as
the backend) and computes the effective action of each syscall the way
pgseccomp does: the most restrictive wins, a later layer wins a tie.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

from plpy_bg.sandbox import engine, supervision
from plpy_bg.sandbox.config import RANK, Policy

ENV = supervision.GLOBAL_ENV
DEFAULT_ROW = "<default>"  # pgseccomp's name for the row of the default action


@dataclass(frozen=True)
class Layer:
    source: str  # global, session or client
    policy: Policy


_loaded: list[Layer] = []  # session and client layers this process loaded, in order
_done: set[str] = set()  # sources already decided in this process (loaded or found unnecessary)


def global_layer() -> Layer | None:
    """The global filter the preload helper loaded, when this process really runs under a filter.

    The environment alone could be inherited from whoever started the server
    without the helper; the kernel's filter count says whether a filter is there.
    """
    raw = os.environ.get(ENV)
    if not raw or engine.filters() < 1:
        return None
    return Layer("global", Policy.from_dict(json.loads(raw)))


_supervised: list = []  # [Layer | None] once asked


def supervised_layer() -> Layer | None:
    """The session policy the supervisor applies to this backend, when it differs from the global."""
    if _supervised:
        return _supervised[0]
    g = global_layer()
    if g is None or not os.environ.get(supervision.ENV):
        return None
    try:
        info = supervision.whoami()
    except (OSError, ValueError):
        return None  # not remembered: a passing failure is asked again
    layer = None
    if info.get("kind") in ("client", "parallel", "unknown") and info.get("policy"):
        p = Policy.from_dict(info["policy"])
        layer = Layer("session", p) if p != g.policy else None
    _supervised.append(layer)
    return layer


def done(source: str) -> bool:
    return source in _done


def mark(source: str, policy: Policy | None = None) -> None:
    """Record that `source` is decided here; with a policy, that it was loaded."""
    _done.add(source)
    if policy is not None:
        _loaded.append(Layer(source, policy))


def stack() -> list[Layer]:
    g = global_layer()
    s = supervised_layer() if g else None
    return ([g] if g else []) + ([s] if s else []) + list(_loaded)


def effective(layers: list[Layer], syscall: str | None) -> tuple[str, str]:
    """(source, action) in force for `syscall` (None: the default) across `layers`."""
    best: tuple[str, str] | None = None
    for layer in layers:
        action = layer.policy.default if syscall is None else layer.policy.action_of(syscall)
        if best is None or RANK[action] >= RANK[best[1]]:
            best = (layer.source, action)
    return best or ("none", "allow")


def rows(layers: list[Layer]) -> list[tuple[str, int, str, str]]:
    """(syscall, syscallnum, filter_action, context): the global filter, then the session's."""
    out = []
    for context, ls in (("global", [x for x in layers if x.source == "global"]), ("session", layers)):
        if not ls:
            continue
        names = sorted({s for x in ls for lst in x.policy.lists.values() for s in lst},
                       key=lambda s: (engine.syscall_number(s) or 0, s))
        src, act = effective(ls, None)
        out.append((DEFAULT_ROW, -1, f"{src}->{act}", context))
        for name in names:
            src, act = effective(ls, name)
            out.append((name, engine.syscall_number(name), f"{src}->{act}", context))
    return out


def load(source: str, policy: Policy) -> None:
    """Load `policy` as this process's `source` layer; a refusal by the filters in force is 42501."""
    _load(source, lambda: engine.load(policy))
    mark(source, policy)


def load_raw(source: str, program: bytes) -> None:
    """Load a filter program another process loaded (a launcher's, for its job); it shows in
    seccomp_filter() through the policy it was met into."""
    _load(source, lambda: engine.load_raw(program))


def _load(source: str, load_it) -> None:
    from plpy_bg.errors import PgError

    try:
        load_it()
    except OSError as e:
        raise PgError(f"could not load the {source} seccomp filter", detail=e.strerror,
                      hint="The filters in force must allow the prctl and seccomp syscalls.",
                      sqlstate="42501") from None


def own_layers() -> list[Layer]:
    """The filters this process runs under beyond the global one (its children inherit them)."""
    s = supervised_layer()
    return ([s] if s else []) + list(_loaded)
