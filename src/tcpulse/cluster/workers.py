"""`tcpulse serve --workers N`: N server processes on one port, one supervisor.

Each worker is a `tcpulse serve` of its own (its own event loop, core and open-file limit) with
`SO_REUSEPORT` on the same port: the kernel spreads new connections over them.  They are nodes
of one cluster (`--cluster`, required), named `<node-id>-w<i>`, so presence, takeover and sends
work across them as across machines; only worker 0 serves `--admin` (it shows the whole cluster).
Storage stays exactly-once across workers only with a store the database guards
(PostgreSQL: store/postgres.py) or none (`--db none`); the command line refuses an SQLite file.

The supervisor does no serving: it starts the workers, passes SIGINT/SIGTERM on to them, starts
again a worker that died (at most `MAX_RESTARTS` times a minute), and exits once they all have.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence

__all__ = ["MAX_RESTARTS", "default_node_id", "reserve_port", "run_workers", "worker_argv"]

#: Restarts of crashed workers allowed per minute; beyond, the supervisor stops them all.
MAX_RESTARTS = 5


def reserve_port(host: str, port: int) -> tuple[socket.socket, int]:
    """Bind (never listen) a SO_REUSEPORT socket on `host:port`, so that port 0 becomes one real
    port every worker can share and no other program takes meanwhile.  Keep the socket open
    while the workers run: it receives no connection."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind((host, port))
    return s, int(s.getsockname()[1])


def worker_argv(args: Sequence[str], index: int, port: int, node_id: str, admin: str | None = None) -> list[str]:
    """The `tcpulse serve` arguments of worker `index`: the supervisor's own, without
    `--workers`, with the shared port and the worker's node id (click takes the last value of
    an option given twice).  `admin` (`--admin HOST:PORT`): worker i serves it on PORT + i (each
    shows the whole cluster); with port 0, only worker 0 serves one."""
    out: list[str] = []
    skip = False
    for a in args:
        if skip:
            skip = False
            continue
        if a == "--workers":
            skip = True
            continue
        if a.startswith("--workers="):
            continue
        out.append(a)
    out += ["--worker", str(index), "--port", str(port), "--node-id", f"{node_id}-w{index}"]
    if admin and index > 0:
        host, _, aport = admin.rpartition(":")
        out += ["--admin", f"{host}:{int(aport) + index}" if aport.isdigit() and int(aport) > 0 else ""]
    return out


def run_workers(args: Sequence[str], n: int, host: str, port: int, node_id: str, admin: str | None = None) -> int:
    """Run `n` workers of `tcpulse serve args` until SIGINT/SIGTERM; returns the exit code."""
    reserved, port = reserve_port(host, port)
    procs: dict[int, subprocess.Popen[bytes]] = {}
    stopping = False
    restarts: list[float] = []

    def start(i: int) -> None:
        procs[i] = subprocess.Popen([sys.executable, "-m", "tcpulse", "serve",
                                     *worker_argv(args, i, port, node_id, admin)],
                                    stdin=subprocess.DEVNULL)

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        if stopping:  # a second signal: out at once
            for p in procs.values():
                if p.poll() is None:
                    p.kill()
            return
        stopping = True
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signum)

    old = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    code = 0
    try:
        for i in range(n):
            start(i)
        while procs:
            time.sleep(0.1)
            for i, p in list(procs.items()):
                rc = p.poll()
                if rc is None:
                    continue
                del procs[i]
                if stopping:
                    code = code or (0 if rc in (0, -signal.SIGINT, -signal.SIGTERM) else rc)
                    continue
                now = time.monotonic()
                restarts[:] = [t for t in restarts if now - t < 60] + [now]
                if len(restarts) > MAX_RESTARTS:
                    print(f"tcpulse: error: worker {i} exited with {rc}, too often: stopping every worker",
                          file=sys.stderr)
                    code = rc or 1
                    stop(signal.SIGTERM, None)
                    continue
                print(f"tcpulse: worker {i} exited with {rc}: starting it again", file=sys.stderr)
                start(i)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        reserved.close()
        for p in procs.values():
            if p.poll() is None:
                p.kill()
    return code


def default_node_id(port: int) -> str:
    """A stable, readable node name: this host's name and the port (`box-12345`)."""
    host = "".join(ch for ch in socket.gethostname() if ch.isalnum() or ch in "._-")[:48] or "node"
    return f"{host}-{port}" if port else f"{host}-{os.getpid()}"
