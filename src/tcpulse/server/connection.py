"""One client connection: the asyncio protocol object that serves it (private to `server/`)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import secrets
import time
from typing import TYPE_CHECKING, Any

from tcpulse.policy.liveness import State
from tcpulse.protocol.connection import Connection, Role
from tcpulse.protocol.errors import ErrorCode
from tcpulse.protocol.events import Ack, Bye, Err, Heartbeat, Hello, Msg, Ping, Pong
from tcpulse.server.events import (
    DisconnectReason,
    HeartbeatReceived,
    MessageReceived,
    ProtocolErrorOccurred,
    Recovered,
    RttMeasured,
)
from tcpulse.server.guard import ConnLimits

if TYPE_CHECKING:
    from tcpulse.server.server import Server

__all__ = ["LINGER", "MAX_LINGERING", "REFUSED_LINGER", "ClientInfo", "format_addr"]

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


def format_addr(peer: Any) -> str:
    """`host:port`, or `[v6]:port` (PROTOCOL.md, "Verbs": how a client without HELLO is known)."""
    if isinstance(peer, tuple) and len(peer) >= 2:
        host, port = peer[0], peer[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(peer)


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
