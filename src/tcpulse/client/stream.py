"""`Client.events()`: a bounded stream of a client's events, for `async for`."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from typing import Self

from tcpulse.client.events import ClientEvent, Closed, EventsDropped

__all__ = ["EventStream"]


class EventStream:
    """The events of one client from the moment `Client.events()` made it, in order, ending
    after `Closed`.  Bounded: while `maxsize` events wait unread, newer ones are dropped and
    counted, and the next event that finds room is preceded by `EventsDropped(count)`.  `Closed`
    always gets in.  `aclose()` (or leaving the `async for` by `break`) stops the stream."""

    def __init__(self, maxsize: int, on_close: Callable[[EventStream], None]) -> None:
        if maxsize < 1:
            raise ValueError(f"maxsize must be at least 1 (got {maxsize})")
        self.maxsize = maxsize
        self._q: collections.deque[ClientEvent] = collections.deque()
        self._ready = asyncio.Event()
        self._dropped = 0
        self._done = False
        self._on_close: Callable[[EventStream], None] | None = on_close

    def put(self, ev: ClientEvent) -> None:
        """Called by the client for each event (never blocks)."""
        if self._on_close is None:
            return
        q = self._q
        if len(q) >= self.maxsize and not isinstance(ev, Closed):
            self._dropped += 1
            return
        if self._dropped:
            q.append(EventsDropped(self._dropped))
            self._dropped = 0
        q.append(ev)
        self._ready.set()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> ClientEvent:
        while not self._q:
            if self._done:
                raise StopAsyncIteration
            self._ready.clear()
            await self._ready.wait()
        ev = self._q.popleft()
        if isinstance(ev, Closed):
            self._done = True
            self._close()
        return ev

    async def aclose(self) -> None:
        """Stop receiving events."""
        self._done = True
        self._q.clear()
        self._close()

    def _close(self) -> None:
        cb, self._on_close = self._on_close, None
        if cb is not None:
            cb(self)
