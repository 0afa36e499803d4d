"""A real HTTP receiver for the alert tests: an aiohttp server on 127.0.0.1 that records every
request (raw body included, for the signature) and answers as the test says.

- `receiver` (async tests): started in the test's own loop.
- `ThreadedReceiver` (tests that run `tcpulse serve` as a subprocess): the same server in a thread
  with a loop of its own; its records are read with `wait_for(n)`.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Receiver:
    """Records requests; answers each with the next status of `answers` (then 200).  While
    `hold` is set (an asyncio.Event that is clear), requests wait for it."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.attempts = 0
        self.answers: list[int] = []
        self.hold: asyncio.Event | None = None
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.attempts += 1
        if self.hold is not None:
            await self.hold.wait()
        status = self.answers.pop(0) if self.answers else 200
        if 200 <= status < 300:
            self.requests.append(Received(request.path_qs, dict(request.headers), body))
        return web.Response(status=status, text="ok" if status < 300 else "no")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("POST", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"

    async def close(self) -> None:
        if self.hold is not None:
            self.hold.set()
        if self._runner is not None:
            await self._runner.cleanup()

    async def wait_for(self, n: int, timeout: float = 10.0) -> list[Received]:
        end = asyncio.get_running_loop().time() + timeout
        while len(self.requests) < n:
            assert asyncio.get_running_loop().time() < end, f"{len(self.requests)} of {n} requests arrived"
            await asyncio.sleep(0.01)
        return self.requests


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    await r.start()
    yield r
    await r.close()


class ThreadedReceiver:
    """A `Receiver` in a thread of its own (for subprocess tests)."""

    def __init__(self) -> None:
        self.receiver = Receiver()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._ready.wait(10)
        self.url = self.receiver.url

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self.receiver.start())
        self._ready.set()
        self._loop.run_forever()

    def wait_for(self, n: int, timeout: float = 20.0) -> list[Received]:
        end = time.monotonic() + timeout
        while len(self.receiver.requests) < n:
            assert time.monotonic() < end, f"{len(self.receiver.requests)} of {n} requests arrived"
            time.sleep(0.02)
        return list(self.receiver.requests)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.receiver.close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


@pytest.fixture
def threaded_receiver() -> Iterator[ThreadedReceiver]:
    r = ThreadedReceiver()
    yield r
    r.close()
