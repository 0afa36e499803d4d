"""The admin endpoint of any node shows the whole cluster: `/api/clients` with each client's node
and a node filter, `/api/nodes`, `/api/server`'s `cluster`, `tcpulse_cluster_*` metrics, the
dashboard feed with the other nodes' clients and changes, `POST /api/clients/{id}/send` to a
client of another node, a stale view while Redis is away, and `tcpulse status --node`."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tcpulse.admin.app import Admin
from tcpulse.cluster.redis import RedisCluster
from tcpulse.server.config import ServerConfig
from tcpulse.server.server import Server
from tests.admin.test_api import get, metrics
from tests.admin.test_dashboard import pytestmark as needs_chromium
from tests.cluster.parts import Redis
from tests.conftest import RawClient

pytestmark = pytest.mark.slow


async def until(pred: Any, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < end, "condition not met in time"
        await asyncio.sleep(0.02)


async def status(admin: Admin, *args: str) -> tuple[int, str, str]:
    p = await asyncio.create_subprocess_exec(sys.executable, "-m", "tcpulse", "status", "--admin", admin.url, *args,
                                             stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                                             env={**os.environ, "COLUMNS": "200"})
    out, err = await asyncio.wait_for(p.communicate(), 60)
    return int(p.returncode or 0), out.decode(), err.decode()


@pytest.fixture
async def two(redis: Redis) -> AsyncIterator[tuple[Server, Server, Admin]]:
    servers, admins = [], []
    for name in ("a", "b"):
        srv = Server(ServerConfig(port=0, status_every=0, server_id=name))
        srv.use_cluster(RedisCluster(redis.url, lease_ttl=1.0))
        await srv.start()
        servers.append(srv)
    admin = Admin(servers[0], "127.0.0.1", 0)
    await admin.start()
    admins.append(admin)
    yield servers[0], servers[1], admin
    await admin.close()
    for s in servers:
        await s.close(grace=0.5)


async def test_any_node_shows_the_whole_cluster(two: Any, redis: Redis) -> None:
    a, b, admin = two
    here = await RawClient.open(a.port)
    await here.hello("here")
    there = await RawClient.open(b.port)
    await there.hello("there")
    # Each node publishes a connection when it opens and again after its HELLO, with its name.
    await until(lambda: {r["name"] for r in a.cluster.clients()} == {"here", "there"})
    got = await get(admin, "/api/clients")
    assert {(r["name"], r["node"]) for r in got["clients"]} == {("here", "a"), ("there", "b")}
    assert got["total"] == 2
    remote = next(r for r in got["clients"] if r["node"] == "b")
    assert remote["heartbeats"] is None and remote["state"] == "alive"  # its node's figure, not published
    only_b = await get(admin, "/api/clients?node=b")
    assert [r["name"] for r in only_b["clients"]] == ["there"]
    nodes = await get(admin, "/api/nodes")
    assert [(n["node"], n["local"], n["clients"]["total"]) for n in nodes["nodes"]] == [("a", True, 1),
                                                                                        ("b", False, 1)]
    srv = await get(admin, "/api/server")
    assert srv["cluster"]["nodes"] == 2 and srv["cluster"]["clients"]["total"] == 2
    assert srv["cluster"]["stale"] is False
    m = metrics(await get(admin, "/metrics"))
    assert m["tcpulse_cluster_nodes"] == 2
    assert m['tcpulse_cluster_clients{node="b",state="alive"}'] == 1
    assert m["tcpulse_cluster_stale"] == 0

    # A client of another node reached through this node's admin endpoint.
    async with aiohttp.ClientSession() as s:
        raw = {"Content-Type": "application/octet-stream"}
        async with s.post(admin.url + "api/clients/there/send", data=b"hi there", headers=raw) as r:
            assert r.status == 200, await r.text()
            assert (await r.json())["node"] == "b"
        async with s.post(admin.url + "api/clients/nobody/send", data=b"?", headers=raw) as r:
            assert r.status == 404
        # What a web page may send to another origin unasked (a form, text/plain) is refused.
        async with s.post(admin.url + "api/clients/there/send", data=b"csrf",
                          headers={"Content-Type": "text/plain"}) as r:
            assert r.status == 415
    assert await there.expect(b"MSG", 10) == b"MSG 8"
    assert await there.line() == b"hi there"

    # The dashboard's feed: its hello names this node's view of the cluster; another node's
    # change arrives as an event of the log, with the node (the rows come from /api/clients).
    async with aiohttp.ClientSession() as s, s.get(admin.url + "api/events/stream") as r:
        async def next_msg() -> dict[str, Any]:
            while True:
                line = await asyncio.wait_for(r.content.readline(), 10)
                assert line, "the feed ended"
                if line.startswith(b"data: "):
                    return dict(json.loads(line[6:]))
        first = await next_msg()
        assert first["type"] == "hello" and first["server"]["cluster"]["node"] == "a"
        assert first["server"]["cluster"]["nodes"] == 2
        late = await RawClient.open(b.port)
        await late.hello("late")
        events: list[dict[str, Any]] = []
        end = time.monotonic() + 10
        while not any(e["kind"] == "hello" and e["name"] == "late" for e in events):
            assert time.monotonic() < end
            msg = await next_msg()
            events += msg.get("events", [])
        hello = next(e for e in events if e["kind"] == "hello" and e["name"] == "late")
        assert hello["node"] == "b"
        assert (hello["heartbeat_interval"], hello["heartbeat_timeout"]) == (5.0, 10.0)  # the log says them

    # tcpulse status of this node shows both, with the node, and filters by node.
    # (A process of its own, awaited: the admin endpoint answers from this test's event loop.)
    code, out, err = await status(admin, "--json", "--node", "b")
    assert code == 0, err
    assert sorted(r["name"] for r in json.loads(out)["clients"]) == ["late", "there"]
    code, out, err = await status(admin)
    assert code == 0, err
    assert "node" in out and "there" in out and " b " in out

    # Redis away: stale in the API and the metric; both nodes go on serving.
    redis.stop()
    await until(lambda: a.cluster.stale)
    assert (await get(admin, "/api/server"))["cluster"]["stale"] is True
    assert metrics(await get(admin, "/metrics"))["tcpulse_cluster_stale"] == 1
    redis.start()
    await until(lambda: not a.cluster.stale, 15)
    for rc in (here, there, late):
        rc.close()


@needs_chromium
async def test_the_dashboard_shows_another_nodes_clients_and_changes(two: Any) -> None:
    """The page of node a in headless Chromium: a client of node b appears in the table with its
    node, and its sign-in in the log says which node and with what interval (it said
    `heartbeat NaN s` before those fields were published with the event)."""
    from playwright.async_api import async_playwright, expect

    from tests.admin.test_dashboard import CHROMIUM, CHROMIUM_ARGS

    a, b, admin = two
    here = await RawClient.open(a.port)
    await here.hello("here")
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            await page.goto(admin.url)
            await expect(page.locator("#link")).to_have_text("live", timeout=10_000)
            there = await RawClient.open(b.port)
            await there.hello("there")
            row = page.locator('#clients tbody tr[data-name="there"]')
            await expect(row).to_have_attribute("data-state", "alive", timeout=10_000)
            await expect(row).to_contain_text("@ b")
            log = page.locator("#log")
            await expect(log).to_contain_text("there @ b signed in", timeout=10_000)
            await expect(log).to_contain_text("heartbeat 5 s, timeout 10 s")
            assert "NaN" not in (await log.inner_text())
            assert errors == []
            there.close()
        finally:
            await browser.close()
    here.close()
