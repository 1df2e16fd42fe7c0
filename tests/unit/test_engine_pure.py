"""Pure logic of the job engine: row literals, framing, the ident map, settings, sinks."""
import socket
import threading

import pytest

from plpy_bg.api import parse_setting, queue_bytes, _UNITS_BYTES, _UNITS_MS
from plpy_bg.dispatcher import protocol as P
from plpy_bg.dispatcher.sink import RowSink
from plpy_bg.errors import InvalidParameter, NullValue, cut_utf8
from plpy_bg.jobs import identmap
from plpy_bg.jobs.settings import Baseline
from tests.fix_pg import wait_for


@pytest.mark.parametrize("values, literal", [
    ([b"1", b"abc"], b"(1,abc)"),
    ([None, b""], b'(,"")'),
    ([b'a "q" b'], b'("a ""q"" b")'),
    ([b"x,y", b"(p)", b"back\\slash"], b'("x,y","(p)","back\\\\slash")'),
    ([b"{1,2}"], b'("{1,2}")'),
    (["é ✓".encode()], b'("\xc3\xa9 \xe2\x9c\x93")'),
])
def test_row_literal_quotes_like_record_out(values, literal):
    assert P.row_literal(values) == literal


def test_frames_round_trip():
    a, b = socket.socketpair()
    rows = [b"(1)", "(é)".encode(), b"()"]
    a.sendall(P.pack_json(b"Q", {"op": "x", "n": 1}) + P.pack_rows(rows))
    assert P.recv_frame(b) == (b"Q", b'{"op":"x","n":1}')
    kind, payload = P.recv_frame(b)
    assert kind == b"R" and P.unpack_rows(payload) == ["(1)", "(é)", "()"]
    a.close()
    with pytest.raises(EOFError):
        P.recv_frame(b)
    b.close()


def test_oversized_frame_is_refused():
    a, b = socket.socketpair()
    with a, b:
        a.sendall(P.HEADER.pack(P.MAX_FRAME + 1, ord("Q")))
        with pytest.raises(P.ProtocolError):
            P.recv_frame(b)


def test_ident_map_lines_are_quoted_and_kept_once():
    text = "# comment\nplpy_bg /^(.*)$ \\1\nplpy_bg postgres legacy\n"
    new = identmap.with_roles(text, "postgres", add=["alice", 'we"ird role', "legacy"])
    assert 'plpy_bg postgres "alice"' in new
    assert 'plpy_bg postgres "we""ird role"' in new
    assert new.count("legacy") == 1  # an unquoted line of an earlier version counts as present
    assert identmap.with_roles(new, "postgres", add=["alice"]) is None
    assert new.count(identmap.BEGIN) == 1
    newer = identmap.with_roles(new, "postgres", add=["bob"])
    assert newer.index("alice") < newer.index("bob")
    gone = identmap.with_roles(newer, "postgres", remove=["alice", "legacy"])
    assert "alice" not in gone and "legacy" not in gone and '"bob"' in gone
    assert "plpy_bg /^(.*)$ \\1" in gone  # the identity line is never a role's line
    assert identmap.with_roles(gone, "postgres", remove=["nobody"]) is None


@pytest.mark.parametrize("name", ["a,b", "sp ace", 'q"uote', "ha#sh", "back\\slash", "+plus", "/slash", "all",
                                  "endsback\\", "ünï", '"', "#"])
def test_ident_map_line_reads_back_as_the_same_role(name):
    assert identmap.mapped_role(identmap.map_line("postgres", name), "postgres") == name


@pytest.mark.parametrize("name", ["x\nplpy_bg /^someone$ admin", "cr\rx", "nul\0x", "", "tab\tx",
                                  "x\x0bplpy_bg nobody postgres\x0b#", "ff\x0cx", "fs\x1cx", "nel\x85x",
                                  "ls\u2028x", "ps\u2029x", "del\x7fx", "nbsp\xa0x"])
def test_ident_map_refuses_names_a_line_cannot_hold(name):
    with pytest.raises(identmap.UnrepresentableName) as e:
        identmap.map_line("postgres", name)
    assert e.value.sqlstate == "42602"
    with pytest.raises(identmap.UnrepresentableName):
        identmap.with_roles("", "postgres", add=["ok", name])


def test_ident_file_is_read_as_postgresql_reads_it():
    """Only LF ends a line: a character Python's splitlines() also splits at stays inside it."""
    text = 'plpy_bg postgres "a\x0bb"\r\n# comment\x1c still\n'
    new = identmap.with_roles(text, "postgres", add=["c"])
    assert new.startswith(text) and new.count("\n") == text.count("\n") + 2


def test_cut_utf8():
    assert cut_utf8(None, 512) is None
    assert cut_utf8("abc", 512) == "abc"
    s = "a" + "é" * 600
    out = cut_utf8(s, 512)
    assert len(out.encode()) <= 512 and s.startswith(out) and len(out.encode()) >= 511


