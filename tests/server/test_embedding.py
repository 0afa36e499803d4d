"""The embedded server's contract (issue 14): what `Server.events()` does when its consumer lags,
and messages handed to a program only once they are stored."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from tcpulse.server.events import Connected, EventsDropped, MessageReceived, ServerEvent
from tcpulse.server.server import EventsOverflow
from tcpulse.store.sqlite import SQLiteStore
from tests.conftest import RawClient
from tests.server.test_flow import CrawlingStore


async def test_a_lagging_consumer_is_told_how_many_events_it_lost(start_server: Any) -> None:
    srv = await start_server()
    it = srv.events(maxsize=5).__aiter__()
    first = asyncio.ensure_future(it.__anext__())  # subscribed once the iterator runs
    await asyncio.sleep(0)
    clients = [await RawClient.open(srv.port) for _ in range(12)]  # 12 Connected, far more than 5
    for c in clients:
        await c.info()
    got = [await first]
    while len(got) < 6:
        got.append(await asyncio.wait_for(it.__anext__(), 5))
    # The first event was taken before the flood; then 11 more came into a queue of 5: 6 dropped.
    assert isinstance(got[0], Connected)
    assert isinstance(got[1], EventsDropped) and got[1].count == 6, got[1]
    assert all(isinstance(e, Connected) for e in got[2:])
    await it.aclose()  # type: ignore[attr-defined]
    for c in clients:
        c.close()


async def test_a_consumer_may_ask_to_be_told_by_an_exception(start_server: Any) -> None:
    srv = await start_server()
    it = srv.events(maxsize=3, overflow="raise").__aiter__()
    first = asyncio.ensure_future(it.__anext__())
    await asyncio.sleep(0)
    clients = [await RawClient.open(srv.port) for _ in range(6)]
    for c in clients:
        await c.info()
    await first
    with pytest.raises(EventsOverflow) as e:
        for _ in range(10):
            await asyncio.wait_for(it.__anext__(), 5)
    assert e.value.kind == "overflow"
    for c in clients:
        c.close()


async def test_after_store_messages_come_once_stored_and_only_once(start_server: Any, tmp_path: Path) -> None:
    db = tmp_path / "e.db"
    store = CrawlingStore(str(db))
    store.delay = 0.3
    srv = await start_server(store=store)
    seen: list[tuple[int | None, int]] = []  # (seq, rows stored when the event came)

    def on_event(ev: ServerEvent) -> None:
        if isinstance(ev, MessageReceived):
            con = sqlite3.connect(db)
            stored = con.execute("SELECT count(*) FROM messages WHERE seq = ?", (ev.seq,)).fetchone()[0]
            con.close()
            seen.append((ev.seq, stored))
    srv.subscribe(on_event, after_store=True)
    early: list[int | None] = []
    srv.subscribe(lambda ev: early.append(ev.seq) if isinstance(ev, MessageReceived) else None)
    c = await RawClient.open(srv.port)
    await c.hello("app", session="s")
    await c.send(b"".join(b"MSG 1 %d\nx\n" % i for i in range(1, 6)))
    assert await c.expect(b"ACK 5", timeout=10) == b"ACK 5"
    c.close()
    # The same session again, resending 3-5 (as after a lost connection) and two new ones.
    c = await RawClient.open(srv.port)
    assert (await c.hello("app", session="s"))["acked"] == 5
    await c.send(b"".join(b"MSG 1 %d\nx\n" % i for i in range(3, 8)))
    while (ln := await c.line(10)) != b"ACK 7":  # ACK 5 for the duplicates first, maybe
        assert ln.startswith((b"ACK ", b"PING ")), ln
    await asyncio.sleep(0.05)
    assert [s for s, _ in seen] == [1, 2, 3, 4, 5, 6, 7]  # each once, in order, duplicates not again
    assert all(stored == 1 for _, stored in seen), seen  # and each already in the database
    assert early == [1, 2, 3, 4, 5, 3, 4, 5, 6, 7]  # the default: as they arrive, duplicates too
    c.close()


async def test_after_store_with_no_store_is_at_once(start_server: Any) -> None:
    srv = await start_server()  # MemoryStore: "stored" means handled
    seqs: list[int | None] = []
    srv.subscribe(lambda ev: seqs.append(ev.seq) if isinstance(ev, MessageReceived) else None, after_store=True)
    c = await RawClient.open(srv.port)
    await c.hello("app", session="s")
    await c.send(b"MSG 1 1\nx\nMSG 1\ny\nMSG 1 2\nz\nMSG 1 2\nz\n")
    assert await c.expect(b"ACK 2") == b"ACK 2"
    await asyncio.sleep(0.05)
    assert seqs == [1, None, 2]
    c.close()


def test_store_crawls_are_real() -> None:
    # The store used above really is slower than a message: the after-store test depends on it.
    assert CrawlingStore.delay > 0 and issubclass(CrawlingStore, SQLiteStore)
