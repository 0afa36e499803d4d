#!/usr/bin/env python3
"""CPU and memory of `tcpulse serve` against the number of clients held, on both event loops.

    .venv/bin/python bench/curve.py                          # 1k, 5k, 10k; asyncio and uvloop; 3 runs
    .venv/bin/python bench/curve.py --clients 19900 --runs 1 --silent 1000   # as far as the fd limit allows

Each point runs `tcpulse bench hold --spawn` (a fresh server per run, stopped by its PID) and
prints the medians: server CPU while every client beats each --interval, resident memory per
client, and, with --silent, the lateness of the timeouts.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def run(n: int, loop: str, a: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "tcpulse", "bench", "hold", "--spawn", "--server-loop", loop, "-n", str(n),
           "--interval", repr(a.interval), "--silent", str(a.silent), "--measure", repr(a.measure), "--json"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=180, cwd=ROOT, stdin=subprocess.DEVNULL)
    if out.returncode != 0:
        sys.exit(f"curve: {' '.join(cmd[2:])} failed: {out.stderr.strip()}")
    return dict(json.loads(out.stdout))


def med(xs: list[Any]) -> Any:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--clients", default="1000,5000,10000")
    ap.add_argument("--loops", default="asyncio,uvloop")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--interval", type=float, default=1.0)
    ap.add_argument("--silent", type=int, default=0)
    ap.add_argument("--measure", type=float, default=5.0)
    a = ap.parse_args()
    print(f"tcpulse serve --db none -q, clients beating every {a.interval:g} s; median of {a.runs} run(s)\n")
    print("| loop | clients | held | server CPU | RSS MiB | KiB/client | silenced | timed out | false "
          "| late p50 ms | p99 ms | max ms |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for loop in a.loops.split(","):
        for n in (int(x) for x in a.clients.split(",")):
            rs = [run(n, loop, a) for _ in range(a.runs)]
            for r in rs:
                print(json.dumps(r), file=sys.stderr, flush=True)
            lat = [r["lateness_ms"] for r in rs if r["lateness_ms"]]
            cells = [loop, f"{n:,}", f"{med([r['connected'] for r in rs]):,.0f}",
                     f"{med([r['server_cpu'] for r in rs]):.1%}",
                     f"{med([r['server_rss'] for r in rs]) / (1 << 20):.1f}",
                     f"{med([r['rss_per_client'] for r in rs]) / 1024:.2f}",
                     str(a.silent), f"{med([r['timed_out'] for r in rs]):.0f}",
                     f"{med([r['false_timeouts'] for r in rs]):.0f}"]
            for k in ("p50", "p99", "max"):
                v = med([x[k] for x in lat])
                cells.append("-" if v is None else f"{v:.1f}")
            print("| " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
