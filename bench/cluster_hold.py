#!/usr/bin/env python3
"""Many clients held by several workers with one view (issue 12), and what it costs Redis.

    .venv/bin/python bench/cluster_hold.py                       # 50,000 clients, 3 workers, 3 generators
    .venv/bin/python bench/cluster_hold.py --clients 6000 --workers 2 --generators 2

One real `redis-server` (tests/cluster/parts.py) and `tcpulse serve --workers W --db none
--cluster redis://... -q --admin 127.0.0.1:P`: W processes on one port (SO_REUSEPORT), worker i
with its admin endpoint on P + i, each with its own open-file limit (20,000 here, so 50,000
clients need at least 3).  The load comes from G processes of `tcpulse.bench.load.hold` (each
with its own open-file limit too), clients spread over 127.0.0.x, beating every `--interval`
seconds; then 1,000 of them fall silent at once.

Printed: how many were held; when the last generator had all its clients signed in, and how long
after that the view of worker 0 (`/api/server`'s `cluster.clients.total`, which counts the other
workers' clients from Redis) was complete; Redis commands per second while every client beats
steadily (`INFO commandstats` before and after a window), per 1,000 clients; the timeout lateness
of the silenced clients as each generator saw it (BYE against the client's own deadline) and as
each worker measured it (`/api/server`'s `timeout_lateness`: its declaration against the deadline),
false timeouts; and the CPU of the workers, the generators and Redis: they all share this machine's
cores, so the generators' share is load the servers did not have for themselves.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from tests.cluster.parts import Redis, free_port  # noqa: E402

from tcpulse.bench.load import proc_sample  # noqa: E402

_GENERATOR = r"""
import asyncio, json, sys, time
sys.path.insert(0, sys.argv[1])
from tcpulse.bench.load import hold
port, n, silent = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[5])
interval, measure = float(sys.argv[4]), float(sys.argv[6])
said = False
def progress(phase, done, total):
    global said
    if phase == "settling" and not said:
        said = True
        print(json.dumps({"connected_at": time.time()}), flush=True)
async def main():
    r = await hold("127.0.0.1", port, n, interval, silent, measure=measure, settle=2 * interval, progress=progress)
    print(json.dumps({"result": r.as_dict()}), flush=True)
