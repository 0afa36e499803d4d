#!/usr/bin/env python3
"""Numbered flood into the SQLite store: server memory, false timeouts, and timers meanwhile.

    .venv/bin/python bench/flood_store.py                       # 50 x 200,000 x 64 B, log on and -q
    .venv/bin/python bench/flood_store.py --messages 50000 --variants quiet

K clients each send M numbered messages of B bytes as fast as they can into `tcpulse serve`'s
default SQLite store (to the last ACK).  Meanwhile 20 sentinel clients beat every 0.25 s (timeout
1 s) and fall silent one after another during the flood.  Printed, per variant (`log`: the JSON
log prints every message to a pipe this script reads; `quiet`: `-q`):

- the server's peak RSS (sampled every 50 ms, and the kernel's VmHWM);
- flooding clients announced `timeout` (target 0) and sentinels announced (all 20 expected);
- the sentinels' timeout lateness: the server's own `late_by`, and the BYE as the client saw it;
- that every message is stored once (rows == distinct (session, seq) == K x M).

Targets (issue "Never stalls, never balloons"): RSS peak <= 256 MiB, 0 flooders timed out,
timers on time for the others.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import statistics
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

from common import LogTap, free_port, proc_status, wait_port  # noqa: E402

from tcpulse.bench.load import ingest  # noqa: E402

SENTINELS = 20
SENTINEL_INTERVAL = 0.25  # asked in HELLO; the server's ratio (10 s / 5 s) makes the timeout 0.5 s
SENTINEL_BEAT = 0.1




class ServerRun:
    def __init__(self, db: str, quiet: bool, loop: str) -> None:
        self.port = free_port()
        cmd = [sys.executable, "-m", "tcpulse", "serve", "--port", str(self.port), "--db", db,
               "--status-every", "0", "--log-format", "json", "--loop", loop]
        if quiet:
            cmd.append("-q")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        assert self.proc.stdout is not None
        # The log is read by a process of its own (this one is busy generating the load).
        self.tap = LogTap(self.proc.stdout)
        self.rss_peak = 0
        self._stop = threading.Event()
        threading.Thread(target=self._sample, daemon=True).start()
        wait_port(self.port)


    def _sample(self) -> None:
        while not self._stop.is_set() and self.proc.poll() is None:
            self.rss_peak = max(self.rss_peak, proc_status(self.proc.pid, "VmRSS"))
            time.sleep(0.05)

    def hwm(self) -> int:
        return proc_status(self.proc.pid, "VmHWM")

    def stop(self) -> None:
        self._stop.set()
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.tap.wait(30)






_SENTINELS = r"""
import asyncio, json, sys, time
port, n, start, stagger, interval, beat_every = (int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]),
                                                 float(sys.argv[4]), float(sys.argv[5]), float(sys.argv[6]))

async def sentinel(i, silent_at, seen):
    r, w = await asyncio.open_connection("127.0.0.1", port)
    await r.readline()  # INFO
    w.write(b'HELLO {"id":"sentinel-%d","heartbeat_interval":%s}\n' % (i, str(interval).encode()))
    ok = await r.readline()
    timeout = json.loads(ok[3:])["heartbeat_timeout"]
    last = time.monotonic()

    async def beat():
        nonlocal last
        while time.monotonic() < silent_at:
            w.write(b"HEARTBEAT\n")
            last = time.monotonic()
            await asyncio.sleep(beat_every)
    beating = asyncio.ensure_future(beat())
    while True:
        line = await asyncio.wait_for(r.readline(), 600)
        if not line:
            break
        if line.startswith(b"BYE heartbeat-timeout"):
            seen.append(time.monotonic() - (last + timeout))
            break
        if line.startswith(b"PING"):
            w.write(b"PONG" + line[4:])
    beating.cancel()
    w.close()

async def main():
    seen = []
    t0 = time.monotonic() + start
    await asyncio.gather(*(sentinel(i, t0 + i * stagger, seen) for i in range(n)), return_exceptions=True)
    print(json.dumps(seen))

