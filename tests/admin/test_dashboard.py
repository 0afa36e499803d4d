"""The live dashboard in a real headless Chromium (Debian's, driven by Playwright; no download).

Clients connect and their rows appear; one goes silent and the page shows it turn suspect and then
timed out, all without a reload.  A screenshot is kept under test-artifacts/ (git-ignored).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from tcpulse.admin.app import Admin
from tcpulse.client.client import Client
from tests.conftest import TIME_SCALE, RawClient

CHROMIUM = os.environ.get("TCPULSE_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]

# Skipped only on a developer machine without Chromium; in CI (CI=true, where scripts/setup.sh has
# installed it) a missing browser must fail the run, not hide the dashboard test.
pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists() and shutil.which("chromium") is None and not os.environ.get("CI"),
    reason="chromium is not installed: run scripts/setup.sh (it apt-get installs it)")


async def test_dashboard_rows_live_suspect_then_timed_out(start_server: Any) -> None:
    from playwright.async_api import async_playwright, expect

    s = TIME_SCALE
    # Suspect after 1.5 s of silence, dead after 3 s: a window long enough to see each state (the
    # page asks for its rows at most twice a second).
    srv = await start_server(heartbeat_interval=1.0 * s, heartbeat_timeout=3.0 * s)
    admin = Admin(srv, "127.0.0.1", 0)
    await admin.start()
    clients: list[Client] = []
    raw: list[RawClient] = []
    requests: list[str] = []
    try:
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = await browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("request", lambda r: requests.append(r.url))
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            await page.goto(admin.url)
            await expect(page.locator("#link")).to_have_text("live", timeout=10_000)
            await page.evaluate("window.__sameDocument = 'yes'")
            assert await page.locator("#clients tbody tr[data-cid]").count() == 0

            for name in ("sensor-1", "sensor-2"):
                c = Client("127.0.0.1", srv.port, id=name, heartbeat_interval=0.2 * s, reconnect=False)
                await c.start()
                clients.append(c)
            await clients[0].send("hello from sensor-1")
            for name in ("sensor-1", "sensor-2"):
                row = page.locator(f'#clients tbody tr[data-name="{name}"]')
                await expect(row).to_have_attribute("data-state", "alive", timeout=5_000)
            await expect(page.locator("#n-clients")).to_have_text("2")

            quiet = await RawClient.open(srv.port)
            await quiet.hello("quiet-1")  # and then silence
            raw.append(quiet)
            row = page.locator('#clients tbody tr[data-name="quiet-1"]')
            await expect(row).to_have_attribute("data-state", "alive", timeout=5_000)
            await expect(row).to_have_attribute("data-state", "suspect", timeout=5_000 * s)
            await expect(row.locator(".badge")).to_have_text("suspect")
            await expect(page.locator("#n-suspect")).to_have_text("1")
            await expect(row).to_have_attribute("data-state", "timeout", timeout=5_000 * s)
            await expect(row.locator(".badge")).to_have_text("timed out")
            await expect(page.locator("#n-timeouts")).to_have_text("1")
            await expect(page.locator("#log")).to_contain_text("quiet-1 timed out")
            # Its lateness reads as what it is: under a millisecond is "< 1 ms", never "0.0 ms".
            late = await page.locator("#log li", has_text="quiet-1 timed out").first.text_content()
            assert late is not None and re.search(r"\(late (< 1 ms|[1-9][0-9]*(\.[0-9])? ms)\)", late), late
            # The live clients are still there, still alive, and nothing reloaded the page.
            for name in ("sensor-1", "sensor-2"):
                await expect(page.locator(f'#clients tbody tr[data-name="{name}"]')).to_have_attribute(
                    "data-state", "alive")
            await expect(page.locator("#n-clients")).to_have_text("2")
            await expect(page.locator("#n-messages")).to_have_text("1", timeout=3_000)
            assert await page.evaluate("window.__sameDocument") == "yes"

            # A client that leaves cleanly shows as closed, not timed out.
            await clients[1].close()
            row2 = page.locator('#clients tbody tr[data-name="sensor-2"]')
            await expect(row2).to_have_attribute("data-state", "closed", timeout=5_000)
            # The filters ask the server: "gone" lists the two that went, "alive" the one left.
            await page.locator('#filters button[data-filter="gone"]').click()
            await expect(page.locator("#clients tbody tr[data-cid]")).to_have_count(2)
            await page.locator('#filters button[data-filter="alive"]').click()
            await expect(page.locator("#clients tbody tr[data-cid]")).to_have_count(1)
            await expect(page.locator('#clients tbody tr[data-name="sensor-1"]')).to_have_count(1)
            await page.locator('#filters button[data-filter="all"]').click()
            await expect(page.locator("#clients tbody tr[data-cid]")).to_have_count(3)

            # The page uses its space at 1280x900: it fits the window (no page scroll bar), the
            # table box reaches the bottom, the chart and the events sit beside the table.
            box = await page.evaluate("""() => {
                const r = (s) => document.querySelector(s).getBoundingClientRect();
                return {scroll: document.documentElement.scrollHeight, inner: innerHeight, width: innerWidth,
                        table: r('.table-box'), chart: r('.chart-box'), log: r('.log-box')}; }""")
            assert box["scroll"] <= box["inner"], box
            assert box["table"]["bottom"] >= box["inner"] - 24 and box["log"]["bottom"] >= box["inner"] - 24, box
            assert box["chart"]["left"] > box["table"]["right"] and box["table"]["width"] > 0.6 * box["width"], box

            # The chart has been drawn with real samples: some pixels on the canvas are coloured.
            await page.wait_for_timeout(1200)
            painted = await page.evaluate("""() => {
                const c = document.getElementById('chart');
                const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++;
                return n; }""")
            assert painted > 500

            ARTIFACTS.mkdir(exist_ok=True)
            await page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
            assert not errors, errors
            await browser.close()
    finally:
        for c in clients:
            await c.close()
        for r in raw:
            r.close()
        await admin.close()
    # Offline by construction: every request the page made went to the admin endpoint itself.
    assert requests and all(u.startswith(admin.url) or u.startswith("data:") for u in requests), requests
    await asyncio.sleep(0)


async def test_dashboard_in_chinese_behind_a_token(start_server: Any) -> None:
    from playwright.async_api import async_playwright, expect

    from tcpulse.admin.auth import admin_authorize

    srv = await start_server()
    admin = Admin(srv, "127.0.0.1", 0, authorize=admin_authorize("tok-123"))
    await admin.start()
    early = await RawClient.open(srv.port)
    await early.hello("zh-early")  # before the page opens: its log shows it on load
    requests: list[str] = []
    try:
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = await browser.new_page()
            page.on("request", lambda r: requests.append(r.url))
            # Without the token the page asks for it (no raw JSON error), in the page's language.
            await page.goto(admin.url + "?lang=zh")
            await expect(page.locator("#login")).to_be_visible(timeout=10_000)
            await expect(page.locator("#login label")).to_contain_text("管理令牌")
            await page.locator("#token-input").fill("wrong")
            await page.locator("#login button").click()
            await expect(page.locator("#login-error")).to_be_visible(timeout=10_000)
            await page.locator("#token-input").fill("tok-123")
            await page.locator("#login button").click()
            await expect(page.locator("#link")).to_have_text("实时", timeout=10_000)
            await expect(page.locator("#clients thead")).to_contain_text("客户端")
            await expect(page.locator("#log")).to_contain_text("zh-early 已登录")
            c = await RawClient.open(srv.port)
            await c.hello("zh-1")
            row = page.locator('#clients tbody tr[data-name="zh-1"]')
            await expect(row.locator(".badge")).to_have_text("正常", timeout=5_000)
            c.close()
            # A link with the token in its fragment opens the page at once, and the token leaves
            # the address bar (and never reaches the server in a URL but the event stream's).
            page2 = await browser.new_page()
            page2.on("request", lambda r: requests.append(r.url))
            await page2.goto(admin.url + "#token=tok-123")
            await expect(page2.locator("#link")).to_have_text("live", timeout=10_000)
            assert "tok-123" not in page2.url
            await browser.close()
    finally:
        early.close()
        await admin.close()
    leaked = [u for u in requests if "tok-123" in u]
    assert leaked and all("/api/events/stream?token=" in u for u in leaked), leaked


class _Quiet(asyncio.Protocol):
    """A signed-in client that says HELLO and then only listens (and discards what it hears)."""

    def __init__(self, hello: bytes) -> None:
        self.hello = hello
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.hello)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        pass


async def sign_in_many(port: int, n: int, prefix: str) -> list[asyncio.Transport]:
    loop = asyncio.get_running_loop()
    out: list[asyncio.Transport] = []
    for first in range(0, n, 250):
        made = await asyncio.gather(*(
            loop.create_connection(
                lambda i=i: _Quiet(b'HELLO {"id":"%s-%d","heartbeat_interval":60}\n' % (prefix.encode(), i)),
                "127.0.0.1", port)
            for i in range(first, min(n, first + 250))))
        out.extend(t for t, _p in made)
    return out


async def test_dashboard_is_a_window_at_a_few_thousand_clients(start_server: Any) -> None:
    # Issue 13, point 8: with 10,000 clients the page copied every row and could not render in
    # 150 s.  Now it holds the rows in view only and asks the server for them; the benchmark
    # (bench/admin_cost.py --dashboards) measures the time and the cost, this checks the behaviour.
    from playwright.async_api import async_playwright, expect

    n = 3000
    srv = await start_server(heartbeat_interval=30.0, heartbeat_timeout=120.0, max_heartbeat_interval=60.0)
    admin = Admin(srv, "127.0.0.1", 0)
    await admin.start()
    conns = await sign_in_many(srv.port, n, "many")
    loop = asyncio.get_running_loop()
    end = loop.time() + 60
    while sum(1 for c in srv.clients if c.id is not None) < n:
        assert loop.time() < end, "the clients did not sign in"
        await asyncio.sleep(0.1)
    requests: list[str] = []
    try:
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = await browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("request", lambda r: requests.append(r.url))
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            t0 = loop.time()
            await page.goto(admin.url)
            await expect(page.locator('#clients tbody tr[data-name="many-0"]')).to_have_count(1, timeout=30_000)
            await expect(page.locator("#n-clients")).to_have_text(str(n), timeout=30_000)
            usable = loop.time() - t0
            assert usable < 30, usable  # speed is the benchmark's business; this only says "it renders"
            rows = page.locator("#clients tbody tr[data-cid]")
            in_dom = await rows.count()
            assert 20 <= in_dom <= 100, in_dom  # the rows in view and a few around them, not 3,000
            await expect(page.locator("#shown")).to_contain_text(f"of {n}")
            height = await page.evaluate("document.getElementById('table-scroll').scrollHeight")
            assert height >= n * 28, height  # the scroll bar is as long as the whole list

            # Scroll to the end: the last clients are asked for and shown.
            await page.evaluate("(() => { const s = document.getElementById('table-scroll'); "
                                "s.scrollTop = s.scrollHeight; })()")
            await expect(page.locator(f'#clients tbody tr[data-name="many-{n - 1}"]')).to_have_count(1,
                                                                                                    timeout=10_000)
            assert await rows.count() <= 100
            # Sort by id, then the other way: the server sorts, the page shows the first rows.
            await page.evaluate("document.getElementById('table-scroll').scrollTop = 0")
            await page.locator('#clients th[data-sort="id"]').click()
            await expect(rows.first).to_have_attribute("data-name", "many-0", timeout=10_000)
            await page.locator('#clients th[data-sort="id"]').click()
            await expect(rows.first).to_have_attribute("data-name", "many-999", timeout=10_000)
            # Search: the server filters.
            await page.locator("#search").fill("many-2999")
            await expect(rows).to_have_count(1, timeout=10_000)
            await expect(page.locator("#shown")).to_contain_text("of 1")
            assert not errors, errors
            await browser.close()
    finally:
        for t in conns:
            t.abort()
        await admin.close()
    # Every page of rows it asked for was a window, never the whole list.
    asked = [u for u in requests if "/api/clients" in u]
    assert asked and all(int(u.split("limit=")[1].split("&")[0]) <= 100 for u in asked), asked
    assert sum("/api/events/stream" in u for u in requests) == 1
