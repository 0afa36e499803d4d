"""Broadcast bursts against the global budget for queued bytes (`--max-queued`): are healthy
clients ever closed for a burst they take in time?

    .venv/bin/python bench/broadcast_budget.py                      # 2,000 readers, 5 x 500 KB, 0.2 s apart
    .venv/bin/python bench/broadcast_budget.py --clients 2000 --size 500000 --bursts 5 --gap 0.2 --budget-mib 256

One process on uvloop (asyncio when uvloop is missing): a server, and N clients that read
everything it sends.  The server broadcasts `--bursts` messages of `--size` bytes, `--gap`
seconds apart.  Printed: the peak of bytes queued in the server, how many clients were closed and
why, and whether every client received every byte.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from tcpulse.events import Disconnected
from tcpulse.server import Server, ServerConfig


async def run(n: int, size: int, bursts: int, gap: float, budget: int) -> dict[str, object]:
    srv = Server(ServerConfig(port=0, status_every=0, max_payload=max(size, 1 << 20), max_queued=budget,
                              heartbeat_interval=30, heartbeat_timeout=60))
    closed: list[Disconnected] = []
    srv.subscribe(lambda e: closed.append(e) if isinstance(e, Disconnected) else None)
    await srv.start()
    got = [0] * n

    async def reader(i: int) -> None:
        r, w = await asyncio.open_connection("127.0.0.1", srv.port)
        await r.readline()
        w.write(b'HELLO {"id":"c%d","heartbeat_interval":30}\n' % i)
        await r.readline()
        while chunk := await r.read(1 << 16):
            got[i] += len(chunk)

    tasks = [asyncio.create_task(reader(i)) for i in range(n)]
    while len(srv.clients) < n:
        await asyncio.sleep(0.05)
    base = list(got)  # the server's RTT PING may have arrived already
    frame = len(b"MSG %d\n" % size) + size + 1
    peak = 0
    payload = b"x" * size
    for _ in range(bursts):
        srv.broadcast(payload)
        peak = max(peak, srv.guard.queued_total)
        await asyncio.sleep(gap)
    end = time.monotonic() + 30
    alive = {c.id for c in srv.clients}
    while time.monotonic() < end and any(got[i] - base[i] < bursts * frame for i in range(n) if f"c{i}" in alive):
        await asyncio.sleep(0.05)
    complete = sum(got[i] - base[i] >= bursts * frame for i in range(n))
    for t in tasks:
        t.cancel()
    await srv.close(grace=0.5)
    budget_closed = sum("--max-queued" in (e.detail or "") for e in closed)
    return {"clients": n, "size": size, "bursts": bursts, "gap": gap, "budget_mib": budget >> 20,
            "peak_queued_mib": round(peak / (1 << 20), 1), "closed_for_budget": budget_closed,
            "closed_for_own_cap": sum("--max-write-buffer" in (e.detail or "") for e in closed),
            "received_everything": complete}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=2000)
    ap.add_argument("--size", type=int, default=500_000)
    ap.add_argument("--bursts", type=int, default=5)
    ap.add_argument("--gap", type=float, default=0.2)
    ap.add_argument("--budget-mib", type=int, default=256)
    a = ap.parse_args()
    try:
        import uvloop
        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    print(runner(run(a.clients, a.size, a.bursts, a.gap, a.budget_mib << 20)))


if __name__ == "__main__":
    main()
