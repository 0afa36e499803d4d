"""Tier 3: the library client against real servers on loopback."""

from __future__ import annotations

import asyncio
from typing import Any

import tcpulse
from tcpulse.backoff import Backoff
from tcpulse.client import MemoryOutbox
from tcpulse.events import MessageReceived
from tcpulse.outbox import SQLiteOutbox
from tcpulse.server import Server, ServerConfig


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
        assert await client.send("after") == 3
        assert await client.drain(5)
        assert got[-1].seq == 3
    finally:
        await client.close()
        await second.close(grace=1)


def test_outboxes_renumber_in_order(tmp_path: Any) -> None:
    for box in (MemoryOutbox(), SQLiteOutbox(str(tmp_path / "o.db"))):
        for s in (7, 8, 9):
            box.add(s, b"p%d" % s)
        box.ack(7)
        box.renumber(1)
        assert box.pending() == [(1, b"p8"), (2, b"p9")]
        assert box.last_seq == 2
        box.close()
    reopened = SQLiteOutbox(str(tmp_path / "o.db"))
    assert reopened.pending() == [(1, b"p8"), (2, b"p9")] and reopened.last_seq == 2
    reopened.close()
