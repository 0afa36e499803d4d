"""One client connection: the asyncio protocol object that serves it (private to `server/`).

`ServerConnection` moves bytes between its socket and its sans-I/O `Connection`, handles the
frames that come out (counting them, moving the client's deadline, handing messages to the store,
answering PINGs within the rate limit), and closes.  What involves other connections or the
store's answers is the hub's (hub.py).  Observers never get this object: they get its
`ClientView` (view.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import secrets
import time
from time import perf_counter
from typing import Any

from tcpulse.protocol.connection import Connection, Role
from tcpulse.protocol.errors import ErrorCode
from tcpulse.protocol.events import Bye, Err, Event, Heartbeat, Hello, Msg, Ping, Pong
from tcpulse.security.limits import unread_bytes
from tcpulse.security.tls import peer_identities
from tcpulse.server.events import (
    ProtocolErrorOccurred,
    Recovered,
    RttMeasured,
)
from tcpulse.server.hub import Hub
from tcpulse.server.peer import ConnLimits
from tcpulse.server.view import ClientView, DisconnectReason, format_addr

__all__ = ["LINGER", "REFUSED_LINGER", "ServerConnection"]

#: After an ERR or BYE the server shuts its sending side and discards input this long, so the
#: last frame reaches the client instead of being destroyed by a reset (PROTOCOL.md, "Errors").
LINGER = 2.0
#: The same for a connection refused before it was served: long enough for the ERR to go out.
REFUSED_LINGER = 0.25

#: Bytes handled between two looks at the loop iteration's read budget (Hub.READ_BUDGET): a
#: 256 KiB read of 64-byte messages is about 3,500 frames, too much to do without looking up.
READ_SLICE = 32 << 10

_conn_ids = itertools.count(1)
_BYE_TIMEOUT = Bye(reason="heartbeat-timeout")
_ERR_429_DROP = Err(code=int(ErrorCode.TOO_MANY), text="too many frames per second, frame dropped")
_STORE_GONE = "store unavailable: keep your messages and send them again after reconnecting"


class ServerConnection(asyncio.Protocol):
    """One client connection (see the module docstring).  Satisfies `peer.Peer`."""

    __slots__ = (
        "_acked_sent",
        "_closed",
        "_deferred",
        "_ending",
        "_eof_pending",
        "_heard_at",
        "_held",
        "_hub",
        "_linger",
        "_ping_ctx",
        "_ping_sent",
        "_silenced",
        "_stash",
        "_stashed",
        "addr",
        "bytes_in",
        "bytes_out",
        "conn",
        "conn_id",
        "connected_at",
        "detail",
        "heartbeats",
        "high",
        "id",
        "interval",
        "limits",
        "messages",
        "reason",
        "rtt",
        "session",
        "stored",
        "timeout",
        "transport",
        "view",
    )

    def __init__(self, hub: Hub) -> None:
        self._hub = hub
        cfg = hub.config
        # PINGs are answered here, within the rate limit (Guard.rate), not by the core.
        self.conn = Connection(Role.SERVER, max_line=cfg.max_line, max_payload=cfg.max_payload, auto_pong=False)
        self.transport: Any = None
        self.conn_id = next(_conn_ids)
        self.addr = "?"
        self.id: str | None = None
        self.session: str | None = None
        self.connected_at = time.time()
        self.heartbeats = 0
        self.messages = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.rtt: float | None = None
        self.interval = cfg.heartbeat_interval
        self.timeout = cfg.heartbeat_timeout
        self.reason: DisconnectReason | None = None
        self.detail: str | None = None
        #: Highest seq taken on this connection's (id, session); duplicates are at or below.
        self.high = 0
        #: Highest seq of this (id, session) the store has committed (durable stores only).
        self.stored = 0
        #: Per-connection limits state, kept by the guard.
        self.limits: ConnLimits | None = None
        self.view = ClientView(self, hub.tracker, hub.now)
        self._acked_sent = 0
        self._ping_ctx: str | None = None
        self._ping_sent = 0.0
        self._linger: asyncio.TimerHandle | None = None
        self._closed = False
        #: Reading paused for the store (Hub.store_messages): a second reason to pause, beside
        #: the HELLO being answered (`conn.paused`); reading resumes when neither holds.
        self._held = False
        #: Set when a BYE or a bad frame came behind messages not yet stored: how to end once
        #: their ACK is out (`finish()`).
        self._ending: tuple[DisconnectReason, str | None] | None = None
        #: Bytes read in a loop iteration that had done its share already (Hub.spend): handled
        #: at the start of a later one, before anything read after them.
        self._stash: list[bytes] | None = None  # made when needed: most connections never need it
        self._stashed = 0
        self._deferred = False
        self._eof_pending = False
        self._heard_at = 0.0
        self._silenced = False

    # ---------------------------------------------------------------- Peer: read side

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def hello_seen(self) -> bool:
        return self.conn.hello is not None

    @property
    def owes_acks(self) -> bool:
        return self.high > self._acked_sent

    @property
    def identities(self) -> frozenset[str]:
        return frozenset(peer_identities(self.transport))

    @property
    def queued(self) -> int:
        limits = self.limits
        return 0 if limits is None else limits.queued

    # ---------------------------------------------------------------- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = transport
        self.addr = format_addr(transport.get_extra_info("peername"))
        self._hub.connection_made(self)

    def data_received(self, data: bytes) -> None:
        if self._closed or self._silenced:
            return  # lingering after ERR/BYE, or timed out: discard
        hub = self._hub
        if self._stash or hub.over_budget():
            # This loop iteration has done its share of work: keep the bytes for the next one
            # and stop reading, so that timers (deadlines) run on time (Hub.spend).
            self._defer(data)
            return
        self._consume(data)

    def _consume(self, data: bytes, heard_at: float | None = None) -> None:
        # Handle `data` a slice at a time while the iteration's budget lasts; keep the rest.
        hub = self._hub
        pos, end = 0, len(data)
        if end <= READ_SLICE:  # nearly every read: one slice, no loop
            t0 = perf_counter()
            self._process(data, heard_at)
            hub.spend(perf_counter() - t0)
            if self.limits is not None and (self.limits.held or self._stashed or self.conn.buffered):
                self._check_held()
            return
        while True:
            t0 = perf_counter()
            self._process(data[pos:pos + READ_SLICE] if pos or end > READ_SLICE else data, heard_at)
            hub.spend(perf_counter() - t0)
            pos += READ_SLICE
            if pos >= end or self._closed:
                break
            if hub.over_budget():
                self._defer(data[pos:], heard_at)
                return
        self._check_held()

    def _check_held(self) -> None:
        # Global budget for partial frames (Guard.held): what the core holds of unfinished
        # frames, and what was read but kept back for the next iteration.
        limits = self.limits
        if limits is not None and not self._closed:
            held = self.conn.buffered + self._stashed
            if limits.held != held:
                self._hub.guard.held(self, held)

    def _defer(self, data: bytes, heard_at: float | None = None) -> None:
        # The client spoke when its bytes were read, not when they are handled.
        self._heard_at = self._hub.now() if heard_at is None else heard_at
        if data:
            if self._stash is None:
                self._stash = []
            self._stash.append(data)
            self._stashed += len(data)
            self._check_held()
        if not self._deferred and not self._closed:
            self._deferred = True
            if self.transport is not None:
                self.transport.pause_reading()
            self._hub.defer(self)

    def run_deferred(self) -> None:
        """Handle the bytes kept back by an earlier loop iteration, then read on."""
        self._deferred = False
        if self._closed:
            self._stash = None
            return
        data = b"".join(self._stash or ())
        self._stash = None
        self._stashed = 0
        self._consume(data, self._heard_at)
        if self._deferred:
            return  # part of it is kept back again, for the next iteration
        if self._eof_pending and not self._closed:
            self._eof_pending = False
            self.eof_received()
        else:
            self._read_if_free()

    def _read_if_free(self) -> None:
        # Reading resumes only when nothing holds it: a HELLO being answered, the store's
        # backlog, an end waiting for the store, bytes kept back for the next iteration.
        tr = self.transport
        if (tr is not None and not self._closed and not self.conn.paused and not self._held
                and self._ending is None and not self._deferred):
            tr.resume_reading()

    def _process(self, data: bytes, heard_at: float | None = None) -> None:
        self.bytes_in += len(data)
        conn = self.conn
        conn.keep_unnumbered = self._hub.keep_unnumbered
        before = conn.discarded
        events = conn.receive_data(data)
        skipped = conn.discarded - before
        if events or skipped:
            self._handle(events, heard_at, skipped)
        if self._ending is not None:
            return  # a BYE came: the rest waits for the store (see _end_after_store)
        if conn.error is not None and self._end_after_store(DisconnectReason.ERROR, None):
            return  # the ERR goes out behind the ACK still owed for the frames before it
        self._flush()
        if conn.error is not None:
            self._protocol_error()
        elif conn.paused and self.transport is not None:
            # Hold further bytes back until the HELLO is answered (see Connection).
            self.transport.pause_reading()

    def eof_received(self) -> bool | None:
        if self._deferred:
            self._eof_pending = True  # after the bytes kept back (run_deferred)
            return True
        if self._silenced:
            return True  # timed out: its close is on its way (Hub._bury)
        self.conn.receive_eof()
        if self._ending is not None:
            return True  # the client is done sending; what we owe it still goes out, then we close
        if not self._closed:
            self.end(DisconnectReason.EOF)
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.reason is None:
            if isinstance(exc, ConnectionResetError):
                self.reason = DisconnectReason.RESET
            elif exc is not None:
                self.reason, self.detail = DisconnectReason.RESET, str(exc) or type(exc).__name__
            else:
                self.reason = DisconnectReason.EOF
        hub = self._hub
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
            hub.linger_done(self)
        hub.connection_lost(self)

    def pause_writing(self) -> None:
        # The client does not read what we send: never buffer for it without bound.
        self.close_slow(f"more than {self._hub.guard.write_buffer} bytes unread (--max-write-buffer)")

    def resume_writing(self) -> None:
        pass

    # ---------------------------------------------------------------- frames

    def _handle(self, events: list[Any], heard_at: float | None = None, skipped: int = 0) -> None:
        # `list[Any]`: the frames are told apart by `type(ev) is ...`, the cheapest test on the
        # hot path; an isinstance() per frame for the type checker would cost more.
        hub = self._hub
        now = hub.now()
        if skipped:
            self.messages += skipped  # unnumbered messages nobody wanted (Connection.keep_unnumbered)
        if hub.tracker.touch(self, now if heard_at is None else heard_at):
            hub.emit(Recovered(self.view, 0.0))
        store = hub.store
        acks = False
        ctl = 0  # control frames, for the frame-rate limit (PROTOCOL.md, "Errors", 429)
        # A store that ignores unnumbered messages (MemoryStore, --db none) is not handed them:
        # building a record per message was the largest cost of ingest after parsing.
        keep_plain = store.keeps_unnumbered
        # Messages for the subscribers that want them: handed over once per read (Hub.messages),
        # and before any other event of the read, so that the order of events is the order of frames.
        seen: list[Msg] | None = [] if hub.wants_messages else None
        dups: set[int] | None = None
        pings: list[Ping] = []
        stash: list[Msg] = []  # messages to store: handed to the store once per read, not per message
        for ev in events:
            t = type(ev)
            if t is Msg:
                self.messages += 1
                seq = ev.seq
                if seq is not None:
                    if seq > self.high:
                        if store.failing:
                            # PROTOCOL.md, "Errors", 429/503: never drop a numbered MSG silently.
                            if seen:
                                hub.messages(self.view, seen, frozenset(dups or ()))
                            hub.store_messages(self, stash)
                            self.fail(ErrorCode.UNAVAILABLE, _STORE_GONE)
                            return
                        self.high = seq
                        stash.append(ev)
                    else:
                        # PROTOCOL.md, "Delivery": a duplicate is acknowledged again.
                        self._acked_sent = min(self._acked_sent, seq - 1)
                        if seen is not None:
                            if dups is None:
                                dups = set()
                            dups.add(len(seen))  # its place in this read's batch
                    acks = True
                elif keep_plain:
                    stash.append(ev)
                if seen is not None:
                    seen.append(ev)
                continue
            if seen:
                hub.messages(self.view, seen, frozenset(dups or ()))
                seen = []
                dups = None
            if t is Heartbeat:
                ctl += 1
                self.heartbeats += 1
                if hub.wants_heartbeats:
                    hub.heartbeat(self.view)
            elif t is Pong:
                ctl += 1
                if ev.ctx is not None and ev.ctx == self._ping_ctx:
                    self.rtt = time.perf_counter() - self._ping_sent
                    self._ping_ctx = None
                    hub.emit(RttMeasured(self.view, self.rtt))
            elif t is Hello:
                hub.start_hello(self, ev)
            elif t is Bye:
                if pings:  # PINGs before the BYE still get their PONGs
                    self._rate(now, ctl, pings)
                hub.store_messages(self, stash)
                # PROTOCOL.md, "Errors": the frames before a BYE count; the ACK owed for them is
                # written before the close (once they are stored).
                if acks:
                    self._ack_kept()
                if not self._end_after_store(DisconnectReason.BYE, ev.reason):
                    self._flush()
                    self.end(DisconnectReason.BYE, ev.reason)
                return
            elif t is Ping:
                ctl += 1
                pings.append(ev)
        if seen:
            hub.messages(self.view, seen, frozenset(dups or ()))
        if stash:
            hub.store_messages(self, stash)
        if ctl:
            self._rate(now, ctl, pings)
        if acks:
            self._ack_kept()

    def _ack_kept(self) -> None:
        # A durable store acknowledges on commit (Hub.on_commit); here only what it has
        # committed already, for duplicates of it.
        top = self.high if self._hub.store.immediate else self.stored
        if top > self._acked_sent:
            self._send_ack(top)

    def _rate(self, now: float, frames: int, pings: list[Ping]) -> None:
        # Answers the PINGs the rate limit allows; ERR 429 or a close for the rest.
        d = self._hub.guard.rate(self, now, frames, len(pings))
        send = self.conn.send
        for p in pings[:d.pongs]:
            send(Pong(ctx=p.ctx))
        if d.close:
            self.fail(ErrorCode.TOO_MANY, "too many frames per second, closing", DisconnectReason.ERROR)
        elif d.drop:
            send(_ERR_429_DROP)

    def _send_ack(self, seq: int) -> None:
        if seq > self._acked_sent and not self._closed:
            self._acked_sent = seq
            self.conn.ack(seq)

    def _flush(self) -> None:
        out = self.conn.data_to_send()
        tr = self.transport
        if out and tr is not None and not tr.is_closing():
            self.bytes_out += len(out)
            limits = self.limits
            guard = self._hub.guard
            if limits is None or not guard.max_queued:
                tr.write(out)
                return
            if limits.queued and not tr.get_write_buffer_size():
                guard.queued(self, 0)  # it took everything since: a new backlog starts now
            tr.write(out)
            n = tr.get_write_buffer_size()
            if n or limits.queued:
                guard.queued(self, n)

    # ---------------------------------------------------------------- Peer: actions

    def accept(self, client_id: str, session: str | None, interval: float, timeout: float, acked: int) -> None:
        self.id = client_id
        self.session = session
        self.interval = interval
        self.timeout = timeout
        self.high = self._acked_sent = self.stored = acked

    def resume(self) -> None:
        # Parse what arrived behind the HELLO, then read on.
        if self.transport is not None and not self._closed:
            if self._deferred:
                return  # run_deferred parses it, behind the bytes kept back
            self.data_received(b"")
            self._read_if_free()

    def hold_reading(self, hold: bool) -> None:
        self._held = hold
        tr = self.transport
        if tr is None or self._closed:
            return
        if hold:
            tr.pause_reading()
        else:
            self._read_if_free()

    def unread(self) -> int:
        if self._stashed:
            return self._stashed  # read, kept back for the next loop iteration: it spoke
        return unread_bytes(self.transport)

    def send_frame(self, event: Event) -> None:
        self.conn.send(event)
        self._flush()

    def acknowledge(self, seq: int) -> None:
        if seq > self.stored:
            self.stored = seq
        self._send_ack(seq)
        if self._ending is not None:
            if not self.owes_acks:
                self.finish()
            return
        self._flush()

    def _end_after_store(self, reason: DisconnectReason, detail: str | None) -> bool:
        """A BYE or a bad frame came behind numbered messages the store has not committed yet:
        stop reading and judging, and close once their ACK is written (`finish()`), or once the
        store gave up (Hub.finish_after_store).  False when nothing is owed: close now."""
        if not self.owes_acks or self._hub.store.immediate or self._closed:
            return False
        self._ending = (reason, detail)
        hub = self._hub
        hub.tracker.remove(self)  # it said goodbye (or broke the protocol): no deadline any more
        if self.transport is not None:
            self.transport.pause_reading()
        hub.finish_after_store(self)
        return True

    def finish(self) -> None:
        """Write what is owed after a BYE or a bad frame (ACKs, then the ERR), then close."""
        ending = self._ending
        if ending is None or self._closed:
            return
        self._ending = None
        self._flush()
        reason, detail = ending
        if reason is DisconnectReason.ERROR:
            self._protocol_error()
        else:
            self.end(reason, detail)

    def ping(self) -> None:
        """Send a PING to measure the round-trip time (answered PONG sets `rtt`)."""
        if self._closed:
            return
        self._ping_ctx = "rtt" + secrets.token_hex(3)
        # Not the loop's clock: uvloop's has millisecond resolution, and a loopback round trip
        # is tens of microseconds (it would read 0 or 1 ms).
        self._ping_sent = time.perf_counter()
        self.send_frame(Ping(ctx=self._ping_ctx))

    def announce_timeout(self) -> None:
        self.conn.send(_BYE_TIMEOUT)
        self._flush()
        # Told: nothing more it sends counts (its close follows in Hub._bury).
        self._silenced = True
        if self.transport is not None:
            self.transport.pause_reading()

    def close_slow(self, detail: str) -> None:
        self.reason = DisconnectReason.SLOW_CONSUMER
        self.end(DisconnectReason.SLOW_CONSUMER, detail)
        if self.transport is not None:
            self.transport.abort()

    def _protocol_error(self) -> None:
        if self._closed:
            return  # closed by fail() already, which reported it
        err = self.conn.error
        assert err is not None
        self._hub.emit(ProtocolErrorOccurred(self.view, int(err.code), err.text))
        self.end(DisconnectReason.ERROR, f"{int(err.code)} {err.text}", linger=True)

    def fail(self, code: ErrorCode, text: str, reason: DisconnectReason = DisconnectReason.ERROR) -> None:
        """Send `ERR code text` and close (the protocol's one way to refuse a client)."""
        if self._closed:
            return
        self.conn.send(Err(code=int(code), text=text))
        self._flush()
        self._hub.emit(ProtocolErrorOccurred(self.view, int(code), text))
        self.end(reason, f"{int(code)} {text}", linger=True)

    def say_bye(self, reason: str, why: DisconnectReason) -> None:
        """Send `BYE reason` and close."""
        if self._closed:
            return
        self.conn.send(Bye(reason=reason))
        self._flush()
        self.end(why, reason, linger=True)

    def end(self, reason: DisconnectReason, detail: str | None = None, linger: bool = False) -> None:
        if self._closed:
            return
        self._closed = True
        self.reason = reason
        self.detail = detail
        hub = self._hub
        # The client is gone as far as anyone can tell; only the socket may linger a while.
        hub.connection_lost(self)
        tr = self.transport
        if tr is None:
            return
        if linger and tr.can_write_eof() and hub.linger_slot(self):
            # Shut our sending side; keep reading (and discarding) until the client closes or the
            # linger runs out, so our last frame is not destroyed by a reset.
            with contextlib.suppress(OSError, RuntimeError):
                tr.write_eof()
            with contextlib.suppress(RuntimeError):
                tr.resume_reading()
            # A refused connection (full, auth timeout) lingers briefly: under a connection flood
            # its descriptor must come back fast, or the refusals would exhaust the open-file limit.
            wait = REFUSED_LINGER if reason is DisconnectReason.REFUSED else LINGER
            self._linger = asyncio.get_running_loop().call_later(wait, tr.abort)
        else:
            tr.close()
