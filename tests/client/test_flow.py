"""Tier 3: the client's flow control and limits (issue 10 point 4, issue 14 point 4), counted,
never timed: the work per ACK, the bounded outbox and inbox, the write-buffer watermark, SQLite
off the event loop, failed handshakes that close their sockets, cancellation that propagates."""

from __future__ import annotations

import asyncio
import collections
import gc
import os
import signal
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import tcpulse
from tcpulse.client.events import ClientEvent, InboxOverflow
from tcpulse.client.outbox import MemoryOutbox, SQLiteOutbox
from tcpulse.policy.backoff import Backoff
from tcpulse.security.tokens import AuthFile


class CountingDeque(collections.deque):  # type: ignore[type-arg]
    """A deque that counts every element it hands out or takes in: the outbox's work."""

    touched = 0
    whole_walks = 0

    def append(self, x: Any) -> None:
        type(self).touched += 1
        super().append(x)

    def popleft(self) -> Any:
        type(self).touched += 1
        return super().popleft()

    def __iter__(self) -> Iterator[Any]:
        type(self).whole_walks += 1
        for x in super().__iter__():
            type(self).touched += 1
            yield x

    def __getitem__(self, i: Any) -> Any:
        type(self).touched += 1
        return super().__getitem__(i)


async def test_draining_100000_messages_costs_o1_per_ack(start_server: Any) -> None:
    srv = await start_server()
    box = MemoryOutbox()
    box._q = CountingDeque()
    acks = 0

    def count(ev: ClientEvent) -> None:
        nonlocal acks
        acks += ev.kind == "ack"

    n = 100_000
    async with tcpulse.connect("127.0.0.1", srv.port, id="drainer", outbox=box, on_event=count,
                               max_outbox=None, max_outbox_bytes=None) as c:
        CountingDeque.touched = CountingDeque.whole_walks = 0
        for i in range(n):
            await c.send(b"m%d" % i)
            if i % 100 == 0:
                await asyncio.sleep(0)  # let the server read and acknowledge as it goes
        assert await c.drain(120)
        assert c.acked == n and len(box) == 0
    # Each message is appended once, popped once, and looked at once more (the head check that
    # ends a release); an ACK adds one look.  Copying the outbox per ACK (as before) would be
    # n * acks / 2 touches: billions.
    assert acks >= 100, acks  # many ACKs, each doing a little
    assert CountingDeque.whole_walks == 0
    assert CountingDeque.touched <= 3 * n + 2 * acks, (CountingDeque.touched, acks)


async def test_outbox_limit_raise_policy_like_nats(server_process: Any) -> None:
    srv = server_process()
    c = tcpulse.connect("127.0.0.1", srv.port, id="capped", max_outbox=5, outbox_full="raise",
                        backoff=Backoff(base=0.05, cap=0.1))
    await c.start()
    try:
        srv.kill()  # offline: everything stays in the outbox
        while c.connected.is_set():
            await asyncio.sleep(0.01)
        assert [await c.send(f"m{i}") for i in range(5)] == [1, 2, 3, 4, 5]
        with pytest.raises(tcpulse.OutboxFull) as ei:
            await c.send("one too many")
        assert ei.value.kind == "outbox-full" and ei.value.params["messages"] == 5
        assert len(c.unacked()) == 5  # nothing was kept of the refused one
    finally:
        await c.close(drain_timeout=0)


async def test_outbox_limit_block_policy_waits_for_acks(server_process: Any) -> None:
    srv = server_process("-q", "--db", "srv.db")
    c = tcpulse.connect("127.0.0.1", srv.port, id="blocked", max_outbox_bytes=100)
    await c.start()
    try:
        os.kill(srv.proc.pid, signal.SIGSTOP)
        try:
            for _ in range(4):
                await c.send(b"x" * 30)  # 120 bytes held: over the limit after the fourth
            blocked = asyncio.ensure_future(c.send(b"fifth"))
            await asyncio.sleep(0.3)
            assert not blocked.done() and c.outbox.nbytes == 120
        finally:
            os.kill(srv.proc.pid, signal.SIGCONT)
        assert await asyncio.wait_for(blocked, 10) == 5  # the ACKs made room
        assert await c.drain(10)
    finally:
        await c.close()


async def test_inbox_is_bounded_and_says_what_it_dropped(start_server: Any) -> None:
    srv = await start_server()
    seen: list[ClientEvent] = []
    async with tcpulse.connect("127.0.0.1", srv.port, id="slow-reader", max_inbox=10, on_event=seen.append) as c:
        for i in range(50):
            assert srv.send("slow-reader", b"n%d" % i)
        while sum(ev.kind == "message" for ev in seen) < 50:
            await asyncio.sleep(0.01)
        assert c.inbox_dropped == 40
        overflows = [ev for ev in seen if isinstance(ev, InboxOverflow)]
        assert [ev.dropped for ev in overflows] == [1]  # said once, at the first drop
        assert [await c.recv() for _ in range(10)] == [b"n%d" % i for i in range(10)]  # the oldest kept
        # Emptied: the next overflow is said again, with the running count.
        for _ in range(11):
            srv.send("slow-reader", b"again")
        while c.inbox_dropped < 41:
            await asyncio.sleep(0.01)
        assert [ev.dropped for ev in seen if isinstance(ev, InboxOverflow)] == [1, 41]


