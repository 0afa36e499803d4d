"""Numbered ingest into the durable store, against `--db none` and the Python floor, to the last ACK.

    .venv/bin/python bench/ingest_store.py                      # 50 clients x 20,000 x 64 B, 3 rounds, uvloop
    .venv/bin/python bench/ingest_store.py --loop asyncio
    .venv/bin/python bench/ingest_store.py --rounds 1 --messages 4000 --no-floor

Each round runs, one after the other so that a busy machine hurts all alike:

- `tcpulse serve --db none` and `tcpulse serve --db FILE` (a new SQLite file), each taking numbered
  messages (`HELLO` with a session) and counted to the `ACK` of every client's last one;
- the floor server (`../shared/bench/floor_server.py`, the least work a Python server of this
  framing must do), taking the same number of unnumbered messages, counted to a `PING` barrier.

The load generator is `tcpulse bench ingest`, a fresh process each time (its loop: uvloop when
installed).  Targets: the store at least half of `--db none` (issue 3), and at least half of the
floor (issue 11).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import free_port, wait_port

from tcpulse.bench.load import SpawnedServer

ROOT = Path(__file__).resolve().parent.parent
FLOOR = ROOT.parent / "shared" / "bench" / "floor_server.py"


def generator(kind: str, port: int, pid: int, a: argparse.Namespace, seq: bool) -> float:
    cmd = [sys.executable, "-m", "tcpulse", "bench", "ingest", "--kind", kind, "--port", str(port),
           "--server-pid", str(pid), "-n", str(a.clients), "-m", str(a.messages), "--size", str(a.size),
           "--json", *(["--seq"] if seq else [])]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        sys.exit(f"ingest_store: the generator against {kind} failed: {done.stderr.strip()}")
    res = json.loads(done.stdout)
    if res["connected"] != a.clients:
        sys.exit(f"ingest_store: only {res['connected']} of {a.clients} clients connected to {kind}")
    return float(res["rate"])


def tcpulse_round(db: str, a: argparse.Namespace) -> float:
    srv = SpawnedServer(["--status-every", "0", "--db", db, "--loop", a.loop])
    try:
        port = srv.wait_listening()
        return generator("tcpulse", port, srv.pid, a, seq=True)
    finally:
        srv.stop()


def floor_round(a: argparse.Namespace) -> float:
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(FLOOR), "--port", str(port), "--loop", a.loop],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    try:
        wait_port(port, proc)
        return generator("floor", port, proc.pid, a, seq=False)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(5)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--messages", type=int, default=20000, help="messages per client")
    ap.add_argument("--size", type=int, default=64, help="payload bytes")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop", help="the servers' event loop")
    ap.add_argument("--no-floor", action="store_true", help="leave the floor server out")
    a = ap.parse_args()
    with_floor = not a.no_floor
    if with_floor and not FLOOR.exists():
        sys.exit(f"ingest_store: {FLOOR} is missing (it comes from ../shared beside the repository); "
                 "leave it out with --no-floor")
    modes = ["none", "sqlite", *(["floor"] if with_floor else [])]
    rates: dict[str, list[float]] = {m: [] for m in modes}
    print(f"{a.clients} clients x {a.messages} x {a.size} B, servers on {a.loop}", flush=True)
    with tempfile.TemporaryDirectory(prefix="tcpulse-bench-") as tmp:
        for r in range(a.rounds):
            for mode in modes:
                if mode == "floor":
                    rate = floor_round(a)
                    label = "floor (unnumbered)"
                else:
                    rate = tcpulse_round("none" if mode == "none" else os.path.join(tmp, f"round{r}.db"), a)
                    label = f"--db {mode} (numbered)"
                rates[mode].append(rate)
                print(f"round {r + 1}  {label:<22} {rate:>10,.0f} msg/s", flush=True)
    none, store = statistics.median(rates["none"]), statistics.median(rates["sqlite"])
    print(f"median   --db none              {none:>10,.0f} msg/s")
    print(f"median   --db sqlite            {store:>10,.0f} msg/s  ({store / none:.0%} of --db none; target >= 50%)")
    if with_floor:
        floor = statistics.median(rates["floor"])
        print(f"median   floor                  {floor:>10,.0f} msg/s")
        print(f"store / floor {store / floor:.2f}x (target >= 0.5x); --db none / floor {none / floor:.2f}x")


if __name__ == "__main__":
    main()
