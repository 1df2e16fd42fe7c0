"""Wire protocol between backends and the dispatcher, over a Unix stream socket.

A frame is a 5-byte header (payload length as uint32 big-endian, one type
byte) followed by the payload. Control frames carry JSON; row frames carry
row literals ready for `record_in`, so the backend does no per-column work.

Types:
  Q  request (JSON: {"op": ..., ...})       backend -> dispatcher
  A  answer (JSON)                          dispatcher -> backend
  E  error (JSON: sqlstate, message, ...)   dispatcher -> backend
  R  a batch of rows: UTF-8 literals separated by NUL (no text value holds one)
  Z  end of a row stream (JSON: command tag or error)
"""
from __future__ import annotations

import json
import os
import socket
import struct

from plpy_bg import __version__

HEADER = struct.Struct("!IB")
MAX_FRAME = 1 << 30  # a 1 GB statement is PostgreSQL's own limit too


class ProtocolError(Exception):
    pass


def socket_path_for(sockdir: str, port: int) -> str:
    """Where the dispatcher of this version for the server on `port` listens (mode 0600: the
    server's OS user only). One per version: a session keeps the version it loaded until it
    reconnects, so after ALTER EXTENSION plpy_bg UPDATE the old dispatcher serves its sessions."""
    return os.path.join(sockdir, socket_name(port, __version__))


def socket_name(port: int, version: str) -> str:
    return f".s.plpy_bg.{port}.{version}"


def jsonb_text(obj) -> str:
    """JSON for a jsonb column of the job table, its characters as they are: jsonb of a SQL_ASCII
    database refuses \\u escapes of non-ASCII ones (a refused final state leaves a job `running`)."""
    return json.dumps(obj, ensure_ascii=False)


def pack(kind: bytes, payload: bytes) -> bytes:
    return HEADER.pack(len(payload), kind[0]) + payload


def pack_json(kind: bytes, obj) -> bytes:
    return pack(kind, json.dumps(obj, separators=(",", ":")).encode())


def pack_rows(rows: list[bytes]) -> bytes:
    return pack(b"R", b"\0".join(rows))


def unpack_rows(payload: bytes) -> list[str]:
    """One decode and one split per batch: no per-row Python work."""
    return payload.decode().split("\0") if payload else []


def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            raise EOFError("peer closed the connection")
        got += k
    return bytes(buf)


def recv_frame(sock: socket.socket) -> tuple[bytes, bytes]:
    ln, kind = HEADER.unpack(recv_exact(sock, HEADER.size))
    if ln > MAX_FRAME:
        raise ProtocolError(f"frame of {ln} bytes exceeds the limit")
    return bytes([kind]), recv_exact(sock, ln) if ln else b""


# ---- row literals -----------------------------------------------------------

_NEEDS_QUOTE = frozenset(b'",\\() \t\n\r\v\f')


COMMITTED_SQL = "CALL plpy_bg.job_committed({cookie})"  # the last statement of a one-transaction job
TAG_COLUMNS = [(25, -1)]  # a job with no row set returns its command tag as one text column


def row_text_sql(statement: str) -> str:
    """One plain query wrapped so the server writes each row as a record literal (record_out);
    the statement keeps its own text, on its own lines."""
    return f"SELECT (plpy_bg_row.*)::pg_catalog.text FROM (\n{statement}\n) AS plpy_bg_row"


def row_literal(values: list[bytes | None]) -> bytes:
    """A composite literal as record_out writes it, so record_in reads each field exactly."""
    parts = []
    for v in values:
        if v is None:
            parts.append(b"")
        elif v == b"" or not _NEEDS_QUOTE.isdisjoint(v):
            parts.append(b'"' + v.replace(b"\\", b"\\\\").replace(b'"', b'""') + b'"')
        else:
            parts.append(v)
    return b"(" + b",".join(parts) + b")"