asyncio.run(main())
"""


def start_sentinels(port: int, stagger: float) -> subprocess.Popen[bytes]:
    """The sentinels, in a process of their own (this one is busy generating the load): they
    beat, fall silent one after another, and print how late each BYE reached them."""
    return subprocess.Popen([sys.executable, "-c", _SENTINELS, str(port), str(SENTINELS), "1.0", str(stagger),
                             str(SENTINEL_INTERVAL), str(SENTINEL_BEAT)], stdout=subprocess.PIPE)


async def one(variant: str, a: argparse.Namespace, tmp: str) -> dict[str, Any]:
    db = os.path.join(tmp, f"flood-{variant}.db")
    srv = ServerRun(db, variant == "quiet", a.loop)
    try:
        # The sentinels fall silent one after another over the first seconds of the flood.
        sents = start_sentinels(srv.port, a.stagger)
        res = await ingest("127.0.0.1", srv.port, a.clients, a.messages, a.size, seq=True, server_pid=srv.proc.pid)
        # Not blocking this loop: the flooders' sockets close in its next turns (abort() closes late).
        out, _ = await asyncio.get_running_loop().run_in_executor(None, lambda: sents.communicate(timeout=120))
        seen = json.loads(out)
        hwm = srv.hwm()
    finally:
        srv.stop()
    time.sleep(0.2)
    con = sqlite3.connect(db)
    rows, distinct = con.execute("SELECT count(*), count(DISTINCT session_id || ':' || seq) FROM messages "
                                 "WHERE seq IS NOT NULL").fetchone()
    con.close()
    flooders = [t for t in srv.tap.timeouts if str(t.get("client", "")).startswith("ingest-")]
    if flooders:
        print("flooders timed out:", json.dumps(flooders[:3]), file=sys.stderr)
    sent = [t for t in srv.tap.timeouts if str(t.get("client", "")).startswith("sentinel-")]
    late = sorted(t["late_by"] * 1000 for t in sent)
    return {
        "variant": variant, "rate": res.rate, "elapsed": res.elapsed,
        "rss_peak_mib": round(srv.rss_peak / 2**20, 1), "hwm_mib": round(hwm / 2**20, 1),
        "flooders_timed_out": len(flooders), "sentinels_timed_out": len(sent),
        "late_ms_p50": round(statistics.median(late), 2) if late else None,
        "late_ms_max": round(max(late), 2) if late else None,
        "bye_seen_ms_max": round(max(seen) * 1000, 2) if seen else None,
        "stored": rows, "distinct": distinct, "expected": a.clients * a.messages,
        "log_lines": srv.tap.lines, "log_dropped": srv.tap.dropped,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--messages", type=int, default=200_000)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--stagger", type=float, default=0.5, help="seconds between sentinels falling silent")
    ap.add_argument("--variants", default="log,quiet")
    ap.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="tcpulse-flood-") as tmp:
        for v in a.variants.split(","):
            r = asyncio.run(one(v, a, tmp))
            print(json.dumps(r), flush=True)
            ok = r["stored"] == r["distinct"] == r["expected"]
            print(f"{v:5s}: {r['rate']:>9,.0f} msg/s to the last ACK; RSS peak {r['rss_peak_mib']} MiB "
                  f"(VmHWM {r['hwm_mib']}); flooders timed out {r['flooders_timed_out']}; sentinels "
                  f"{r['sentinels_timed_out']}/{SENTINELS}, late p50 {r['late_ms_p50']} ms max {r['late_ms_max']} ms, "
                  f"BYE seen max {r['bye_seen_ms_max']} ms; stored once: {'yes' if ok else 'NO'} "
                  f"({r['stored']:,} rows); log lines {r['log_lines']:,}, dropped {r['log_dropped']:,}", flush=True)


if __name__ == "__main__":
    main()