async def test_send_waits_while_the_write_buffer_is_above_its_high_watermark(server_process: Any) -> None:
    srv = server_process()
    limit = 64 << 10
    payload = b"p" * 60_000
    c = tcpulse.connect("127.0.0.1", srv.port, id="flooder", write_limit=limit)
    await c.start()
    try:
        os.kill(srv.proc.pid, signal.SIGSTOP)  # the server reads nothing: the kernel buffers fill
        try:
            blocked = None
            for _ in range(2000):  # a few MiB at most, until send() waits
                t = asyncio.ensure_future(c.send(payload))
                await asyncio.sleep(0)
                if not t.done():
                    await asyncio.sleep(0.05)
                if not t.done():
                    blocked = t
                    break
                t.result()
            assert blocked is not None, "send() never waited"
            writer = c._writer
            assert writer is not None
            # What waits in user space is bounded by the watermark plus one message.
            assert writer.transport.get_write_buffer_size() <= limit + len(payload) + 64
        finally:
            os.kill(srv.proc.pid, signal.SIGCONT)
        await asyncio.wait_for(blocked, 10)
        assert await c.drain(20)
        assert c.acked == c.outbox.last_id  # the blocked one too
    finally:
        await c.close()


async def test_the_sqlite_outbox_writes_off_the_event_loop(start_server: Any, tmp_path: Path) -> None:
    srv = await start_server()
    box = await SQLiteOutbox.open(str(tmp_path / "t.outbox"))
    writes: list[int] = []
    assert box._db is not None
    box._db.set_trace_callback(
        lambda sql: writes.append(threading.get_ident()) if sql.startswith(("INSERT", "DELETE")) else None)
    loop_thread = threading.get_ident()
    async with tcpulse.connect("127.0.0.1", srv.port, id="disk", outbox=box) as c:
        for i in range(200):
            await c.send(b"d%d" % i)  # returns once on disk
        assert await c.drain(10)
    assert len(writes) >= 200
    assert loop_thread not in writes


async def test_failed_handshakes_leave_no_unclosed_socket(start_server: Any, tmp_path: Path) -> None:
    path = str(tmp_path / "auth.tokens")
    AuthFile(path).add("sensor-1")
    srv = await start_server(auth_file=path)
    gc.collect()  # what earlier tests left (their subprocess pipes) is not this test's
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        for _ in range(5):
            with pytest.raises(tcpulse.ServerError) as ei:
                await tcpulse.connect("127.0.0.1", srv.port, id="sensor-1", token="wrong", reconnect=False).start()
            assert ei.value.code == 401
        # ... and the reconnect loop: a server that sends ERR 503 before INFO on every attempt.
        attempts: list[int] = []

        async def full(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            attempts.append(1)
            writer.write(b"ERR 503 server full\n")
            await writer.drain()
            writer.close()
        busy = await asyncio.start_server(full, "127.0.0.1", 0)
        port = busy.sockets[0].getsockname()[1]
        waiting = tcpulse.connect("127.0.0.1", port, id="w", wait_for_server=True, backoff=Backoff(base=0.01, cap=0.02))
        starting = asyncio.ensure_future(waiting.start())
        while len(attempts) < 5:
            await asyncio.sleep(0.01)
        starting.cancel()
        await asyncio.wait({starting})
        busy.close()
        await busy.wait_closed()
        gc.collect()
        await asyncio.sleep(0)
        gc.collect()
    leaks = [w for w in caught if issubclass(w.category, ResourceWarning)
             and ("socket" in str(w.message) or "transport" in str(w.message))]
    assert not leaks, [str(w.message) for w in leaks]


async def test_cancellation_is_never_swallowed(server_process: Any) -> None:
    srv = server_process("-q", "--db", "srv.db")
    c = tcpulse.connect("127.0.0.1", srv.port, id="cancelled")
    await c.start()
    try:
        os.kill(srv.proc.pid, signal.SIGSTOP)
        try:
            await c.send("unacknowledged")
            for coro in (c.ping(), c.close(drain_timeout=30), c.wait_closed(), c.send("x", wait_ack=True)):
                task = asyncio.ensure_future(coro)
                await asyncio.sleep(0.05)
                assert not task.done()
                task.cancel()
                await asyncio.wait({task})
                assert task.cancelled(), task
            assert not c.closed  # cancelling a waiter (or close()'s drain) does not end the client
        finally:
            os.kill(srv.proc.pid, signal.SIGCONT)
        assert await c.drain(10)
    finally:
        await c.close()
