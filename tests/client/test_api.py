"""Tier 3: the library client's contract (issue 14) against real servers on loopback: typed
events and their stream, a callback that raises, sessions and message ids, waiting for the ACK,
and the loud endings (replaced, reconnect=False, closed by the program)."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import pytest

import tcpulse
from tcpulse.client.events import (
    Acked,
    CallbackFailed,
    ClientEvent,
    Closed,
    Connected,
    Disconnected,
    InfoReceived,
    MessageReceived,
    SignedIn,
)
from tcpulse.policy.backoff import Backoff
from tcpulse.server.events import HelloReceived


async def test_events_are_typed_and_the_stream_matches_the_callback(start_server: Any) -> None:
    srv = await start_server()
    seen: list[ClientEvent] = []
    client = tcpulse.connect("127.0.0.1", srv.port, id="typed", on_event=seen.append)
    stream = client.events()  # from now on, beside the callback
    await client.start()
    mid = await client.send("one", wait_ack=True)
    assert srv.send("typed", b"to you")
    assert await client.recv() == b"to you"
    await client.close()
    streamed = [ev async for ev in stream]  # ends after Closed
    assert streamed == seen
    kinds = [type(ev) for ev in seen]
    assert kinds[:3] == [Connected, InfoReceived, SignedIn]
    assert isinstance(seen[-1], Closed) and seen[-1].reason is tcpulse.CloseReason.CLOSED
    acked = [ev for ev in seen if isinstance(ev, Acked)]
    assert acked and acked[-1].id == mid == 1 and acked[-1].unacked == 0
    assert [ev.payload for ev in seen if isinstance(ev, MessageReceived)] == [b"to you"]
    # Every kind is a stable string, and every event class is frozen.
    assert [ev.kind for ev in seen][:3] == ["connected", "info", "ok"] and seen[-1].kind == "closed"
    with pytest.raises(AttributeError):
        seen[0].host = "x"  # type: ignore[misc]


async def test_a_callback_that_raises_is_reported_and_the_client_carries_on(start_server: Any) -> None:
    srv = await start_server(heartbeat_interval=0.05, heartbeat_timeout=0.2)
    handled: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: handled.append(ctx))
    kinds: list[str] = []

    def buggy(ev: ClientEvent) -> None:
        kinds.append(ev.kind)
        raise RuntimeError(f"bug on {ev.kind}")

    client = tcpulse.connect("127.0.0.1", srv.port, id="buggy", on_event=buggy)
    stream = client.events()
    await client.start()
    for i in range(3):
        assert await client.send(f"m{i}", wait_ack=True) == i + 1
    await client.ping(timeout=5)
    # Liveness goes on (beats, or PINGs answered): the server never times it out, several
    # intervals later.
    while sum(k in ("beat", "rtt") for k in kinds) < 5:
        await asyncio.sleep(0.05)
    assert srv.client("buggy") is not None
    await client.close()
    calls = len(kinds)
    evs = [ev async for ev in stream]
    failed = [ev for ev in evs if isinstance(ev, CallbackFailed)]
    others = [ev for ev in evs if not isinstance(ev, CallbackFailed)]
    assert len(failed) == len(others) == calls  # each failure reported once, next to its event
    assert all(isinstance(f.error, RuntimeError) and f.error.args[0] == f"bug on {f.event.kind}" for f in failed)
    ours = [h for h in handled if str(h.get("exception", "")).startswith("bug on")]
    assert len(ours) == calls
    assert client.error is None


async def test_session_is_first_class_and_ids_survive_a_restart_of_the_process(
        start_server: Any, tmp_path: Path) -> None:
    srv = await start_server()
    hellos: list[HelloReceived] = []
    srv.subscribe(lambda e: hellos.append(e) if isinstance(e, HelloReceived) else None)
    async with tcpulse.connect("127.0.0.1", srv.port, id="s-mem", session="s1") as c:
        assert c.session == "s1"
        assert await c.send("a", wait_ack=True) == 1
    assert hellos[-1].session == "s1"
    box = str(tmp_path / "agent.outbox")
    async with tcpulse.connect("127.0.0.1", srv.port, outbox=box, session="disk-1") as c:
        first_id = c.id
        assert [await c.send(f"x{i}") for i in range(3)] == [1, 2, 3]
        assert await c.drain(5)
    # Started again with the same file and nothing else: same id, same session, ids go on.
    async with tcpulse.connect("127.0.0.1", srv.port, outbox=box) as c:
        assert (c.id, c.session) == (first_id, "disk-1")
        assert await c.send("x3", wait_ack=True) == 4
    assert hellos[-1].session == "disk-1" and hellos[-1].acked == 3
    # The file keeps its session: asking for another one is refused, in one line.
    with pytest.raises(tcpulse.OutboxError) as ei:
        await tcpulse.connect("127.0.0.1", srv.port, outbox=box, session="other").start()
    assert ei.value.kind == "session" and isinstance(ei.value, tcpulse.ClientError)


async def test_wait_ack_returns_only_once_the_server_stored_the_message(server_process: Any) -> None:
    srv = server_process("-q", "--db", "srv.db")
    c = tcpulse.connect("127.0.0.1", srv.port, id="careful")
    await c.start()
    try:
        assert await c.send("warm-up", wait_ack=True) == 1
        os.kill(srv.proc.pid, signal.SIGSTOP)  # nothing is stored or acknowledged now
        try:
            sending = asyncio.ensure_future(c.send("important", wait_ack=True))
            await asyncio.sleep(0.3)
            assert not sending.done() and c.acked == 1 and [m for m, _ in c.unacked()] == [2]
        finally:
            os.kill(srv.proc.pid, signal.SIGCONT)
        assert await asyncio.wait_for(sending, 10) == 2
        assert c.acked == 2 and c.unacked() == []
    finally:
        await c.close()


async def test_replaced_client_says_so_and_then_raises(start_server: Any) -> None:
    srv = await start_server()
    seen: list[ClientEvent] = []
    old = tcpulse.connect("127.0.0.1", srv.port, id="twin", on_event=seen.append)
    await old.start()
    reading = asyncio.ensure_future(_read_all(old))
    async with tcpulse.connect("127.0.0.1", srv.port, id="twin") as new:
        await new.send("I am the new one", wait_ack=True)
        await _ended(old)
        disc = [ev for ev in seen if isinstance(ev, Disconnected)]
        assert len(disc) == 1 and disc[0].reason is tcpulse.CloseReason.REPLACED and not disc[0].reconnect
        assert isinstance(seen[-1], Closed) and seen[-1].reason is tcpulse.CloseReason.REPLACED
        for call in (old.send("lost?"), old.ping(), old.recv()):
            with pytest.raises(tcpulse.ConnectionClosed) as ei:
                await call
            assert ei.value.kind == "replaced"
        with pytest.raises(tcpulse.ConnectionClosed):
            await reading  # the `async for` of the replaced client ended with the exception
        with pytest.raises(tcpulse.ServerClosed):
            await old.wait_closed()
    await old.close()


async def test_reconnect_false_ends_loudly_when_the_server_goes(start_server: Any) -> None:
    srv = await start_server()
    c = tcpulse.connect("127.0.0.1", srv.port, id="once", reconnect=False)
    await c.start()
    reading = asyncio.ensure_future(_read_all(c))
    await c.send("hello", wait_ack=True)
    await srv.close(grace=1)
    await _ended(c)
    with pytest.raises(tcpulse.ConnectionClosed) as ei:
        await c.send("anyone?")
    assert ei.value.kind == "shutdown" and ei.value.reason is tcpulse.CloseReason.SHUTDOWN
    with pytest.raises(tcpulse.ServerClosed):
        await c.ping()
    with pytest.raises(tcpulse.ServerClosed):
        await reading
    await c.close()


async def test_closed_by_the_program_raises_kind_closed(start_server: Any) -> None:
    srv = await start_server()
    c = tcpulse.connect("127.0.0.1", srv.port, id="closer")
    await c.start()
    reading = asyncio.ensure_future(_read_all(c))
    await c.close()
    for call in (c.send("late"), c.ping()):
        with pytest.raises(tcpulse.ConnectionClosed) as ei:
            await call
        assert ei.value.kind == "closed"
    with pytest.raises(tcpulse.ConnectionClosed):
        await reading
    await c.wait_closed()  # closed by the program: not an error
    assert c.closed and c.error is None


async def test_ping_fails_at_once_when_not_connected_and_has_a_timeout(server_process: Any) -> None:
    srv = server_process()
    c = tcpulse.connect("127.0.0.1", srv.port, id="pinger", backoff=Backoff(base=0.05, cap=0.1))
    await c.start()
    try:
        assert await c.ping(timeout=5) > 0
        os.kill(srv.proc.pid, signal.SIGSTOP)
        try:
            with pytest.raises(tcpulse.PingTimeout) as ei:
                await c.ping(timeout=0.2)
            assert isinstance(ei.value, TimeoutError) and ei.value.kind == "ping-timeout"
        finally:
            os.kill(srv.proc.pid, signal.SIGCONT)
        srv.kill()  # gone: the client reconnects, in vain
        while c.connected.is_set():
            await asyncio.sleep(0.01)
        with pytest.raises(tcpulse.NotConnected):
            await c.ping()  # at once, not after a timeout: no wait_for around it
        assert not c.closed  # still trying
    finally:
        await c.close(drain_timeout=0)


async def test_failures_are_one_hierarchy() -> None:
    for cls in (tcpulse.ConnectError, tcpulse.ConnectionClosed, tcpulse.ServerDead, tcpulse.ServerClosed,
                tcpulse.ServerError, tcpulse.ConnectionLost, tcpulse.NotConnected, tcpulse.PingTimeout,
                tcpulse.OutboxFull, tcpulse.OutboxError):
        assert issubclass(cls, tcpulse.ClientError), cls
    for cls in (tcpulse.ServerDead, tcpulse.ServerClosed, tcpulse.ServerError, tcpulse.ConnectionLost):
        assert issubclass(cls, tcpulse.ConnectionClosed), cls
    lost = tcpulse.ConnectionLost(ConnectionResetError(104, "Connection reset by peer"))
    assert lost.kind == "network" and str(lost) == "connection lost: Connection reset by peer"


async def _read_all(c: tcpulse.Client) -> list[bytes]:
    return [m async for m in c]


async def _ended(c: tcpulse.Client) -> None:
    for _ in range(500):
        if c.closed:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the client did not end")
