#!/usr/bin/env python3
"""What printing every message costs: ingest rate with the default text log, the JSON log and `-q`,
in one run, each server's stdout a pipe that this script reads (and throws away) as fast as it can.

    .venv/bin/python bench/print_rate.py                        # 50 clients x 20,000 x 64 B, 3 runs
    .venv/bin/python bench/print_rate.py --loop asyncio --runs 5

The server is `tcpulse serve --db none --status-every 0` (no store, so that the figures are the
server's and its log's only) with, in turn, no flag (text: one line per message), `--log-format
json` (one JSON object per message) and `-q` (no message lines).  The load generator is
`tcpulse.bench.load.ingest` in this process: unnumbered messages, to a PING barrier.  Target
(issue "Never stalls, never balloons"): text and JSON each at least half the `-q` rate.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from common import free_port, wait_port  # noqa: E402

from tcpulse.bench.load import ingest  # noqa: E402

#: fcntl's F_SETPIPE_SZ (Linux), not in the fcntl module before Python 3.10's on every platform.
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)

VARIANTS = {"text": [], "json": ["--log-format", "json"], "quiet": ["-q"]}




class Server:
    """A `tcpulse serve` child whose stdout `wc` reads (C speed, a process of its own): a reader
    in this process, busy generating the load, falls behind and makes the server drop lines.
    The pipe is made as large as the system allows (1 MiB), as a shell pipeline's could be."""

    def __init__(self, extra: list[str], loop: str) -> None:
        self.port = free_port()
        cmd = [sys.executable, "-m", "tcpulse", "serve", "--port", str(self.port), "--db", "none",
               "--status-every", "0", "--loop", loop, *extra]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     stdin=subprocess.DEVNULL)
        assert self.proc.stdout is not None
        with contextlib.suppress(OSError):
            fcntl.fcntl(self.proc.stdout.fileno(), F_SETPIPE_SZ, 1 << 20)
        self.wc = subprocess.Popen(["wc", "-lc"], stdin=self.proc.stdout, stdout=subprocess.PIPE)
        self.proc.stdout.close()
        self.lines = self.bytes = 0
        wait_port(self.port)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        out, _ = self.wc.communicate(timeout=30)
        self.lines, self.bytes = (int(x) for x in out.split()[:2])


def run(kind: str, a: argparse.Namespace) -> dict[str, float]:
    srv = Server(VARIANTS[kind], a.loop)
    try:
        t0 = time.monotonic()
        res = asyncio.run(ingest("127.0.0.1", srv.port, a.clients, a.messages, a.size, server_pid=srv.proc.pid))
        wall = time.monotonic() - t0
        time.sleep(1.0)  # the last lines on their way out of the server
    finally:
        srv.stop()
    # Every message is a line; a handful of lines are the server's own (start, capacity, stop).
    want = a.clients * a.messages if kind != "quiet" else 0
    return {"rate": res.rate, "wall": wall, "lines": srv.lines, "mb": srv.bytes / 1e6,
            "dropped": max(0, want - srv.lines)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--messages", type=int, default=20_000)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    a = ap.parse_args()
    results: dict[str, list[dict[str, float]]] = {k: [] for k in VARIANTS}
    for r in range(a.runs):
        for kind in VARIANTS:  # interleaved, so that drift of the machine hits every variant alike
            res = run(kind, a)
            results[kind].append(res)
            print(f"run {r + 1} {kind:5s}: {res['rate']:>10,.0f} msg/s   {res['lines']:>9,} lines "
                  f"{res['mb']:7.1f} MB read, {res['dropped']:,} dropped", flush=True)
    med = {k: statistics.median(x["rate"] for x in v) for k, v in results.items()}
    print(f"\n{a.clients} clients x {a.messages:,} x {a.size} B, --db none, loop {a.loop}; median of {a.runs}:")
    for k in VARIANTS:
        print(f"  {k:5s} {med[k]:>10,.0f} msg/s   {med[k] / med['quiet']:.2f} x -q")


if __name__ == "__main__":
    main()
