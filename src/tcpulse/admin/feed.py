"""The dashboard's live feed, and the admin's memory of recent events.

The feed keeps, from the server's event stream, the last `RECENT` events (connect, hello,
suspect, alive, timeout, close, error: one small dict each; `/api/events` reads them) and ten
minutes of one-second samples (clients by state, messages per second: the chart).  An open
dashboard (`/api/events/stream`, Server-Sent Events) gets one `hello` (the server, the history,
the last events) and then a `batch` every `FLUSH` seconds when something happened: the new events
(at most `EVENTS_PER_FLUSH`; beyond, how many were left out) and, once a second, the sample.
Nothing in it is per client: the table is a window the page asks for (`/api/clients`), so that a
dashboard costs the same beside 10 clients as beside 10,000.

Each message is serialized once for every dashboard.  A dashboard's queue is bounded
(`QUEUE_MAX` messages, `QUEUE_MAX_BYTES`); when it overflows, the dashboard is cut off (`on_drop`
closes its connection at once and what it had not read is freed); its browser reconnects by
itself and starts again from a fresh `hello`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tcpulse.i18n import current_language
from tcpulse.i18n.display import iso_ts
from tcpulse.server.events import (
    Connected,
    Disconnected,
    HelloReceived,
    ProtocolErrorOccurred,
    Recovered,
    ServerEvent,
    Suspect,
    TimedOut,
)

if TYPE_CHECKING:
    from tcpulse.admin.clients import Directory
    from tcpulse.server.server import Server

__all__ = ["EVENTS_PER_FLUSH", "FLUSH", "HISTORY", "QUEUE_MAX", "QUEUE_MAX_BYTES", "RECENT", "Feed", "Subscriber"]

#: Seconds between flushes: short enough that a suspect client shows "as it happens", long enough
#: that a burst of connects goes out as one message.
FLUSH = 0.25
#: Seconds between chart samples, and how many are kept (10 minutes).
SAMPLE_EVERY = 1.0
HISTORY = 600
#: Recent events kept (`/api/events?limit=N`, and what a dashboard shows on load: the last
#: `HELLO_EVENTS`).
RECENT = 1000
HELLO_EVENTS = 100
#: Events sent to the dashboards per flush at most: when 10,000 clients connect at once, the log
#: shows the first of each flush and how many more there were (all of them are counted, and the
#: last `RECENT` are kept).
EVENTS_PER_FLUSH = 100
#: Messages / bytes queued for one dashboard before it is cut off.  One message is always let
#: through, so a large `hello` still goes out.
QUEUE_MAX = 64
QUEUE_MAX_BYTES = 1 << 20


def sse(obj: dict[str, Any]) -> bytes:
    """One Server-Sent Events message (JSON has no raw newlines, so one `data:` line)."""
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


class Subscriber:
    """One open dashboard.  Read with `get()` until it yields None (cut off or shutting down).
    `on_drop` is called once if it is cut off for not keeping up."""

    def __init__(self, on_drop: Callable[[], None] | None = None) -> None:
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.dropped = False
        self.ended = False
        self.queued_bytes = 0
        self._on_drop = on_drop

    def put(self, msg: bytes | None) -> None:
        if self.ended:
            return
        if msg is not None and (self.queue.qsize() >= QUEUE_MAX or (
                self.queue.qsize() and self.queued_bytes + len(msg) > QUEUE_MAX_BYTES)):
            self.dropped = True
            msg = None
        if msg is None:
            # Free what it has not read now: of no use to it (a reconnect starts afresh).
            self.ended = True
            while not self.queue.empty():
                self.queue.get_nowait()
            self.queued_bytes = 0
            self.queue.put_nowait(None)
            if self.dropped and self._on_drop is not None:
                cb, self._on_drop = self._on_drop, None
                cb()
            return
        self.queued_bytes += len(msg)
        self.queue.put_nowait(msg)

    def close(self) -> None:
        """End the stream (its reader gets None next)."""
        self.put(None)

    async def get(self, timeout: float) -> bytes | None:
        """The next message; TimeoutError when none comes within `timeout` seconds."""
        msg = await asyncio.wait_for(self.queue.get(), timeout)
        if msg is not None:
            self.queued_bytes -= len(msg)
        return msg


def event_record(seq: int, ev: ServerEvent) -> dict[str, Any] | None:
    """A server event as `/api/events` and the dashboard's log show it (None: not one of those)."""
    kind = _KINDS.get(type(ev))
    if kind is None:
        return None
    c = ev.client  # type: ignore[union-attr]
    e: dict[str, Any] = {"seq": seq, "t": round(time.time(), 3), "kind": kind, "cid": c.conn_id,
                         "name": c.name, "addr": c.addr}
    if isinstance(ev, HelloReceived):
        e["heartbeat_interval"] = ev.heartbeat_interval
        e["heartbeat_timeout"] = ev.heartbeat_timeout
    elif isinstance(ev, TimedOut):
        e["silent_for"] = round(ev.silent_for, 3)
        e["late_ms"] = round(ev.late_by * 1000, 3)
    elif isinstance(ev, Suspect | Recovered):
        e["silent_for"] = round(ev.silent_for, 3)
    elif isinstance(ev, Disconnected):
        e["reason"] = ev.reason.value
        if ev.detail:
            e["detail"] = ev.detail
    elif isinstance(ev, ProtocolErrorOccurred):
        e["code"] = ev.code
        e["text"] = ev.text
    return e


_KINDS: dict[type, str] = {
    Connected: "connect",
    HelloReceived: "hello",
    Suspect: "suspect",
    Recovered: "alive",
    TimedOut: "timeout",
    Disconnected: "close",
    ProtocolErrorOccurred: "error",
}