@pytest.mark.parametrize("raw, want", [(None, 16), ("", 16), ("8", 8), ("256kB", 262144), ("1MB", 1048576)])
def test_parse_setting(raw, want):
    units = _UNITS_BYTES if raw and raw[-1].isalpha() else {"": 1}
    assert parse_setting("x", raw, 16, units, "b" if units is _UNITS_BYTES else "") == want


@pytest.mark.parametrize("raw", ["lots", "-5", "5 parsecs"])
def test_parse_setting_refuses_nonsense(raw):
    with pytest.raises(InvalidParameter):
        parse_setting("pg_background.worker_timeout", raw, 0, _UNITS_MS, "ms")


def test_queue_bytes():
    assert queue_bytes(0, None) == 65536
    assert queue_bytes(0, "1MB") == 1048576
    assert queue_bytes(100, None) == 4096
    with pytest.raises(InvalidParameter):
        queue_bytes(-1, None)
    with pytest.raises(NullValue):
        queue_bytes(None, None)


def test_settings_baseline_sends_changed_and_nondefault():
    b = Baseline([
        {"name": "search_path", "context": "user", "value": "public", "changed": True},
        {"name": "work_mem", "context": "user", "value": "4MB", "changed": False},
        {"name": "session_replication_role", "context": "superuser", "value": "origin", "changed": False},
    ])
    # the launch query returns 'index:value' for what to send; the superuser-only one needs a superuser
    assert b.inherit(["0:public"], False) == [["search_path", "public"]]
    assert b.inherit(["0:s", "1:64MB", "2:replica"], False) == [["search_path", "s"], ["work_mem", "64MB"]]
    assert b.inherit(["0:s", "2:replica"], True) == [["search_path", "s"], ["session_replication_role", "replica"]]
    assert b.inherit(["1:a:b"], False) == [["work_mem", "a:b"]]  # a colon in a value stays
    sql = b.values_sql()
    assert "CASE" not in sql.split(",")[0]  # changed at the baseline: always sent
    assert sql.count("CASE WHEN") == 3 and "E'4MB'" in sql
    assert "CASE WHEN r.rolsuper THEN CASE WHEN pg_catalog.current_setting(E'session_replication_role')" in sql


def test_settings_literal_survives_quotes_and_backslashes():
    from plpy_bg.jobs.settings import literal
    assert literal("it's a \\ test") == "E'it''s a \\\\ test'"


def test_streaming_sink_applies_backpressure():
    sink = RowSink(limit=100, streaming=True)
    done = threading.Event()

    def writer():
        for i in range(50):
            sink.put(b"x" * 20)
        sink.finish({"tag": "SELECT 50"})
        done.set()

    threading.Thread(target=writer, daemon=True).start()
    wait_for(lambda: sink.rows_total == 6 and sink.mem_bytes == 100, timeout=5)  # the 6th row is counted, not queued
    assert not done.is_set() and sink.mem_bytes == 100  # blocked on the full queue until a read
    got = []
    final = None
    while final is None:
        rows, final = sink.take(60, 1.0)
        got += rows
    assert len(got) == 50 and final == {"tag": "SELECT 50"}


def test_wait_lets_the_sink_spill_instead_of_blocking():
    sink = RowSink(limit=64, streaming=True)
    sink.allow_spill()
    for _ in range(1000):
        sink.put(b"y" * 32)
    sink.finish({"tag": "SELECT 1000"})
    assert sink.mem_bytes <= 64
    rows, final = [], None
    while final is None:
        r, final = sink.take(10_000, 0.1)
        rows += r
    assert len(rows) == 1000 and all(r == b"y" * 32 for r in rows)


def test_multi_statement_sink_keeps_only_the_last_set():
    sink = RowSink(limit=16, streaming=False)
    sink.new_set([(23, -1)], {})
    for i in range(100):
        sink.put(b"first%d" % i)
    assert sink.take(1000, 0.01) == ([], None)  # nothing readable before the end
    assert sink.describe(0.01) == (False, None, {})  # nor its columns: a later set may replace them
    sink.new_set([(25, -1), (1043, 9)], {"datestyle": "ISO, MDY"})
    sink.put(b"second")
    sink.finish({"tag": "SELECT 1"})
    assert sink.describe(0.01) == (True, [(25, -1), (1043, 9)], {"datestyle": "ISO, MDY"})
    assert sink.take(1000, 0.01) == ([b"second"], {"tag": "SELECT 1"})


def test_describe_takes_no_row_and_a_failed_job_has_no_columns():
    sink = RowSink(limit=1 << 20, streaming=True)
    assert sink.describe(0.01) == (False, None, {})
    sink.new_set([(23, -1)], {})
    sink.put(b"(1)")
    assert sink.describe(0.01) == (True, [(23, -1)], {})  # a streaming job's first set is final
    assert sink.take(1000, 0.01)[0] == [b"(1)"]
    failed = RowSink(limit=1 << 20, streaming=True)
    failed.new_set([(23, -1)], {})
    failed.finish({"tag": None, "error": {"sqlstate": "22012"}})
    assert failed.describe(0.01) == (True, None, {})  # the reader gets the error instead


