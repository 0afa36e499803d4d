"""What the admin endpoint costs: ingest with `--admin` (watched) vs without, and request times.

    .venv/bin/python bench/admin_cost.py                     # 3 rounds of 50 x 20,000 x 64 B; 5,000 idle clients
    .venv/bin/python bench/admin_cost.py --rounds 1 --idle 1000

Part 1 starts a fresh `tcpulse serve` per round, alternately without and with `--admin`; with it,
a dashboard's event stream is open and `/metrics` is scraped every 0.5 s during the run (the
worst realistic case).  It prints messages per second (the shared load generator, unnumbered).
Part 2 holds `--idle` signed-in clients on one server and times `/metrics`, `/api/server`,
`/api/clients?limit=100` and the whole `/api/clients` (median of 20 requests each).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import threading
import time
import urllib.request

from tcpulse.bench.load import SpawnedServer, ingest


def admin_url(srv: SpawnedServer, timeout: float = 20.0) -> str:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with open(srv.log.name, encoding="utf-8") as f:
            for line in f:
                ev = json.loads(line)
                if ev.get("event") == "admin":
                    return str(ev["url"]).rstrip("/")
        time.sleep(0.05)
    raise RuntimeError("no admin URL in the server's log")


def watch(url: str, stop: threading.Event, scrapes: list[float]) -> None:
    """A dashboard (the event stream, read to the end) and a Prometheus scraper every 0.5 s."""
    def stream() -> None:
        with urllib.request.urlopen(url + "/api/events", timeout=60) as r:
            while not stop.is_set() and r.readline():
                pass
    threading.Thread(target=stream, daemon=True).start()
    while not stop.wait(0.5):
        t = time.perf_counter()
        with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
            r.read()
        scrapes.append(time.perf_counter() - t)


def one(admin: bool, clients: int, messages: int, size: int) -> tuple[float, list[float]]:
    srv = SpawnedServer(["--status-every", "0", *(["--admin", "127.0.0.1:0"] if admin else [])])
    stop = threading.Event()
    scrapes: list[float] = []
    try:
        port = srv.wait_listening()
        if admin:
            threading.Thread(target=watch, args=(admin_url(srv), stop, scrapes), daemon=True).start()
            time.sleep(0.3)
        res = asyncio.run(ingest("127.0.0.1", port, clients, messages, size, server_pid=srv.pid))
    finally:
        stop.set()
        srv.stop()
    if res.connected != clients:
        sys.exit(f"only {res.connected} of {clients} clients connected")
    return float(res.rate), scrapes


async def hold_idle(port: int, n: int) -> list[asyncio.StreamWriter]:
    writers = []
    for i in range(n):
        r, w = await asyncio.open_connection("127.0.0.1", port)
        await r.readline()
        w.write(b'HELLO {"id":"idle-%d","heartbeat_interval":60}\n' % i)
        writers.append(w)
    await asyncio.gather(*(w.drain() for w in writers))
    return writers


def timed(url: str, n: int = 20) -> tuple[float, int]:
    times, size = [], 0
    for _ in range(n):
        t = time.perf_counter()
        with urllib.request.urlopen(url, timeout=30) as r:
            size = len(r.read())
        times.append(time.perf_counter() - t)
    return statistics.median(times), size


def requests_with_idle(idle: int) -> None:
    srv = SpawnedServer(["--status-every", "0", "--admin", "127.0.0.1:0", "--max-heartbeat-interval", "60"])
    try:
        port = srv.wait_listening()
        url = admin_url(srv)

        async def run() -> None:
            writers = await hold_idle(port, idle)
            await asyncio.sleep(1.0)
            loop = asyncio.get_running_loop()
            n = json.loads(await loop.run_in_executor(None, lambda: urllib.request.urlopen(
                url + "/api/server").read()))["clients"]["total"]
            print(f"\n{n} idle clients held; median of 20 requests:")
            for path in ("/metrics", "/api/server", "/api/clients?limit=100", f"/api/clients?limit={idle}"):
                med, size = await loop.run_in_executor(None, timed, url + path)
                print(f"  GET {path:<28} {med * 1000:8.1f} ms  {size:>10,} bytes", flush=True)
            for w in writers:
                w.close()
        asyncio.run(run())
    finally:
        srv.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--messages", type=int, default=20000, help="messages per client")
    ap.add_argument("--size", type=int, default=64, help="payload bytes")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--idle", type=int, default=5000, help="idle clients for the request timings")
    a = ap.parse_args()
    rates: dict[str, list[float]] = {"off": [], "on": []}
    for r in range(a.rounds):
        for mode in ("off", "on"):
            rate, scrapes = one(mode == "on", a.clients, a.messages, a.size)
            rates[mode].append(rate)
            extra = f"  ({len(scrapes)} scrapes of /metrics during the run)" if mode == "on" else ""
            print(f"round {r + 1}  admin {mode:<3}  {rate:>10,.0f} msg/s{extra}", flush=True)
    off, on = statistics.median(rates["off"]), statistics.median(rates["on"])
    print(f"median: admin off {off:,.0f} msg/s, admin on and watched {on:,.0f} msg/s ({on / off:.0%})")
    if a.idle:
        requests_with_idle(a.idle)


if __name__ == "__main__":
    main()
