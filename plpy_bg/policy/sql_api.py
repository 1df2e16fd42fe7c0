"""Bodies of the policy's SQL functions (sql/idempotent/030-policy.sql); one function each."""
from __future__ import annotations

from plpy_bg.errors import InsufficientPrivilege, NullValue, PgError
from plpy_bg.policy.decision import _induce, chain_detail, require_trusted_chain
from plpy_bg.policy.provenance import capture_provenance
from plpy_bg.policy.trust import TRUST_FUNCTION

_Q_INSERT = ("INSERT INTO plpy_bg.trust (truster, trustee) "
             "SELECT r.oid, $1::pg_catalog.oid FROM pg_catalog.pg_roles r "
             "WHERE r.rolname OPERATOR(pg_catalog.=) CURRENT_USER "
             "AND r.oid OPERATOR(pg_catalog.<>) $1::pg_catalog.oid "
             "ON CONFLICT DO NOTHING")
_Q_DELETE = ("DELETE FROM plpy_bg.trust t USING pg_catalog.pg_roles r "
             "WHERE r.rolname OPERATOR(pg_catalog.=) CURRENT_USER "
             "AND t.truster OPERATOR(pg_catalog.=) r.oid AND t.trustee OPERATOR(pg_catalog.=) $1::pg_catalog.oid")
_plans: dict = {}


def _run(plpy, q: str, trustee) -> None:
    plan = _plans.get(q)
    if plan is None:
        plan = _plans[q] = plpy.prepare(q, ["regrole"])
    try:
        plpy.execute(plan, [trustee])
    except plpy.SPIError as e:  # keep trust_guard's refusal as it was worded, not wrapped in "spiexceptions..."
        msg = str(e.args[0] if e.args else e).removeprefix("plpy_bg: ")
        _raise(plpy, PgError(msg, getattr(e, "detail", None), getattr(e, "hint", None),
                             getattr(e, "sqlstate", None) or "XX000"))


def _raise(plpy, e: PgError) -> None:
    e.raise_in(plpy)


def trust(plpy, trustee) -> None:
    """pg_background_trust(trustee): the current role trusts `trustee` (checked again by trust_guard)."""
    if trustee is None:
        _raise(plpy, NullValue("trustee must not be null"))
    _run(plpy, _Q_INSERT, trustee)


def distrust(plpy, trustee) -> None:
    """pg_background_distrust(trustee): withdraw; always allowed, trust only ever shrinks."""
    if trustee is None:
        _raise(plpy, NullValue("trustee must not be null"))
    _run(plpy, _Q_DELETE, trustee)


def trust_guard(plpy, TD) -> str | None:
    """BEFORE INSERT OR UPDATE on plpy_bg.trust: refuse trust declared by code the truster does not trust."""
    if TD["event"] == "UPDATE":
        _raise(plpy, InsufficientPrivilege("trust declarations cannot be changed",
                                           hint=f"Withdraw it and declare it again with {TRUST_FUNCTION}()."))
    role = plpy.execute("SELECT CURRENT_USER AS u")[0]["u"]
    prov = capture_provenance(plpy)
    try:
        require_trusted_chain(plpy, prov, role, TRUST_FUNCTION,
                              hint=f'Declare trust in a session of "{role}", not from code of other roles.')
    except PgError as e:
        _raise(plpy, e)
    return None


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
