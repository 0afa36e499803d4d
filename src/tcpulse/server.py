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
import itertools
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from . import __version__
from ._connection import DEFAULT_MAX_LINE, DEFAULT_MAX_PAYLOAD, Connection, Role
from ._events import Ack, Bye, Err, ErrorCode, Heartbeat, Hello, Info, Msg, Ok, Ping, Pong
from ._i18n import _
from .events import (
    Connected,
    Disconnected,
    DisconnectReason,
    HeartbeatReceived,
    HelloReceived,
    Listening,
    MessageReceived,
    ProtocolErrorOccurred,
    Recovered,
    RttMeasured,
    ServerEvent,
    Status,
    Suspect,
    TimedOut,
    Warning_,
)
from .liveness import Detector, PhiDetector, PhiSettings, State, Tracker, clamp_interval
from .security import ConnLimits, Guard, validate_limits
from .store import ConnectionRecord, MemoryStore, MessageRecord, SessionKey, Store, StoreUnavailable

__all__ = ["ClientInfo", "Server", "ServerConfig", "format_addr"]

#: After an ERR or BYE the server shuts its sending side and discards input this long, so the
#: last frame reaches the client instead of being destroyed by a reset (PROTOCOL.md, "Errors").
LINGER = 2.0
#: The same for a connection refused before it was served: long enough for the ERR to go out.
REFUSED_LINGER = 0.25
#: At most this many sockets linger at once; beyond, the server closes at once after the last
#: frame (it is in the kernel already, and reaches a client that sent nothing more).  Lingering
#: sockets are not clients, so without a cap a flood of bad or refused connections that the
#: attacker keeps open would spend the descriptors kept back for them (security.FD_RESERVE, 100).
MAX_LINGERING = 50
#: On asyncio's own loops the listen backlog is also how many connections one wake of the loop
#: accepts at once, each holding a descriptor until its turn comes; under a flood that batch alone
#: (4096) would spend every descriptor kept back.  Those loops accept this many per wake, and the
#: kernel keeps its full backlog (`ServerConfig.backlog`) for reconnect storms.
ACCEPT_BATCH = 8


