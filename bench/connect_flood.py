"""Connection floods against a server at its open-file limit: does it stay up, answer each flood
connection with its ERR, and keep serving the clients it holds?

    .venv/bin/python bench/connect_flood.py                          # both modes, 200/1000/3000 per s
    .venv/bin/python bench/connect_flood.py --mode refused --rate 1000 --seconds 3

The server runs with a small open-file limit (`--nofile`, 600 by default: it then holds 500
clients) so that its limit can be reached on loopback in seconds.  Two floods:

- `refused`: the server is full (500 clients signed in); each flood connection should get
  `ERR 503` instead of `INFO`.
- `garbage`: the server has 50 free places; each flood connection gets `INFO`, sends a bad line,
  and should get `ERR 400`.

Either way the flood connection then keeps its socket open for 3 s, as an attacker would.

Meanwhile one of the held clients PINGs every 50 ms (the witness).  Reported per flood: what the
flood connections got, the server's peak of open descriptors, how many times it ran out of them
(its log), the witness's worst round trip and missed PONGs, and whether a new honest client gets
in afterwards (one held client leaves first in the `refused` flood).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from typing import Any

HOST = "127.0.0.1"


class Server:
    def __init__(self, nofile: int, loop: str) -> None:
        self.log = tempfile.NamedTemporaryFile(prefix="tcpulse-flood-", suffix=".log", delete=False)
        self.err = tempfile.NamedTemporaryFile(prefix="tcpulse-flood-", suffix=".err", delete=False)

        def limit() -> None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
        cmd = [sys.executable, "-m", "tcpulse", "serve", "--host", HOST, "--port", "0", "--db", "none", "-q",
               "--log-format", "json", "--status-every", "0", "--heartbeat-interval", "30",
               "--heartbeat-timeout", "60", "--loop", loop]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=self.err, stdin=subprocess.DEVNULL,
                                     preexec_fn=limit)
        self.port = 0
        self.capacity = 0
        end = time.monotonic() + 20
        while not self.port and time.monotonic() < end:
            with open(self.log.name, encoding="utf-8") as f:
                for line in f:
                    ev = json.loads(line)
                    if ev.get("event") == "listening":
                        self.port = int(ev["port"])
                    if ev.get("event") == "capacity":
                        self.capacity = int(ev["max_clients"])
            time.sleep(0.05)
        if not self.port:
            raise RuntimeError("the server did not start: " + open(self.err.name).read())

    def fds(self) -> int:
        try:
            return len(os.listdir(f"/proc/{self.proc.pid}/fd"))
        except OSError:
            return 0

    def out_of_fds(self) -> int:
        with open(self.err.name, encoding="utf-8", errors="replace") as f:
            text = f.read()
        return text.count("Too many open files") + text.count("out of system resource")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        for f in (self.log, self.err):
            with contextlib.suppress(OSError):
                os.unlink(f.name)


async def sign_in(port: int, cid: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    r, w = await asyncio.open_connection(HOST, port)
    line = await asyncio.wait_for(r.readline(), 5)
    if not line.startswith(b"INFO"):
        raise RuntimeError(f"{cid}: {line!r}")
    w.write(b'HELLO {"id":"%s","heartbeat_interval":30}\n' % cid.encode())
    line = await asyncio.wait_for(r.readline(), 5)
    if not line.startswith(b"OK"):
        raise RuntimeError(f"{cid}: {line!r}")
    return r, w


async def witness(r: asyncio.StreamReader, w: asyncio.StreamWriter, stop: asyncio.Event,
                  out: dict[str, Any]) -> None:
    n = 0
    while not stop.is_set():
        n += 1
        t = time.perf_counter()
        w.write(b"PING w%d\n" % n)
        try:
            while True:
                line = await asyncio.wait_for(r.readline(), 2)
                if line.startswith(b"PONG"):
                    break
            out["rtt_max"] = max(out["rtt_max"], time.perf_counter() - t)
        except (TimeoutError, ConnectionError):
            out["missed"] += 1
        await asyncio.sleep(0.05)


async def attempt(port: int, mode: str, outcomes: Counter[str]) -> None:
    try:
        r, w = await asyncio.wait_for(asyncio.open_connection(HOST, port), 3)
    except (OSError, TimeoutError) as e:
        outcomes["connect failed: " + type(e).__name__] += 1
        return
    try:
        line = await asyncio.wait_for(r.readline(), 3)
        if mode == "garbage" and line.startswith(b"INFO"):
            w.write(b"GARBAGE\n")
            line = await asyncio.wait_for(r.readline(), 3)
        if line.startswith(b"ERR 503" if mode == "refused" else b"ERR 400"):
            outcomes["got its ERR"] += 1
        elif not line:
            outcomes["closed without ERR"] += 1
        else:
            outcomes["other: " + line[:12].decode(errors="replace")] += 1
        await asyncio.sleep(3)  # an attacker keeps its socket open
    except TimeoutError:
        outcomes["no answer in 3 s"] += 1
    except ConnectionError:
        outcomes["reset"] += 1
    finally:
        w.close()


async def flood(srv: Server, mode: str, rate: int, seconds: float) -> dict[str, Any]:
    held = []
    fill = srv.capacity if mode == "refused" else srv.capacity - 50
    for i in range(fill):
        held.append(await sign_in(srv.port, f"held{i}"))
    stop = asyncio.Event()
    wit: dict[str, Any] = {"rtt_max": 0.0, "missed": 0}
    wtask = asyncio.create_task(witness(*held[0], stop, wit))
    peak = [srv.fds()]
    sampling = True

    def sample() -> None:
        while sampling:
            peak[0] = max(peak[0], srv.fds())
            time.sleep(0.02)
    threading.Thread(target=sample, daemon=True).start()
    outcomes: Counter[str] = Counter()
    tasks = []
    t0 = time.perf_counter()
    total = int(rate * seconds)
    for i in range(total):
        delay = t0 + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(attempt(srv.port, mode, outcomes)))
    await asyncio.gather(*tasks)
    stop.set()
    await wtask
    sampling = False
    # Afterwards, a new honest client gets in (a held one leaves first when the server is full).
    if mode == "refused":
        held[-1][1].close()
        held.pop()
        await asyncio.sleep(0.3)
    try:
        _r, w = await sign_in(srv.port, "newcomer")
        after = "signed in"
        w.close()
    except Exception as e:  # reported, not raised
        after = f"failed: {e!r}"
    for _r, w in held:
        w.close()
    return {"mode": mode, "rate": rate, "attempts": total, "outcomes": dict(outcomes), "peak_fds": peak[0],
            "out_of_fds_logged": srv.out_of_fds(), "witness_rtt_max_ms": round(wit["rtt_max"] * 1000, 2),
            "witness_missed": wit["missed"], "newcomer": after}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", choices=["refused", "garbage", "both"], default="both")
    ap.add_argument("--rate", default="200,1000,3000", help="flood connections per second (a list)")
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--nofile", type=int, default=600, help="the server's open-file limit")
    ap.add_argument("--loop", default="auto", choices=["auto", "asyncio", "uvloop"], help="the server's loop")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    modes = ["refused", "garbage"] if a.mode == "both" else [a.mode]
    rows = []
    for mode in modes:
        for rate in (int(x) for x in a.rate.split(",")):
            srv = Server(a.nofile, a.loop)
            try:
                rows.append(asyncio.run(flood(srv, mode, rate, a.seconds)))
            finally:
                srv.stop()
            print(json.dumps(rows[-1]) if a.json else
                  f"{mode:8} {rate:5}/s x {a.seconds:g} s: {rows[-1]['outcomes']}  peak fds {rows[-1]['peak_fds']}"
                  f"/{a.nofile}, out of fds {rows[-1]['out_of_fds_logged']}x, witness max RTT "
                  f"{rows[-1]['witness_rtt_max_ms']} ms, missed {rows[-1]['witness_missed']}, "
                  f"newcomer {rows[-1]['newcomer']}", flush=True)


if __name__ == "__main__":
    main()
