"""Adversarial clients over real loopback sockets.  After each attack a well-behaved client must
still be served within its deadlines (`assert_served`).

Bad input gets the protocol's ERR and affects that one connection only (PROTOCOL.md, "Errors").
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import time
from typing import Any

import pytest

from tcpulse.client.client import Client
from tcpulse.server.events import Disconnected, DisconnectReason, TimedOut
from tcpulse.server.guard import QUEUE_STALL
from tcpulse.server.server import Server
from tests.conftest import MS, RawClient

pytestmark = pytest.mark.timeout(60)


async def assert_served(srv: Server, cid: str = "good-1") -> None:
    """A well-behaved client connects, has a message acknowledged and a PING answered, all well
    within the server's heartbeat interval."""
    budget = srv.config.heartbeat_interval
    t0 = time.monotonic()
    async with Client("127.0.0.1", srv.port, id=cid, reconnect=False, connect_timeout=budget) as c:
        await c.send(b"still here")
        assert await c.drain(budget), "message not acknowledged in time"
        rtt = await asyncio.wait_for(c.ping(), budget)
        assert rtt < budget
    assert time.monotonic() - t0 < 2 * budget


async def _attack(srv: Server, data: bytes, *, timeout: float = 5.0) -> list[bytes]:
    """Send `data` on a fresh connection; return every line the server sent until it closed."""
    rc = await RawClient.open(srv.port)
    await rc.info()
    await rc.send(data)
    lines = await rc.lines_until_eof(timeout)
    rc.close()
    return lines


def _errs(lines: list[bytes]) -> list[bytes]:
    return [ln for ln in lines if ln.startswith(b"ERR ")]


@pytest.fixture
async def srv(start_server: Any) -> Server:
    s: Server = await start_server(heartbeat_interval=0.5, heartbeat_timeout=1.0, max_payload=64 * 1024)
    return s


# ------------------------------------------------------------------------------ lengths


@pytest.mark.parametrize("line,code", [
    (b"MSG 99999999999999999999\n", b"413"),       # a huge length: too large, before any payload
    (b"MSG " + b"9" * 5000 + b"\n", b"413"),        # so long that the line itself is over the cap
    (b"MSG " + b"9" * 100 + b"\n", b"400"),         # more digits than any length: bad number
    (b"MSG 1048577\n", b"413"),                     # over max_payload: rejected before the payload
    (b"MSG 65537 1\n", b"413"),
    (b"MSG -1\n", b"400"),
    (b"MSG +5\n", b"400"),
    (b"MSG abc\n", b"400"),
    (b"MSG 1e3\n", b"400"),
    (b"MSG 007\n", b"400"),
    (b"MSG \n", b"400"),
    (b"MSG 5 -1\n", b"400"),
    (b"MSG 5 0x10\n", b"400"),
])
async def test_bad_lengths(srv: Server, line: bytes, code: bytes) -> None:
    lines = await _attack(srv, line)
    assert _errs(lines) and _errs(lines)[0].startswith(b"ERR " + code), lines
    await assert_served(srv)


async def test_oversized_control_line_is_rejected_without_buffering(srv: Server) -> None:
    # No LF ever: the server must answer 413 as soon as the line passes max_line.
    lines = await _attack(srv, b"A" * (srv.config.max_line + 10))
    assert _errs(lines) == [b"ERR 413 control line too long"]
    lines = await _attack(srv, b"HELLO " + b"x" * 100_000 + b"\n")
    assert _errs(lines) == [b"ERR 413 control line too long"]
    await assert_served(srv)


# ------------------------------------------------------------------------------ HELLO contents


