"""Who trusts whom: implicit trust (self, superusers, roles that can already become you) and declared trust.

Trust is one-way. `truster` trusts `trustee` when inducing `truster` to act
gives `trustee` nothing it did not have: it is the same role, a superuser,
or a member that may already SET ROLE to `truster`. Anything else needs a
row in ``plpy_bg.trust`` that only `truster` itself can write.
"""
from __future__ import annotations

from plpy_bg.policy.catalog import Catalog

TRUST_FUNCTION = "pg_background_trust"
DISTRUST_FUNCTION = "pg_background_distrust"


class TrustCache:
    """Answers for one decision: the declared-trust table is read at most once per truster."""

    def __init__(self, cat: Catalog):
        self.cat = cat
        self._declared: dict[int, set[int]] = {}

    def reason(self, truster: int, trustee: int | None) -> str | None:
        """Why `truster` trusts `trustee`, or None when it does not."""
        if trustee is None:
            return None
        if trustee == truster:
            return "same role"
        r = self.cat.role(trustee)
        if r and r["superuser"]:
            return "superuser"
        if self.cat.can_become(trustee, truster):
            return "can already become it"
        declared = self._declared.get(truster)
        if declared is None:
            declared = self._declared[truster] = self.cat.declared_trustees(truster)
        if trustee in declared:
            return f"declared with {TRUST_FUNCTION}()"
        return None
