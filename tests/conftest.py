"""Shared helpers for the test tiers.

- `MS`: the time unit of loopback tests (websockets' habit).  Set TCPULSE_TEST_TIME_SCALE=3 on a
  slow machine to stretch every interval and timeout in the socket tests.
- `start_server(**config)`: an in-process `Server` on 127.0.0.1 with a free port.
- `RawClient`: a byte-level client for talking the wire protocol by hand, as `nc` would.
- `ServerProcess`: `tcpulse serve` as a subprocess with the JSON log, stopped by its own PID.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from tcpulse.server.config import ServerConfig
from tcpulse.server.server import Server

TIME_SCALE = float(os.environ.get("TCPULSE_TEST_TIME_SCALE", "1"))
#: One "millisecond" of test time; intervals in socket tests are written in MS.
MS = 0.001 * TIME_SCALE


@pytest.fixture(autouse=True)
def _run_in_tmp_dir(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # `tcpulse serve` keeps tcpulse.db in the working directory by default: every test (and the
    # processes it starts) runs in its own temporary directory, never in the checkout.
    monkeypatch.chdir(tmp_path)


@pytest.fixture
async def start_server() -> AsyncIterator[Any]:
    servers: list[Server] = []

    async def start(**overrides: Any) -> Server:
        store = overrides.pop("store", None)
        cfg = ServerConfig(**{"port": 0, "status_every": 0, **overrides})
        srv = Server(cfg, store=store)
        await srv.start()
        servers.append(srv)
        return srv

    yield start
    for s in servers:
        await s.close(grace=1)


class RawClient:
    """Speak the protocol byte by byte over a real socket."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int, host: str = "127.0.0.1") -> RawClient:
        r, w = await asyncio.open_connection(host, port)
        return cls(r, w)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def line(self, timeout: float = 5.0) -> bytes:
        """The next line, without its LF; b"" at EOF."""
        data = await asyncio.wait_for(self.reader.readline(), timeout)
        return data.rstrip(b"\n")

    async def lines_until_eof(self, timeout: float = 5.0) -> list[bytes]:
        out = []
        while True:
            ln = await self.line(timeout)
            if not ln:
                return out
            out.append(ln)

    async def info(self) -> dict[str, Any]:
        ln = await self.line()
        assert ln.startswith(b"INFO "), ln
        return dict(json.loads(ln[5:]))

    async def hello(self, id: str, **fields: Any) -> dict[str, Any]:
        """Read INFO, send HELLO, return the OK's JSON (skipping the server's RTT PING)."""
        await self.info()
        await self.send(b"HELLO " + json.dumps({"id": id, **fields}).encode() + b"\n")
        ln = await self.line()
        assert ln.startswith(b"OK "), ln
        return dict(json.loads(ln[3:]))

    async def expect(self, prefix: bytes, timeout: float = 5.0) -> bytes:
        """Read lines until one starts with `prefix` (PINGs from the server are skipped)."""
        while True:
            ln = await self.line(timeout)
            if ln.startswith(prefix):
                return ln
            if not ln:
                raise AssertionError(f"EOF while waiting for {prefix!r}")
            if not ln.startswith(b"PING "):
                raise AssertionError(f"expected {prefix!r}, got {ln!r}")

    def close(self) -> None:
        self.writer.close()


def tcpulse_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "tcpulse", *args]


class ServerProcess:
    """`tcpulse serve --port 0 --log-format json ...` in a subprocess; events read from stdout."""

    def __init__(self, *args: str, env: dict[str, str] | None = None, cwd: str | None = None) -> None:
        # No store unless a test asks for one (`--db PATH`): nothing is left in the working directory.
        db = [] if "--db" in args else ["--db", "none"]
        self.args = ["serve", "--port", "0", "--log-format", "json", "--status-every", "0", *db, *args]
        self.proc = subprocess.Popen(tcpulse_cmd(*self.args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})}, cwd=cwd)
        self.events: list[dict[str, Any]] = []
        self._lines: queue.Queue[bytes | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        first = self.next_event(timeout=20)
        assert first["event"] == "listening", first
        self.port: int = first["port"]

    def next_event(self, timeout: float = 10.0) -> dict[str, Any]:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"no event from the server within {timeout:.1f} s; "
                               f"stderr: {self.stderr_now()}") from None
        if line is None:
            raise EOFError(f"server exited ({self.proc.poll()}); stderr: {self.stderr_now()}")
        ev = json.loads(line)
        self.events.append(ev)
        return dict(ev)

    def _pump(self) -> None:
        # A thread reads stdout line by line (a selector on a buffered pipe misses lines).
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.strip():
                self._lines.put(line)
        self._lines.put(None)

    def wait_event(self, name: str, timeout: float = 10.0, **match: Any) -> dict[str, Any]:
        end = time.monotonic() + timeout
        while True:
            ev = self.next_event(max(0.01, end - time.monotonic()))
            if ev["event"] == name and all(ev.get(k) == v for k, v in match.items()):
                return ev

    def stderr_now(self) -> str:
        if self.proc.poll() is None or self.proc.stderr is None:
            return "(running)"
        return self.proc.stderr.read().decode(errors="replace")

    def terminate(self, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def rest_of_stdout(self, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Every event still to come, up to the server's exit (call after stopping it)."""
        out = []
        while True:
            try:
                out.append(self.next_event(timeout))
            except EOFError:
                return out


@pytest.fixture
def server_process() -> Iterator[Any]:
    procs: list[ServerProcess] = []

    def start(*args: str, **kw: Any) -> ServerProcess:
        p = ServerProcess(*args, **kw)
        procs.append(p)
        return p

    yield start
    for p in procs:
        with contextlib.suppress(Exception):
            p.kill()
