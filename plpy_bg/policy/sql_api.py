"""Bodies of the policy's SQL functions (sql/idempotent/030-policy.sql); one function each."""
from __future__ import annotations

from plpy_bg.errors import InsufficientPrivilege, NullValue, PgError
from plpy_bg.policy import catalog as _catalog
from plpy_bg.policy import native
from plpy_bg.policy.decision import _induce, chain_detail, require_trusted_chain
from plpy_bg.policy.provenance import capture_provenance
from plpy_bg.policy.trust import DISTRUST_FUNCTION, TRUST_FUNCTION

_Q_OID = ("SELECT $1::pg_catalog.oid AS o", ["pg_catalog.regrole"])
_Q_INSERT = ("INSERT INTO plpy_bg.trust (truster, trustee) VALUES ($1, $2) ON CONFLICT DO NOTHING",
             ["pg_catalog.oid", "pg_catalog.oid"])
_Q_DELETE = ("DELETE FROM plpy_bg.trust t WHERE t.truster OPERATOR(pg_catalog.=) $1 "
             "AND t.trustee OPERATOR(pg_catalog.=) $2", ["pg_catalog.oid", "pg_catalog.oid"])
_Q_WRITE = ("SELECT plpy_bg.trust_write()", [])
_plans: dict = {}

# (truster oid, trustee oid, declare) while pg_background_trust/distrust runs plpy_bg.trust_write():
# Python state of this backend, which SQL cannot set, so the definer writes only what they decided.
_pending: tuple[int, int, bool] | None = None


def _run(plpy, q: tuple[str, list[str]], *args) -> list:
    plan = _plans.get(q[0])
    if plan is None:
        plan = _plans[q[0]] = plpy.prepare(q[0], q[1])
    return plpy.execute(plan, list(args))


def _raise(plpy, e: PgError) -> None:
    e.raise_in(plpy)


def trust(plpy, trustee) -> None:
    """pg_background_trust(trustee): the current role trusts `trustee`, if its chain is trusted."""
    _declare(plpy, trustee, True)


def distrust(plpy, trustee) -> None:
    """pg_background_distrust(trustee): withdraw; always allowed, trust only ever shrinks."""
    _declare(plpy, trustee, False)


def _declare(plpy, trustee, declare: bool) -> None:
    global _pending
    try:
        if trustee is None:
            raise NullValue("trustee must not be null")
        truster = native.backend(plpy).user_id()
        trustee_oid = int(_run(plpy, _Q_OID, trustee)[0]["o"])
        if declare:
            cat = _catalog.catalog(plpy)
            cat.refresh()
            role = (cat.role(truster) or {}).get("name") or str(truster)
            require_trusted_chain(plpy, capture_provenance(plpy), role, TRUST_FUNCTION,
                                  hint=f'Declare trust in a session of "{role}", not from code of other roles.')
            if trustee_oid == truster:
                return  # a role trusts itself without a row
    except PgError as e:
        _raise(plpy, e)
    _pending = (truster, trustee_oid, declare)
    try:
        _run(plpy, _Q_WRITE)
    finally:
        _pending = None


def trust_write(plpy) -> None:
    """plpy_bg.trust_write(), as the table's owner: apply the one pending declaration of this backend."""
    global _pending
    pending, _pending = _pending, None
    if pending is None:
        _raise(plpy, InsufficientPrivilege(
            "plpy_bg.trust_write() may only be called by pg_background_trust() and pg_background_distrust()",
            hint=f"Use {TRUST_FUNCTION}() or {DISTRUST_FUNCTION}()."))
    truster, trustee, declare = pending
    _run(plpy, _Q_INSERT if declare else _Q_DELETE, truster, trustee)


def ddl_check(plpy, GD, tag: str) -> None:
    """ddl_command_start: inside a job worker whose chain is untrusted, refuse DDL run by dynamic SQL."""
    from plpy_bg.dispatcher.client import job_info

    try:  # only called where the job table says a job runs: no answer means no DDL
        info = job_info(plpy, GD, must_answer=True)
    except PgError as e:
        _raise(plpy, e)
    if not info:
        return
    cls = info.get("classification") or {}
    if cls.get("chain_trusted") is True:
        return
    prov = info.get("provenance") or {}
    chain = prov.get("chain") or []
    job_role = cls.get("job_role") or info.get("role") or prov.get("current_user") or "?"
    culprit = cls.get("untrusted_entry")
    who = cls.get("untrusted_role")
    detail = ("The job was launched through code its role does not trust, so it may not run DDL, "
              "not even through dynamic SQL.\n" + chain_detail(chain, job_role, culprit))
    _raise(plpy, _induce(who, job_role, tag or "DDL", detail,
                         f'If "{job_role}" trusts "{who}", run SELECT {TRUST_FUNCTION}(\'{(who or "").replace(chr(39), chr(39) * 2)}\') '
                         f'as "{job_role}" and launch the job again.' if who else None))
