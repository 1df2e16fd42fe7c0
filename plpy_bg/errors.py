"""Errors that carry a SQLSTATE, raised by the package and re-raised through plpy.

Every failure a user can cause ends as one of these; `api.py` turns it into a
PostgreSQL error with the same SQLSTATE, message, detail and hint.
"""
from __future__ import annotations

import functools


def cut_utf8(text: str | None, limit: int) -> str | None:
    """`text` cut at `limit` bytes without splitting a UTF-8 sequence."""
    if text is None:
        return None
    b = text.encode()
    if len(b) <= limit:
        return text
    return b[:limit].decode("utf-8", "ignore")


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

    origin = "plpy_bg"

    def raise_in(self, plpy) -> None:
        """Raise this error in the calling backend with all its fields.

        PL/Python writes every error as "<exception type>: <message>"; a
        subclass of plpy.Error named for the origin makes that prefix say
        where the error comes from ("background job 1234: division by zero").
        """
        cls = _error_class(plpy, self.origin)
        e = cls(self.message)
        e.sqlstate = self.sqlstate
        e.detail = self.detail
        e.hint = self.hint
        raise e


_classes: dict = {}


def _error_class(plpy, origin: str):
    cls = _classes.get(origin)
    if cls is None or not issubclass(cls, plpy.Error):
        cls = _classes[origin] = type(origin, (plpy.Error,), {"__module__": "builtins"})
    return cls


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


SANDBOX_REFUSAL = "background jobs are refused:"  # the start of every launch refused for the sandbox


class WrongState(PgError):
    sqlstate = "55000"


class FeatureNotSupported(PgError):
    sqlstate = "0A000"


class LockNotAvailable(PgError):
    sqlstate = "55P03"


class TooManyWorkers(PgError):
    sqlstate = "53400"


class TooManyConnections(PgError):
    sqlstate = "53300"


class ConnectionFailure(PgError):
    sqlstate = "08006"


class DeadlockDetected(PgError):
    sqlstate = "40P01"


def sql_errors(fn):
    """Raise PgError in the backend with all its fields (plpy.error needs keyword args)."""
    @functools.wraps(fn)
    def wrap(plpy, *a, **kw):
        try:
            return fn(plpy, *a, **kw)
        except PgError as e:
            e.raise_in(plpy)
    return wrap


def require(name: str, value) -> None:
    if value is None:
        raise NullValue(f"{name} must not be null")
