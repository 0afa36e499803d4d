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


async def test_bytes_kept_back_by_the_read_budget_keep_their_order(start_server: Any,
                                                                   monkeypatch: Any) -> None:
    # With no read budget at all, every read after the first of a loop iteration is kept back
    # for a later one: nothing may be lost, reordered or judged early because of it, and an EOF
    # that came behind kept bytes waits for them.
    import socket as _socket

    import tcpulse.server.hub as hub_mod
    monkeypatch.setattr(hub_mod, "READ_BUDGET", 0.0)
    srv = await start_server()
    events: list[ServerEvent] = []
    srv.subscribe(events.append, messages=False)
    a = await RawClient.open(srv.port)
    await a.hello("flood-a", session="s")
    b = await RawClient.open(srv.port)
    await b.hello("flood-b")
    total = 3000
    data = numbered(1, total, size=40)
    plain = b"".join(b"MSG 3\nabc\n" for _ in range(total))
    for i in range(0, len(data), 7000):  # many small writes: many reads on the server
        a.writer.write(data[i:i + 7000])
        b.writer.write(plain[i:i + 7000])
        await asyncio.sleep(0)
    a.writer.write(b"BYE done\n")
    b.writer.write(plain[len(data):] if len(plain) > len(data) else b"")
    b.writer.write(b"PING end\n")
    await a.writer.drain()
    await b.writer.drain()
    b.writer.get_extra_info("socket").shutdown(_socket.SHUT_WR)
    a_lines = [ln for ln in await a.lines_until_eof(10) if not ln.startswith(b"PING")]
    assert a_lines[-1] == b"ACK %d" % total, a_lines[-3:]
    b_lines = [ln for ln in await b.lines_until_eof(10) if not ln.startswith(b"PING")]
    assert b_lines == [b"PONG end"], b_lines
    ends = {e.client.name: e for e in events if isinstance(e, Disconnected)}
    assert ends["flood-a"].reason.value == "bye" and ends["flood-a"].client.messages == total
    assert ends["flood-b"].reason.value == "eof" and ends["flood-b"].client.messages == total
    assert not [e for e in events if isinstance(e, TimedOut)]
    a.close()
    b.close()


async def test_messages_nobody_wants_still_count_and_prove_life(start_server: Any) -> None:
    # --db none with no subscriber for messages: unnumbered messages are not even built, yet each
    # is counted and proves the client alive (a client that only talks is never timed out).
    srv = await start_server(heartbeat_interval=100 * MS, heartbeat_timeout=300 * MS)
    events: list[ServerEvent] = []
    srv.subscribe(events.append, messages=False)
    c = await RawClient.open(srv.port)
    await c.hello("talker", heartbeat_interval=0.1)
    for _ in range(10):  # 1 s of messages only, more than three timeouts' worth
        await c.send(b"MSG 2\nhi\n" * 50)
        await asyncio.sleep(100 * MS)
    await c.send(b"PING end\n")
    assert await c.expect(b"PONG end") == b"PONG end"
    view = srv.client("talker")
    assert view is not None and view.messages == 500
    assert not [e for e in events if isinstance(e, TimedOut)]
    c.close()
