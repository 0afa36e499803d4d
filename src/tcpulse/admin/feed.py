"""The dashboard's live feed: server events turned into small deltas pushed over Server-Sent Events.

A new subscriber gets one `snapshot` (every open client's row, the totals and the last minutes of
history); after that only `batch` messages: what happened to which client (connect, hello,
suspect, alive, timeout, close, rtt, error) as it happened, flushed every `FLUSH` seconds, and once
a second a `sample` for the chart plus the rows whose counters moved.  Nobody polls the table.

Costs: with no dashboard open the feed only keeps the history (one pass over the open clients a
second); events are turned into rows only while someone watches.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from tcpulse.i18n import current_language
from tcpulse.i18n.display import iso_ts
from tcpulse.server.events import (
    Connected,
    Disconnected,
    HelloReceived,
    ProtocolErrorOccurred,
    Recovered,
    RttMeasured,
    ServerEvent,
    Suspect,
    TimedOut,
)

if TYPE_CHECKING:
    from tcpulse.server.server import Server
    from tcpulse.server.view import ClientView

__all__ = ["Feed", "client_row"]

#: Seconds between flushes of pending deltas: short enough that a suspect client shows "as it
#: happens", long enough that a burst of connects goes out as one message.
FLUSH = 0.2
#: Seconds between chart samples, and how many are kept (10 minutes).
SAMPLE_EVERY = 1.0
HISTORY = 600
#: Messages queued for one browser before it is cut off; its EventSource reconnects by itself
#: and starts again from a fresh snapshot, so a stalled tab never grows the server's memory.
QUEUE_MAX = 256
#: Bytes queued for one browser before it is cut off (with thousands of clients one message can
#: be a megabyte).  One message is always let through, so a large snapshot still goes out.
QUEUE_MAX_BYTES = 8 << 20
#: Deltas held between flushes before the feed gives up on deltas and resends snapshots.
PENDING_MAX = 5000


def client_row(c: ClientView, now_mono: float, now_wall: float) -> dict[str, Any]:
    """One client as `/api/clients` and the dashboard show it (docs/admin-api.md lists the fields)."""
    s = c.snapshot(now_mono)
    idle = s["last_heard_ago"]
    rtt = s["rtt"]
    return {
        "cid": c.conn_id,
        "id": s["id"],
        "name": s["client"],
        "addr": s["addr"],
        "session": s["session"],
        "connected_at": iso_ts(s["connected_at"]),
        "uptime": round(max(0.0, now_wall - s["connected_at"]), 3),
        "last_heard": iso_ts(now_wall - idle),
        "idle": idle,
        "state": s["state"],
        "heartbeats": s["heartbeats"],
        "messages": s["messages"],
        "bytes_in": s["bytes_in"],
        "bytes_out": s["bytes_out"],
        "rtt_ms": None if rtt is None else round(rtt * 1000, 3),
        "heartbeat_interval": s["heartbeat_interval"],
        "heartbeat_timeout": s["heartbeat_timeout"],
    }


def sse(obj: dict[str, Any]) -> bytes:
    """One Server-Sent Events message (JSON has no raw newlines, so one `data:` line)."""
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


class Subscriber:
    """One open dashboard.  Read with `get()` until it yields None (cut off or shutting down)."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.dropped = False
        self.queued_bytes = 0

    def put(self, msg: bytes | None) -> None:
        if self.dropped:
            return
        if msg is not None and (self.queue.qsize() >= QUEUE_MAX or (
                self.queue.qsize() and self.queued_bytes + len(msg) > QUEUE_MAX_BYTES)):
            self.dropped = True
            # The reader may be stuck writing to a dead peer for minutes: free what it has not
            # read now (it is of no use to it: a reconnect starts from a fresh snapshot).
            while not self.queue.empty():
                self.queue.get_nowait()
            self.queued_bytes = 0
            msg = None
        if msg is not None:
            self.queued_bytes += len(msg)
        self.queue.put_nowait(msg)

    async def get(self, timeout: float) -> bytes | None:
        """The next message; TimeoutError when none comes within `timeout` seconds."""
        msg = await asyncio.wait_for(self.queue.get(), timeout)
        if msg is not None:
            self.queued_bytes -= len(msg)
        return msg


