"""Frozen peers and shutdown, with real processes: a SIGSTOPped client is timed out at its deadline;
a SIGSTOPped server is detected by the library client and by `tcpulse connect`, which reconnect
when it resumes or is restarted; SIGTERM shuts down gracefully, a second signal at once.

Every process is started here and ended here, by its PID.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import selectors
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tcpulse.client.client import Client
from tcpulse.client.events import ClientEvent
from tcpulse.client.outbox import MemoryOutbox
from tcpulse.policy.backoff import Backoff
from tcpulse.server.events import HelloReceived, TimedOut
from tests.conftest import RawClient, tcpulse_cmd

pytestmark = pytest.mark.timeout(90)

INTERVAL = 0.2
TIMEOUT = 0.5


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for p in started:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGCONT)
                os.kill(p.pid, signal.SIGKILL)
            p.wait(10)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Lines:
    """Read a subprocess's stdout lines without blocking the event loop for long."""

    def __init__(self, p: subprocess.Popen[bytes]) -> None:
        assert p.stdout is not None
        os.set_blocking(p.stdout.fileno(), False)
        self.p = p
        self.buf = b""
        self.lines: list[str] = []

    async def wait_for(self, text: str, timeout: float = 10.0, after: int = 0) -> int:
        """Index of the first line (from `after`) containing `text`."""
        assert self.p.stdout is not None
        end = time.monotonic() + timeout
        while True:
            for i in range(after, len(self.lines)):
                if text in self.lines[i]:
                    return i
            if time.monotonic() > end:
                raise AssertionError(f"{text!r} not seen; output so far: {self.lines}")
            with contextlib.suppress(BlockingIOError, TypeError):
                chunk = self.p.stdout.read()
                if chunk:
                    self.buf += chunk
                    *done, self.buf = self.buf.split(b"\n")
                    self.lines += [d.decode(errors="replace") for d in done]
            await asyncio.sleep(0.02)


