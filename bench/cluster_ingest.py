#!/usr/bin/env python3
"""Ingest of numbered messages: the shared PostgreSQL store against SQLite, in the same run.

    .venv/bin/python bench/cluster_ingest.py                    # 50 clients x 20,000 x 64 B, 3 rounds
    .venv/bin/python bench/cluster_ingest.py --rounds 1 --messages 4000

A PostgreSQL of its own (tests/cluster/parts.py: initdb in a temporary directory, run as
`nobody`) with PostgreSQL's durable defaults (`fsync` and `synchronous_commit` on: a commit is on
the disk before the ACK), and in each round a fresh `tcpulse serve` (the shared load generator
of `tcpulse bench ingest --seq`) with a new SQLite file, then with `--db postgresql://...` on an
emptied database, then with `--db none` for reference; messages per second to the last ACK.
SQLite runs as `serve` always does: WAL with `synchronous=NORMAL` (a commit survives the process,
not a power cut), so the two do not promise the same: `--pg-sync off` runs PostgreSQL with
`synchronous_commit=off` (a commit survives the server process once written, not a power cut)
for the closer comparison.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.cluster.parts import Postgres  # noqa: E402

from tcpulse.bench.load import SpawnedServer, ingest  # noqa: E402


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
    ap.add_argument("--pg-sync", choices=["on", "off"], default="on", help="PostgreSQL's synchronous_commit")
    a = ap.parse_args()
    pg = Postgres(durable=True, synchronous_commit=a.pg_sync).start()
    rates: dict[str, list[float]] = {"sqlite": [], "postgres": [], "none": []}
    try:
        with tempfile.TemporaryDirectory(prefix="tcpulse-bench-") as tmp:
            for r in range(a.rounds):
                for mode in ("sqlite", "postgres", "none"):
                    if mode == "postgres":
                        pg.reset()
                        db = pg.url
                    else:
                        db = "none" if mode == "none" else os.path.join(tmp, f"round{r}.db")
                    rate = one(db, a.clients, a.messages, a.size)
                    rates[mode].append(rate)
                    print(f"round {r + 1}  --db {mode:<8}  {rate:>10,.0f} msg/s", flush=True)
            stored = pg.psql("SELECT count(*), count(DISTINCT (session_id, seq)) FROM messages")
    finally:
        pg.close()
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(f"median   --db none      {med['none']:>10,.0f} msg/s")
    print(f"median   --db sqlite    {med['sqlite']:>10,.0f} msg/s  ({med['sqlite'] / med['none']:.0%} of none)")
    print(f"median   --db postgres  {med['postgres']:>10,.0f} msg/s  ({med['postgres'] / med['sqlite']:.0%} of sqlite; "
          f"synchronous_commit={a.pg_sync})")
    print(f"last round in PostgreSQL: rows, distinct (session, seq) = {stored}")


if __name__ == "__main__":
    main()
