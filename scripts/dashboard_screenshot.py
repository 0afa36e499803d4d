"""Make docs/dashboard.png: a real server with real clients for about 90 s, the dashboard open in
headless Chromium at 1280x900 the whole time, and a screenshot at the end (one client timed out,
one suspect, two gone, the events on the right).

    .venv/bin/python scripts/dashboard_screenshot.py [OUT.png] [--seconds 90]

Everything runs on 127.0.0.1; the browser is Debian's /usr/bin/chromium (scripts/setup.sh).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random

from playwright.async_api import async_playwright

from tcpulse.admin.app import Admin
from tcpulse.client.client import Client
from tcpulse.server.config import ServerConfig
from tcpulse.server.server import Server

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


async def silent_client(port: int, client_id: str) -> asyncio.StreamWriter:
    """HELLO, then nothing: the server finds it suspect, then times it out."""
    r, w = await asyncio.open_connection("127.0.0.1", port)
    await r.readline()
    w.write(b"HELLO " + json.dumps({"id": client_id}).encode() + b"\n")
    await w.drain()
    await r.readline()
    return w


async def main(out: str, seconds: float) -> None:
    rnd = random.Random(7)
    srv = Server(ServerConfig(port=0, heartbeat_interval=1.0, heartbeat_timeout=4.0, status_every=0))
    await srv.start()
    admin = Admin(srv, "127.0.0.1", 0)
    await admin.start()
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    rates: dict[str, float] = {}
    tasks: list[asyncio.Task[None]] = []
    clients: dict[str, Client] = {}
    writers = []

    async def sensor(name: str) -> None:
        c = Client("127.0.0.1", srv.port, id=name, heartbeat_interval=1.0, reconnect=False)
        await c.start()
        clients[name] = c
        while True:
            await asyncio.sleep(1 / rates[name])
            await c.send(f"reading {rnd.random():.3f}")

    async def at(t: float) -> None:
        await asyncio.sleep(max(0.0, t0 + t * seconds / 90 - loop.time()))

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        page = await browser.new_page(viewport={"width": 1280, "height": 900})
        await page.goto(admin.url)
        for i in range(12):  # a new sensor every 3 s
            await at(3 * i)
            name = f"sensor-{i + 1:02d}"
            rates[name] = rnd.choice([0.5, 1, 2, 3, 5])
            tasks.append(asyncio.ensure_future(sensor(name)))
        await at(48)
        for name in ("sensor-03", "sensor-07"):  # two leave cleanly
            await clients[name].close()
        await at(58)
        for name in rates:  # a burst of traffic
            rates[name] *= 3
        await at(70)
        for name in rates:
            rates[name] /= 3
        await at(78)
        writers.append(await silent_client(srv.port, "gateway-9"))  # times out at ~82 s
        await at(88.2)
        writers.append(await silent_client(srv.port, "meter-4"))  # suspect at ~89.7 s
        await at(90)
        await page.wait_for_timeout(1200)  # the rows in view are asked for once a second
        await page.screenshot(path=out)  # the page fits the window: nothing below it
        await browser.close()
    for t in tasks:
        t.cancel()
    for c in clients.values():
        with contextlib.suppress(Exception):
            await c.close()
    for w in writers:
        w.close()
    await admin.close()
    await srv.close(grace=1)
    print(f"wrote {out}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("out", nargs="?", default="docs/dashboard.png")
    ap.add_argument("--seconds", type=float, default=90.0, help="Length of the scenario (scaled).")
    a = ap.parse_args()
    asyncio.run(main(a.out, a.seconds))