asyncio.run(main())
"""


def redis_calls(port: int) -> int:
    out = subprocess.run(["redis-cli", "-p", str(port), "INFO", "commandstats"], capture_output=True, text=True,
                         check=True).stdout
    total = 0
    for line in out.splitlines():
        if line.startswith("cmdstat_") and "calls=" in line:
            total += int(line.split("calls=", 1)[1].split(",", 1)[0])
    return total


def get_json(url: str) -> dict[str, Any]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=10) as r:
        return dict(json.loads(r.read()))


def _port_free(port: int) -> bool:
    import socket
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=50_000)
    ap.add_argument("--workers", type=int, default=3)
    ap.add_argument("--generators", type=int, default=3)
    ap.add_argument("--interval", type=float, default=5.0, help="each client's heartbeat interval (s)")
    ap.add_argument("--silent", type=int, default=1000)
    ap.add_argument("--window", type=float, default=10.0, help="seconds of steady beating Redis is counted over")
    a = ap.parse_args()

    redis = Redis().start()
    rpid = redis.proc.pid if redis.proc else 0
    port = free_port()
    admin_port = free_port()
    while any(not _port_free(admin_port + i) for i in range(a.workers)):
        admin_port = free_port()
    serve = subprocess.Popen(
        [sys.executable, "-m", "tcpulse", "serve", "--workers", str(a.workers), "--port", str(port), "--db", "none",
         "--cluster", redis.url, "--node-id", "bench", "-q", "--status-every", "0", "--admin",
         f"127.0.0.1:{admin_port}", "--max-heartbeat-interval", "60"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    gens: list[subprocess.Popen[str]] = []
    try:
        base = f"http://127.0.0.1:{admin_port}"
        end = time.monotonic() + 30
        while True:
            try:
                if get_json(base + "/api/server")["cluster"]["nodes"] == a.workers:
                    break
            except (OSError, KeyError, ValueError):
                pass
            if time.monotonic() > end or serve.poll() is not None:
                sys.exit("the workers did not come up: " + (serve.stderr.read().decode() if serve.stderr else ""))
            time.sleep(0.2)
        workers = children(serve.pid)
        per = [a.clients // a.generators + (1 if i < a.clients % a.generators else 0) for i in range(a.generators)]
        quiet = [a.silent // a.generators + (1 if i < a.silent % a.generators else 0) for i in range(a.generators)]
        # Long enough a steady phase for the Redis window after the view is complete.
        measure = a.window + 15.0
        t0 = time.time()
        for n, s in zip(per, quiet, strict=True):
            gens.append(subprocess.Popen([sys.executable, "-c", _GENERATOR, str(ROOT / "src"), str(port), str(n),
                                          str(a.interval), str(s), str(measure)],
                                         stdout=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL))
        lines: list[list[dict[str, Any]]] = [[] for _ in gens]

        def pump(i: int, p: subprocess.Popen[str]) -> None:
            assert p.stdout is not None
            for line in p.stdout:
                lines[i].append(json.loads(line))
        threads = [threading.Thread(target=pump, args=(i, p), daemon=True) for i, p in enumerate(gens)]
        for t in threads:
            t.start()
        # When every generator has all its clients in, how long until one node's view has them all:
        # the first moment worker 0's view reaches the total it then keeps (compared with the
        # clients held, as the generators count them, at the end).
        connected_at = None
        total, total_since = -1, 0.0
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            if connected_at is None and all(any("connected_at" in x for x in ls) for ls in lines):
                connected_at = max(x["connected_at"] for ls in lines for x in ls if "connected_at" in x)
            now_total = sum(n["clients"]["total"] for n in get_json(base + "/api/nodes")["nodes"])
            if now_total != total:
                total, total_since = now_total, time.time()
            elif connected_at is not None and time.time() - max(total_since, connected_at) > 3.0:
                break  # steady for 3 s after the last generator was done
            time.sleep(0.25)
        view_at = total_since
        s0 = {pid: proc_sample(pid) for pid in [*workers, rpid] if pid}
        g0 = {p.pid: proc_sample(p.pid) for p in gens}
        c0, w0 = redis_calls(redis.port), time.monotonic()
        time.sleep(a.window)
        c1, w1 = redis_calls(redis.port), time.monotonic()
        s1 = {pid: proc_sample(pid) for pid in s0}
        g1 = {p.pid: proc_sample(p.pid) for p in gens}
        nodes = get_json(base + "/api/nodes")["nodes"]
        for p in gens:
            p.wait(600)
        for t in threads:
            t.join(5)
        # The servers' own measure of the same timeouts: each worker's admin (PORT + i) says how
        # late after each deadline it declared the client dead (its timer, not the generator).
        server_late = [get_json(f"http://127.0.0.1:{admin_port + i}/api/server")["timeout_lateness"]
                       for i in range(a.workers)]
        results = [x["result"] for ls in lines for x in ls if "result" in x]
    finally:
        for p in gens:
            if p.poll() is None:
                p.kill()
        if serve.poll() is None:
            serve.send_signal(signal.SIGTERM)
            try:
                serve.wait(30)
            except subprocess.TimeoutExpired:
                serve.kill()
        redis.close()

    def cpu(a0: dict[int, Any], a1: dict[int, Any], pid: int) -> float:
        x, y = a0.get(pid), a1.get(pid)
        return 0.0 if x is None or y is None else round((y.cpu - x.cpu) / (w1 - w0), 3)

    held = sum(r["connected"] for r in results)
    rate = (c1 - c0) / (w1 - w0)
    out = {
        "clients": a.clients, "workers": a.workers, "generators": a.generators, "interval": a.interval,
        "held": held, "connect_errors": sorted({e for r in results for e in r["connect_errors"]})[:3],
        "all_connected_after_s": round(connected_at - t0, 1) if connected_at else None,
        "view_total": total,
        "view_complete_after_s": round(max(0.0, view_at - connected_at), 2) if connected_at else None,
        "per_node": {n["node"]: n["clients"]["total"] for n in nodes},
        "redis_cmds_per_s": round(rate, 1), "redis_cmds_per_s_per_1000_clients": round(rate / (held / 1000), 3),
        "silenced": sum(r["silent"] for r in results), "timed_out": sum(r["timed_out"] for r in results),
        "missed": sum(r["missed"] for r in results), "false_timeouts": sum(r["false_timeouts"] for r in results),
        "lateness_ms_by_generator": [r["lateness_ms"] for r in results],
        "server_lateness_ms_by_worker": server_late,
        "cpu_workers": [cpu(s0, s1, w) for w in workers],
        "cpu_redis": cpu(s0, s1, rpid),
        "cpu_generators": [cpu(g0, g1, p.pid) for p in gens],
        "generator_ticker_late_ms": [r["ticker_late_ms"] for r in results],
    }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
