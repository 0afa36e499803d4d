"""The server's output never decides a client's fate: an unread stdout stalls nothing.

A real `tcpulse serve` whose stdout is a pipe that this test leaves unread for a few seconds
(a terminal paused with Ctrl-S, a stuck `| grep`) while clients beat, talk and PING; and the
`LineSink` itself, with a real pipe.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import threading
import time
from typing import Any

from tcpulse.cli.output import LineSink
from tests.conftest import MS, RawClient, tcpulse_cmd


def _read_until_listening(proc: subprocess.Popen[bytes]) -> int:
    assert proc.stdout is not None
    while True:
        line = proc.stdout.readline()
        assert line, "the server exited before it listened"
        ev = json.loads(line)
        if ev["event"] == "listening":
            return int(ev["port"])


async def test_an_unread_stdout_never_stalls_the_server() -> None:
    interval, timeout = 200 * MS, 600 * MS
    proc = subprocess.Popen(
        tcpulse_cmd("serve", "--port", "0", "--db", "none", "--log-format", "json", "--status-every", "0",
                    "--heartbeat-interval", str(interval), "--heartbeat-timeout", str(timeout),
                    "--log-buffer", "65536", "-v"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        port = _read_until_listening(proc)
        # From here on nobody reads the server's stdout: the pipe (64 KiB) and the log's own
        # buffer (64 KiB) fill within the first few hundred messages.
        clients = [await RawClient.open(port) for _ in range(2)]
        for i, c in enumerate(clients):
            await c.hello(f"talker-{i}", heartbeat_interval=interval)
        rtts: list[float] = []
        payload = b"x" * 200
        end = time.monotonic() + 3.0
        n = 0
        while time.monotonic() < end:
            for c in clients:
                await c.send((b"MSG %d\n" % len(payload) + payload + b"\n") * 50 + b"HEARTBEAT\n")
                t0 = time.monotonic()
                await c.send(b"PING p%d\n" % n)
                # Before the log went through its own thread, no PONG came at all from here on.
                assert await c.expect(b"PONG", timeout=timeout) == b"PONG p%d" % n
                rtts.append(time.monotonic() - t0)
                n += 1
            await asyncio.sleep(interval / 4)
        assert n > 20 and max(rtts) < timeout, (n, max(rtts))
        # Now read again: what is left of the log must say what was lost, and nobody timed out.
        lines: list[dict[str, Any]] = []
        done = threading.Event()

        def drain() -> None:
            assert proc.stdout is not None
            for raw in proc.stdout:
                lines.append(json.loads(raw))
            done.set()
        threading.Thread(target=drain, daemon=True).start()
        # Keep both clients alive while the notice comes (it goes out once the writer caught up).
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(e.get("dropped_lines") for e in list(lines)):
            for c in clients:
                await c.send(b"HEARTBEAT\n")
            await asyncio.sleep(interval / 2)
        for c in clients:
            await c.send(b"BYE done\n")
            c.close()
        await asyncio.sleep(0.2)
    finally:
        proc.terminate()
        proc.wait(10)
    assert done.wait(10)
    notices = [e for e in lines if e.get("event") == "warning" and e.get("dropped_lines")]
    assert notices and notices[0]["dropped_lines"] > 0, [e for e in lines if e.get("event") != "message"][:20]
    assert "not read" in notices[0]["text"]
    assert not [e for e in lines if e.get("event") in ("timeout", "suspect")]
    byes = [e for e in lines if e.get("event") == "disconnect"]
    assert sorted(e["client"] for e in byes) == ["talker-0", "talker-1"]
    assert all(e["reason"] == "bye" for e in byes)


async def test_the_sink_batches_bounds_and_reports() -> None:
    r, w = os.pipe()
    out = os.fdopen(w, "w")
    sink = LineSink(out, max_bytes=1000, notice=lambda n, s: f"dropped {n}\n")
    # One loop iteration: all lines of it go to the writer as one batch.
    for i in range(5):
        sink.write(f"line {i}\n")
    assert sink.pending == 0  # nothing handed over yet: the hand-over comes at the end of the iteration
    await asyncio.sleep(0)
    await asyncio.sleep(0.05)
    assert os.read(r, 4096) == b"".join(b"line %d\n" % i for i in range(5))
    # Nobody reads now: the pipe fills, then the sink's own 1,000 bytes, then lines are dropped
    # (the loop is never blocked: every write() returns at once).
    t0 = time.monotonic()
    for _ in range(2000):
        sink.write("y" * 99 + "\n")
        await asyncio.sleep(0)
    assert time.monotonic() - t0 < 5
    assert sink.dropped > 0 and sink.pending <= 1000
    # Read everything; once the writer has caught up, the next line comes after a notice of
    # what was dropped since the last notice.  The notices add up to every line dropped.
    os.set_blocking(r, False)
    got = b""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and (sink.dropped > _reported(got) or not got.endswith(b"after\n")):
        try:
            while True:
                got += os.read(r, 1 << 16)
        except BlockingIOError:
            pass
        if not sink.pending:
            sink.write("after\n")
        await asyncio.sleep(0.01)
    # The last "after" may have been handed over in the last turn and not be read yet.
    deadline = time.monotonic() + 5
    while not got.endswith(b"after\n") and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
        try:
            while True:
                got += os.read(r, 1 << 16)
        except BlockingIOError:
            pass
    assert _reported(got) == sink.dropped
    assert got.endswith(b"after\n")
    assert sink.close(2)
    out.close()
    os.close(r)


def _reported(out: bytes) -> int:
    return sum(int(line.split()[1]) for line in out.splitlines() if line.startswith(b"dropped "))
