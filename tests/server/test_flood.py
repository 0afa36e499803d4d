"""Connection floods: a server at its open-file limit answers every flood connection with its ERR
and keeps serving the clients it holds (PROTOCOL.md, "Errors": a flood affects that connection
only).  Figures at higher rates: bench/connect_flood.py."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import queue
import resource
import subprocess
import threading
import time
from typing import Any

import pytest

from tcpulse.server.config import FD_RESERVE
from tcpulse.server.hub import MAX_LINGERING
from tcpulse.server.server import Server
from tests.conftest import RawClient, tcpulse_cmd

pytestmark = pytest.mark.timeout(120)

HAVE_UVLOOP = importlib.util.find_spec("uvloop") is not None


async def _flood(port: int, n: int, hold: float) -> list[bytes]:
    """`n` connections at once; each reads its first line and then keeps its socket open for
    `hold` seconds, as an attacker would.  Returns the first lines."""
    async def one() -> bytes:
        r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)
        try:
            return await asyncio.wait_for(r.readline(), 10)
        finally:
            await asyncio.sleep(hold)
            w.close()
    return list(await asyncio.gather(*(one() for _ in range(n))))


async def test_lingering_sockets_are_capped(start_server: Any) -> None:
    # Refused sockets linger to deliver their ERR without a reset, but only so many at once:
    # they are not clients, and an attacker keeping them open must not spend the descriptors
    # kept back for them.
    srv: Server = await start_server(max_clients=1)
    held = await RawClient.open(srv.port)
    await held.hello("held")
    peak = 0
    sampling = True

    async def sample() -> None:
        nonlocal peak
        while sampling:
            peak = max(peak, srv.lingering)
            await asyncio.sleep(0)
    sampler = asyncio.create_task(sample())
    firsts = await _flood(srv.port, 4 * MAX_LINGERING, hold=0.5)
    sampling = False
    await sampler
    assert firsts == [b"ERR 503 server full, try again later\n"] * (4 * MAX_LINGERING)
    assert peak == MAX_LINGERING  # the cap was reached, and held
    await asyncio.sleep(0.4)
    assert srv.lingering == 0
    await held.send(b"PING still\n")
    assert await held.expect(b"PONG") == b"PONG still"


class _LimitedServer:
    """`tcpulse serve` in a subprocess with an open-file limit of `nofile`."""

    def __init__(self, nofile: int, loop: str) -> None:
        def limit() -> None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
        self.proc = subprocess.Popen(
            tcpulse_cmd("serve", "--port", "0", "--db", "none", "--log-format", "json", "--status-every", "0",
                        "--heartbeat-interval", "30", "--heartbeat-timeout", "60", "--loop", loop),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, preexec_fn=limit)
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.bad: list[bytes] = []  # lines of its log that are not JSON
        self.stderr: list[bytes] = []
        # One reader per pipe, each in a thread of its own (stderr too: a server out of
        # descriptors can log a lot, and a full pipe would stall it).
        self._readers = [threading.Thread(target=self._pump, daemon=True),
                         threading.Thread(target=self._pump_stderr, daemon=True)]
        for t in self._readers:
            t.start()
        self.port = self._event("listening")["port"]
        self.capacity = self._event("capacity")["max_clients"]

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self.events.put(json.loads(line))
            except ValueError:
                self.bad.append(line)

    def _pump_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line)

    def _event(self, name: str) -> dict[str, Any]:
        end = time.monotonic() + 20
        while True:
            ev = self.events.get(timeout=max(0.01, end - time.monotonic()))
            if ev["event"] == name:
                return ev

    def stop(self) -> str:
        """Stop it; its stderr."""
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(20)
        for t in self._readers:
            t.join(10)
        return b"".join(self.stderr).decode(errors="replace")


@pytest.mark.parametrize("loop", ["asyncio", pytest.param("uvloop", marks=pytest.mark.skipif(
    not HAVE_UVLOOP, reason="uvloop is not installed (pip install 'tcpulse[fast]')"))])
def test_connect_flood_at_the_open_file_limit(loop: str) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4000 <= hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # this test's own sockets
    srv = _LimitedServer(300, loop)
    try:
        assert srv.capacity == 300 - FD_RESERVE
        flood = 1500

        async def scenario() -> None:
            held = []
            for i in range(srv.capacity):
                c = await RawClient.open(srv.port)
                await c.hello(f"held{i}")
                held.append(c)
            # The whole flood at once, each socket kept open: without bounds on lingering sockets
            # and on accepting, the server's 100 spare descriptors would be gone in a moment.
            firsts = await _flood(srv.port, flood, hold=1.0)
            assert firsts.count(b"ERR 503 server full, try again later\n") == flood, set(firsts)
            await held[0].send(b"PING alive\n")
            assert await held[0].expect(b"PONG") == b"PONG alive"
            held.pop().close()
            await asyncio.sleep(0.3)
            newcomer = await RawClient.open(srv.port)
            assert (await newcomer.hello("newcomer"))["id"] == "newcomer"
            for c in [*held, newcomer]:
                c.close()
        asyncio.run(scenario())
    finally:
        err = srv.stop()
    assert "Too many open files" not in err and "out of system resource" not in err, err[-2000:]
    assert not srv.bad, srv.bad[:3]
