"""The admin endpoint over real HTTP against a real server with real clients in known states."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tcpulse.admin.app import Admin, parse_admin_addr
from tcpulse.client.client import Client
from tcpulse.server.server import Server
from tests.conftest import MS, RawClient


async def get(admin: Admin, path: str, status: int = 200, **kw: Any) -> Any:
    async with aiohttp.ClientSession() as s, s.get(admin.url.rstrip("/") + path, **kw) as r:
        assert r.status == status, (path, r.status, await r.text())
        if r.content_type == "application/json":
            return await r.json()
        return await r.text()


async def until(cond: Any, timeout: float = 5.0) -> None:
    end = asyncio.get_running_loop().time() + timeout
    while not cond():
        assert asyncio.get_running_loop().time() < end, "condition not met in time"
        await asyncio.sleep(0.01)


def metrics(text: str) -> dict[str, float]:
    """Every sample as `name{label="v",...}` -> value."""
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


async def test_clients_json_states_sort_filter_page(start_server: Any, admin_for: Any) -> None:
    # 300 ms interval, a long timeout: a silent client turns suspect after 450 ms and stays so.
    srv = await start_server(heartbeat_interval=300 * MS, heartbeat_timeout=60.0)
    admin = await admin_for(srv)
    live = Client("127.0.0.1", srv.port, id="beater", heartbeat_interval=100 * MS, reconnect=False)
    await live.start()
    talker = await RawClient.open(srv.port)
    await talker.hello("talker", heartbeat_interval=10.0)
    await talker.send(b"MSG 5\nhello\nMSG 3\nabc\n")
    silent = await RawClient.open(srv.port)
    await silent.hello("silent")  # then never says anything again
    await asyncio.sleep(200 * MS)
    await talker.send(b"HEARTBEAT\n")  # heard from later than the silent one
    await until(lambda: srv.client("silent") is not None and srv.client("silent").state.value == "suspect")
    await until(lambda: srv.client("talker") is not None and srv.client("talker").heartbeats == 1)
    await until(lambda: srv.client("beater") is not None and srv.client("beater").rtt is not None)

    data = await get(admin, "/api/clients")
    assert data["total"] == 3 and data["num_clients"] == 3 and data["offset"] == 0
    by = {c["id"]: c for c in data["clients"]}
    assert set(by) == {"beater", "talker", "silent"}
    assert by["silent"]["state"] == "suspect"
    assert by["beater"]["state"] == "alive"
    assert by["talker"]["messages"] == 2
    assert by["talker"]["heartbeat_interval"] == 10.0 and by["talker"]["heartbeat_timeout"] == 60.0 / (300 * MS) * 10
    assert by["beater"]["heartbeat_interval"] == pytest.approx(100 * MS)
    assert by["beater"]["rtt_ms"] is not None and by["beater"]["rtt_ms"] > 0
    assert by["silent"]["rtt_ms"] is None  # it never answered the server's PING
    assert by["silent"]["idle"] >= 0.45 * 300 * MS * 3
    # bytes_in counts every byte the talker sent: INFO is read, HELLO + two MSG frames written.
    hello = b'HELLO {"id": "talker", "heartbeat_interval": 10.0}\n'
    assert by["talker"]["bytes_in"] == len(hello) + len(b"MSG 5\nhello\nMSG 3\nabc\nHEARTBEAT\n")
    assert by["talker"]["bytes_out"] > 0 and by["talker"]["addr"].startswith("127.0.0.1:")
    for field in ("cid", "name", "session", "connected_at", "last_heard", "uptime", "heartbeats", "bytes_out"):
        assert field in by["silent"]
    assert by["beater"]["heartbeats"] >= 1 or by["beater"]["bytes_in"] > 0

    suspects = await get(admin, "/api/clients?state=suspect")
    assert [c["id"] for c in suspects["clients"]] == ["silent"] and suspects["total"] == 1
    both = await get(admin, "/api/clients?state=alive,suspect")
    assert both["total"] == 3

    idle = await get(admin, "/api/clients?sort=idle")
    assert idle["clients"][0]["id"] == "silent"  # most idle first
    idles = [c["idle"] for c in idle["clients"]]
    assert idles == sorted(idles, reverse=True)
    asc = await get(admin, "/api/clients?sort=idle&order=asc")
    assert asc["clients"][-1]["id"] == "silent"
    assert [c["idle"] for c in asc["clients"]] == sorted(c["idle"] for c in asc["clients"])
    msgs = await get(admin, "/api/clients?sort=messages")
    assert msgs["clients"][0]["id"] == "talker"

    page1 = await get(admin, "/api/clients?sort=cid&limit=2&offset=0")
    page2 = await get(admin, "/api/clients?sort=cid&limit=2&offset=2")
    assert page1["num_clients"] == 2 and page2["num_clients"] == 1 and page1["total"] == page2["total"] == 3
    cids = [c["cid"] for c in page1["clients"] + page2["clients"]]
    assert cids == sorted(cids) and len(set(cids)) == 3

    # A search by a part of the id or the address, case-insensitive, on the server.
    found = await get(admin, "/api/clients?q=TALK")
    assert [c["id"] for c in found["clients"]] == ["talker"] and found["total"] == 1
    assert (await get(admin, "/api/clients?q=127.0.0.1&sort=id"))["total"] == 3
    assert (await get(admin, "/api/clients?q=nobody"))["total"] == 0

    for bad in ("state=sleepy", "sort=colour", "limit=-1", "limit=x", "offset=1.5", "order=up", "limit=%C2%B2",
                "offset=" + "9" * 5000, "q=" + "x" * 201):
        err = await get(admin, "/api/clients?" + bad, status=400)
        assert "error" in err and "Traceback" not in err["error"]
    await live.close()

    # Clients that ended stay listed for a while as `gone`, with how they ended; the open ones
    # are what /api/clients lists without a state.
    talker.close()
    await until(lambda: srv.client("talker") is None)
    gone = await get(admin, "/api/clients?state=gone")
    rows = {c["id"]: c for c in gone["clients"]}
    assert rows["talker"]["state"] == "closed" and rows["talker"]["reason"] == "eof" and "ended_at" in rows["talker"]
    assert rows["talker"]["messages"] == 2
    every = await get(admin, "/api/clients?state=alive,suspect,dead,gone")
    assert {c["id"] for c in every["clients"]} >= {"silent", "talker"}
    assert "talker" not in {c["id"] for c in (await get(admin, "/api/clients"))["clients"]}
    # In arrival order, newest first, across open and gone.
    desc = await get(admin, "/api/clients?state=alive,suspect,dead,gone&order=desc")
    cids = [c["cid"] for c in desc["clients"]]
    assert cids == sorted(cids, reverse=True) and desc["total"] == every["total"]
    silent.close()


async def test_server_totals_lateness_and_health(start_server: Any, admin_for: Any) -> None:
    srv = await start_server(heartbeat_interval=100 * MS, heartbeat_timeout=200 * MS)
    admin = await admin_for(srv)
    info = await get(admin, "/api/server")
    assert info["accepting"] is True and info["version"] and info["server_id"] == srv.server_id
    assert info["settings"]["heartbeat_timeout"] == pytest.approx(200 * MS)
    assert info["timeout_lateness"]["count"] == 0 and info["timeout_lateness"]["p99_ms"] is None
    assert info["totals"]["connections"] == 0

    gone = []
    for i in range(3):  # three clients that say HELLO and then go silent until they time out
        c = await RawClient.open(srv.port)
        await c.hello(f"quiet-{i}")
        gone.append(c)
    bad = await RawClient.open(srv.port)
    await bad.info()
    await bad.send(b"NONSENSE\n")
    assert (await bad.expect(b"ERR ")).startswith(b"ERR 400")
    for c in gone:
        await c.expect(b"BYE heartbeat-timeout")
    await until(lambda: not srv.clients)

    info = await get(admin, "/api/server")
    assert info["totals"]["connections"] == 4
    assert info["totals"]["timeouts"] == 3
    assert info["totals"]["protocol_errors"] == {"400": 1}
    late = info["timeout_lateness"]
    assert late["count"] == 3
    assert 0 <= late["p50_ms"] <= late["p99_ms"] <= late["max_ms"]
    assert info["clients"] == {"total": 0, "alive": 0, "suspect": 0, "dead": 0}
    assert info["uptime"] > 0

    assert (await get(admin, "/healthz")) == {"status": "ok"}
    await srv.close(grace=0.5)
    assert (await get(admin, "/healthz", status=503)) == {"status": "unavailable"}
    assert (await get(admin, "/api/server"))["accepting"] is False


async def test_metrics_counters_move(start_server: Any, admin_for: Any) -> None:
    srv = await start_server(heartbeat_interval=100 * MS, heartbeat_timeout=300 * MS)
    admin = await admin_for(srv)
    m0 = metrics(await get(admin, "/metrics"))
    assert m0["tcpulse_connections_total"] == 0
    assert m0['tcpulse_clients{state="alive"}'] == 0
    assert m0["tcpulse_accepting"] == 1
    assert f'tcpulse_server_info{{server_id="{srv.server_id}",version="0.1.0"}}' in m0

    c = await RawClient.open(srv.port)
    await c.hello("m1", heartbeat_interval=5.0)  # long interval of its own: stays alive
    await c.send(b"MSG 4\nabcd\nHEARTBEAT\nHEARTBEAT\n")
    await until(lambda: srv.client("m1") is not None and srv.client("m1").heartbeats == 2)
    m1 = metrics(await get(admin, "/metrics"))
    assert m1["tcpulse_connections_total"] == 1
    assert m1["tcpulse_messages_received_total"] == 1
    assert m1["tcpulse_heartbeats_received_total"] == 2
    assert m1['tcpulse_clients{state="alive"}'] == 1
    assert m1["tcpulse_received_bytes_total"] > m0["tcpulse_received_bytes_total"]
    assert m1["tcpulse_sent_bytes_total"] > 0

    # A library client answers the server's PING: the RTT histogram counts it.
    lib = Client("127.0.0.1", srv.port, id="m2", heartbeat_interval=50 * MS, reconnect=False)
    await lib.start()
    await until(lambda: srv.client("m2") is not None and srv.client("m2").rtt is not None)
    # A silent one times out: the timeout counter and the lateness histogram move.
    q = await RawClient.open(srv.port)
    await q.hello("m3")
    await q.expect(b"BYE heartbeat-timeout")
    # And a bad frame: a protocol error by code.
    bad = await RawClient.open(srv.port)
    await bad.info()
    await bad.send(b"x" * 5000)
    assert (await bad.expect(b"ERR ")).startswith(b"ERR 413")
    # The first client leaves: its counters move into the server's totals, not lost.
    c.close()
    await until(lambda: srv.client("m1") is None)

    m2 = metrics(await get(admin, "/metrics"))
    assert m2["tcpulse_connections_total"] == 4
    assert m2["tcpulse_messages_received_total"] == 1
    assert m2["tcpulse_heartbeats_received_total"] >= 2
    assert m2["tcpulse_received_bytes_total"] >= m1["tcpulse_received_bytes_total"]
    assert m2["tcpulse_timeouts_total"] == 1
    assert m2["tcpulse_timeout_lateness_seconds_count"] == 1
    assert m2['tcpulse_timeout_lateness_seconds_bucket{le="+Inf"}'] == 1
    assert m2["tcpulse_rtt_seconds_count"] >= 1
    assert m2['tcpulse_protocol_errors_total{code="413"}'] == 1
    assert m2['tcpulse_clients{state="alive"}'] == 1  # m2 still beating
    # How each connection ended: m1 hung up, m3 timed out, the bad one was closed with its ERR.
    assert m2['tcpulse_disconnects_total{reason="eof"}'] == 1
    assert m2['tcpulse_disconnects_total{reason="timeout"}'] == 1
    assert m2['tcpulse_disconnects_total{reason="error"}'] == 1
    assert (await get(admin, "/api/server"))["totals"]["disconnects"] == {"eof": 1, "error": 1, "timeout": 1}
    await lib.close()


async def test_memory_held_for_clients_against_its_budgets(start_server: Any, admin_for: Any) -> None:
    srv = await start_server(max_payload=64 * 1024, max_buffered=1 << 20, max_queued=32 << 20,
                             max_write_buffer=8 << 20)
    admin = await admin_for(srv)
    mem = (await get(admin, "/api/server"))["memory"]
    assert mem == {"buffered_bytes": 0, "max_buffered": 1 << 20, "queued_bytes": 0, "max_queued": 32 << 20,
                   "slow_consumers_shed": 0}
    # Half a message: its bytes are held until the rest comes.
    half = await RawClient.open(srv.port)
    await half.hello("half")
    await half.send(b"MSG 1000\n" + b"x" * 300)
    await until(lambda: srv.guard.held_total >= 300)
    assert (await get(admin, "/api/server"))["memory"]["buffered_bytes"] >= 300
    assert metrics(await get(admin, "/metrics"))["tcpulse_buffered_bytes"] >= 300
    # A client that does not read: what its socket cannot take waits in the server.
    deaf = socket.socket()
    deaf.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    deaf.connect(("127.0.0.1", srv.port))
    deaf.sendall(b'HELLO {"id":"deaf"}\n')
    await until(lambda: srv.client("deaf") is not None)
    for _ in range(400):
        srv.send("deaf", b"y" * 60_000)
        if srv.guard.queued_total > 1 << 20:
            break
        await asyncio.sleep(0)
    mem = (await get(admin, "/api/server"))["memory"]
    assert mem["queued_bytes"] > 1 << 20
    assert metrics(await get(admin, "/metrics"))["tcpulse_queued_bytes"] > 1 << 20
    deaf.close()
    half.close()
    await until(lambda: srv.client("deaf") is None and srv.client("half") is None)
    mem = (await get(admin, "/api/server"))["memory"]
    assert mem["buffered_bytes"] == 0 and mem["queued_bytes"] == 0


async def test_dropped_frame_429s_are_counted(start_server: Any, admin_for: Any) -> None:
    # PROTOCOL.md, "Errors", 429: frames over the rate are dropped with ERR 429 and the client
    # stays connected (until it keeps on); those ERRs are protocol errors by code too.
    srv = await start_server(max_frames_per_sec=10, max_strikes=100)
    admin = await admin_for(srv)
    c = await RawClient.open(srv.port)
    await c.hello("eager", heartbeat_interval=5.0)
    await c.send(b"HEARTBEAT\n" * 50)  # one read, five times the one-second burst
    assert (await c.expect(b"ERR ")) == b"ERR 429 too many frames per second, frame dropped"
    assert srv.client("eager") is not None  # dropped, not closed
    m = metrics(await get(admin, "/metrics"))
    assert m.get('tcpulse_protocol_errors_total{code="429"}', 0) >= 1  # one per read that went over
    errors = (await get(admin, "/api/server"))["totals"]["protocol_errors"]
    assert set(errors) == {"429"} and errors["429"] >= 1
    c.close()


async def test_registry_is_per_server(start_server: Any, admin_for: Any) -> None:
    # Two servers in one process: each admin counts only its own (no global registry).
    s1 = await start_server()
    s2 = await start_server()
    a1, a2 = await admin_for(s1), await admin_for(s2)
    c = await RawClient.open(s1.port)
    await c.hello("only-on-one")
    m1 = metrics(await get(a1, "/metrics"))
    m2 = metrics(await get(a2, "/metrics"))
    assert m1["tcpulse_connections_total"] == 1 and m2["tcpulse_connections_total"] == 0
    c.close()


async def sse_messages(r: aiohttp.ClientResponse) -> AsyncIterator[dict[str, Any]]:
    while True:
        line = await asyncio.wait_for(r.content.readline(), 5)
        assert line, "stream ended"
        if line.startswith(b"data: "):
            yield dict(json.loads(line[6:]))


async def test_event_stream_says_hello_then_batches_events(start_server: Any, admin_for: Any) -> None:
    srv = await start_server(heartbeat_interval=200 * MS, heartbeat_timeout=600 * MS)
    admin = await admin_for(srv)
    early = await RawClient.open(srv.port)
    await early.hello("early")  # before the dashboard opens: it is in the hello's recent events
    async with aiohttp.ClientSession() as s, s.get(admin.url + "api/events/stream") as r:
        assert r.headers["Content-Type"].startswith("text/event-stream")
        feed = sse_messages(r)
        hello = await anext(feed)
        assert hello["type"] == "hello" and hello["server"]["server_id"] == srv.server_id
        assert [(e["kind"], e["name"]) for e in hello["events"]][-1] == ("hello", "early")
        assert "clients" not in hello  # the rows are asked for a page at a time (/api/clients)
        c = await RawClient.open(srv.port)
        await c.hello("fed")
        events: list[dict[str, Any]] = []
        samples: list[dict[str, Any]] = []
        while not samples or not any(e["kind"] == "timeout" and e["name"] == "fed" for e in events):
            msg = await anext(feed)
            assert msg["type"] == "batch"
            events.extend(msg["events"])
            if "sample" in msg:
                samples.append(msg["sample"])
        cid = next(e["cid"] for e in events if e["kind"] == "hello" and e["name"] == "fed")
        kinds = [e["kind"] for e in events if e["cid"] == cid]
        # Connected (no id yet), HELLO, suspect, then timeout: in that order.
        assert kinds.index("connect") < kinds.index("hello") < kinds.index("suspect") < kinds.index("timeout")
        to = next(e for e in events if e["kind"] == "timeout" and e["name"] == "fed")
        assert to["silent_for"] >= 600 * MS * 0.99 and to["late_ms"] >= 0
        seqs = [e["seq"] for e in events]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
        assert samples and {"clients", "alive", "suspect", "msg_rate", "messages", "timeouts"} <= set(samples[-1])
        c.close()
        early.close()
    await until(lambda: not admin.feed.subscribers)


async def test_recent_events_json(start_server: Any, admin_for: Any) -> None:
    # /api/events: the last events the admin kept (a bounded ring), oldest first.
    from tcpulse.admin.feed import RECENT
    srv = await start_server()
    admin = await admin_for(srv)
    for i in range(3):
        c = await RawClient.open(srv.port)
        await c.hello(f"ev-{i}")
        c.close()
    await until(lambda: admin.feed.seq >= 9)  # connect, hello, close each
    data = await get(admin, "/api/events")
    kinds = [(e["kind"], e["name"]) for e in data["events"]]
    assert ("hello", "ev-0") in kinds and ("close", "ev-2") in kinds
    assert data["seq"] == data["events"][-1]["seq"] == admin.feed.seq
    two = await get(admin, "/api/events?limit=2")
    assert [e["seq"] for e in two["events"]] == [data["seq"] - 1, data["seq"]]
    after = await get(admin, f"/api/events?after={data['seq'] - 3}")
    assert [e["seq"] for e in after["events"]] == [data["seq"] - 2, data["seq"] - 1, data["seq"]]
    assert (await get(admin, "/api/events?limit=0"))["events"] == []
    for bad in ("limit=x", f"limit={RECENT + 1}", "after=-1"):
        assert "error" in await get(admin, "/api/events?" + bad, status=400)
    # The ring is bounded: no more than RECENT events, whatever happened.
    for _ in range(RECENT // 2 + 10):  # connect and close each
        c = await RawClient.open(srv.port)
        await c.info()
        c.close()
    await until(lambda: admin.feed.seq >= 9 + RECENT)
    assert len(admin.feed.recent) == RECENT


async def test_stalled_dashboard_is_cut_off_and_its_queue_freed() -> None:
    # A dashboard that stops reading must not hold more than a bounded amount of the server's
    # memory, counted in bytes and in messages; a large first message (the hello) still goes
    # out, and the connection is closed at once (on_drop), not when its handler next runs.
    from tcpulse.admin.feed import QUEUE_MAX, QUEUE_MAX_BYTES, Subscriber

    big = Subscriber()
    big.put(b"s" * (QUEUE_MAX_BYTES + 1))  # a hello larger than the cap: let through
    assert not big.dropped and big.queue.qsize() == 1
    assert await big.get(1.0) == b"s" * (QUEUE_MAX_BYTES + 1) and big.queued_bytes == 0

    cut: list[str] = []
    stalled = Subscriber(on_drop=lambda: cut.append("closed"))
    chunk = b"x" * (64 << 10)
    for _ in range(QUEUE_MAX_BYTES // len(chunk) + 5):
        stalled.put(chunk)
    assert stalled.dropped and cut == ["closed"]
    assert stalled.queue.qsize() == 1 and stalled.queued_bytes == 0  # what it had not read: freed
    assert await stalled.get(1.0) is None  # and its stream ends (the browser reconnects)
    stalled.put(chunk)
    assert stalled.queue.empty() and cut == ["closed"]

    many = Subscriber()
    for _ in range(QUEUE_MAX + 1):
        many.put(b"data: {}\n\n")
    assert many.dropped and await many.get(1.0) is None

    reader = Subscriber()  # one that keeps reading is never cut off
    for _ in range(QUEUE_MAX * 4):
        reader.put(chunk)
        assert await reader.get(1.0) == chunk
    assert not reader.dropped and reader.queued_bytes == 0


async def test_auth_hook_guards_all_but_healthz(start_server: Any, admin_for: Any) -> None:
    srv = await start_server()
    admin = await admin_for(srv, authorize=lambda req: req.headers.get("Authorization") == "Bearer s3cret")
    for path in ("/api/clients", "/api/server", "/metrics", "/api/events", "/api/events/stream"):
        await get(admin, path, status=401)
    await get(admin, "/healthz")
    # The page, its script and its style carry no data and load without the token (a browser
    # cannot send a header when it opens a page; the page asks for the token); the data they
    # fetch needs it.
    assert "EventSource" in await get(admin, "/static/dashboard.js")
    assert "dashboard.js" in await get(admin, "/")
    ok = await get(admin, "/api/server", headers={"Authorization": "Bearer s3cret"})
    assert ok["server_id"] == srv.server_id


async def test_dashboard_files_are_served(start_server: Any, admin_for: Any) -> None:
    srv = await start_server()
    admin = await admin_for(srv)
    page = await get(admin, "/")
    assert "static/dashboard.js" in page and "http" not in page.replace("http-equiv", "")  # no CDN
    js = await get(admin, "/static/dashboard.js")
    assert "EventSource" in js
    await get(admin, "/static/dashboard.css")
    await get(admin, "/static/../admin.py", status=404)


def test_rtt_finer_than_a_millisecond_on_uvloop() -> None:
    # `serve` and `connect` run on uvloop when it is installed, whose clock ticks in whole
    # milliseconds: a loopback RTT taken on it reads 0 or 1 ms.  Both ends must measure finer.
    uvloop = pytest.importorskip("uvloop")
    from tcpulse.server.config import ServerConfig
    from tcpulse.server.events import RttMeasured

    def whole_ms(seconds: float) -> bool:
        return abs(seconds * 1000 - round(seconds * 1000)) < 1e-6

    async def main() -> tuple[list[float], list[float]]:
        srv = Server(ServerConfig(port=0, status_every=0))
        await srv.start()
        server_rtts: list[float] = []
        srv.subscribe(lambda ev: server_rtts.append(ev.rtt) if isinstance(ev, RttMeasured) else None,
                      messages=False, heartbeats=False)
        clients = []
        try:
            for i in range(3):
                c = Client("127.0.0.1", srv.port, id=f"uv-{i}", reconnect=False)
                await c.start()
                clients.append(c)
            client_rtts = [await c.ping() for c in clients for _ in range(2)]
            await until(lambda: len(server_rtts) >= 3)
        finally:
            for c in clients:
                await c.close()
            await srv.close(grace=0.5)
        return server_rtts, client_rtts

    server_rtts, client_rtts = uvloop.run(main())
    assert all(r > 0 for r in server_rtts + client_rtts), (server_rtts, client_rtts)
    assert not all(whole_ms(r) for r in server_rtts), server_rtts
    assert not all(whole_ms(r) for r in client_rtts), client_rtts


@pytest.mark.parametrize(("text", "want"), [
    ("127.0.0.1:8222", ("127.0.0.1", 8222)),
    (":9000", ("127.0.0.1", 9000)),
    ("9000", ("127.0.0.1", 9000)),
    ("[::1]:8222", ("::1", 8222)),
    ("localhost:0", ("localhost", 0)),
])
def test_parse_admin_addr(text: str, want: tuple[str, int]) -> None:
    assert parse_admin_addr(text) == want


@pytest.mark.parametrize("text", ["", "host:", "host:99999", "::1:8222", "[::1]8222", "a:b"])
def test_parse_admin_addr_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_admin_addr(text)
