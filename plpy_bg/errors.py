"""Errors that carry a SQLSTATE, raised by the package and re-raised through plpy.

Every failure a user can cause ends as one of these; `api.py` turns it into a
PostgreSQL error with the same SQLSTATE, message, detail and hint.
"""
from __future__ import annotations


class PgError(Exception):
    """A PostgreSQL-style error: lower-case message, no final period."""

    sqlstate = "XX000"

    def __init__(self, message: str, detail: str | None = None, hint: str | None = None,
                 sqlstate: str | None = None, context: str | None = None):
        super().__init__(message)
        self.message = message
        self.detail = detail
        self.hint = hint
        self.context = context
        if sqlstate:
            self.sqlstate = sqlstate

    def as_dict(self) -> dict:
        return {"sqlstate": self.sqlstate, "message": self.message, "detail": self.detail,
                "hint": self.hint, "context": self.context}

    @classmethod
    def from_dict(cls, d: dict) -> "PgError":
        return cls(d.get("message") or "unknown error", d.get("detail"), d.get("hint"),
                   d.get("sqlstate") or "XX000", d.get("context"))

    def raise_in(self, plpy) -> None:
        """Raise this error in the calling backend with all its fields."""
        kw = {"sqlstate": self.sqlstate}
        if self.detail:
            kw["detail"] = self.detail
        if self.hint:
            kw["hint"] = self.hint
        plpy.error(self.message, **kw)


class InvalidParameter(PgError):
    sqlstate = "22023"


class NullValue(PgError):
    sqlstate = "22004"


class InsufficientPrivilege(PgError):
    sqlstate = "42501"


class ObjectNotFound(PgError):
    sqlstate = "42704"


class ObjectInUse(PgError):
    sqlstate = "55006"


class WrongState(PgError):
    sqlstate = "55000"


class TooManyWorkers(PgError):
    sqlstate = "53400"


class TooManyConnections(PgError):
    sqlstate = "53300"


class ConnectionFailure(PgError):
    sqlstate = "08006"


class DeadlockDetected(PgError):
    sqlstate = "40P01"
