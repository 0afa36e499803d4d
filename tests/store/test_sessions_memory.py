"""Per-session state in memory is bounded (issue 15, row 8): one unauthenticated client opening
thousands of sessions no longer grows the server for ever.

The SQLite store forgets sessions from memory, least recently used first, and reads them back
from `sessions` when they are used again: exactly-once holds across the eviction, with messages
in flight or not.  The memory store forgets them outright, as a restart of a server without a
store would (PROTOCOL.md, "Delivery", `durable:false`).  Real SQLite files; the last tests over
real sockets on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from typing import Any

from tcpulse.protocol.events import Msg
from tcpulse.store import memory, sqlite
from tcpulse.store.memory import MemoryStore
from tcpulse.store.sqlite import SQLiteStore
from tests.conftest import RawClient

SESSIONS = 60_000  # more than either store's default bound (50,000)


def stored(db: Path, client: str, session: str) -> list[int]:
    con = sqlite3.connect(db)
    try:
        return [r[0] for r in con.execute("SELECT m.seq FROM messages m JOIN sessions s ON s.id = m.session_id "
                                          "WHERE s.client_id = ? AND s.session = ? ORDER BY m.id", (client, session))]
    finally:
        con.close()


def count(db: Path, sql: str) -> int:
    con = sqlite3.connect(db)
    try:
        return int(con.execute(sql).fetchone()[0])
    finally:
        con.close()


async def test_sqlite_store_keeps_a_bounded_number_of_sessions_in_memory(tmp_path: Path) -> None:
    db = tmp_path / "many.db"
    store = SQLiteStore(str(db))
    await store.open()
    try:
        for first in range(0, SESSIONS, 5000):
            for i in range(first, first + 5000):
                store.add_messages("flood", f"s{i}", 1, 0.0, [Msg(payload=b"x", seq=1)])
            await store.flush()
        assert sqlite.MAX_SESSIONS < SESSIONS
        # The entries, counted: at most the bound, in both of the writer's tables.
        assert len(store._high) == len(store._sid) == sqlite.MAX_SESSIONS
        assert store.evicted == SESSIONS - sqlite.MAX_SESSIONS
        # The database keeps the truth: a forgotten session reads its high back ...
        assert ("flood", "s0") not in store._high
        assert await store.acked("flood", "s0") == 1
        # ... and a duplicate of it is still not stored twice; the next seq is stored once.
        store.add_messages("flood", "s0", 2, 0.0, [Msg(payload=b"x", seq=1), Msg(payload=b"y", seq=2)])
        await store.flush()
        assert stored(db, "flood", "s0") == [1, 2]
        assert await store.acked("flood", "s0") == 2
    finally:
        await store.close()
    assert count(db, "SELECT count(*) FROM sessions") == SESSIONS
    assert count(db, "SELECT count(*) FROM messages") == SESSIONS + 1


class CrawlingStore(SQLiteStore):
    """Every transaction takes 50 ms more: what the loop hands over meanwhile waits in the queue,
    in flight, while the previous commit forgets sessions."""

    reloads = 0  # times "dev" was read back from the database after being forgotten

    def _write(self, con: sqlite3.Connection, ops: list[Any]) -> None:
        time.sleep(0.05)
        super()._write(con, ops)

    def _session_row(self, con: sqlite3.Connection, key: tuple[str, str]) -> tuple[int, int]:
        row = super()._session_row(con, key)
        if key == ("dev", "s") and row[1] > 0:
            self.reloads += 1
        return row


async def test_eviction_keeps_exactly_once_with_messages_in_flight(tmp_path: Path) -> None:
    db = tmp_path / "flight.db"
    store = CrawlingStore(str(db), max_sessions=3)
    await store.open()
    highs: list[dict[Any, int]] = []
    store.set_commit_listener(highs.append)
    try:
        seq = 0
        for rnd in range(12):
            # "dev" sends on, resending the last two of its previous batch (as after a reconnect
            # that had not seen their ACK), while others push it out of memory.
            batch = [Msg(payload=b"d%d" % s, seq=s) for s in range(max(1, seq - 1), seq + 6)]
            seq += 5
            store.add_messages("dev", "s", 1, 0.0, batch)
            await asyncio.sleep(0)
            for k in range(4):
                store.add_messages("other", f"r{rnd}-{k}", 2, 0.0, [Msg(payload=b"o", seq=1)])
            await asyncio.sleep(0.02)  # the next round is handed over while a commit crawls
        await store.flush()
        assert store.evicted > 0 and len(store._high) <= 3 and len(store._sid) <= 3
        assert store.reloads > 0  # "dev" really was forgotten and read back while it was sending
    finally:
        await store.close()
    # Every seq once, in order, and the commit reports told the truth for "dev" each time.
    assert stored(db, "dev", "s") == list(range(1, seq + 1))
    reported = [h[("dev", "s")] for h in highs if ("dev", "s") in h]
    assert reported == sorted(reported) and reported[-1] == seq


async def test_memory_store_keeps_a_bounded_number_of_sessions() -> None:
    store = MemoryStore()
    for i in range(SESSIONS):
        store.add_messages("flood", f"s{i}", 1, 0.0, [Msg(payload=b"x", seq=3)])
    assert len(store._high) == memory.MAX_SESSIONS and store.evicted == SESSIONS - memory.MAX_SESSIONS
    # The least recently used are forgotten: acked is 0 for them, as after a restart of a server
    # without a store (PROTOCOL.md, "Delivery"); the recent ones are exact.
    assert await store.acked("flood", "s0") == 0
    assert await store.acked("flood", f"s{SESSIONS - 1}") == 3
    # A session that keeps sending stays: it is the most recently used.
    small = MemoryStore(max_sessions=2)
    for i in range(10):
        small.add_messages("busy", "b", 1, 0.0, [Msg(payload=b"x", seq=i + 1)])
        small.add_messages("drive-by", f"d{i}", 2, 0.0, [Msg(payload=b"x", seq=1)])
    assert await small.acked("busy", "b") == 10 and len(small._high) == 2


async def _one_message(port: int, session: str, seq: int = 1) -> int:
    rc = await RawClient.open(port)
    try:
        ok = await rc.hello("flood", session=session)
        await rc.send(b"MSG 1 %d\nx\n" % seq)
        assert await rc.expect(b"ACK") == b"ACK %d" % seq
        return int(ok["acked"])
    finally:
        rc.close()


async def test_one_client_with_many_sessions_over_sockets(start_server: Any, tmp_path: Path) -> None:
    db = tmp_path / "sock.db"
    srv = await start_server(store=SQLiteStore(str(db), max_sessions=20))
    for i in range(120):
        assert await _one_message(srv.port, f"s{i}") == 0
    await srv.store.flush()
    assert len(srv.store._high) <= 20 and len(srv.store._sid) <= 20
    # A forgotten session comes back: acked from the database, its resend is a duplicate.
    rc = await RawClient.open(srv.port)
    assert (await rc.hello("flood", session="s0"))["acked"] == 1
    await rc.send(b"MSG 1 1\nx\nMSG 1 2\ny\n")
    assert await rc.expect(b"ACK") in (b"ACK 1", b"ACK 2")
    rc.close()
    await srv.close(grace=1)
    assert stored(db, "flood", "s0") == [1, 2]
    assert count(db, "SELECT count(*) FROM messages") == 121


async def test_memory_store_forgets_like_a_restart_over_sockets(start_server: Any) -> None:
    srv = await start_server(store=MemoryStore(max_sessions=20))
    for i in range(60):
        await _one_message(srv.port, f"s{i}")
    assert len(srv.store._high) == 20
    assert await _one_message(srv.port, "s59", 2) == 1  # remembered
    assert await _one_message(srv.port, "s0", 1) == 0  # forgotten: numbered from 1 again