class Feed:
    """Call `on_event` for every server event; `start()` runs the flush/sample loop."""

    def __init__(self, server: Server, directory: Directory) -> None:
        self.server = server
        self.directory = directory
        self.subscribers: set[Subscriber] = set()
        self.history: deque[dict[str, Any]] = deque(maxlen=HISTORY)
        self.recent: deque[dict[str, Any]] = deque(maxlen=RECENT)
        self.seq = 0
        self._pending: list[dict[str, Any]] = []
        self._skipped = 0
        self._task: asyncio.Task[None] | None = None
        self._last_msgs: int | None = None
        self._last_t = 0.0

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def close(self) -> None:
        for sub in list(self.subscribers):
            sub.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def subscribe(self, on_drop: Callable[[], None] | None = None) -> Subscriber:
        """A new dashboard: its queue starts with a `hello`; call `unsubscribe` when it goes."""
        sub = Subscriber(on_drop)
        self.subscribers.add(sub)
        sub.put(sse(self.hello()))
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)
        sub.close()
        if not self.subscribers:
            self._pending.clear()
            self._skipped = 0

    def hello(self) -> dict[str, Any]:
        srv = self.server
        cluster = None
        if srv.cluster.enabled:  # -- cluster: which nodes this dashboard sees (admin/cluster.py) --
            from tcpulse.admin.cluster import cluster_summary
            cluster = cluster_summary(srv)
        return {
            "type": "hello",
            "server": {"server_id": srv.server_id, "host": srv.host, "port": srv.port,
                       "started_at": iso_ts(srv.started_at),
                       "heartbeat_interval": srv.config.heartbeat_interval,
                       "heartbeat_timeout": srv.config.heartbeat_timeout, "lang": current_language(),
                       **({"cluster": cluster} if cluster is not None else {})},
            "now": iso_ts(),
            "history": list(self.history),
            "events": list(self.recent)[-HELLO_EVENTS:],
            "sample_every": SAMPLE_EVERY,
        }

    def events(self, limit: int) -> list[dict[str, Any]]:
        """The last `limit` events, oldest first."""
        if limit <= 0:
            return []
        n = len(self.recent)
        return list(self.recent)[max(0, n - limit):]

    # ---------------------------------------------------------------- events

    def on_event(self, ev: ServerEvent) -> None:
        if type(ev) not in _KINDS:
            return
        self.seq += 1
        e = event_record(self.seq, ev)
        assert e is not None
        self._add(e)

    def resend_snapshot(self) -> None:
        """Every dashboard hears the news at once (the cluster view went stale or current): a new
        hello, with the cluster's state, at the next flush."""
        data = sse(self.hello())
        for sub in list(self.subscribers):
            sub.put(data)

    def on_cluster_change(self, ch: Any) -> None:
        """Another node's client changed (`ClusterChange`, server/cluster.py): an event in the log,
        as one of ours is (the rows themselves come from /api/clients, across nodes)."""
        from tcpulse.admin.cluster import change_record
        self.seq += 1
        self._add(change_record(self.seq, ch))

    def _add(self, e: dict[str, Any]) -> None:
        # Kept in the ring; sent with the next flush, or counted as skipped past its bound.
        self.recent.append(e)
        if self.subscribers:
            if len(self._pending) < EVENTS_PER_FLUSH:
                self._pending.append(e)
            else:
                self._skipped += 1

    # ---------------------------------------------------------------- loop

    async def _run(self) -> None:
        await self._sample(time.time())
        next_sample = self.server.now() + SAMPLE_EVERY
        while True:
            await asyncio.sleep(FLUSH)
            sample = None
            if self.server.now() >= next_sample:
                next_sample += SAMPLE_EVERY
                if next_sample < self.server.now():  # the loop was held up: no burst of samples
                    next_sample = self.server.now() + SAMPLE_EVERY
                sample = await self._sample(time.time())
            if self.subscribers:
                self._flush(sample)

    async def _sample(self, now_wall: float) -> dict[str, Any]:
        d = self.directory
        d.prune(self.server.now())
        counts, open_msgs = await d.counts()
        if self.server.cluster.enabled:  # -- cluster: the chart counts every node's clients --
            for node, by_state in self.server.cluster.state_counts().items():
                if node != self.server.cluster.node_id:
                    for state in ("alive", "suspect"):
                        counts[state] = counts.get(state, 0) + by_state.get(state, 0)
        totals = self.server.totals
        msgs = totals.get("messages", 0) + open_msgs
        dt = now_wall - self._last_t
        rate = 0.0 if self._last_msgs is None or dt <= 0 else max(0, msgs - self._last_msgs) / dt
        self._last_msgs, self._last_t = msgs, now_wall
        s = {"t": round(now_wall, 3), "clients": counts["alive"] + counts["suspect"], **counts,
             "gone": len(d.gone), "msg_rate": round(rate, 2), "messages": msgs,
             "connections": totals.get("connections", 0), "timeouts": totals.get("timeouts", 0)}
        self.history.append(s)
        return s

    def _flush(self, sample: dict[str, Any] | None) -> None:
        if not self._pending and not self._skipped and sample is None:
            return
        msg: dict[str, Any] = {"type": "batch", "events": self._pending}
        if self._skipped:
            msg["skipped"] = self._skipped
        if sample is not None:
            msg["sample"] = sample
        self._pending = []
        self._skipped = 0
        data = sse(msg)
        for sub in list(self.subscribers):
            sub.put(data)