def test_discard_unblocks_the_writer():
    sink = RowSink(limit=10, streaming=True)
    sink.put(b"z" * 10)
    t = threading.Thread(target=lambda: sink.put(b"z" * 10), daemon=True)
    t.start()
    wait_for(lambda: sink.rows_total == 2, timeout=5)  # the second put is counted and waits for room
    assert t.is_alive()
    sink.discard()
    t.join(2)
    assert not t.is_alive()


def test_a_chunk_is_one_entry_and_a_chunk_larger_than_the_queue_waits_on_disk():
    sink = RowSink(limit=100, streaming=True)
    sink.put_many([b"(1)", b"(2)", b"(3)"])
    big = [b"z" * 60, b"z" * 60]  # 121 bytes joined: more than the queue holds

    def writer():
        sink.put_many(big)
        sink.finish({"tag": "SELECT 5"})

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    wait_for(lambda: sink.file_unread == 1, timeout=5)
    # in the file at once, not in memory, and the writer waits until it is read
    assert sink.mem_bytes == 11 and sink.file_unread == 1 and not big and t.is_alive()
    chunks, final = sink.take(1000, 1.0)
    assert chunks[0] == b"(1)\0(2)\0(3)"
    got = chunks[1:]
    while final is None:
        c, final = sink.take(1000, 1.0)
        got += c
    assert got == [b"z" * 60 + b"\0" + b"z" * 60] and sink.rows_total == 5
    chunks = chunks[:1]
    assert P.unpack_rows(P.pack_rows(chunks + got)[5:]) == ["(1)", "(2)", "(3)", "z" * 60, "z" * 60]


def test_a_session_budget_answers_to_the_budget_of_all_sessions():
    from plpy_bg.dispatcher.sink import Budget
    everyone = Budget(100)
    a, b = Budget(80, everyone), Budget(80, everyone)
    a.add(70)
    assert everyone.used == 70 and not b.fits(40) and b.fits(30) and a.cap() == 80
    a.give(70)
    assert everyone.used == 0 and b.fits(80)


def test_spool_without_a_role_limit_has_a_bound_and_keeps_the_disk_from_filling(monkeypatch, tmp_path):
    from plpy_bg.dispatcher import sink as S
    monkeypatch.setattr(S, "SPOOL_DEFAULT_LIMIT", 1000)
    rs = S.RowSink(limit=10, streaming=False, spool_dir=str(tmp_path))
    rs.put_many([b"x" * 400])
    with pytest.raises(S.SpoolFull, match="plpy_bg's spool bound"):
        rs.put_many([b"y" * 700])
    rs.discard()

    class Full:
        f_bavail, f_frsize, f_blocks = 5, 4096, 100  # 5% free
    monkeypatch.setattr(S.os, "statvfs", lambda path: Full)
    rs2 = S.RowSink(limit=10, streaming=False, spool_dir=str(tmp_path))
    with pytest.raises(S.SpoolFull, match="the disk is nearly full") as e:
        rs2.put_many([b"z" * 100])
    assert e.value.sqlstate == "53100"


def test_a_writer_waiting_for_room_goes_on_when_wait_turns_spilling_on():
    sink = RowSink(limit=10, streaming=True)
    sink.put_many([b"12345678"])
    t = threading.Thread(target=lambda: sink.put_many([b"abcdefgh"]), daemon=True)
    t.start()
    wait_for(lambda: sink.rows_total == 2, timeout=5)  # counted, and waiting for room
    assert t.is_alive()  # the queue is full
    sink.allow_spill()
    t.join(2)
    assert not t.is_alive() and sink.file_unread == 1
    sink.discard()


def test_a_dispatcher_log_record_is_one_record_whatever_its_text_holds():
    """Every character a reader (Python's splitlines, a terminal) takes for a line break or a
    command is escaped; a newline starts a tab-indented continuation line, as the server's do."""
    import logging

    from plpy_bg.dispatcher.server import _ServerLogFormat
    forged = "2031-01-01 00:00:00.000 UTC [1] LOG:  forged"
    breaks = ["\r", "\v", "\f", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029", "\x1b[2J", "\x00"]
    for b in breaks:
        rec = logging.LogRecord("plpy_bg", logging.INFO, __file__, 1, "released database %s", (f"x{b}{forged}",), None)
        line = _ServerLogFormat().format(rec)
        assert len(line.splitlines()) == 1 and line.isprintable(), repr(line)
    rec = logging.LogRecord("plpy_bg", logging.INFO, __file__, 1, "database %s", (f"x\n{forged}",), None)
    first, second = _ServerLogFormat().format(rec).split("\n")
    assert second == "\t" + forged