class Feed:
    """Call `on_event` for every server event; `start()` runs the flush/sample loop."""

    def __init__(self, server: Server, totals: Any) -> None:
        self.server = server
        #: `() -> dict` of live totals (the same figures /metrics shows).
        self._totals = totals
        self.subscribers: set[Subscriber] = set()
        self.history: deque[dict[str, Any]] = deque(maxlen=HISTORY)
        self._pending: list[dict[str, Any]] = []
        self._overflow = False
        self._sent: dict[int, tuple[Any, ...]] = {}
        self._task: asyncio.Task[None] | None = None
        self._last_msgs: int | None = None
        self._last_t = 0.0

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> None:
        self._sample(time.time())
        self._task = asyncio.ensure_future(self._run())

    async def close(self) -> None:
        for sub in list(self.subscribers):
            sub.put(None)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def subscribe(self) -> Subscriber:
        """A new dashboard: its queue starts with a snapshot; call `unsubscribe` when it goes."""
        sub = Subscriber()
        self.subscribers.add(sub)
        sub.put(sse(self.snapshot()))
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)
        if not self.subscribers:
            self._pending.clear()
            self._sent.clear()

    def snapshot(self) -> dict[str, Any]:
        srv = self.server
        now_mono, now_wall = srv.now(), time.time()
        rows = []
        for c in sorted(srv.clients, key=lambda c: c.conn_id):
            row = client_row(c, now_mono, now_wall)
            rows.append(row)
            self._sent[c.conn_id] = _key(c)
        cluster = None
        if srv.cluster.enabled:  # -- cluster: every node's clients, each with its node --
            from tcpulse.admin.cluster import all_rows, cluster_summary
            node = srv.cluster.node_id
            for row in rows:
                row["node"] = node
            rows.extend(r for r in all_rows(srv, client_row) if r["node"] != node)
            cluster = cluster_summary(srv)
        return {
            "type": "snapshot",
            "server": {"server_id": srv.server_id, "host": srv.host, "port": srv.port,
                       "started_at": iso_ts(srv.started_at),
                       "heartbeat_interval": srv.config.heartbeat_interval,
                       "heartbeat_timeout": srv.config.heartbeat_timeout, "lang": current_language(),
                       **({"cluster": cluster} if cluster is not None else {})},
            "now": iso_ts(now_wall),
            "clients": rows,
            "history": list(self.history),
            "sample_every": SAMPLE_EVERY,
        }

    # ---------------------------------------------------------------- events

    def on_event(self, ev: ServerEvent) -> None:
        if not self.subscribers:
            return
        t = type(ev)
        op = _OPS.get(t)
        if op is None:
            return
        c: ClientView = ev.client  # type: ignore[union-attr]
        if len(self._pending) >= PENDING_MAX:
            self._overflow = True
            return
        d: dict[str, Any] = {"op": op, "row": client_row(c, self.server.now(), time.time())}
        if t is TimedOut:
            assert isinstance(ev, TimedOut)
            d["silent_for"] = round(ev.silent_for, 3)
            d["late_ms"] = round(ev.late_by * 1000, 3)
        elif t is Suspect:
            assert isinstance(ev, Suspect)
            d["silent_for"] = round(ev.silent_for, 3)
        elif t is Disconnected:
            assert isinstance(ev, Disconnected)
            d["reason"] = ev.reason.value
            if ev.detail:
                d["detail"] = ev.detail
            self._sent.pop(c.conn_id, None)
        elif t is ProtocolErrorOccurred:
            assert isinstance(ev, ProtocolErrorOccurred)
            d["code"] = ev.code
            d["text"] = ev.text
        if t is not Disconnected:
            self._sent[c.conn_id] = _key(c)
        self._pending.append(d)

    def resend_snapshot(self) -> None:
        """Every dashboard starts afresh at the next flush (the cluster view went stale or current)."""
        self._overflow = True

    def on_cluster_change(self, ch: Any) -> None:
        """Another node's client changed (`ClusterChange`, server/cluster.py): a delta like ours."""
        if not self.subscribers:
            return
        if len(self._pending) >= PENDING_MAX:
            self._overflow = True
            return
        from tcpulse.admin.cluster import change_op
        self._pending.append(change_op(ch))

    # ---------------------------------------------------------------- loop

    async def _run(self) -> None:
        next_sample = self.server.now() + SAMPLE_EVERY
        while True:
            await asyncio.sleep(FLUSH)
            sample = None
            if self.server.now() >= next_sample:
                next_sample += SAMPLE_EVERY
                sample = self._sample(time.time())
            if self.subscribers:
                self._flush(sample)

    def _sample(self, now_wall: float) -> dict[str, Any]:
        totals = self._totals()
        counts = {"alive": 0, "suspect": 0}
        for c in self.server.clients:
            st = c.state.value
            if st in counts:
                counts[st] += 1
        if self.server.cluster.enabled:  # -- cluster: the chart counts every node's clients --
            for by_state in self.server.cluster.state_counts().values():
                for state in counts:
                    counts[state] += by_state.get(state, 0)
        msgs = totals["messages"]
        dt = now_wall - self._last_t
        rate = 0.0 if self._last_msgs is None or dt <= 0 else max(0, msgs - self._last_msgs) / dt
        self._last_msgs, self._last_t = msgs, now_wall
        s = {"t": round(now_wall, 3), "clients": counts["alive"] + counts["suspect"], **counts,
             "msg_rate": round(rate, 2), "messages": msgs, "connections": totals["connections"],
             "timeouts": totals["timeouts"]}
        self.history.append(s)
        return s

    def _flush(self, sample: dict[str, Any] | None) -> None:
        if self._overflow:
            # Too much happened at once for deltas to help: every dashboard starts afresh.
            self._overflow = False
            self._pending.clear()
            snap = sse(self.snapshot())
            for sub in list(self.subscribers):
                sub.put(snap)
            return
        ops = self._pending
        if sample is not None:
            ops.extend(self._changed_rows())
        if not ops and sample is None:
            return
        self._pending = []
        msg: dict[str, Any] = {"type": "batch", "ops": ops}
        if sample is not None:
            msg["sample"] = sample
        data = sse(msg)
        for sub in list(self.subscribers):
            sub.put(data)

    def _changed_rows(self) -> list[dict[str, Any]]:
        """Rows whose counters moved since they were last sent (once a second, while watched)."""
        now_mono, now_wall = self.server.now(), time.time()
        out = []
        sent = self._sent
        for c in self.server.clients:
            k = _key(c)
            if sent.get(c.conn_id) != k:
                sent[c.conn_id] = k
                out.append({"op": "update", "row": client_row(c, now_mono, now_wall)})
        return out


def _key(c: ClientView) -> tuple[Any, ...]:
    # bytes_in moves with every frame the client sends, so it also stands for "last heard".
    return (c.bytes_in, c.bytes_out, c.rtt, c.state)


_OPS: dict[type, str] = {
    Connected: "connect",
    HelloReceived: "hello",
    Suspect: "suspect",
    Recovered: "alive",
    TimedOut: "timeout",
    Disconnected: "close",
    RttMeasured: "rtt",
    ProtocolErrorOccurred: "error",
}