@pytest.mark.parametrize("hello", [
    b'HELLO {"id":"\xff\xfe"}\n',                               # invalid UTF-8
    b'HELLO {"id":"a\xc3"}\n',                                  # truncated UTF-8 sequence
    b"HELLO " + b"[" * 2000 + b"]" * 2000 + b"\n",              # deeply nested
    b'HELLO {"id":"x","a":' + b"[" * 1500 + b"]" * 1500 + b"}\n",
    b'HELLO {"id":"' + b"a" * 129 + b'"}\n',                    # id too long
    b'HELLO {"id":"a:b"}\n',                                    # looks like an address
    b'HELLO {"id":"x","heartbeat_interval":NaN}\n',
    b'HELLO {"id":"x","heartbeat_interval":1e999}\n',
    b'HELLO {"id":"x","heartbeat_interval":true}\n',
    b'HELLO {"id":"x","session":null}\n',
    b'HELLO {"id":"x","token":123}\n',
    b'HELLO ["id","x"]\n',
    b"HELLO {}\n",
])
async def test_hostile_hello(srv: Server, hello: bytes) -> None:
    lines = await _attack(srv, hello)
    assert _errs(lines) and _errs(lines)[0].startswith(b"ERR 400"), lines
    assert not any(ln.startswith(b"OK ") for ln in lines)
    await assert_served(srv)


async def test_huge_json_in_hello_is_413(srv: Server) -> None:
    big = b'HELLO {"id":"x","pad":"' + b"p" * 60_000 + b'"}\n'
    assert _errs(await _attack(srv, big)) == [b"ERR 413 control line too long"]
    await assert_served(srv)


@pytest.mark.parametrize("line", [
    b"PING a\x00b\n", b"HEART\x00BEAT\n", b"HEARTBEAT\x00\n", b"BYE bad\x00reason\n",
    b"\x00\n", b"PING \x00\n", b"MSG 5\x00\n",
])
async def test_nul_bytes_in_control_lines(srv: Server, line: bytes) -> None:
    lines = await _attack(srv, line)
    assert _errs(lines) and _errs(lines)[0].startswith(b"ERR 400"), lines
    await assert_served(srv)


# ------------------------------------------------------------------------------ many at once


async def test_thousand_connections_sending_garbage_at_once(start_server: Any) -> None:
    srv = await start_server(heartbeat_interval=1.0, heartbeat_timeout=2.0)
    rng = random.Random(5)
    n = 1000

    async def one(i: int) -> bytes:
        r, w = await asyncio.open_connection("127.0.0.1", srv.port)
        junk = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300))) + b"\n"
        if i % 3 == 0:
            junk = b"MSG 5\nabcdefgh\n"  # payload not followed by LF
        w.write(junk)
        try:
            data = await asyncio.wait_for(r.read(), 15)
        finally:
            w.close()
        return data

    t0 = time.monotonic()
    results = await asyncio.gather(*(one(i) for i in range(n)))
    assert all(b"\nERR 4" in d for d in results)
    assert srv.totals["errors"] >= n * 0.99  # every one of them a protocol error
    await assert_served(srv)
    for _ in range(300):
        if not srv.clients:
            break
        await asyncio.sleep(0.01)
    assert not srv.clients
    print(f"{n} garbage connections handled in {time.monotonic() - t0:.2f} s")


# ------------------------------------------------------------------------------ floods


async def test_ping_flood_gets_429_then_closed(start_server: Any) -> None:
    srv = await start_server(heartbeat_interval=0.5, heartbeat_timeout=1.0, max_pings_per_sec=100,
                             max_strikes=2)
    rc = await RawClient.open(srv.port)
    await rc.hello("flooder")
    pongs = errs = 0
    last_err = b""
    closed = False
    t0 = time.monotonic()
    # Keep flooding for a few seconds; the server must close us after the strikes.
    while time.monotonic() - t0 < 8 and not closed:
        with_exc = False
        try:
            await rc.send(b"PING f\n" * 2000)
        except (ConnectionError, OSError):
            with_exc = True
        while True:
            try:
                ln = await rc.line(timeout=0.3)
            except TimeoutError:
                break
            if not ln:
                closed = True
                break
            if ln == b"PONG f":
                pongs += 1
            elif ln.startswith(b"ERR 429"):
                errs += 1
                last_err = ln
        if with_exc:
            closed = True
    assert closed, "a client that keeps on flooding must be closed"
    assert errs >= 2  # one ERR 429 per offence, then the closing one
    assert last_err == b"ERR 429 too many frames per second, closing"  # closed for flooding, not else
    assert pongs < 2000 * 3  # most PINGs were dropped, not answered
    rc.close()
    await assert_served(srv)


