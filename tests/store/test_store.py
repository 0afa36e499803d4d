"""The durable store over real SQLite files and real loopback sockets (in-process server).

Failure tests make the database unwritable the two ways a server meets in the field: another
process holds the write lock, or the disk is full (a small `max_page_count`; tests run as root,
so file permissions prove nothing).
"""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tcpulse.server.events import ServerEvent, TimedOut, Warning_
from tcpulse.store.base import StoreOpenError
from tcpulse.store.sqlite import APPLICATION_ID, SCHEMA_VERSION, SQLiteStore
from tests.conftest import MS, RawClient


def recorder(srv: Any) -> list[ServerEvent]:
    evs: list[ServerEvent] = []
    srv.subscribe(evs.append, messages=False)
    return evs


async def wait_for(pred: Any, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.005)


def rows(db: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    con = sqlite3.connect(db)
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()


def stored(db: Path, client: str, session: str) -> list[int]:
    return [r[0] for r in rows(db, "SELECT m.seq FROM messages m JOIN sessions s ON s.id = m.session_id "
                                   "WHERE s.client_id = ? AND s.session = ? ORDER BY m.id", client, session)]


def msgs(first: int, last: int, size: int = 4) -> bytes:
    """Numbered messages `first..last`; a big `size` makes every one need pages of its own."""
    return b"".join(b"MSG %d %d\n%s\n" % (size, i, (b"m%03d" % (i % 1000)).ljust(size, b"."))
                    for i in range(first, last + 1))


async def test_ack_after_commit_and_acked_survives_restart(start_server: Any, tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    srv = await start_server(store=SQLiteStore(str(db)))
    c = await RawClient.open(srv.port)
    info_ok = await c.hello("dev", session="s1")
    assert info_ok["acked"] == 0
    await c.send(msgs(1, 50))
    ack = 0
    while ack < 50:
        ack = int((await c.expect(b"ACK"))[4:])
        # Whatever is acknowledged is in the file already (another connection sees it).
        assert stored(db, "dev", "s1")[-1] >= ack
    # A duplicate is stored once and acknowledged again with the highest stored seq.
    await c.send(b"MSG 4 7\nm007\n")
    assert await c.expect(b"ACK") == b"ACK 50"
    c.close()
    await srv.close(grace=1)
    assert stored(db, "dev", "s1") == list(range(1, 51))
    assert rows(db, "PRAGMA journal_mode") == [("wal",)]
    assert rows(db, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    assert rows(db, "PRAGMA application_id") == [(APPLICATION_ID,)]
    # A new server on the same file knows where the session stands.
    srv2 = await start_server(store=SQLiteStore(str(db)))
    c2 = await RawClient.open(srv2.port)
    assert (await c2.hello("dev", session="s1"))["acked"] == 50
    await c2.send(msgs(49, 52))  # two duplicates, then two new ones
    assert await c2.expect(b"ACK") in (b"ACK 50", b"ACK 52")
    c2.close()
    await srv2.close(grace=1)
    assert stored(db, "dev", "s1") == list(range(1, 53))


async def test_history_records_connections_and_timeouts(start_server: Any, tmp_path: Path) -> None:
    db = tmp_path / "h.db"
    srv = await start_server(store=SQLiteStore(str(db)), heartbeat_interval=100 * MS,
                             heartbeat_timeout=200 * MS)
    evs = recorder(srv)
    c = await RawClient.open(srv.port)
    await c.hello("quiet")
    await wait_for(lambda: any(isinstance(e, TimedOut) for e in evs))
    c2 = await RawClient.open(srv.port)
    await c2.hello("polite", session="x")
    await c2.send(b"HEARTBEAT\nMSG 2 1\nhi\nMSG 3\nraw\nBYE done\n")
    await c2.lines_until_eof()
    await srv.close(grace=1)
    conns = rows(db, "SELECT client_id, end_reason, detail, heartbeats, messages FROM connections ORDER BY id")
    assert conns == [("quiet", "timeout", "heartbeat-timeout", 0, 0), ("polite", "bye", "done", 1, 2)]
    (silent, late), = rows(db, "SELECT silent_for, late_by FROM timeouts t JOIN connections c "
                               "ON c.id = t.connection_id WHERE c.client_id = 'quiet'")
    assert silent >= 200 * MS and 0 <= late < 1
    assert rows(db, "SELECT s.session, m.seq, m.payload FROM messages m JOIN sessions s ON s.id = m.session_id "
                    "ORDER BY m.id") == [("x", 1, b"hi"), ("x", None, b"raw")]


async def test_takeover_commits_old_messages_before_new_ok(start_server: Any, tmp_path: Path) -> None:
    db = tmp_path / "k.db"
    # A slow writer: when the new HELLO comes, the old connection's messages are not committed
    # yet, so only waiting for them (PROTOCOL.md, "Identity and takeover") gives acked 300.
    srv = await start_server(store=SlowStore(str(db)))
    old = await RawClient.open(srv.port)
    await old.hello("twin", session="s")
    await old.send(msgs(1, 300))
    await wait_for(lambda: srv.client("twin") is not None and srv.client("twin").acked == 300)
    assert srv.store._high.get(("twin", "s"), 0) < 300  # really not committed yet
    new = await RawClient.open(srv.port)
    ok = await new.hello("twin", session="s")
    # Everything the server had received from the old connection is covered by the new OK.
    assert ok["acked"] == 300
    assert stored(db, "twin", "s") == list(range(1, 301))
    assert await old.expect(b"BYE") == b"BYE replaced"
    old.close()
    new.close()


async def test_resend_of_messages_still_in_flight_is_stored_once(start_server: Any, tmp_path: Path) -> None:
    # A client whose connection dropped signs in again before the server has committed what it
    # sent on the old one: acked is lower than what will be stored, the client sends those
    # messages again on the new connection, and the writer must not store them twice.
    db = tmp_path / "d.db"
    srv = await start_server(store=SlowStore(str(db)))
    first = await RawClient.open(srv.port)
    await first.hello("again", session="s")
    await first.send(msgs(1, 50))
    await wait_for(lambda: srv.client("again") is not None and srv.client("again").acked == 50)
    first.close()
    await wait_for(lambda: srv.client("again") is None)
    second = await RawClient.open(srv.port)
    acked = (await second.hello("again", session="s"))["acked"]
    assert acked < 50  # the first connection's messages were still in flight
    await second.send(msgs(acked + 1, 55))
    ack = 0
    while ack < 55:
        ack = int((await second.expect(b"ACK", timeout=10))[4:])
    second.close()
    assert stored(db, "again", "s") == list(range(1, 56))


async def test_foreign_and_newer_databases_are_refused(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign.db"
    con = sqlite3.connect(foreign)
    con.execute("CREATE TABLE stuff(x)")
    con.commit()
    con.close()
    with pytest.raises(StoreOpenError, match="not a tcpulse database"):
        await SQLiteStore(str(foreign)).open()
    newer = tmp_path / "newer.db"
    con = sqlite3.connect(newer)
    con.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    con.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    con.close()
    with pytest.raises(StoreOpenError, match="newer than this tcpulse"):
        await SQLiteStore(str(newer)).open()
    text = tmp_path / "text.db"
    text.write_text("hello, I am not a database" * 100)
    with pytest.raises(StoreOpenError, match="cannot use"):
        await SQLiteStore(str(text)).open()
    with pytest.raises(StoreOpenError, match="does not exist"):
        await SQLiteStore(str(tmp_path / "no" / "such" / "dir.db")).open()


LOCKER = """
import sqlite3, sys
con = sqlite3.connect(sys.argv[1], isolation_level=None)
con.execute("BEGIN IMMEDIATE")  # hold the write lock until told to stop
print("locked", flush=True)
sys.stdin.readline()
con.execute("ROLLBACK")
"""


BIG = 5000


async def _expect_503_then_recovery(srv: Any, db: Path, evs: list[ServerEvent], make_writable: Any,
                                    why: str) -> None:
    c = await RawClient.open(srv.port)
    await c.hello("sensor", session="s")
    await c.send(msgs(1, 5, BIG))
    # Nothing acknowledged, and the numbered sender is closed with ERR 503 (it keeps its messages).
    lines = await c.lines_until_eof(timeout=10)
    assert lines and lines[-1].startswith(b"ERR 503"), lines
    assert not any(ln.startswith(b"ACK") for ln in lines), lines
    warn = [e for e in evs if isinstance(e, Warning_)]
    assert warn and warn[0].fields["store"] == "failing" and "cannot write" in warn[0].text
    assert why in warn[0].text  # the log says why (SQLite's own reason)
    # While failing, a numbered sender cannot even sign in: it is told to come back later.
    c2 = await RawClient.open(srv.port)
    await c2.info()
    await c2.send(b'HELLO {"id":"sensor","session":"s"}\n')
    assert (await c2.line()).startswith(b"ERR 503")
    c2.close()
    make_writable()
    await wait_for(lambda: not srv.store.failing)
    assert [e.fields["store"] for e in evs if isinstance(e, Warning_)] == ["failing", "ok"]
    # Recovered by itself: the held batch is committed; the client resends what acked leaves out.
    c3 = await RawClient.open(srv.port)
    acked = (await c3.hello("sensor", session="s"))["acked"]
    assert acked in (0, 5)
    if acked < 5:
        await c3.send(msgs(acked + 1, 5, BIG))
    await c3.send(msgs(6, 8, BIG))
    ack = 0
    while ack < 8:
        ack = int((await c3.expect(b"ACK"))[4:])
    c3.close()
    assert stored(db, "sensor", "s") == list(range(1, 9))


async def test_locked_database_stops_acks_then_recovers(start_server: Any, tmp_path: Path) -> None:
    db = tmp_path / "locked.db"
    srv = await start_server(store=SQLiteStore(str(db), busy_timeout=0.2, retry_every=0.05))
    evs = recorder(srv)
    locker = subprocess.Popen([sys.executable, "-c", LOCKER, str(db)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert locker.stdout is not None and locker.stdout.readline().strip() == "locked"

        def release() -> None:
            assert locker.stdin is not None
            locker.stdin.write("\n")
            locker.stdin.flush()
            locker.wait(10)
        await _expect_503_then_recovery(srv, db, evs, release, "locked")
    finally:
        if locker.poll() is None:
            locker.kill()
            locker.wait(10)


async def test_numbered_message_while_failing_gets_503_not_ack(start_server: Any, tmp_path: Path) -> None:
    # A numbered sender with nothing unacknowledged stays connected when the store fails (its
    # heartbeats are unaffected); its next numbered MSG is answered ERR 503, never ACK.
    db = tmp_path / "idle.db"
    srv = await start_server(store=SQLiteStore(str(db), busy_timeout=0.2, retry_every=0.05))
    idle = await RawClient.open(srv.port)
    await idle.hello("idle", session="s")
    await idle.send(b"MSG 1 1\na\n")
    assert await idle.expect(b"ACK") == b"ACK 1"
    locker = subprocess.Popen([sys.executable, "-c", LOCKER, str(db)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert locker.stdout is not None and locker.stdout.readline().strip() == "locked"
        other = await RawClient.open(srv.port)  # its connection record is a write that fails
        await wait_for(lambda: srv.store.failing)
        await idle.send(b"HEARTBEAT\n")
        await asyncio.sleep(20 * MS)
        assert srv.client("idle") is not None
        await idle.send(b"MSG 1 2\nb\n")
        lines = await idle.lines_until_eof(timeout=10)
        assert lines and lines[-1].startswith(b"ERR 503"), lines
        assert not any(ln.startswith(b"ACK") for ln in lines), lines
        other.close()
    finally:
        if locker.poll() is None:
            locker.kill()
            locker.wait(10)
    await wait_for(lambda: not srv.store.failing)
    assert stored(db, "idle", "s") == [1]


async def test_full_disk_stops_acks_then_recovers(start_server: Any, tmp_path: Path) -> None:
    db = tmp_path / "full.db"
    # Fill the file up to its cap with ballast that an operator will later delete.
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE ballast(b BLOB)")
    con.commit()
    con.close()
    con = sqlite3.connect(db)
    con.execute(f"PRAGMA application_id = {APPLICATION_ID}")  # adopt the file as ours
    con.close()
    srv = await start_server(store=SQLiteStore(str(db), retry_every=0.05, max_page_count=64))
    evs = recorder(srv)
    con = sqlite3.connect(db)
    con.execute("PRAGMA max_page_count = 64")
    with pytest.raises(sqlite3.OperationalError, match="full"):
        for _ in range(200):
            con.execute("INSERT INTO ballast VALUES (zeroblob(3000))")
            con.commit()
    con.rollback()
    con.close()

    def free_space() -> None:
        c = sqlite3.connect(db)
        c.execute("DELETE FROM ballast")
        c.commit()
        c.close()
    await _expect_503_then_recovery(srv, db, evs, free_space, "full")


class SlowStore(SQLiteStore):
    """A store whose every transaction takes 300 ms more: a disk far slower than a heartbeat."""

    def _write(self, con: sqlite3.Connection, ops: list[Any]) -> None:
        time.sleep(0.3)
        super()._write(con, ops)


async def test_deadlines_stay_exact_while_the_store_is_slow(start_server: Any, tmp_path: Path) -> None:
    srv = await start_server(store=SlowStore(str(tmp_path / "slow.db")), heartbeat_interval=50 * MS,
                             heartbeat_timeout=100 * MS)
    evs = recorder(srv)
    busy = await RawClient.open(srv.port)
    await busy.hello("busy", session="s")
    quiet = await RawClient.open(srv.port)
    await quiet.hello("quiet")
    # The busy client streams (every message is proof of life) while the writer crawls.
    for i in range(1, 21):
        await busy.send(b"MSG 1 %d\nx\n" % i)
        await asyncio.sleep(20 * MS)

    async def keep_beating() -> None:
        while True:
            await busy.send(b"HEARTBEAT\n")
            await asyncio.sleep(20 * MS)
    beating = asyncio.ensure_future(keep_beating())
    try:
        await wait_for(lambda: any(isinstance(e, TimedOut) for e in evs))
        timed_out = [e for e in evs if isinstance(e, TimedOut)]
        assert [e.client.name for e in timed_out] == ["quiet"]
        # Announced at its deadline, not after a 300 ms commit (PROTOCOL.md, "Liveness": within 50 ms).
        assert timed_out[0].late_by < 50 * MS
        # The acknowledgements, meanwhile, waited for the slow commits; all of them came.
        ack = 0
        while ack < 20:
            ack = int((await busy.expect(b"ACK", timeout=10))[4:])
    finally:
        beating.cancel()
    assert srv.store.commits < 20  # group commit: fewer transactions than messages
    assert [e.client.name for e in evs if isinstance(e, TimedOut)] == ["quiet"]
    busy.close()
    quiet.close()


async def test_one_server_per_database(start_server: Any, tmp_path: Path) -> None:
    db = tmp_path / "one.db"
    await start_server(store=SQLiteStore(str(db)))
    # A second writer would not know the first one's sessions: it is refused with a clear line.
    with pytest.raises(StoreOpenError, match="in use by another tcpulse server"):
        await SQLiteStore(str(db)).open()
