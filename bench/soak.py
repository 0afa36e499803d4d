#!/usr/bin/env python3
"""Soak: 10,000 clients beating every second for 10 minutes on the default (SQLite) store, then
1,000 of them fall silent at once; the same again while one more client floods numbered messages.

    .venv/bin/python bench/soak.py                             # 10,000 clients, 600 s, both runs
    .venv/bin/python bench/soak.py --clients 2000 --seconds 60 --runs plain

Printed per run: the server's RSS after a minute of warm-up and at the end (sampled every
second, and its peak), false timeouts among the beating clients (target 0), how many of the
1,000 silenced were told, their timeout lateness as the clients saw it (BYE against their own
deadline), and for the flood run the numbered messages the flooder got acknowledged.

The server is `tcpulse serve --db <tmp>/soak.db -q --status-every 0` (the default store); the
load generator is `tcpulse.bench.load.hold` in this process; the flooder, a process of its own
(`tcpulse.bench.load.ingest`, one client, batches of 20,000 numbered 64-byte messages, again
and again until the hold ends).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from common import LogTap, free_port, pct, proc_status, wait_port  # noqa: E402

from tcpulse.bench.load import hold  # noqa: E402

_FLOODER = r"""
import asyncio, sys, time
sys.path.insert(0, sys.argv[2])
from tcpulse.bench.load import ingest
port = int(sys.argv[1])
total = 0
rates = []
async def main():
    global total
    while True:
        r = await ingest("127.0.0.1", port, 1, 20000, 64, seq=True)
        total += 20000
        rates.append(r.rate)
        print(total, round(r.rate), flush=True)
asyncio.run(main())
"""






def run(kind: str, a: argparse.Namespace, tmp: str) -> dict[str, Any]:
    port = free_port()
    db = os.path.join(tmp, f"soak-{kind}.db")
    # -q --log-format json: the log holds only warnings and timeouts, whose late_by is the server's
    # own lateness (the clients' figure includes this process's own lag beside 10,000 clients).
    srv = subprocess.Popen([sys.executable, "-m", "tcpulse", "serve", "--port", str(port), "--db", db, "-q",
                            "--log-format", "json", "--status-every", "0", "--loop", a.loop], stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    assert srv.stdout is not None
    tap = LogTap(srv.stdout)
    samples: list[tuple[float, int]] = []
    stop = threading.Event()

    def sample() -> None:
        t0 = time.monotonic()
        while not stop.is_set():
            samples.append((time.monotonic() - t0, proc_status(srv.pid, "VmRSS")))
            time.sleep(1.0)
    flooder = None
    acked = [0]
    try:
        wait_port(port)
        threading.Thread(target=sample, daemon=True).start()
        if kind == "flood":
            flooder = subprocess.Popen([sys.executable, "-c", _FLOODER, str(port), str(ROOT / "src")],
                                       stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)

            def count() -> None:
                assert flooder is not None and flooder.stdout is not None
                for line in flooder.stdout:
                    acked[0] = int(line.split()[0])
            threading.Thread(target=count, daemon=True).start()
        res = asyncio.run(hold("127.0.0.1", port, a.clients, 1.0, a.silent, server_pid=srv.pid,
                               measure=a.seconds))
    finally:
        stop.set()
        if flooder is not None:
            flooder.terminate()
            flooder.wait(10)
        srv.terminate()
        try:
            srv.wait(30)
        except subprocess.TimeoutExpired:
            srv.kill()
            srv.wait()
        tap.wait(30)
    server_late = sorted(t["late_by"] * 1000 for t in tap.timeouts)
    warm = next((r for t, r in samples if t >= a.warmup), samples[-1][1] if samples else 0)
    return {"run": kind, "clients": res.connected, "seconds": a.seconds, "false_timeouts": res.false_timeouts,
            "other_closes": res.other_closes, "silenced": a.silent, "timed_out": res.timed_out, "missed": res.missed,
            "early": res.early, "lateness_ms": res.lateness_ms,
            "rss_warm_mib": round(warm / 2**20, 1), "rss_end_mib": round(res.server_rss / 2**20, 1) if res.server_rss
            else None, "rss_peak_mib": round(max((r for _t, r in samples), default=0) / 2**20, 1),
            "server_cpu": res.server_cpu, "ticker_late_ms": res.ticker_late_ms, "flood_acked": acked[0],
            "server_late_ms": {"p50": pct(server_late, 50), "p99": pct(server_late, 99),
                               "max": round(server_late[-1], 2) if server_late else None}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=10_000)
    ap.add_argument("--silent", type=int, default=1_000)
    ap.add_argument("--seconds", type=float, default=600.0)
    ap.add_argument("--warmup", type=float, default=60.0)
    ap.add_argument("--runs", default="plain,flood")
    ap.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="tcpulse-soak-") as tmp:
        for kind in a.runs.split(","):
            r = run(kind, a, tmp)
            print(json.dumps(r), flush=True)
            late = r["lateness_ms"]
            print(f"{kind:5s}: {r['clients']:,} clients {r['seconds']:g} s; RSS {r['rss_warm_mib']} MiB after "
                  f"{a.warmup:g} s, {r['rss_end_mib']} MiB at the end (peak {r['rss_peak_mib']}); false timeouts "
                  f"{r['false_timeouts']} (other closes {r['other_closes']}); {r['timed_out']}/{r['silenced']} told, "
                  f"late (clients) p50 {late.get('p50')} p99 {late.get('p99')} max {late.get('max')} ms, (server) "
                  f"p50 {r['server_late_ms']['p50']} p99 {r['server_late_ms']['p99']} max "
                  f"{r['server_late_ms']['max']} ms; generator lag {r['ticker_late_ms']} ms; server CPU "
                  f"{r['server_cpu']}; flood acked {r['flood_acked']:,}", flush=True)


if __name__ == "__main__":
    main()