async def test_honest_pings_never_meet_the_limit(start_server: Any) -> None:
    srv = await start_server(heartbeat_interval=0.5, heartbeat_timeout=1.0)
    async with Client("127.0.0.1", srv.port, id="pinger", reconnect=False) as c:
        for _ in range(200):  # back to back, as a latency probe would
            await asyncio.wait_for(c.ping(), 2)
        assert c.error is None


async def test_numbered_messages_are_never_rate_limited(start_server: Any) -> None:
    srv = await start_server(max_frames_per_sec=10, max_pings_per_sec=1)
    async with Client("127.0.0.1", srv.port, id="burst", reconnect=False) as c:
        for i in range(2000):
            await c.send(b"m%d" % i)
        assert await c.drain(10)
    assert srv.totals["errors"] == 0


# ------------------------------------------------------------------------------ slow attackers


async def test_byte_drip_cannot_hold_a_connection(start_server: Any) -> None:
    """Slowloris: a control line dripped one byte at a time is no proof of life."""
    srv = await start_server(heartbeat_interval=100 * MS, heartbeat_timeout=300 * MS)
    events: list[Any] = []
    srv.subscribe(events.append)
    for prefix in (b"HEARTBEA" + b"T" * 4000, b"MSG 60000\n" + b"x" * 60000):
        rc = await RawClient.open(srv.port)
        await rc.info()
        t0 = time.monotonic()
        ended_at = None
        for i in range(len(prefix)):
            try:
                await rc.send(prefix[i:i + 1])
            except (ConnectionError, OSError):
                ended_at = time.monotonic()
                break
            await asyncio.sleep(20 * MS)
            if rc.reader.at_eof() or rc.reader._buffer:
                ended_at = time.monotonic()
                break
            if time.monotonic() - t0 > 3:
                break
        assert ended_at is not None, "the drip held the connection"
        # Dead at its deadline (300 MS), not before 1.5 intervals, give or take the drip step.
        assert 0.15 <= ended_at - t0 < 1.0
        assert (await rc.line()).startswith(b"BYE heartbeat-timeout")
        rc.close()
    assert len([e for e in events if isinstance(e, TimedOut)]) == 2
    await assert_served(srv)


async def test_half_closed_socket_is_released(srv: Server) -> None:
    events: list[Any] = []
    srv.subscribe(events.append)
    r, w = await asyncio.open_connection("127.0.0.1", srv.port)
    w.write(b'HELLO {"id":"half"}\nHEARTBEAT\n')
    w.write_eof()  # we send nothing more but keep reading
    got = await asyncio.wait_for(r.read(), 5)  # until the server closes its side too
    w.close()
    assert b"INFO " in got
    for _ in range(200):
        if srv.client("half") is None:
            break
        await asyncio.sleep(0.01)
    assert srv.client("half") is None
    assert any(isinstance(e, Disconnected) and e.client.name == "half" for e in events)
    await assert_served(srv)


async def test_client_that_never_reads_is_closed_as_slow_consumer(start_server: Any) -> None:
    srv = await start_server(max_payload=64 * 1024, max_write_buffer=256 * 1024)
    events: list[Any] = []
    srv.subscribe(events.append)
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", srv.port))
    s.sendall(b'HELLO {"id":"deaf"}\n')
    for _ in range(200):
        if srv.client("deaf") is not None:
            break
        await asyncio.sleep(0.01)
    payload = os.urandom(60 * 1024)
    sent = 0
    for _ in range(2000):  # at most ~120 MB, far past any buffer
        if not srv.send("deaf", payload):
            break
        sent += 1
        await asyncio.sleep(0)
    s.close()
    slow = [e for e in events if isinstance(e, Disconnected) and e.reason is DisconnectReason.SLOW_CONSUMER]
    assert slow, f"server kept buffering for a client that never reads ({sent} messages)"
    assert "max-write-buffer" in (slow[0].detail or "")
    assert sent * len(payload) < 64 * 1024 * 1024
    await assert_served(srv)


