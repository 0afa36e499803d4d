"""Ingest with the durable store on vs `--db none`: numbered messages, throughput to the last ACK.

    .venv/bin/python bench/ingest_store.py                      # 50 clients x 20,000 x 64 B, 3 rounds
    .venv/bin/python bench/ingest_store.py --rounds 1 --messages 4000

Each round starts a fresh `tcpulse serve` (the shared load generator of `tcpulse bench ingest
--spawn --seq`), once with `--db none` and once with a new SQLite file, alternating so that a
busy machine hurts both alike, and prints messages per second to the last ACK.  The target of
issue 3: with the store on, at least half the rate of `--db none`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile

from tcpulse.bench.load import SpawnedServer, ingest


def one(db: str, clients: int, messages: int, size: int) -> float:
    srv = SpawnedServer(["--status-every", "0", "--db", db])
    try:
        port = srv.wait_listening()
        res = asyncio.run(ingest("127.0.0.1", port, clients, messages, size, seq=True, server_pid=srv.pid))
    finally:
        srv.stop()
    if res.connected != clients:
        sys.exit(f"only {res.connected} of {clients} clients connected")
    return float(res.rate)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--messages", type=int, default=20000, help="numbered messages per client")
    ap.add_argument("--size", type=int, default=64, help="payload bytes")
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    rates: dict[str, list[float]] = {"none": [], "sqlite": []}
    with tempfile.TemporaryDirectory(prefix="tcpulse-bench-") as tmp:
        for r in range(a.rounds):
            for mode in ("none", "sqlite"):
                db = "none" if mode == "none" else os.path.join(tmp, f"round{r}.db")
                rate = one(db, a.clients, a.messages, a.size)
                rates[mode].append(rate)
                print(f"round {r + 1}  --db {mode:<6}  {rate:>10,.0f} msg/s", flush=True)
    none, store = statistics.median(rates["none"]), statistics.median(rates["sqlite"])
    print(f"median   --db none    {none:>10,.0f} msg/s")
    print(f"median   --db sqlite  {store:>10,.0f} msg/s  ({store / none:.0%} of --db none; target >= 50%)")


if __name__ == "__main__":
    main()
