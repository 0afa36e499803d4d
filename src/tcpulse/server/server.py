"""The asyncio server: moves bytes between sockets and `Connection`, timers and `Tracker`.

    server = Server(ServerConfig(port=12345))
    server.subscribe(print)              # or: async for ev in server.events(): ...
    async with server:
        await server.serve_forever()

Everything about the protocol lives in `_connection`; everything about liveness in `liveness`.
This module only reads, writes, arms one timer for all deadlines, and reports what happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from tcpulse.policy.liveness import Detector, PhiDetector, State, Tracker, clamp_interval
from tcpulse.protocol.errors import ErrorCode
from tcpulse.protocol.events import Bye, Hello, Info, Msg, Ok
from tcpulse.server.config import ServerConfig
from tcpulse.server.connection import ClientInfo
from tcpulse.server.events import (
    Connected,
    Disconnected,
    DisconnectReason,
    HelloReceived,
    Listening,
    ServerEvent,
    Status,
    Suspect,
    TimedOut,
    Warning_,
)
from tcpulse.server.guard import Guard
from tcpulse.store.base import ConnectionRecord, MessageRecord, SessionKey, Store, StoreUnavailable
from tcpulse.store.memory import MemoryStore
from tcpulse.version import __version__

__all__ = ["ACCEPT_BATCH", "Server", "default_server_id"]

#: On asyncio's own loops the listen backlog is also how many connections one wake of the loop
#: accepts at once, each holding a descriptor until its turn comes; under a flood that batch alone
#: (4096) would spend every descriptor kept back.  Those loops accept this many per wake, and the
#: kernel keeps its full backlog (`ServerConfig.backlog`) for reconnect storms.
ACCEPT_BATCH = 8


class Server:
    """A tcpulse server.  Use `async with server:` (or `start()` / `close()`)."""

    def __init__(self, config: ServerConfig | None = None, *, store: Store | None = None) -> None:
        self.config = config or ServerConfig()
        self.config.validate()
        self.server_id = self.config.server_id or secrets.token_hex(4)
        self._store: Store = MemoryStore()
        self.use_store(store or self._store)
        self._tracker: Tracker[ClientInfo] = Tracker()
        self._phi = self.config.phi_settings()
        #: TLS, authentication and limits (security.py).
        self.guard = Guard(self)
        self._clients: set[ClientInfo] = set()
        #: Every connection whose socket is still open (including ones lingering after BYE/ERR).
        self._open: set[ClientInfo] = set()
        #: Sockets lingering after their last frame now (see MAX_LINGERING).
        self._lingering = 0
        self._by_id: dict[str, ClientInfo] = {}
        self._by_session: dict[SessionKey, ClientInfo] = {}
        self._subscribers: list[Callable[[ServerEvent], None]] = []
        self._wants_messages = False
        self._wants_heartbeats = self.config.verbose
        self._server: asyncio.base_events.Server | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_when = 0.0
        self._status_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = False
        self.started_at = time.time()
        #: Counts of connections that have ended (and `connections`, `timeouts`: all so far); add the
        #: open clients' own counters for live figures (admin.py does).
        self.totals = {"connections": 0, "messages": 0, "timeouts": 0, "heartbeats": 0, "errors": 0,
                       "bytes_in": 0, "bytes_out": 0}
        self._info: Info | None = None
        self.port = 0
        self.host = self.config.host
        self.sockets: list[socket.socket] = []

    # ---------------------------------------------------------------- public API

    @property
    def store(self) -> Store:
        return self._store

    def use_store(self, store: Store) -> None:
        """Keep messages and history in `store` (call before `start()`)."""
        self._store = store
        store.set_commit_listener(self._on_commit)
        store.set_state_listener(self._on_store_state)

    @property
    def clients(self) -> list[ClientInfo]:
        """The connections open now."""
        return list(self._clients)

    @property
    def accepting(self) -> bool:
        """True while the server listens and takes new connections (the admin's /healthz)."""
        return self._server is not None and self._server.is_serving() and not self._closing

    def client(self, client_id: str) -> ClientInfo | None:
        return self._by_id.get(client_id)

    def subscribe(self, callback: Callable[[ServerEvent], None], *, messages: bool = True,
                  heartbeats: bool = False) -> Callable[[], None]:
        """Call `callback(event)` in the event loop for every event; returns an unsubscribe.

        `messages` / `heartbeats`: whether this subscriber wants those (frequent) events; when no
        subscriber does, the server does not build them at all.
        """
        self._subscribers.append(callback)
        if messages:
            self._wants_messages = True
        if heartbeats:
            self._wants_heartbeats = True

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._subscribers.remove(callback)
        return unsubscribe

    async def events(self, maxsize: int = 10000) -> AsyncIterator[ServerEvent]:
        """Iterate over server events.  If you fall more than `maxsize` behind, the oldest
        events are dropped (a slow consumer must not grow the server's memory)."""
        q: asyncio.Queue[ServerEvent] = asyncio.Queue(maxsize)

        def put(ev: ServerEvent) -> None:
            if q.full():
                q.get_nowait()
            q.put_nowait(ev)
        unsubscribe = self.subscribe(put)
        try:
            while True:
                yield await q.get()
        finally:
            unsubscribe()

    def send(self, client_id: str, payload: bytes | str) -> bool:
        """Send a message to one client (by HELLO id or address).  False if not connected."""
        c = self._by_id.get(client_id) or next((c for c in self._clients if c.addr == client_id), None)
        if c is None or c._closed:
            return False
        c.send_frame(Msg(payload=_to_bytes(payload)))
        return True

    def broadcast(self, payload: bytes | str) -> int:
        """Send a message to every connected client; returns how many it went to."""
        data = _to_bytes(payload)
        n = 0
        for c in list(self._clients):
            if not c._closed:
                c.send_frame(Msg(payload=data))
                n += 1
        return n

    async def start(self) -> None:
        """Open the store and start listening.  Raises OSError (port in use, ...) as is."""
        self._loop = asyncio.get_running_loop()
        cfg = self.config
        self.guard.prepare()  # TLS, auth file, open-file limit; raises ValueError
        await self._store.open()
        self._info = Info(
            server_id=self.server_id, version=__version__, heartbeat_interval=cfg.heartbeat_interval,
            heartbeat_timeout=cfg.heartbeat_timeout, auth_required=self.guard.auth_required,
            durable=self._store.durable, max_line=cfg.max_line, max_payload=cfg.max_payload,
        )
        plain_asyncio = isinstance(self._loop, asyncio.BaseEventLoop)
        self._server = await self._loop.create_server(
            lambda: ClientInfo(self), cfg.host, cfg.port, reuse_address=True,
            backlog=min(ACCEPT_BATCH, cfg.backlog) if plain_asyncio else cfg.backlog, ssl=self.guard.ssl,
            # A TLS handshake is held to the liveness deadline, like any silent client.
            ssl_handshake_timeout=cfg.heartbeat_timeout if self.guard.ssl is not None else None)
        if plain_asyncio:
            for ts in self._server.sockets:
                with socket.socket(fileno=os.dup(ts.fileno())) as dup:
                    dup.listen(cfg.backlog)  # the same listening socket: only its kernel backlog grows
        self.sockets = list(self._server.sockets)
        sockname = self.sockets[0].getsockname()
        self.host, self.port = sockname[0], sockname[1]
        self.started_at = time.time()
        self._emit(Listening(cfg.host, self.port, cfg.heartbeat_interval, cfg.heartbeat_timeout,
                             self._store.durable))
        if cfg.status_every > 0:
            self._status_task = asyncio.create_task(self._status_loop(cfg.status_every))

    async def serve_forever(self) -> None:
        assert self._server is not None, "call start() first"
        with contextlib.suppress(asyncio.CancelledError):
            await self._server.serve_forever()

    async def close(self, grace: float = 5.0) -> None:
        """Stop accepting, send `BYE shutdown` to every client, flush the store, and wait up to
        `grace` seconds for the clients to go before closing what is left."""
        if self._closing:
            return
        self._closing = True
        if self._server is not None:
            self._server.close()
        if self._status_task is not None:
            self._status_task.cancel()
        if self._timer is not None:
            self._timer.cancel()
        # One grace period for the flush and the goodbyes together: shutdown is bounded by it.
        deadline = self._loop.time() + grace
        for c in list(self._clients):
            c.say_bye("shutdown", DisconnectReason.SHUTDOWN)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._store.flush(), grace)
        while self._open and self._loop.time() < deadline:
            await asyncio.sleep(0.01)
        for c in list(self._open):
            if c.transport is not None:
                c.transport.abort()
        await asyncio.sleep(0)
        for t in list(self._tasks):
            t.cancel()
        await self._store.close()

    async def __aenter__(self) -> Server:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def status_rows(self) -> list[dict[str, Any]]:
        now = self._loop_time()
        return [c.snapshot(now) for c in sorted(self._clients, key=lambda c: c.conn_id)]

    # ---------------------------------------------------------------- internals

    def _loop_time(self) -> float:
        # Deadlines are kept on the monotonic clock, not the loop's: uvloop's clock ticks in whole
        # milliseconds, which would make every lateness and silence figure a whole millisecond.
        return time.monotonic()

    def _emit(self, ev: ServerEvent) -> None:
        for cb in self._subscribers:
            try:
                cb(ev)
            except Exception as e:  # a subscriber's bug must not take the server down
                import sys
                print(f"tcpulse: event subscriber failed: {e!r}", file=sys.stderr)

    def _on_connection_made(self, c: ClientInfo) -> None:
        if self._closing:
            c.fail(ErrorCode.UNAVAILABLE, "server shutting down", DisconnectReason.SHUTDOWN)
            return
        if not self.guard.admit(c):
            return  # refused with ERR 503 (server full, or too many from this address)
        now = self._loop_time()
        c.connected_mono = now
        self._open.add(c)
        self._clients.add(c)
        self.totals["connections"] += 1
        assert self._info is not None
        c.send_frame(self._info)
        self._tracker.add(c, now, c.interval, c.timeout, self._detector(c.interval))
        self._arm()
        if not self.guard.auth_required:
            # With auth, nothing is stored for a connection until its HELLO is accepted.
            self._store.record_connection(ConnectionRecord(c.conn_id, None, c.addr, c.connected_at))
        self._emit(Connected(c))

    def _on_connection_lost(self, c: ClientInfo) -> None:
        self.guard.lost(c)
        if c not in self._clients:
            return
        self._clients.discard(c)
        self._tracker.remove(c)
        if c.id is not None and self._by_id.get(c.id) is c:
            del self._by_id[c.id]
        if c.session is not None and c.id is not None:
            key = (c.id, c.session)
            if self._by_session.get(key) is c:
                del self._by_session[key]
        reason = c.reason or DisconnectReason.EOF
        if c.id is not None or not self.guard.auth_required:
            self._store.record_connection(ConnectionRecord(
                c.conn_id, c.id, c.addr, c.connected_at, time.time(), reason.value, c.heartbeats,
                c.messages, c.rtt, c.detail))
        self.totals["messages"] += c.messages
        self.totals["heartbeats"] += c.heartbeats
        self.totals["bytes_in"] += c.bytes_in
        self.totals["bytes_out"] += c.bytes_out
        if reason is DisconnectReason.ERROR:
            self.totals["errors"] += 1
        if c.closed_event is not None:
            c.closed_event.set()
        self._emit(Disconnected(c, reason, c.detail))

    def _on_pause_writing(self, c: ClientInfo) -> None:
        # The client does not read what we send: never buffer for it without bound.
        self._close_slow(c, f"more than {self.guard.write_buffer} bytes unread (--max-write-buffer)")

    def _close_slow(self, c: ClientInfo, detail: str) -> None:
        c.reason = DisconnectReason.SLOW_CONSUMER
        c._end(DisconnectReason.SLOW_CONSUMER, detail)
        if c.transport is not None:
            c.transport.abort()

    def _store_messages(self, c: ClientInfo, msgs: list[Msg]) -> None:
        if msgs:
            self._store.add_messages(c.id or c.addr, c.session, c.conn_id, time.time(), msgs)

    def _store_message(self, c: ClientInfo, m: Msg) -> None:
        self._store.add_message(MessageRecord(c.id or c.addr, c.session, m.seq, time.time(),
                                              m.payload, c.conn_id))

    def _on_commit(self, highs: dict[SessionKey, int]) -> None:
        for key, seq in highs.items():
            c = self._by_session.get(key)
            if c is not None:
                if seq > c.stored:
                    c.stored = seq
                c._send_ack(seq)
                c._flush()

    def _on_store_state(self, failing: bool, text: str) -> None:
        # PROTOCOL.md, "Errors", 503: a numbered sender with unacknowledged messages is closed,
        # so that it keeps them and sends them again once the store can write.
        self._emit(Warning_(text, {"store": "failing" if failing else "ok"}))
        if failing:
            for c in list(self._clients):
                if c.session is not None and c.high > c._acked_sent:
                    c.fail(ErrorCode.UNAVAILABLE, "store unavailable: keep your messages and send "
                           "them again after reconnecting")

    def _start_hello(self, c: ClientInfo, hello: Hello) -> None:
        task = asyncio.ensure_future(self._accept_hello(c, hello))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _accept_hello(self, c: ClientInfo, hello: Hello) -> None:
        cfg = self.config
        interval = clamp_interval(hello.heartbeat_interval, cfg.heartbeat_interval,
                                  cfg.min_heartbeat_interval, cfg.max_heartbeat_interval)
        # PROTOCOL.md, "Liveness": timeout = clamped interval x the server's own ratio.
        timeout = interval * (cfg.heartbeat_timeout / cfg.heartbeat_interval)
        replaced = False
        # Authentication comes before anything else, a takeover included (security.py).
        if not await self.guard.check_hello(c, hello) or c._closed:
            return
        if hello.session is not None and self._store.failing:
            c.fail(ErrorCode.UNAVAILABLE, "store unavailable: try again later")
            return
        acked = 0
        try:
            while True:
                old = self._by_id.get(hello.id)
                if old is not None and old is not c:
                    # PROTOCOL.md, "Identity and takeover": the old one gets BYE replaced and is
                    # closed, everything received from it is stored, and only then does the new
                    # one get OK.
                    replaced = True
                    old.say_bye("replaced", DisconnectReason.REPLACED)
                    await self._store.flush()
                if c._closed:
                    return
                if hello.session is not None:
                    acked = await self._store.acked(hello.id, hello.session)
                if c._closed:
                    return
                # Another connection may have signed in with this id while we waited on the
                # store: replace it too, so that one id never has two live connections.
                if self._by_id.get(hello.id) in (None, c):
                    break
        except StoreUnavailable as e:
            c.fail(ErrorCode.UNAVAILABLE, f"store unavailable: try again later ({e})")
            return
        if c._closed:
            return
        c.id = hello.id
        c.session = hello.session
        c.interval = interval
        c.timeout = timeout
        c.high = acked
        c._acked_sent = acked
        c.stored = acked
        self._by_id[hello.id] = c
        if hello.session is not None:
            self._by_session[(hello.id, hello.session)] = c
        self._store.record_connection(ConnectionRecord(c.conn_id, c.id, c.addr, c.connected_at))
        now = self._loop_time()
        self._tracker.set_interval(c, now, interval, timeout, self._detector(interval))
        self._arm()
        c.send_frame(Ok(id=hello.id, heartbeat_interval=interval, heartbeat_timeout=timeout, acked=acked))
        self._emit(HelloReceived(c, interval, timeout, hello.session, acked, replaced))
        # Measure the round trip once, right after the handshake.
        c.ping()
        # Parse what arrived behind the HELLO, then read on.
        if c.transport is not None and not c._closed:
            c.data_received(b"")
            if not c.conn.paused and not c._closed:
                c.transport.resume_reading()

    # ---------------------------------------------------------------- deadlines

    def _arm(self) -> None:
        due = self._tracker.next_due()
        if due is None:
            return
        if self._timer is not None:
            if self._timer_when <= due:
                return
            self._timer.cancel()
        self._timer_when = due
        self._timer = self._loop.call_later(max(0.0, due - self._loop_time()), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        now = self._loop_time()
        if now < self._timer_when:
            # The loop's timer woke a hair early (its clock is coarser than ours): never judge a
            # client before its due moment; wait out the rest.
            self._timer = self._loop.call_later(self._timer_when - now, self._on_timer)
            return
        dead = []
        for v in self._tracker.poll(now):
            c = v.key
            if v.state is State.SUSPECT:
                self._emit(Suspect(c, v.silent_for))
            elif v.state is State.DEAD and not c._closed:
                # Announce first: every BYE of this batch goes on the wire before any logging,
                # storing or closing, so that when many clients die at once the last one is not
                # told late by the bookkeeping of the others (PROTOCOL.md, "Liveness": promptly).
                c.conn.send(_BYE_TIMEOUT)
                c._flush()
                dead.append(v)
        wall = time.time()
        for v in dead:
            c = v.key
            self.totals["timeouts"] += 1
            if c.id is not None or not self.guard.auth_required:
                # With auth, nothing is stored for a connection that never authenticated.
                self._store.record_timeout(c.conn_id, c.id, wall, v.silent_for, v.late_by, phi=v.phi)
            self._emit(TimedOut(c, v.silent_for, v.late_by, v.phi))
            c._end(DisconnectReason.TIMEOUT, "heartbeat-timeout", linger=True)
        if not self._closing:
            self._arm()

    def _detector(self, interval: float) -> Detector | None:
        # One per client, learning from its interval on (None: the fixed timeout, no state).
        return None if self._phi is None else PhiDetector(interval, self._phi)

    async def _status_loop(self, every: float) -> None:
        while True:
            await asyncio.sleep(every)
            self._emit(Status(self.status_rows()))


_BYE_TIMEOUT = Bye(reason="heartbeat-timeout")


def _to_bytes(payload: bytes | str) -> bytes:
    return payload.encode("utf-8") if isinstance(payload, str) else bytes(payload)


def default_server_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"