async def test_frozen_client_is_timed_out_at_its_deadline(start_server: Any,
                                                          procs: list[subprocess.Popen[bytes]]) -> None:
    srv = await start_server(heartbeat_interval=INTERVAL, heartbeat_timeout=TIMEOUT)
    events: list[Any] = []
    srv.subscribe(events.append)
    p = subprocess.Popen(tcpulse_cmd("connect", "--port", str(srv.port), "--id", "frozen", "--no-reconnect"),
                         stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs.append(p)
    for _ in range(1000):
        if any(isinstance(e, HelloReceived) and e.client.id == "frozen" for e in events):
            break
        await asyncio.sleep(0.01)
    else:
        raise AssertionError("the client never said HELLO")
    await asyncio.sleep(3 * INTERVAL)  # it beats: alive
    assert not any(isinstance(e, TimedOut) for e in events)
    os.kill(p.pid, signal.SIGSTOP)  # its socket stays open, nothing arrives
    t_stop = time.monotonic()
    for _ in range(500):
        if any(isinstance(e, TimedOut) for e in events):
            break
        await asyncio.sleep(0.01)
    t_dead = time.monotonic()
    timed_out = [e for e in events if isinstance(e, TimedOut)]
    assert len(timed_out) == 1 and timed_out[0].client.id == "frozen"
    # Declared dead at its deadline: TIMEOUT after the last frame, announced promptly.
    assert TIMEOUT - 0.01 <= timed_out[0].silent_for < TIMEOUT + INTERVAL
    assert timed_out[0].late_by < 0.1
    assert t_dead - t_stop < TIMEOUT + 0.3
    os.kill(p.pid, signal.SIGCONT)


def _serve(port: int, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        tcpulse_cmd("serve", "--port", str(port), "--heartbeat-interval", str(INTERVAL), "--heartbeat-timeout",
                    str(TIMEOUT), "--status-every", "0", "--log-format", "json", "--db", "none", *extra),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)


async def _wait_listening(port: int, timeout: float = 20) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            r, w = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        line = await asyncio.wait_for(r.readline(), 5)
        w.close()
        if line.startswith(b"INFO "):
            return
    raise AssertionError(f"no server on port {port}")


async def test_frozen_server_is_detected_by_the_library_client(tmp_path: Path,
                                                               procs: list[subprocess.Popen[bytes]]) -> None:
    port = _free_port()
    db = str(tmp_path / "f.db")  # durable: the restarted server knows where the session stands
    server = _serve(port, "--db", db)
    procs.append(server)
    await _wait_listening(port)
    kinds: list[tuple[float, str]] = []

    def on_event(ev: ClientEvent) -> None:
        kinds.append((time.monotonic(), ev.kind))

    c = Client("127.0.0.1", port, id="watcher", on_event=on_event, backoff=Backoff(base=0.05, cap=0.3),
               connect_timeout=1.0, outbox=MemoryOutbox())
    await c.start()
    try:
        await c.send("before")
        assert await c.drain(5)
        # 1. Frozen, then resumed.
        os.kill(server.pid, signal.SIGSTOP)
        t_stop = time.monotonic()
        seq = await c.send("during the freeze")
        while not any(k == "disconnected" for _, k in kinds):
            assert time.monotonic() - t_stop < 5, kinds
            await asyncio.sleep(0.01)
        detected = next(t for t, k in kinds if k == "disconnected") - t_stop
        # Noticed within one interval (to PING) plus the timeout, plus scheduling slack.
        assert detected < INTERVAL + TIMEOUT + 0.5
        os.kill(server.pid, signal.SIGCONT)
        assert await c.drain(10), "the message sent during the freeze was not delivered after resuming"
        assert c.acked >= (seq or 0)
        oks = sum(1 for _, k in kinds if k == "ok")
        assert oks >= 2
        # 2. Frozen, then killed and started again on the same port.
        os.kill(server.pid, signal.SIGSTOP)
        n_disc = sum(1 for _, k in kinds if k == "disconnected")
        seq2 = await c.send("across a restart")
        t_stop = time.monotonic()
        while sum(1 for _, k in kinds if k == "disconnected") == n_disc:
            assert time.monotonic() - t_stop < 5
            await asyncio.sleep(0.01)
        os.kill(server.pid, signal.SIGKILL)
        server.wait(10)
        server2 = _serve(port, "--db", db)
        procs.append(server2)
        assert await c.drain(20), "not delivered to the restarted server"
        assert sum(1 for _, k in kinds if k == "ok") > oks
        assert c.acked >= (seq2 or 0)
    finally:
        await c.close(drain_timeout=0)


async def test_frozen_server_is_detected_by_tcpulse_connect(procs: list[subprocess.Popen[bytes]]) -> None:
    port = _free_port()
    server = _serve(port)
    procs.append(server)
    await _wait_listening(port)
    cli = subprocess.Popen(tcpulse_cmd("connect", "--port", str(port), "--id", "cli-1", "-v"),
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           env={**os.environ, "LANG": "C"})
    procs.append(cli)
    out = Lines(cli)
    first = await out.wait_for("Signed in as cli-1")
    os.kill(server.pid, signal.SIGSTOP)
    t0 = time.monotonic()
    i = await out.wait_for("no answer from the server", timeout=5, after=first)
    assert time.monotonic() - t0 < INTERVAL + TIMEOUT + 1.0
    os.kill(server.pid, signal.SIGCONT)
    await out.wait_for("Reconnected", timeout=20, after=i)
    assert cli.stdin is not None
    cli.stdin.close()  # end of input: the client says BYE and exits
    assert cli.wait(10) == 0


async def test_sigterm_shuts_down_gracefully(tmp_path: Path, procs: list[subprocess.Popen[bytes]]) -> None:
    port = _free_port()
    db = str(tmp_path / "t.db")
    server = _serve(port, "--db", db, "--shutdown-grace", "5")
    procs.append(server)
    await _wait_listening(port)
    outbox = MemoryOutbox()
    c = Client("127.0.0.1", port, id="keeper", reconnect=False, outbox=outbox)
    await c.start()
    for i in range(50):
        await c.send(b"m%d" % i)
    assert await c.drain(10)
    rc = await RawClient.open(port)
    await rc.hello("raw")
    t0 = time.monotonic()
    os.kill(server.pid, signal.SIGTERM)
    assert await rc.expect(b"BYE") == b"BYE shutdown"
    rc.close()
    for _ in range(500):
        if server.poll() is not None:
            break
        await asyncio.sleep(0.01)
    assert server.returncode == 0
    assert time.monotonic() - t0 < 5
    await c.close(drain_timeout=0)
    # Stops accepting; what was acknowledged is stored: a restart knows where the session stands.
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    server2 = _serve(port, "--db", db)
    procs.append(server2)
    await _wait_listening(port)
    async with Client("127.0.0.1", port, id="keeper", reconnect=False, outbox=outbox) as c2:
        assert c2.ok is not None and c2.ok.acked == 50


async def test_shutdown_grace_bounds_flush_and_goodbyes_together(start_server: Any) -> None:
    """--shutdown-grace bounds the whole shutdown: a store that cannot finish its flush and a client
    that does not leave after BYE share one grace period, not one each."""
    from tcpulse.store.memory import MemoryStore

    class StuckStore(MemoryStore):  # a disk that never completes a write
        async def flush(self) -> None:
            await asyncio.sleep(3600)

    srv = await start_server(store=StuckStore())
    rc = await RawClient.open(srv.port)
    await rc.hello("lingerer")  # reads the BYE, never closes
    t0 = time.monotonic()
    await srv.close(grace=0.5)
    took = time.monotonic() - t0
    assert await rc.expect(b"BYE") == b"BYE shutdown"
    assert 0.45 <= took < 0.85, took
    rc.close()


async def test_second_signal_exits_at_once(procs: list[subprocess.Popen[bytes]]) -> None:
    port = _free_port()
    server = _serve(port, "--shutdown-grace", "30")
    procs.append(server)
    await _wait_listening(port)
    # A client that never leaves keeps the graceful shutdown waiting.
    stubborn = socket.create_connection(("127.0.0.1", port))
    sel = selectors.DefaultSelector()
    sel.register(stubborn, selectors.EVENT_READ)
    await asyncio.sleep(0.2)
    os.kill(server.pid, signal.SIGTERM)
    await asyncio.sleep(0.3)
    assert server.poll() is None  # still waiting for the stubborn client
    t0 = time.monotonic()
    os.kill(server.pid, signal.SIGINT)
    for _ in range(300):
        if server.poll() is not None:
            break
        await asyncio.sleep(0.01)
    assert server.returncode == 130
    assert time.monotonic() - t0 < 1.5
    stubborn.close()
