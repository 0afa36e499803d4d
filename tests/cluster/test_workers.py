"""`tcpulse serve --workers N`: N processes on one port with one view, and the combinations that
could store a message twice refused in one line."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request

import pytest

from tests.cluster.parts import Postgres, Redis, free_port
from tests.conftest import tcpulse_cmd

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(("args", "says"), [
    (["--workers", "2", "--db", "x.db", "--cluster", "redis://127.0.0.1:1/0"], "could store a message twice"),
    (["--workers", "2", "--db", "none"], "needs --cluster"),
    (["--node-id", "n1"], "add --cluster"),
    (["--cluster", "http://x"], "expected redis://"),
    (["--cluster", "redis://127.0.0.1:1/0", "--node-id", "bad id"], "--node-id"),
])
def test_refused_in_one_line(args: list[str], says: str) -> None:
    r = subprocess.run(tcpulse_cmd("serve", "--port", "0", *args), capture_output=True, text=True, timeout=60,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and says in r.stderr, r.stderr
    assert not os.path.exists("x.db")


def test_an_unreachable_cluster_is_one_line() -> None:
    r = subprocess.run(tcpulse_cmd("serve", "--port", "0", "--db", "none", "--cluster", f"redis://127.0.0.1:{free_port()}/0"),
                       capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert r.returncode == 1 and r.stderr.count("\n") == 1, r.stderr
    assert "cannot reach the cluster" in r.stderr and "--cluster" in r.stderr


def test_workers_share_one_port_and_one_view(redis: Redis, postgres: Postgres) -> None:
    port, admin = free_port(), free_port()
    proc = subprocess.Popen(tcpulse_cmd("serve", "--workers", "2", "--port", str(port), "--cluster", redis.url,
                                        "--node-id", "box", "--db", postgres.url, "--lease-ttl", "1",
                                        "--admin", f"127.0.0.1:{admin}", "-q", "--status-every", "0"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    socks: list[socket.socket] = []
    try:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

        def nodes() -> list[dict[str, object]]:
            with opener.open(f"http://127.0.0.1:{admin}/api/nodes", timeout=5) as r:
                return list(json.loads(r.read())["nodes"])
        end = time.monotonic() + 30
        while True:
            try:
                if len(nodes()) == 2:
                    break
            except OSError:
                pass
            assert time.monotonic() < end and proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            time.sleep(0.1)
        # Clients from many source ports: the kernel spreads them over both workers.
        for i in range(40):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(b'HELLO {"id":"w%d","heartbeat_interval":30}\n' % i)
            socks.append(s)
        end = time.monotonic() + 15
        while True:
            got = {str(n["node"]): int(n["clients"]["total"]) for n in nodes()}  # type: ignore[call-overload]
            if sum(got.values()) == 40:
                break
            assert time.monotonic() < end, got
            time.sleep(0.1)
        assert set(got) == {"box-w0", "box-w1"} and all(v > 0 for v in got.values()), got
    finally:
        for s in socks:
            s.close()
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(30) == 0
    assert redis_keys(redis, "tcpulse:lease:*") == []


def redis_keys(redis: Redis, pattern: str) -> list[str]:
    out = subprocess.run(["redis-cli", "-p", str(redis.port), "--raw", "KEYS", pattern], capture_output=True,
                         text=True, check=True).stdout
    return out.split()
