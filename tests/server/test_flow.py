"""Flow control from the store: when the store cannot keep up, the server stops reading from the
senders (TCP pushes back on them) instead of holding their messages in memory; and a client whose
bytes wait unread because the server paused it is never declared silent."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

from tcpulse.server.events import Disconnected, ServerEvent, TimedOut
from tcpulse.store.sqlite import SQLiteStore
from tests.conftest import MS, RawClient


class CrawlingStore(SQLiteStore):
    """Every transaction takes `delay` seconds more: a disk far slower than the senders."""

    delay = 1.0

    def _write(self, con: sqlite3.Connection, ops: list[Any]) -> None:
        time.sleep(self.delay)
        super()._write(con, ops)


def numbered(first: int, last: int, size: int = 64) -> bytes:
    body = b"p" * size
    return b"".join(b"MSG %d %d\n%s\n" % (size, i, body) for i in range(first, last + 1))


async def test_a_slow_store_pauses_senders_and_bounds_the_backlog(start_server: Any, tmp_path: Path) -> None:
    high = 64 * 1024
    store = CrawlingStore(str(tmp_path / "slow.db"))
    # Heartbeat timeout shorter than one transaction: a sender paused for the store waits longer
    # than its timeout without the server reading a byte of it.
    srv = await start_server(store=store, max_store_backlog=high, heartbeat_interval=200 * MS,
                             heartbeat_timeout=500 * MS)
    events: list[ServerEvent] = []
    srv.subscribe(events.append, messages=False)
    flooder = await RawClient.open(srv.port)
    await flooder.hello("flooder", session="s", heartbeat_interval=0.2)
    watcher = await RawClient.open(srv.port)
    await watcher.hello("watcher", heartbeat_interval=0.2)
    total = 20_000
    peak = 0

    async def flood() -> None:
        for first in range(1, total + 1, 500):
            await flooder.send(numbered(first, min(total, first + 499)))

    async def watch() -> None:
        while True:
            await watcher.send(b"HEARTBEAT\n")
            await asyncio.sleep(100 * MS)

    async def flood_then_beat() -> None:
        # A real client beats when it has nothing more to send, while it waits for its ACKs.
        await flood()
        while True:
            await flooder.send(b"HEARTBEAT\n")
            await asyncio.sleep(100 * MS)

    sending = asyncio.ensure_future(flood_then_beat())
    beating = asyncio.ensure_future(watch())
    acked = 0
    deadline = time.monotonic() + 60
    try:
        while acked < total and time.monotonic() < deadline:
            peak = max(peak, store.backlog)
            try:
                line = await flooder.line(timeout=0.05)
            except TimeoutError:
                continue
            if line.startswith(b"ACK "):
                acked = int(line[4:])
            else:
                assert line.startswith(b"PING"), line
    finally:
        beating.cancel()
        sending.cancel()
    assert acked == total
    # The server stopped reading while the store was behind: its backlog stayed near the mark
    # (past it by at most a read or two), not 20,000 messages deep.
    assert srv.guard is not None
    assert 0 < peak <= high + 512 * 1024, peak
    assert not [e for e in events if isinstance(e, TimedOut)], "a sender the server paused was judged silent"
    assert not [e for e in events if isinstance(e, Disconnected)]
    flooder.close()
    watcher.close()
    con = sqlite3.connect(tmp_path / "slow.db")
    assert con.execute("SELECT count(*), min(seq), max(seq), count(DISTINCT seq) FROM messages").fetchone() == (
        total, 1, total, total)
    con.close()


async def test_a_stalled_loop_judges_by_what_clients_did(start_server: Any) -> None:
    # The server's loop is blocked past the deadlines (a stand-in for any stall of the server's
    # own making) while one client keeps beating: its beats wait in the kernel, and it must not
    # be announced dead when the loop runs again; the client that really went silent is.  (The
    # loop reads before it runs its timers; a client paused for the store is covered above: its
    # bytes are looked for in the kernel, FIONREAD, before it is judged.)
    srv = await start_server(heartbeat_interval=100 * MS, heartbeat_timeout=300 * MS)
    events: list[ServerEvent] = []
    srv.subscribe(events.append, messages=False)
    talker = await RawClient.open(srv.port)
    await talker.hello("talker", heartbeat_interval=0.1)
    silent = await RawClient.open(srv.port)
    await silent.hello("silent", heartbeat_interval=0.1)
    await talker.send(b"HEARTBEAT\n")
    await asyncio.sleep(50 * MS)
    # Block the loop for 1 s; a thread beats for the talker meanwhile.
    import socket

    sock = socket.socket(fileno=os.dup(talker.writer.get_extra_info("socket").fileno()))
    import threading

    def beat() -> None:
        for _ in range(8):
            sock.send(b"HEARTBEAT\n")
            time.sleep(0.1)
    t = threading.Thread(target=beat)
    t.start()
    time.sleep(1.0)
    t.join()
    sock.close()
    await asyncio.sleep(100 * MS)
    timed_out = {e.client.name for e in events if isinstance(e, TimedOut)}
    assert timed_out == {"silent"}, timed_out
    talker.close()
    silent.close()