def format_addr(peer: Any) -> str:
    """`host:port`, or `[v6]:port` (PROTOCOL.md, "Verbs": how a client without HELLO is known)."""
    if isinstance(peer, tuple) and len(peer) >= 2:
        host, port = peer[0], peer[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(peer)


@dataclass(slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 12345
    heartbeat_interval: float = 5.0
    heartbeat_timeout: float = 10.0
    min_heartbeat_interval: float = 0.1
    max_heartbeat_interval: float = 60.0
    max_line: int = DEFAULT_MAX_LINE
    max_payload: int = DEFAULT_MAX_PAYLOAD
    status_every: float = 3.0
    verbose: bool = False
    server_id: str | None = None
    backlog: int = 4096
    # -- security and limits (docs/security.md; 0 turns a limit off) --
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    auth_file: str | None = None
    auth_timeout: float = 2.0
    max_clients: int | None = None  # None: as many as the open-file limit allows
    max_per_addr: int = 0
    max_frames_per_sec: float = 10000.0
    max_pings_per_sec: float = 1000.0
    max_strikes: int = 3
    max_buffered: int | None = None  # None: security.DEFAULT_MAX_BUFFERED
    max_queued: int | None = None  # None: security.DEFAULT_MAX_QUEUED
    max_write_buffer: int | None = None  # None: 2 x (max_payload + max_line), at least 1 MiB
    #: "fixed": dead at the timeout; "phi": phi accrual, dead when phi passes the threshold or
    #: at the timeout, whichever is first, never before 1.5 intervals (docs/detection.md).
    detector: str = "fixed"
    phi_threshold: float = 8.0
    phi_min_std: float = 0.1  # x the client's interval
    phi_acceptable_pause: float = 1.0  # x the client's interval
    phi_window: int = 100

    def phi_settings(self) -> PhiSettings | None:
        """The phi detector's settings, None with the fixed detector.  Raises ValueError."""
        if self.detector == "fixed":
            return None
        if self.detector != "phi":
            raise ValueError(_("--detector must be fixed or phi (got {value})").format(value=repr(self.detector)))
        return PhiSettings(threshold=self.phi_threshold, min_std=self.phi_min_std,
                           acceptable_pause=self.phi_acceptable_pause, window=self.phi_window)

    def validate(self) -> None:
        """Raise ValueError naming the bad setting and what would be right."""
        def pos(name: str) -> None:
            v = getattr(self, name)
            if not v > 0:
                raise ValueError(_("{option} must be greater than 0 (got {value})").format(
                    option="--" + name.replace("_", "-"), value=v))
        for name in ("heartbeat_interval", "heartbeat_timeout", "min_heartbeat_interval",
                     "max_heartbeat_interval", "max_line", "max_payload"):
            pos(name)
        if self.heartbeat_timeout <= self.heartbeat_interval:
            raise ValueError(_("--heartbeat-timeout must be longer than --heartbeat-interval "
                               "(got {timeout} <= {interval})").format(timeout=self.heartbeat_timeout,
                                                                       interval=self.heartbeat_interval))
        if self.min_heartbeat_interval > self.max_heartbeat_interval:
            raise ValueError(_("--min-heartbeat-interval must not exceed --max-heartbeat-interval"))
        if not 0 <= self.port <= 65535:
            raise ValueError(_("--port must be 0-65535 (got {port})").format(port=self.port))
        if self.status_every < 0:
            raise ValueError(_("--status-every must be 0 (off) or a number of seconds"))
        if self.max_line < 64:
            raise ValueError(_("--max-line must be at least 64 bytes (HELLO must fit)"))
        self.phi_settings()
        validate_limits(self)


_conn_ids = itertools.count(1)


class ClientInfo(asyncio.Protocol):
    """One client connection: its counters and state, and the asyncio protocol that serves it.

    Public attributes are read-only for users of `Server`; `snapshot()` returns them as a dict.
    """

    __slots__ = (
        "_acked_sent",
        "_closed",
        "_linger",
        "_ping_ctx",
        "_ping_sent",
        "addr",
        "bytes_in",
        "bytes_out",
        "closed_event",
        "conn",
        "conn_id",
        "connected_at",
        "connected_mono",
        "detail",
        "heartbeats",
        "high",
        "id",
        "interval",
        "messages",
        "reason",
        "rtt",
        "sec",
        "server",
        "session",
        "stored",
        "timeout",
        "transport",
    )

    def __init__(self, server: Server) -> None:
        self.server = server
        cfg = server.config
        self.conn = Connection(Role.SERVER, max_line=cfg.max_line, max_payload=cfg.max_payload)
        self.transport: asyncio.Transport | None = None
        self.conn_id = next(_conn_ids)
        self.addr = "?"
        self.id: str | None = None
        self.session: str | None = None
        self.connected_at = time.time()
        self.connected_mono = 0.0
        self.heartbeats = 0
        self.messages = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.rtt: float | None = None
        self.interval = cfg.heartbeat_interval
        self.timeout = cfg.heartbeat_timeout
        self.reason: DisconnectReason | None = None
        self.detail: str | None = None
        #: Highest seq accepted on this connection's (id, session); duplicates are at or below.
        self.high = 0
        self._ping_ctx: str | None = None
        self._ping_sent = 0.0
        self._linger: asyncio.TimerHandle | None = None
        self._closed = False
        self._acked_sent = 0
        #: Highest seq of this (id, session) the store has committed (durable stores only).
        self.stored = 0
        self.closed_event: asyncio.Event | None = None
        #: Per-connection limits state, kept by `Server.guard` (security.py).
        self.sec: ConnLimits | None = None

    # ---------------------------------------------------------------- public read side

    @property
    def name(self) -> str:
        """The HELLO id, else the address (how logs and tables name a client)."""
        return self.id if self.id is not None else self.addr

    @property
    def state(self) -> State:
        st = self.server._tracker.state(self)
        return st if st is not None else State.DEAD

    def last_heard_ago(self, now: float | None = None) -> float:
        last = self.server._tracker.last_heard(self)
        if last is None:
            return 0.0
        if now is None:
            now = self.server._loop_time()
        return max(0.0, now - last)

    def snapshot(self, now: float | None = None) -> dict[str, Any]:
        return {
            "client": self.name,
            "id": self.id,
            "addr": self.addr,
            "session": self.session,
            "connected_at": self.connected_at,
            "last_heard_ago": round(self.last_heard_ago(now), 3),
            "heartbeats": self.heartbeats,
            "messages": self.messages,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "state": self.state.value,
            "rtt": None if self.rtt is None else round(self.rtt, 6),
            "heartbeat_interval": self.interval,
            "heartbeat_timeout": self.timeout,
            "phi": self.phi(now),
        }

    def phi(self, now: float | None = None) -> float | None:
        """The client's suspicion level under `--detector phi` (None with the fixed detector)."""
        srv = self.server
        phi = srv._tracker.phi(self, srv._loop_time() if now is None else now)
        return None if phi is None else round(phi, 2)

    # ---------------------------------------------------------------- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = transport  # type: ignore[assignment]
        self.addr = format_addr(transport.get_extra_info("peername"))
        srv = self.server
        srv._on_connection_made(self)

    def data_received(self, data: bytes) -> None:
        if self._closed:
            return  # lingering after ERR/BYE: discard
        self.bytes_in += len(data)
        conn = self.conn
        events = conn.receive_data(data)
        if events:
            self._handle(events)
        sec = self.sec
        if sec is not None and sec.held != conn.buffered:
            # Global budget for partial frames (security.py, Guard.held).
            self.server.guard.held(self, conn.buffered)
        self._flush()
        if conn.error is not None:
            self._protocol_error()
        elif conn.paused and self.transport is not None:
            # Hold further bytes back until the HELLO is answered (see Connection).
            self.transport.pause_reading()

    def eof_received(self) -> bool | None:
        self.conn.receive_eof()
        if not self._closed:
            self._end(DisconnectReason.EOF)
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.reason is None:
            if isinstance(exc, ConnectionResetError):
                self.reason = DisconnectReason.RESET
            elif exc is not None:
                self.reason, self.detail = DisconnectReason.RESET, str(exc) or type(exc).__name__
            else:
                self.reason = DisconnectReason.EOF
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
            self.server._lingering -= 1
        self.server._open.discard(self)
        self.server._on_connection_lost(self)

    def pause_writing(self) -> None:
        self.server._on_pause_writing(self)

    def resume_writing(self) -> None:
        pass

    # ---------------------------------------------------------------- frames

    def _handle(self, events: list[Any]) -> None:
        srv = self.server
        now = srv._loop_time()
        tracker = srv._tracker
        if tracker.touch(self, now):
            srv._emit(Recovered(self, 0.0))
        acks = False
        ctl = 0  # control frames, for the frame-rate limit (PROTOCOL.md, "Errors", 429)
        # A store that ignores unnumbered messages (MemoryStore, --db none) is not handed them:
        # building a record per message was the largest cost of ingest after parsing.
        keep_plain = srv._store.keeps_unnumbered
        pings: list[Ping] = []
        stash: list[Msg] = []  # messages to store: handed to the store once per read, not per message
        for ev in events:
            t = type(ev)
            if t is Msg:
                self.messages += 1
                seq = ev.seq
                if seq is not None:
                    dup = seq <= self.high
                    if not dup:
                        if srv._store.failing:
                            # PROTOCOL.md, "Errors", 429/503: never drop a numbered MSG silently.
                            srv._store_messages(self, stash)
                            self.fail(ErrorCode.UNAVAILABLE, "store unavailable: keep your messages "
                                      "and send them again after reconnecting")
                            return
                        self.high = seq
                        stash.append(ev)
                    else:
                        # PROTOCOL.md, "Delivery": a duplicate is acknowledged again.
                        self._acked_sent = min(self._acked_sent, seq - 1)
                    acks = True
                    if srv._wants_messages:
                        srv._emit(MessageReceived(self, ev.payload, seq, dup))
                else:
                    if keep_plain:
                        stash.append(ev)
                    if srv._wants_messages:
                        srv._emit(MessageReceived(self, ev.payload, None, False))
            elif t is Heartbeat:
                ctl += 1
                self.heartbeats += 1
                if srv._wants_heartbeats:
                    srv._emit(HeartbeatReceived(self))
            elif t is Pong:
                ctl += 1
                if ev.ctx is not None and ev.ctx == self._ping_ctx:
                    self.rtt = time.perf_counter() - self._ping_sent
                    self._ping_ctx = None
                    srv._emit(RttMeasured(self, self.rtt))
            elif t is Hello:
                srv._start_hello(self, ev)
            elif t is Bye:
                if pings:  # PINGs before the BYE still get their PONGs
                    srv.guard.rate(self, now, ctl, pings)
                    self._flush()
                srv._store_messages(self, stash)
                self._end(DisconnectReason.BYE, ev.reason)
                return
            elif t is Ping:
                ctl += 1
                pings.append(ev)
        if stash:
            srv._store_messages(self, stash)
        if ctl:
            # Answers the PINGs the rate limit allows; ERR 429 or a close for the rest.
            srv.guard.rate(self, now, ctl, pings)
        if acks:
            # A durable store acknowledges on commit (Server._on_commit); here only what it has
            # committed already, for duplicates of it.
            top = self.high if srv._store.immediate else self.stored
            if top > self._acked_sent:
                self._send_ack(top)

    def _send_ack(self, seq: int) -> None:
        if seq > self._acked_sent and not self._closed:
            self._acked_sent = seq
            self.conn.send(Ack(seq=seq))

    def _flush(self) -> None:
        out = self.conn.data_to_send()
        tr = self.transport
        if out and tr is not None and not tr.is_closing():
            self.bytes_out += len(out)
            sec = self.sec
            if sec is None or not self.server.guard.max_queued:
                tr.write(out)
                return
            guard = self.server.guard
            if sec.queued and not tr.get_write_buffer_size():
                guard.queued(self, 0)  # it took everything since: a new backlog starts now
            tr.write(out)
            n = tr.get_write_buffer_size()
            if n or sec.queued:
                guard.queued(self, n)

    def send_frame(self, event: Any) -> None:
        self.conn.send(event)
        self._flush()

    def ping(self) -> None:
        """Send a PING to measure the round-trip time (answered PONG sets `rtt`)."""
        if self._closed:
            return
        self._ping_ctx = "rtt" + secrets.token_hex(3)
        # Not the loop's clock: uvloop's has millisecond resolution, and a loopback round trip
        # is tens of microseconds (it would read 0 or 1 ms).
        self._ping_sent = time.perf_counter()
        self.send_frame(Ping(ctx=self._ping_ctx))

    # ---------------------------------------------------------------- endings

    def _protocol_error(self) -> None:
        if self._closed:
            return  # closed by fail() already, which reported it
        err = self.conn.error
        assert err is not None
        self.server._emit(ProtocolErrorOccurred(self, int(err.code), err.text))
        self._end(DisconnectReason.ERROR, f"{int(err.code)} {err.text}", linger=True)

    def fail(self, code: ErrorCode, text: str, reason: DisconnectReason = DisconnectReason.ERROR) -> None:
        """Send `ERR code text` and close (the protocol's one way to refuse a client)."""
        if self._closed:
            return
        self.conn.send(Err(code=int(code), text=text))
        self._flush()
        self.server._emit(ProtocolErrorOccurred(self, int(code), text))
        self._end(reason, f"{int(code)} {text}", linger=True)

    def say_bye(self, reason: str, why: DisconnectReason) -> None:
        """Send `BYE reason` and close."""
        if self._closed:
            return
        self.conn.send(Bye(reason=reason))
        self._flush()
        self._end(why, reason, linger=True)

    def _end(self, reason: DisconnectReason, detail: str | None = None, linger: bool = False) -> None:
        if self._closed:
            return
        self._closed = True
        self.reason = reason
        self.detail = detail
        # The client is gone as far as anyone can tell; only the socket may linger a while.
        self.server._on_connection_lost(self)
        tr = self.transport
        if tr is None:
            return
        srv = self.server
        if linger and tr.can_write_eof() and srv._lingering < MAX_LINGERING:
            # Shut our sending side; keep reading (and discarding) until the client closes or the
            # linger runs out, so our last frame is not destroyed by a reset.
            with contextlib.suppress(OSError, RuntimeError):
                tr.write_eof()
            with contextlib.suppress(RuntimeError):
                tr.resume_reading()
            # A refused connection (full, auth timeout) lingers briefly: under a connection flood
            # its descriptor must come back fast, or the refusals would exhaust the open-file limit.
            wait = REFUSED_LINGER if reason is DisconnectReason.REFUSED else LINGER
            self._linger = srv._loop.call_later(wait, tr.abort)
            srv._lingering += 1
        else:
            tr.close()


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