def _deaf(port: int, cid: str) -> socket.socket:
    """A client that signs in and never reads (a small receive buffer: the server's bytes back up)."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", port))
    s.sendall(b'HELLO {"id":"%s"}\n' % cid.encode())
    return s


class _Reader:
    """A signed-in client that reads everything the server sends, counting bytes."""

    def __init__(self, rc: RawClient) -> None:
        self.rc = rc
        self.got = 0
        self.task = asyncio.create_task(self._read())

    @classmethod
    async def open(cls, port: int, cid: str) -> _Reader:
        rc = await RawClient.open(port)
        await rc.hello(cid)
        return cls(rc)

    async def _read(self) -> None:
        while chunk := await self.rc.reader.read(1 << 16):
            self.got += len(chunk)

    async def wait_for(self, n: int, timeout: float = 10) -> None:
        end = time.monotonic() + timeout
        while self.got < n and time.monotonic() < end:
            await asyncio.sleep(0.01)
        assert self.got >= n, (self.got, n)

    def close(self) -> None:
        self.task.cancel()
        self.rc.close()


async def test_deaf_clients_together_cannot_pass_the_queued_budget(start_server: Any) -> None:
    # Each deaf client stays under its own cap (--max-write-buffer); together they pass the global
    # budget (--max-queued). Once their bytes have waited QUEUE_STALL, the ones with the most
    # unread are closed until the rest fits. A client that reads gets every broadcast.
    budget = 1536 * 1024
    srv = await start_server(max_payload=64 * 1024, max_write_buffer=64 << 20, max_queued=budget)
    events: list[Any] = []
    srv.subscribe(events.append)
    deaf = [_deaf(srv.port, f"deaf{i}") for i in range(4)]
    reader = await _Reader.open(srv.port, "reader")
    for _ in range(200):
        if all(srv.client(f"deaf{i}") is not None for i in range(4)):
            break
        await asyncio.sleep(0.01)
    payload = os.urandom(60 * 1024)
    frame_len = len(b"MSG %d\n" % len(payload)) + len(payload) + 1
    sent = 0
    t0 = time.monotonic()
    while time.monotonic() - t0 < 4 * QUEUE_STALL:  # ~3 MB/s to each client
        srv.broadcast(payload)
        sent += 1
        await asyncio.sleep(0.02)
        if sum(srv.client(f"deaf{i}") is None for i in range(4)) >= 3:
            break
    shed = [e for e in events if isinstance(e, Disconnected) and e.reason is DisconnectReason.SLOW_CONSUMER]
    assert len(shed) >= 3, f"{sent} broadcasts, {len(shed)} closed, {srv.guard.queued_total} bytes queued"
    assert all("--max-queued" in (e.detail or "") for e in shed), [e.detail for e in shed]
    assert all(e.client.name.startswith("deaf") for e in shed), [(e.client.name, e.detail) for e in shed]
    assert time.monotonic() - t0 >= QUEUE_STALL  # not before their bytes had waited that long
    # A deaf client whose backlog began later is closed once its bytes too have waited (the
    # server looks again then), if the rest does not fit without it.
    end = time.monotonic() + QUEUE_STALL + 2
    while srv.guard.recount_queued() > budget and time.monotonic() < end:
        await asyncio.sleep(0.05)
    left = srv.guard.recount_queued()
    assert left <= budget, (left, [(c.name, c.sec.queued if c.sec else None) for c in srv.clients])
    shed = [e for e in events if isinstance(e, Disconnected) and e.reason is DisconnectReason.SLOW_CONSUMER]
    assert srv.guard.shed == len(shed), (srv.guard.shed, len(shed))
    # The reader was never taken for a slow consumer and receives everything sent.
    assert srv.client("reader") is not None
    await reader.wait_for(sent * frame_len)
    reader.close()
    for s in deaf:
        s.close()
    await assert_served(srv)


async def test_a_burst_that_readers_take_is_not_held_against_them(start_server: Any) -> None:
    # A broadcast burst queues far more than the budget for a moment; clients that read take it
    # within moments, and none of them is closed for it.
    budget = 256 * 1024
    srv = await start_server(max_payload=64 * 1024, max_write_buffer=8 << 20, max_queued=budget)
    events: list[Any] = []
    srv.subscribe(events.append)
    readers = [await _Reader.open(srv.port, f"r{i}") for i in range(6)]
    payload = os.urandom(60 * 1024)
    frame_len = len(b"MSG %d\n" % len(payload)) + len(payload) + 1
    peak = 0
    for _ in range(2):
        for _ in range(100):  # 6 MB to each reader at once: more than the kernel's send buffer takes
            srv.broadcast(payload)
        peak = max(peak, srv.guard.queued_total)
        await asyncio.sleep(0.3)
    assert not [e for e in events if isinstance(e, Disconnected)]
    assert srv.guard.shed == 0
    assert peak > budget  # and yet the burst did pass the budget
    for r in readers:
        await r.wait_for(200 * frame_len)
    for r in readers:
        r.close()


# ------------------------------------------------------------------------------ capacity


async def test_max_clients_gets_503_instead_of_info(start_server: Any) -> None:
    srv = await start_server(max_clients=3)
    held = [await RawClient.open(srv.port) for _ in range(3)]
    for rc in held:
        await rc.info()
    extra = await RawClient.open(srv.port)
    assert await extra.lines_until_eof() == [b"ERR 503 server full, try again later"]
    # Refused sockets give their descriptor back quickly even if the client never closes, so a
    # connection flood beyond --max-clients cannot exhaust the open-file limit with refusals.
    import socket as _socket
    refused = [_socket.create_connection(("127.0.0.1", srv.port), timeout=5) for _ in range(20)]
    loop = asyncio.get_running_loop()
    for sock in refused:
        sock.setblocking(False)
        assert (await asyncio.wait_for(loop.sock_recv(sock, 100), 5)).startswith(b"ERR 503")
    await asyncio.sleep(0.6)
    resets = 0
    for sock in refused:
        # The server has closed its socket: what we send now is answered with a reset.
        try:
            sock.send(b"HEARTBEAT\n")
            await asyncio.sleep(0.05)
            sock.send(b"HEARTBEAT\n")
        except (ConnectionResetError, BrokenPipeError):
            resets += 1
        sock.close()
    assert resets == len(refused)
    extra.close()
    held[0].close()
    for _ in range(200):
        if len(srv.clients) < 3:
            break
        await asyncio.sleep(0.01)
    await assert_served(srv)  # a freed place is taken again
    for rc in held[1:]:
        rc.close()


async def test_per_address_cap(start_server: Any) -> None:
    srv = await start_server(max_per_addr=2)
    a = [await RawClient.open(srv.port) for _ in range(2)]
    for rc in a:
        await rc.info()
    third = await RawClient.open(srv.port)
    assert await third.lines_until_eof() == [b"ERR 503 too many connections from your address"]
    # Another address (127.0.0.2 is loopback too) is not affected.
    r, w = await asyncio.open_connection("127.0.0.1", srv.port, local_addr=("127.0.0.2", 0))
    assert (await r.readline()).startswith(b"INFO ")
    w.close()
    for rc in a:
        rc.close()


async def test_global_budget_for_partial_frames(start_server: Any) -> None:
    """Many clients each holding half a payload cannot exhaust memory: past the budget, the client
    that would go over gets ERR 503; the ones within it keep their frames."""
    srv = await start_server(max_payload=64 * 1024, max_buffered=256 * 1024, heartbeat_interval=2.0,
                             heartbeat_timeout=4.0)
    clients = []
    half = 32 * 1024
    for i in range(10):
        rc = await RawClient.open(srv.port)
        await rc.hello(f"half-{i}")
        await rc.send(b"MSG %d\n" % (2 * half) + b"h" * half)
        clients.append(rc)
        for _ in range(100):  # until the server has read it all
            if srv.guard.held_total >= min(8, i + 1) * half or i >= 8:
                break
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)
    assert srv.guard.held_total <= 256 * 1024
    refused = [i for i in range(10) if srv.client(f"half-{i}") is None]
    assert refused == [8, 9]
    for i in refused:
        lines = await clients[i].lines_until_eof(2)
        assert lines[-1].startswith(b"ERR 503 server memory for partial frames is exhausted"), lines
    # Those within the budget finish their messages normally.
    await clients[0].send(b"h" * half + b"\n")
    await clients[0].send(b"PING done\n")
    assert await clients[0].expect(b"PONG done") == b"PONG done"
    for rc in clients:
        rc.close()
    await assert_served(srv)
