"""Tier 3: the asyncio server over real loopback sockets (in-process), spoken to byte by byte."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from typing import Any

import pytest

import tcpulse
from tcpulse.server.events import (
    Connected,
    Disconnected,
    DisconnectReason,
    HelloReceived,
    MessageReceived,
    ProtocolErrorOccurred,
    ServerEvent,
    Suspect,
    TimedOut,
)
from tests.conftest import MS, RawClient


def recorder(srv: tcpulse.Server) -> list[ServerEvent]:
    evs: list[ServerEvent] = []
    srv.subscribe(evs.append, messages=True, heartbeats=True)
    return evs


async def wait_for(pred: Any, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not pred():
        if loop.time() > end:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.005)


def disconnects(evs: list[ServerEvent]) -> list[Disconnected]:
    return [e for e in evs if isinstance(e, Disconnected)]


async def test_info_is_first_and_announces_settings(start_server: Any) -> None:
    srv = await start_server(heartbeat_interval=2, heartbeat_timeout=5, max_line=1000, max_payload=2000)
    c = await RawClient.open(srv.port)
    info = await c.info()
    assert info == {"proto": 1, "server_id": srv.server_id, "version": tcpulse.__version__,
                    "heartbeat_interval": 2.0, "heartbeat_timeout": 5.0, "auth_required": False,
                    "durable": False, "max_line": 1000, "max_payload": 2000}
    c.close()


async def test_silent_client_is_timed_out_at_its_deadline(start_server: Any) -> None:
    srv = await start_server(heartbeat_interval=100 * MS, heartbeat_timeout=200 * MS)
    evs = recorder(srv)
    c = await RawClient.open(srv.port)
    await c.hello("quiet")
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    assert await c.expect(b"BYE") == b"BYE heartbeat-timeout"
    elapsed = loop.time() - t0
    assert await c.line() == b""  # then the server closes
    assert elapsed >= 200 * MS * 0.95
    to = next(e for e in evs if isinstance(e, TimedOut))
    assert to.silent_for >= 200 * MS and to.late_by >= 0
    assert to.late_by < 1.0  # generous on a loaded machine; the bench measures the real figure
    assert any(isinstance(e, Suspect) for e in evs)
    await wait_for(lambda: disconnects(evs))
    assert disconnects(evs)[0].reason is DisconnectReason.TIMEOUT


async def test_any_frame_is_proof_of_life(start_server: Any) -> None:
    srv = await start_server(heartbeat_interval=100 * MS, heartbeat_timeout=200 * MS)
    evs = recorder(srv)
    c = await RawClient.open(srv.port)
    await c.hello("chatty")
    for _ in range(8):  # 8 x 60 ms = 480 ms: more than two timeouts, never a heartbeat
        await c.send(b"MSG 2\nhi\n")
        await asyncio.sleep(60 * MS)
    assert not [e for e in evs if isinstance(e, TimedOut)]
    assert sum(isinstance(e, MessageReceived) for e in evs) == 8
    c.close()


async def test_heartbeat_split_and_merged_with_messages(start_server: Any) -> None:
    srv = await start_server()
    evs = recorder(srv)
    c = await RawClient.open(srv.port)
    await c.hello("split")
    text = "你好".encode()
    data = b"HEARTBEAT\nMSG %d\n" % len(text) + text + b"\nHEARTBEAT\n"
    for i in range(len(data)):  # one byte per write, each flushed
        await c.send(data[i:i + 1])
    await wait_for(lambda: srv.client("split") is not None and srv.client("split").heartbeats == 2)
    msgs = [e for e in evs if isinstance(e, MessageReceived)]
    assert [m.payload.decode() for m in msgs] == ["你好"]
    c.close()


@pytest.mark.parametrize(("frame", "code"), [
    (b"BOGUS\n", 400),
    (b"MSG 99999999\n", 413),
    (b"ACK 1\n", 400),
    (b"MSG 1 1\nx\n", 400),  # seq without session
])
async def test_protocol_error_gets_err_then_close_and_never_bye(start_server: Any, frame: bytes, code: int) -> None:
    srv = await start_server()
    evs = recorder(srv)
    c = await RawClient.open(srv.port)
    await c.hello("bad")
    await c.send(frame)
    rest = await c.lines_until_eof()
    rest = [ln for ln in rest if not ln.startswith(b"PING ")]
    assert rest and rest[0].startswith(b"ERR %d " % code), rest
    assert not any(ln.startswith(b"BYE") for ln in rest)
    await wait_for(lambda: disconnects(evs))
    d = disconnects(evs)[0]
    assert d.reason is DisconnectReason.ERROR and d.detail is not None and d.detail.startswith(str(code))
    assert [e.code for e in evs if isinstance(e, ProtocolErrorOccurred)] == [code]


async def test_one_bad_client_does_not_disturb_others(start_server: Any) -> None:
    srv = await start_server()
    good = await RawClient.open(srv.port)
    await good.hello("good")
    bads = [await RawClient.open(srv.port) for _ in range(20)]
    for b in bads:
        await b.info()
        await b.send(b"\xff\xfe garbage \x00\n")
    for b in bads:
        assert (await b.line()).startswith(b"ERR 400")
    await good.send(b"PING still-there\n")
    assert await good.expect(b"PONG") == b"PONG still-there"
    good.close()


@pytest.mark.parametrize(("how", "reason"), [
    ("bye", DisconnectReason.BYE), ("eof", DisconnectReason.EOF), ("reset", DisconnectReason.RESET),
])
async def test_disconnect_reasons(start_server: Any, how: str, reason: DisconnectReason) -> None:
    srv = await start_server()
    evs = recorder(srv)
    c = await RawClient.open(srv.port)
    await c.hello("leaver")
    if how == "bye":
        await c.send(b"BYE done\n")
    elif how == "eof":
        c.writer.write_eof()
    else:
        sock = c.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.writer.transport.abort()
    await wait_for(lambda: disconnects(evs))
    d = disconnects(evs)[0]
    assert d.reason is reason
    if how == "bye":
        assert d.detail == "done"
    assert srv.clients == []


async def test_takeover_replaces_the_older_connection(start_server: Any) -> None:
    srv = await start_server()
    evs = recorder(srv)
    old = await RawClient.open(srv.port)
    await old.hello("dup", session="s1")
    await old.send(b"MSG 1 1\na\n")
    assert await old.expect(b"ACK") == b"ACK 1"
    new = await RawClient.open(srv.port)
    ok = await new.hello("dup", session="s1")
    assert ok["acked"] == 1  # what the old connection delivered is covered
    assert await old.expect(b"BYE") == b"BYE replaced"
    assert await old.line() == b""
    assert srv.client("dup") is not None and srv.client("dup").addr != "?"
    hellos = [e for e in evs if isinstance(e, HelloReceived)]
    assert [h.replaced for h in hellos] == [False, True]
    await wait_for(lambda: disconnects(evs))
    assert disconnects(evs)[0].reason is DisconnectReason.REPLACED
    # The new connection works on.
    await new.send(b"MSG 1 2\nb\n")
    assert await new.expect(b"ACK") == b"ACK 2"
    new.close()


async def test_duplicates_are_acked_once_stored_and_skips_rejected(start_server: Any) -> None:
    srv = await start_server()
    evs = recorder(srv)
    c = await RawClient.open(srv.port)
    assert (await c.hello("seq", session="k3x9"))["acked"] == 0
    await c.send(b"MSG 1 1\na\nMSG 1 2\nb\n")
    assert await c.expect(b"ACK") in (b"ACK 2", b"ACK 1")
    c.close()
    await wait_for(lambda: srv.client("seq") is None)
    c2 = await RawClient.open(srv.port)
    assert (await c2.hello("seq", session="k3x9"))["acked"] == 2
    await c2.send(b"MSG 1 2\nb\n")  # a duplicate: re-acknowledged
    assert await c2.expect(b"ACK") == b"ACK 2"
    await c2.send(b"MSG 1 3\nc\nMSG 1 5\ne\n")  # 5 skips ahead of 4
    lines = await c2.lines_until_eof()
    assert b"ACK 3" in lines and any(ln.startswith(b"ERR 400") and b"skips ahead" in ln for ln in lines)
    msgs = [e for e in evs if isinstance(e, MessageReceived)]
    assert [(m.seq, m.duplicate) for m in msgs] == [(1, False), (2, False), (2, True), (3, False)]
    # A different session of the same id starts from zero.
    c3 = await RawClient.open(srv.port)
    assert (await c3.hello("seq", session="other"))["acked"] == 0
    c3.close()


async def test_hello_interval_is_clamped_and_timeout_scaled(start_server: Any) -> None:
    srv = await start_server(heartbeat_interval=5, heartbeat_timeout=15, min_heartbeat_interval=1,
                             max_heartbeat_interval=60)
    c = await RawClient.open(srv.port)
    ok = await c.hello("fast", heartbeat_interval=0.01)
    assert ok["heartbeat_interval"] == 1.0 and ok["heartbeat_timeout"] == 3.0
    c.close()
    c = await RawClient.open(srv.port)
    ok = await c.hello("slow", heartbeat_interval=1000)
    assert ok["heartbeat_interval"] == 60.0 and ok["heartbeat_timeout"] == 180.0
    c.close()


async def test_client_without_hello_is_known_by_address(start_server: Any) -> None:
    srv = await start_server()
    evs = recorder(srv)
    c = await RawClient.open(srv.port)
    await c.info()
    await c.send(b"MSG 2\nhi\nHEARTBEAT\n")
    await wait_for(lambda: any(isinstance(e, MessageReceived) for e in evs))
    m = next(e for e in evs if isinstance(e, MessageReceived))
    host, port = c.writer.get_extra_info("sockname")[:2]
    assert m.client.name == f"{host}:{port}" and m.client.id is None
    c.close()


async def test_ping_gets_pong_and_server_measures_rtt(start_server: Any) -> None:
    srv = await start_server()
    c = await RawClient.open(srv.port)
    await c.hello("pinger")
    ping = await c.line()  # the server's RTT probe right after OK
    assert ping.startswith(b"PING ")
    await c.send(b"PONG " + ping[5:] + b"\nPING abc\n")
    assert await c.expect(b"PONG") == b"PONG abc"
    await wait_for(lambda: srv.client("pinger").rtt is not None)
    c.close()


async def test_library_send_broadcast_and_event_stream(start_server: Any) -> None:
    srv = await start_server()
    got: list[Any] = []

    async def consume() -> None:
        async for ev in srv.events():
            got.append(ev)
            if isinstance(ev, MessageReceived):
                return
    consumer = asyncio.ensure_future(consume())
    await asyncio.sleep(0)
    async with tcpulse.connect("127.0.0.1", srv.port, id="lib-a") as a, \
            tcpulse.connect("127.0.0.1", srv.port, id="lib-b") as b:
        assert srv.send("lib-a", "just you")
        assert srv.broadcast(b"everyone") == 2
        it_a, it_b = a.__aiter__(), b.__aiter__()
        assert await asyncio.wait_for(it_a.__anext__(), 5) == b"just you"
        assert await asyncio.wait_for(it_a.__anext__(), 5) == b"everyone"
        assert await asyncio.wait_for(it_b.__anext__(), 5) == b"everyone"
        assert await a.send("from a") == 1
        assert await a.drain(5)
        await asyncio.wait_for(consumer, 5)
    assert any(isinstance(e, Connected) for e in got)
    assert isinstance(got[-1], MessageReceived) and got[-1].payload == b"from a"
    assert not srv.send("nobody", "x")


async def test_shutdown_sends_bye_shutdown_to_everyone(start_server: Any) -> None:
    srv = await start_server()
    cs = [await RawClient.open(srv.port) for _ in range(3)]
    for i, c in enumerate(cs):
        await c.hello(f"c{i}")
    closing = asyncio.ensure_future(srv.close(grace=2))
    for c in cs:
        assert await c.expect(b"BYE") == b"BYE shutdown"
        c.close()
    await asyncio.wait_for(closing, 5)
    with pytest.raises(OSError):
        await RawClient.open(srv.port)


async def test_json_log_lines(start_server: Any) -> None:
    import io

    from tcpulse.cli.console import ConsoleLog
    out = io.StringIO()
    srv = await start_server(heartbeat_interval=100 * MS, heartbeat_timeout=200 * MS)
    srv.subscribe(ConsoleLog(out, json_format=True), messages=True)
    c = await RawClient.open(srv.port)
    await c.hello("j", session="s")
    await c.send(b"MSG 5 1\nhello\nMSG 2\n\xff\xfe\nMSG 6\nline\n2\n")
    lines = await c.lines_until_eof()
    assert b"ACK 1" in lines and lines[-1] == b"BYE heartbeat-timeout"
    await wait_for(lambda: '"disconnect"' in out.getvalue())
    evs = [json.loads(ln) for ln in out.getvalue().splitlines()]
    names = [e["event"] for e in evs]
    assert names[:3] == ["connect", "hello", "message"]
    assert "suspect" in names and "timeout" in names and names[-1] == "disconnect"
    for e in evs:
        assert e["ts"].endswith("Z") and len(e["ts"]) == 24  # 2025-04-10T07:32:44.123Z
        assert e["addr"].startswith("127.0.0.1:")
        # Before HELLO a client is known by its address, after it by its id.
        assert e["client"] == (e["addr"] if e["event"] == "connect" else "j")
    msgs = [e for e in evs if e["event"] == "message"]
    assert msgs[0] == {**msgs[0], "size": 5, "seq": 1, "text": "hello"}
    assert msgs[1]["size"] == 2 and "text" not in msgs[1] and "seq" not in msgs[1]
    assert msgs[2]["text"] == "line\n2"
    hello = next(e for e in evs if e["event"] == "hello")
    assert hello["heartbeat_interval"] == pytest.approx(100 * MS)
    assert hello["heartbeat_timeout"] == pytest.approx(200 * MS)
    to = next(e for e in evs if e["event"] == "timeout")
    assert to["silent_for"] >= 200 * MS and to["late_by"] >= 0
    assert evs[-1]["reason"] == "timeout"


async def test_text_log_escapes_control_characters(start_server: Any) -> None:
    import io

    from tcpulse.cli.console import ConsoleLog
    out = io.StringIO()
    srv = await start_server()
    srv.subscribe(ConsoleLog(out), messages=True)
    c = await RawClient.open(srv.port)
    await c.hello("esc")
    forged = b"x\n[2025-01-01 00:00:00] Client admin connected\x1b[31m"
    await c.send(b"MSG %d\n" % len(forged) + forged + b"\n")
    await wait_for(lambda: "Message from esc" in out.getvalue())
    line = next(ln for ln in out.getvalue().splitlines() if "Message from esc" in ln)
    assert "\\n[2025-01-01" in line and "\\x1b[31m" in line
    assert not any(ln.startswith("[2025-01-01") for ln in out.getvalue().splitlines())
    c.close()


async def test_concurrent_hellos_with_one_id_leave_one_connection(start_server: Any) -> None:
    # Two HELLOs with the same id whose store look-ups overlap: whichever is answered last must
    # replace the other (PROTOCOL.md, "Identity and takeover"), never leave both connected.
    from tcpulse.store.memory import MemoryStore

    class SlowAcked(MemoryStore):
        async def acked(self, client_id: str, session: str) -> int:
            await asyncio.sleep(0.2 if session == "first" else 0.05)
            return await super().acked(client_id, session)

    srv = await start_server(store=SlowAcked())
    a = await RawClient.open(srv.port)
    b = await RawClient.open(srv.port)
    await a.info()
    await b.info()
    await a.send(b'HELLO {"id":"twin","session":"first"}\n')
    await asyncio.sleep(0.01)
    await b.send(b'HELLO {"id":"twin","session":"second"}\n')
    assert (await b.line()).startswith(b"OK ")  # b is answered first (its look-up is quicker)
    assert (await a.line()).startswith(b"OK ")  # then a, which replaces b
    assert await b.expect(b"BYE") == b"BYE replaced"
    await wait_for(lambda: len(srv.clients) == 1)
    assert srv.clients[0].session == "first" and srv.client("twin") is srv.clients[0]
    a.close()
    b.close()
