"""Tier 3: the library client against real servers on loopback."""

from __future__ import annotations

import asyncio
from typing import Any

import tcpulse
from tcpulse.client.events import Waiting
from tcpulse.client.outbox import MemoryOutbox, SQLiteOutbox
from tcpulse.policy.backoff import Backoff
from tcpulse.server.config import ServerConfig
from tcpulse.server.events import MessageReceived
from tcpulse.server.server import Server


async def test_client_renumbers_after_a_storeless_server_restarts() -> None:
    # A server with no store forgets its sessions when it restarts (PROTOCOL.md, "Delivery"); a
    # client holding unacknowledged messages must not then send numbers that skip ahead.
    first = Server(ServerConfig(port=0, status_every=0))
    await first.start()
    port = first.port
    events: list[str] = []
    client = tcpulse.connect("127.0.0.1", port, id="renum", backoff=Backoff(base=0.01, cap=0.05),
                             on_event=lambda e: events.append(e.kind))
    await client.start()
    for i in range(3):
        await client.send(f"m{i}")
    assert await client.drain(5)
    await first.close(grace=1)
    await asyncio.sleep(0.05)
    await client.send("held-1")  # sent while no server is there: kept
    await client.send("held-2")
    assert [s for s, _ in client.unacked()] == [4, 5]
    second = Server(ServerConfig(port=port, status_every=0))
    got: list[MessageReceived] = []
    second.subscribe(lambda e: got.append(e) if isinstance(e, MessageReceived) else None)
    await second.start()
    try:
        assert await client.drain(10)
        assert [(m.seq, m.payload) for m in got] == [(1, b"held-1"), (2, b"held-2")]
        assert "renumbered" in events
        # The message id goes on from where it was (6), the wire seq from the server's acked.
        assert await client.send("after") == 6
        assert await client.drain(5)
        assert got[-1].seq == 3
    finally:
        await client.close()
        await second.close(grace=1)


def test_outboxes_renumber_in_order(tmp_path: Any) -> None:
    # Renumbering moves the wire seqs, never the ids (ids 2 and 3 go out as seqs 1 and 2).
    for box in (MemoryOutbox(), SQLiteOutbox(str(tmp_path / "o.db"))):
        for s in (7, 8, 9):
            assert box.add(b"p%d" % s) == s - 6
        assert box.ack(1) == 1
        box.renumber(1)
        assert box.pending() == [(2, b"p8"), (3, b"p9")]
        assert (box.offset, box.last_id, box.last_seq) == (1, 3, 2)
        box.close()
    reopened = SQLiteOutbox(str(tmp_path / "o.db"))
    assert reopened.pending() == [(2, b"p8"), (3, b"p9")]
    assert (reopened.offset, reopened.last_id, reopened.last_seq) == (1, 3, 2)
    reopened.close()


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_wait_for_server_connects_once_the_server_is_up() -> None:
    port = _free_port()
    events: list[tcpulse.ClientEvent] = []
    client = tcpulse.connect("127.0.0.1", port, id="early", wait_for_server=True,
                             backoff=Backoff(base=0.02, cap=0.1), on_event=events.append)
    starting = asyncio.ensure_future(client.start())
    await asyncio.sleep(0.3)
    assert not starting.done()  # refused, and trying again
    assert [e.kind for e in events][:1] == ["waiting"]
    assert isinstance(events[0], Waiting) and events[0].error.kind == "refused"
    assert sum(e.kind == "reconnecting" for e in events) >= 2
    srv = Server(ServerConfig(port=port, status_every=0))
    got: list[MessageReceived] = []
    srv.subscribe(lambda e: got.append(e) if isinstance(e, MessageReceived) else None)
    await srv.start()
    try:
        await asyncio.wait_for(starting, 5)
        assert client.connected.is_set()
        await client.send("made it")
        assert await client.drain(5)
        assert [m.payload for m in got] == [b"made it"]
    finally:
        await client.close()
        await srv.close(grace=1)


async def test_wait_for_server_still_fails_at_once_on_what_waiting_cannot_mend() -> None:
    # Something that is not a tcpulse server (here: it greets with garbage) will not become one.
    async def impostor(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"SSH-2.0-OpenSSH_9.2\r\n")
        await writer.drain()
        await asyncio.sleep(1)
        writer.close()
    srv = await asyncio.start_server(impostor, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    client = tcpulse.connect("127.0.0.1", port, id="x", wait_for_server=True, backoff=Backoff(base=0.02, cap=0.1))
    try:
        t0 = asyncio.get_running_loop().time()
        try:
            await client.start()
        except tcpulse.ConnectError as e:
            assert e.kind == "bad-frame"
        else:
            raise AssertionError("connected to something that is not a tcpulse server")
        assert asyncio.get_running_loop().time() - t0 < 0.9
    finally:
        await client.close()
        srv.close()
        await srv.wait_closed()
