"""Retention and the size limit of the SQLite store (issue 15, row 9): old rows are deleted, in
the writer thread, a chunk at a time; at the size limit numbered messages get `ERR 503` and
nothing that is not stored is acknowledged.

Real SQLite files; the size-limit tests over real sockets on 127.0.0.1 (in-process server); the
command-line tests run `tcpulse serve`.  No timing assertions: tests wait for conditions.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import tcpulse.i18n as i18n
from tcpulse.cli.common import error_text
from tcpulse.errors import ConfigError
from tcpulse.protocol.events import Msg
from tcpulse.server.events import ServerEvent, Warning_
from tcpulse.store.base import ConnectionRecord
from tcpulse.store.factory import open_store
from tcpulse.store.retention import MIN_MAX_SIZE, Pruner, parse_duration, parse_size
from tcpulse.store.sqlite import SCHEMA_VERSION, SQLiteStore
from tests.conftest import RawClient, tcpulse_cmd

DAY = 86400.0


async def wait_for(pred: Any, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


def rows(db: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with contextlib.closing(sqlite3.connect(db)) as con:
        return con.execute(sql, args).fetchall()


def execute(db: Path, sql: str, *args: Any) -> None:
    with contextlib.closing(sqlite3.connect(db)) as con:
        con.execute(sql, args)
        con.commit()


# ------------------------------------------------------------------------------ settings


def test_durations_and_sizes() -> None:
    assert parse_duration("7d") == 7 * DAY and parse_duration("30s") == 30 and parse_duration("1w") == 7 * DAY
    assert parse_duration("90") == 90 and parse_duration(1.5) == 1.5 and parse_duration("2.5h") == 9000
    for off in (None, "none", "OFF", "0", 0):
        assert parse_duration(off) is None
        assert parse_size(off) is None  # type: ignore[arg-type]
    assert parse_size("4G") == 4 << 30 and parse_size("500M") == 500 << 20 and parse_size("64KiB") == 64 << 10
    assert parse_size("1t") == 1 << 40 and parse_size("100000") == 100000 and parse_size("2GB") == 2 << 30
    for bad in ("7x", "-1d", "d", "1e9", "nan"):
        with pytest.raises(ConfigError) as ei:
            parse_duration(bad)
        assert ei.value.kind == "bad-duration" and ei.value.field == "retain"
    for bad in ("4X", "-1", "G", "lots"):
        with pytest.raises(ConfigError) as ei:
            parse_size(bad)
        assert ei.value.kind == "bad-size"
    with pytest.raises(ConfigError) as ei:
        parse_size("1K")
    assert ei.value.kind == "size-too-small" and ei.value.params["least"] == MIN_MAX_SIZE


def test_setting_errors_name_the_flag_in_both_languages() -> None:
    with pytest.raises(ConfigError) as ei:
        open_store("x.db", retain="soon")
    assert str(ei.value) == "retain 'soon' is not a duration: give 30s, 10m, 2h, 7d or 1w, or none to keep everything"
    assert error_text(ei.value).startswith("--retain 'soon' is not a duration")
    with pytest.raises(ConfigError) as ei:
        open_store("none", max_db_size="10")
    assert error_text(ei.value) == "--max-db-size must be at least 65536 bytes, or none for no limit (got 10)"
    assert i18n.set_language("zh") == "zh"
    try:
        assert error_text(ei.value) == "--max-db-size 必须至少为 65536 字节, 或用 none 表示不限 (实际为 10)"
    finally:
        i18n.set_language("en")
    store = open_store("y.db", retain="7d", max_db_size="4G")
    assert isinstance(store, SQLiteStore) and (store.retain, store.max_size) == (7 * DAY, 4 << 30)
    assert SQLiteStore("z.db").retain is None  # the library keeps everything unless told


# ------------------------------------------------------------------------------ pruning


async def _write_history(store: SQLiteStore, now: float) -> None:
    """Old rows (ten days ago) and recent ones (a minute ago) of every table."""
    old, recent = now - 10 * DAY, now - 60
    store.record_connection(ConnectionRecord(1, "old", "127.0.0.1:1", old, ended_at=old + 5, end_reason="timeout"))
    store.record_timeout(1, "old", old + 5, silent_for=10, late_by=0.001)
    store.record_connection(ConnectionRecord(2, "long", "127.0.0.1:2", old))  # still open: kept
    store.record_connection(ConnectionRecord(3, "new", "127.0.0.1:3", recent, ended_at=recent + 1, end_reason="bye"))
    store.record_timeout(3, "new", recent + 1, silent_for=10, late_by=0.001)
    store.add_messages("old", "s-old", 1, old, [Msg(payload=b"o%d" % i, seq=i) for i in range(1, 101)])
    store.add_messages("new", "s-new", 3, recent, [Msg(payload=b"n%d" % i, seq=i) for i in range(1, 21)])
    store.add_messages("new", None, 3, recent, [Msg(payload=b"plain")])
    await store.flush()


async def test_retention_deletes_what_is_older_in_chunks_in_the_writer_thread(tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    # A run of a server long gone, with nothing left of it once its rows are pruned.
    pre = SQLiteStore(str(db))
    await pre.open()
    await pre.close()
    execute(db, "UPDATE runs SET started_at = ?, ended_at = ?", time.time() - 30 * DAY, time.time() - 29 * DAY)
    store = SQLiteStore(str(db), retain="7d", prune_every=0.02)
    assert store._pruner is not None
    store._pruner.chunk = 7  # many steps per table
    threads: set[str] = set()
    step = Pruner.step

    def spy(self: Pruner, *args: Any) -> Any:
        threads.add(threading.current_thread().name)
        return step(self, *args)
    Pruner.step = spy  # type: ignore[method-assign]
    try:
        await store.open()
        await _write_history(store, time.time())
        # The session of the old messages was last used ten days ago too.
        execute(db, "UPDATE sessions SET last_at = ? WHERE session = 's-old'", time.time() - 10 * DAY)
        await store.flush()
        start = store._pruner.cycles
        await wait_for(lambda: store._pruner is not None and store._pruner.cycles >= start + 2)
        assert ("old", "s-old") not in store._high  # forgotten in memory too
        assert await store.acked("old", "s-old") == 0
        assert await store.acked("new", "s-new") == 20
    finally:
        Pruner.step = step  # type: ignore[method-assign]
        await store.close()
    assert threads == {"tcpulse-store"}  # never on the event loop
    assert rows(db, "SELECT count(*), min(payload) FROM messages") == [(21, b"n1")]
    assert rows(db, "SELECT client_id FROM connections ORDER BY id") == [("long",), ("new",)]
    assert rows(db, "SELECT client_id FROM timeouts") == [("new",)]
    assert rows(db, "SELECT client_id, session, high FROM sessions ORDER BY id") == [("new", "s-new", 20),
                                                                                    ("new", "", 0)]
    assert len(rows(db, "SELECT id FROM runs")) == 1  # the gone run is deleted, this one kept
    assert store._pruner.deleted["messages"] == 100 and store._pruner.deleted["runs"] == 1


async def test_a_session_forgotten_by_retention_starts_again_and_nothing_is_stored_twice(tmp_path: Path) -> None:
    db = tmp_path / "f.db"
    store = SQLiteStore(str(db), retain="1h", prune_every=0.02)
    await store.open()
    try:
        store.add_messages("dev", "s", 1, time.time() - 2 * 3600, [Msg(payload=b"a", seq=1), Msg(payload=b"b", seq=2)])
        await store.flush()
        execute(db, "UPDATE sessions SET last_at = ?", time.time() - 2 * 3600)
        assert store._pruner is not None
        start = store._pruner.cycles
        await wait_for(lambda: store._pruner is not None and store._pruner.cycles >= start + 2)
        # Its messages and its high are gone: acked 0, and the client numbers what it still holds
        # from 1 (PROTOCOL.md, "Delivery").  Each message is stored once.
        assert await store.acked("dev", "s") == 0
        store.add_messages("dev", "s", 2, time.time(), [Msg(payload=b"c", seq=1)])
        await store.flush()
        assert await store.acked("dev", "s") == 1
    finally:
        await store.close()
    assert rows(db, "SELECT m.seq, m.payload FROM messages m") == [(1, b"c")]


async def test_schema_1_databases_are_migrated(tmp_path: Path) -> None:
    db = tmp_path / "v1.db"
    store = SQLiteStore(str(db))
    await store.open()
    store.add_messages("dev", "s", 1, time.time(), [Msg(payload=b"a", seq=1)])
    await store.close()
    # Back to schema 1 as an older tcpulse wrote it: no sessions.last_at.
    execute(db, "ALTER TABLE sessions DROP COLUMN last_at")
    execute(db, "PRAGMA user_version = 1")
    store = SQLiteStore(str(db), retain="7d")
    await store.open()
    try:
        assert await store.acked("dev", "s") == 1
    finally:
        await store.close()
    assert rows(db, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    ((last_at,),) = rows(db, "SELECT last_at FROM sessions")
    assert abs(last_at - time.time()) < 3600  # counted from the migration, not forgotten at once


# ------------------------------------------------------------------------------ the size limit


def recorder(srv: Any) -> list[ServerEvent]:
    evs: list[ServerEvent] = []
    srv.subscribe(evs.append, messages=False)
    return evs


BIG = 4000
LIMIT = 256 << 10


def numbered(first: int, last: int) -> bytes:
    return b"".join(b"MSG %d %d\n%s\n" % (BIG, i, (b"%08d" % i).ljust(BIG, b".")) for i in range(first, last + 1))


async def _fill(port: int, session: str) -> tuple[int, list[bytes]]:
    """Send numbered messages until the server says ERR 503; the highest seq ACKed, and the lines."""
    c = await RawClient.open(port)
    await c.hello("filler", session=session)
    lines: list[bytes] = []

    async def reader() -> None:
        while True:
            ln = await c.line(timeout=20)
            if not ln:
                return
            lines.append(ln)

    task = asyncio.ensure_future(reader())
    seq = 0
    with contextlib.suppress(ConnectionError):
        while not task.done() and seq < 1000:  # 4 MB: far past the limit
            await c.send(numbered(seq + 1, seq + 10))
            seq += 10
            await asyncio.sleep(0.005)
    await asyncio.wait_for(task, 20)
    c.close()
    acks = [int(ln[4:]) for ln in lines if ln.startswith(b"ACK ")]
    return (max(acks) if acks else 0), lines


def stored_seqs(db: Path, session: str) -> list[int]:
    return [r[0] for r in rows(db, "SELECT m.seq FROM messages m JOIN sessions s ON s.id = m.session_id "
                                   "WHERE s.session = ? ORDER BY m.id", session)]


async def test_at_the_size_limit_numbered_messages_get_503_and_nothing_unstored_is_acked(
        start_server: Any, tmp_path: Path) -> None:
    db = tmp_path / "cap.db"
    srv = await start_server(store=SQLiteStore(str(db), max_size=LIMIT, retry_every=0.05))
    evs = recorder(srv)
    acked, lines = await _fill(srv.port, "s")
    assert lines[-1].startswith(b"ERR 503"), lines[-3:]
    assert acked > 0
    warn = [e for e in evs if isinstance(e, Warning_) and e.fields.get("store") == "failing"]
    assert warn and f"size limit of {LIMIT} bytes" in warn[0].text
    # While at the limit, a numbered sender cannot sign in; nothing else breaks.
    c = await RawClient.open(srv.port)
    await c.info()
    await c.send(b'HELLO {"id":"filler","session":"s"}\n')
    assert (await c.line()).startswith(b"ERR 503")
    c.close()
    other = await RawClient.open(srv.port)
    await other.hello("watcher")
    await other.send(b"PING p\n")
    assert await other.expect(b"PONG") == b"PONG p"
    other.close()
    await srv.close(grace=1)
    seqs = stored_seqs(db, "s")
    # Every ACKed message is stored, once and in order; the file kept to its limit.
    assert seqs == list(range(1, len(seqs) + 1)) and acked <= len(seqs)
    assert db.stat().st_size <= LIMIT


async def test_retention_frees_space_at_the_limit_and_the_store_recovers(start_server: Any, tmp_path: Path) -> None:
    db = tmp_path / "cycle.db"
    store = SQLiteStore(str(db), max_size=LIMIT, retain="0.5s", prune_every=0.05, retry_every=0.05)
    srv = await start_server(store=store)
    evs = recorder(srv)
    acked, lines = await _fill(srv.port, "a")
    assert lines[-1].startswith(b"ERR 503") and acked > 0
    # Once what was stored is older than --retain, pruning (done while failing) frees the pages
    # and the held transaction commits: the store recovers by itself.
    await wait_for(lambda: [e.fields.get("store") for e in evs if isinstance(e, Warning_)] == ["failing", "ok"])
    c = await RawClient.open(srv.port)
    got = (await c.hello("filler", session="b"))["acked"]
    assert got == 0
    await c.send(numbered(1, 3))
    ack = 0
    while ack < 3:
        ack = int((await c.expect(b"ACK"))[4:])
    c.close()
    await srv.close(grace=1)
    assert stored_seqs(db, "b") == [1, 2, 3]
    seqs = stored_seqs(db, "a")
    assert seqs == sorted(set(seqs))  # whatever retention left of "a": each once, in order


# ------------------------------------------------------------------------------ the command line


def test_serve_options(tmp_path: Path, server_process: Any) -> None:
    for args, text in ((["--retain", "7x"], "--retain '7x' is not a duration"),
                       (["--max-db-size", "12"], "--max-db-size must be at least 65536 bytes")):
        r = subprocess.run(tcpulse_cmd("serve", "--port", "0", *args), capture_output=True, text=True, timeout=60,
                           cwd=tmp_path)
        assert r.returncode == 2 and text in r.stderr, r.stderr
    r = subprocess.run(tcpulse_cmd("serve", "--lang", "zh", "--port", "0", "--retain", "soon"), capture_output=True,
                       text=True, timeout=60, cwd=tmp_path)
    assert r.returncode == 2 and "--retain 'soon' 不是时长" in r.stderr, r.stderr
    help_text = subprocess.run(tcpulse_cmd("serve", "--help"), capture_output=True, text=True, timeout=60).stdout
    assert "--retain DURATION" in help_text and "--max-db-size SIZE" in help_text
    db = tmp_path / "cli.db"
    srv = server_process("--db", str(db), "--retain", "1h", "--max-db-size", "1M")
    assert srv.terminate() == 0
    assert db.exists()
