"""The admin port's own listener: a cap on connections, short timeouts, TLS, and quiet errors.

The admin endpoint shares its process with the main port, and so its open-file limit.  Whatever
reaches the admin port must never take the descriptors the main port needs (config.FD_RESERVE
keeps 100 back from clients; `FD_SHARE` of them are the admin's), so this module accepts
connections itself instead of leaving them to aiohttp's site:

- at most `MAX_CONNECTIONS` at once, counted from the moment the kernel hands one over (a TLS
  handshake included).  A new connection beyond it takes the place of one that is not being
  served: the oldest that has sent nothing yet, else the oldest idle between requests, else the
  oldest still sending its request's headers (a flood of silent connections only pushes out its
  own, never a request that has arrived); if every place is being served (requests being handled,
  dashboards), it is answered `503` and closed at once;
- a connection has `HEADER_TIMEOUT` seconds from its accept (its TLS handshake included) or from
  the first byte of a request to complete that request's headers, and may sit idle between
  requests for `IDLE_TIMEOUT` seconds: then it is closed;
- the listen backlog is `ACCEPT_BACKLOG`: on asyncio's own loops it is also how many connections
  one turn of the loop accepts, each holding a descriptor until it is counted;
- an event stream (`stream()`) is closed when bytes have waited in its buffers, unsent, for
  `STREAM_STALL` seconds, or when more than `STREAM_MAX_BUFFER` bytes wait there;
- TLS (`ssl`) is started on each accepted connection (`loop.start_tls`), so that a connection
  stuck in its handshake is counted and timed like any other;
- aiohttp's errors are answered with one JSON line and counted, never logged: aiohttp would log
  (and answer) a malformed request's first bytes, which may hold the admin token.

The request handler is aiohttp's own (`web.RequestHandler`, with `handle_error` made quiet); a
middleware of the app calls `busy()` / `done()` around each request so that the listener knows
which connections are in the middle of one.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import socket
import ssl as ssl_module
from collections import Counter
from collections.abc import Callable
from typing import Any, cast

from aiohttp import web
from aiohttp.web_request import BaseRequest

from tcpulse.security.limits import unread_bytes

__all__ = [
    "ACCEPT_BACKLOG",
    "FD_SHARE",
    "HEADER_TIMEOUT",
    "IDLE_TIMEOUT",
    "MAX_CONNECTIONS",
    "STREAM_MAX_BUFFER",
    "STREAM_STALL",
    "AdminConnection",
    "AdminListener",
]

#: Connections to the admin port at once: three dashboards (an event stream and a connection for
#: their requests each), a Prometheus scraper, `tcpulse status`, a health check, with room left.
MAX_CONNECTIONS = 12
#: The listen backlog (see the module docstring).
ACCEPT_BACKLOG = 8
#: Descriptors the admin endpoint may hold at most: its connections, those accepted in one turn
#: of the loop before they are counted, and its listening socket.  Part of config.FD_RESERVE
#: (docs/security.md, "The admin endpoint").
FD_SHARE = MAX_CONNECTIONS + ACCEPT_BACKLOG + 1
#: Seconds to complete a request's headers (from the accept, TLS handshake included, or from the
#: request's first byte): a request is one short line and a few headers.
HEADER_TIMEOUT = 5.0
#: Seconds a connection may sit idle between requests (a dashboard asks every second).
IDLE_TIMEOUT = 15.0
#: Seconds bytes may wait unsent in an event stream's buffers before the stream is closed, and
#: how many bytes may wait there at most (the kernel's send buffer, which `stream()` also bounds,
#: comes on top).
STREAM_STALL = 10.0
STREAM_MAX_BUFFER = 256 << 10
#: The kernel send buffer asked for an event stream's socket (Linux doubles it).
STREAM_SNDBUF = 64 << 10
#: Bytes kept of what arrives between a TLS handshake and its handler (aiohttp's request line and
#: headers are capped well below this).
_EARLY_MAX = 256 << 10
#: Seconds between looks at the deadlines and the streams.
SWEEP_EVERY = 0.5

_REFUSAL = b'{"error":"too many connections to the admin endpoint: try again later"}'
_REFUSAL_RESPONSE = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\nRetry-After: 1\r\nConnection: close\r\n\r\n%s"
                     % (len(_REFUSAL), _REFUSAL))


def _quiet_logger() -> logging.Logger:
    # A logger of our own, outside logging's tree: nothing aiohttp says through it is printed.
    log = logging.Logger("tcpulse.admin.http", logging.CRITICAL + 1)
    log.propagate = False
    log.disabled = True
    return log


_QUIET = _quiet_logger()


class State(enum.Enum):
    NEW = "new"  # accepted, not a byte yet (or its TLS handshake under way)
    IDLE = "idle"  # between requests (keep-alive)
    READING = "reading"  # a request's first bytes came; its headers are not complete yet
    BUSY = "busy"  # a request is being handled
    STREAM = "stream"  # an event stream is open


#: Which connections make room for a new one at the cap, first to last (see the module docstring).
_EVICTION_ORDER = {State.NEW: 0, State.IDLE: 1, State.READING: 2}


class _Handler(web.RequestHandler):
    """aiohttp's request handler, with errors answered in one JSON line and counted, not logged."""

    conn: AdminConnection | None = None

    def handle_error(self, request: BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        # Never `message` or `exc`: aiohttp puts the first bytes of a malformed request in them.
        if request.writer.output_size > 0:
            raise ConnectionError("the response has been sent already")
        conn = self.conn
        if conn is not None:
            conn.listener.counts["bad_requests" if status < 500 else "internal_errors"] += 1
        text = ("bad request: a malformed request line or headers, or longer than allowed" if status < 500
                else "internal error")
        resp = web.json_response({"error": text}, status=status)
        resp.force_close()
        return resp


def _feed(proto: asyncio.BaseProtocol, data: bytes) -> None:
    """Give `data` to a protocol as its transport would (asyncio's TLS layer is a BufferedProtocol)."""
    if isinstance(proto, asyncio.BufferedProtocol) or hasattr(proto, "get_buffer"):
        bp = cast(asyncio.BufferedProtocol, proto)
        view = memoryview(data)
        while view:
            buf = memoryview(bp.get_buffer(len(view)))
            n = min(len(buf), len(view))
            buf[:n] = view[:n]
            bp.buffer_updated(n)
            view = view[n:]
    else:
        cast(asyncio.Protocol, proto).data_received(data)


class AdminConnection(asyncio.Protocol):
    """One connection to the admin port, counted from its accept to its end; it hands the bytes to
    aiohttp's request handler once the connection is admitted (and its TLS handshake done)."""

    def __init__(self, listener: AdminListener) -> None:
        self.listener = listener
        self.raw: asyncio.Transport | None = None
        self.transport: asyncio.Transport | None = None
        self.handler: _Handler | None = None
        self.state = State.NEW
        self.since = 0.0
        self.deadline: float | None = None
        self.stalled_since: float | None = None
        #: Called once when the connection ends (an event stream wakes its handler with it).
        self.on_close: Callable[[], None] | None = None
        self.counted = False
        self.closed = False
        self._early: list[bytes] = []
        self._tls = False
        self._raw_early: list[bytes] = []

    # ------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's transports are not asyncio.Transport subclasses, but have its methods.)
        transport = cast(asyncio.Transport, transport)
        self.raw = transport
        lst = self.listener
        if not lst.admit(self):
            return
        if lst.ssl is None:
            self._attach(transport)
            return
        self._tls = True
        lst.spawn(self._start_tls(transport, lst.ssl))

    async def _start_tls(self, raw: asyncio.Transport, ctx: ssl_module.SSLContext) -> None:
        loop = asyncio.get_running_loop()
        # The header timeout (the sweep) ends a handshake that takes too long; asyncio's own
        # handshake timeout is only a backstop.
        handshake = asyncio.ensure_future(loop.start_tls(raw, self, ctx, server_side=True,
                                                         ssl_handshake_timeout=HEADER_TIMEOUT + 5.0))
        # start_tls() takes the socket over in its first step (the TLS layer becomes the socket's
        # protocol, reading paused until it is ready).  Whatever the socket read before that (the
        # loop reads as soon as a connection is made: uvloop even when asked not to) came here:
        # hand it to the TLS layer, in order, before anything newer.
        while raw.get_protocol() is self and not handshake.done():
            await asyncio.sleep(0)
        early, self._raw_early = b"".join(self._raw_early), []
        if early and not handshake.done():
            _feed(raw.get_protocol(), early)
        try:
            tls = await handshake
        except (OSError, ssl_module.SSLError, ConnectionError, TimeoutError):
            # A failed or abandoned handshake: the TLS layer does not call connection_lost.
            if not self.closed:
                self.listener.counts["tls_failed"] += 1
            raw.abort()
            self.listener.release(self)
            return
        if tls is None or self.closed:
            raw.abort()
            self.listener.release(self)
            return
        self._attach(tls)

    def _attach(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        handler = self.listener.make_handler()
        handler.conn = self
        self.handler = handler
        handler.connection_made(transport)
        early, self._early = self._early, []
        for data in early:
            handler.data_received(data)

    def data_received(self, data: bytes) -> None:
        if self._tls and self.transport is None and self.raw is not None and self.raw.get_protocol() is self:
            # Raw bytes before start_tls() took the socket over: the TLS layer's (_start_tls).
            self._raw_early.append(data)
            if sum(map(len, self._raw_early)) > _EARLY_MAX:
                self.abort()
            return
        if self.state is State.NEW or self.state is State.IDLE:
            self.listener.reading(self)
        if self.handler is not None:
            self.handler.data_received(data)
        elif not self.closed:
            # The TLS layer hands over what came with the end of the handshake before start_tls()
            # returns: keep it for the handler (a request's headers at most).
            self._early.append(data)
            if sum(map(len, self._early)) > _EARLY_MAX:
                self.abort()

    def eof_received(self) -> bool | None:
        if self.handler is not None:
            self.handler.eof_received()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.listener.release(self)
        if self.handler is not None:
            self.handler.connection_lost(exc)

    def pause_writing(self) -> None:
        if self.handler is not None:
            self.handler.pause_writing()

    def resume_writing(self) -> None:
        if self.handler is not None:
            self.handler.resume_writing()

    # ------------------------------------------------------------ what the listener does

    def abort(self) -> None:
        """Close at once (the descriptor is freed now, whatever is unsent)."""
        if self.raw is not None:
            self.raw.abort()

    def unread(self) -> int:
        """Bytes the kernel holds for this connection that have not been read yet."""
        return unread_bytes(self.raw)

    def unsent(self) -> int:
        """Bytes waiting in this connection's buffers (both layers with TLS)."""
        n = 0
        for tr in {self.raw, self.transport}:
            if tr is not None and not tr.is_closing():
                n += tr.get_write_buffer_size()
        return n


class AdminListener:
    """Accepts the admin port's connections (see the module docstring).  `make_handler()` gives a
    fresh aiohttp request handler; call `await start()`, then `close()`."""

    def __init__(self, host: str, port: int, manager: web.Server, *,
                 ssl: ssl_module.SSLContext | None = None) -> None:
        self.host = host
        self.port = port
        self.ssl = ssl
        self._manager = manager
        self.conns: dict[AdminConnection, None] = {}
        #: What happened to connections: accepted, refused (503 at the cap), evicted (an idle one
        #: made room for a new one), timed_out, stalled (an event stream closed), tls_failed (a
        #: handshake that failed), bad_requests, internal_errors.
        self.counts: Counter[str] = Counter()
        self._server: asyncio.base_events.Server | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    # ------------------------------------------------------------ life cycle

    async def start(self) -> None:
        """Listen.  Raises OSError (port in use, ...) as is."""
        loop = self._loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: AdminConnection(self), self.host, self.port,
                                                backlog=ACCEPT_BACKLOG, reuse_address=True)
        sockets = self._server.sockets
        if sockets:
            self.port = sockets[0].getsockname()[1]
        self._sweeper = loop.call_later(SWEEP_EVERY, self._sweep)

    def close(self) -> None:
        """Stop listening and close every connection still open (aiohttp's runner shuts its
        handlers down first, when the caller lets it)."""
        if self._server is not None:
            self._server.close()
            self._server = None
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for c in list(self.conns):
            c.abort()
        for t in list(self._tasks):
            t.cancel()

    def make_handler(self) -> _Handler:
        # The same settings as the runner's own handlers would get, but no log and short timeouts.
        return _Handler(self._manager, loop=asyncio.get_running_loop(), keepalive_timeout=IDLE_TIMEOUT,
                        logger=_QUIET, access_log=_QUIET)

    def spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------ connections

    def _now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    def admit(self, c: AdminConnection) -> bool:
        """Count a new connection; at the cap, make room (evict the oldest idle one) or refuse it
        (`503`, closed).  False: refused, nothing more to do."""
        now = self._now()
        if len(self.conns) >= MAX_CONNECTIONS:
            victim = self._victim()
            if victim is None:
                self.counts["refused"] += 1
                c.closed = True
                assert c.raw is not None
                if self.ssl is None:
                    c.raw.write(_REFUSAL_RESPONSE)
                    c.raw.close()
                else:
                    c.raw.abort()
                return False
            self.counts["evicted"] += 1
            self.release(victim)
            victim.abort()
        self.counts["accepted"] += 1
        c.counted = True
        c.since = now
        c.deadline = now + HEADER_TIMEOUT
        self.conns[c] = None
        return True

    def _victim(self) -> AdminConnection | None:
        # Several connections may be accepted in one turn of the loop before any is read: one
        # that looks silent may have its request waiting in the kernel already (FIONREAD).
        # Counts as reading, then: a flood accepted in the same turn must not push it out.
        def rank(o: AdminConnection) -> tuple[int, float]:
            order = _EVICTION_ORDER[o.state]
            if o.state is State.NEW and o.unread() > 0:
                order = _EVICTION_ORDER[State.READING]
            return order, o.since
        return min((o for o in self.conns if o.state in _EVICTION_ORDER), key=rank, default=None)

    def release(self, c: AdminConnection) -> None:
        """`c` ended (idempotent)."""
        if c.closed and not c.counted:
            return
        c.closed = True
        if c.counted:
            c.counted = False
            self.conns.pop(c, None)
        cb, c.on_close = c.on_close, None
        if cb is not None:
            cb()

    def reading(self, c: AdminConnection) -> None:
        """The first bytes of a request: its headers are due within HEADER_TIMEOUT (of the accept,
        for the first request)."""
        if c.state is State.IDLE:
            c.since = self._now()
            c.deadline = c.since + HEADER_TIMEOUT
        c.state = State.READING

    def busy(self, request: web.BaseRequest) -> AdminConnection | None:
        """A request is being handled (a middleware calls this first): no deadline until `done()`."""
        c = self.conn_of(request)
        if c is not None and not c.closed:
            c.state = State.BUSY
            c.deadline = None
        return c

    def done(self, c: AdminConnection | None) -> None:
        """The request of `busy()` was handled: the connection may now idle for IDLE_TIMEOUT."""
        if c is not None and not c.closed:
            c.state = State.IDLE
            c.since = self._now()
            c.deadline = c.since + IDLE_TIMEOUT
            c.stalled_since = None

    @staticmethod
    def conn_of(request: web.BaseRequest) -> AdminConnection | None:
        h = request.protocol
        return h.conn if isinstance(h, _Handler) else None

    def stream(self, request: web.BaseRequest, on_close: Callable[[], None]) -> AdminConnection | None:
        """The request opens an event stream: no deadline, but watched for stalls (see the module
        docstring); `on_close()` is called once when the connection ends, whoever ends it."""
        c = self.conn_of(request)
        if c is None or c.closed:
            return None
        c.state = State.STREAM
        c.deadline = None
        c.on_close = on_close
        sock = c.raw.get_extra_info("socket") if c.raw is not None else None
        if sock is not None:
            # A small send buffer: a reader that stops reading shows as unsent bytes soon, and the
            # kernel holds little for it.  A peer that vanished is given up after STREAM_STALL.
            with contextlib.suppress(OSError, AttributeError, ValueError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, STREAM_SNDBUF)
            with contextlib.suppress(OSError, AttributeError, ValueError):
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, "TCP_USER_TIMEOUT", 18),
                                int(STREAM_STALL * 1000))
        return c

    def close_stalled(self, c: AdminConnection) -> None:
        """Close an event stream that does not keep up (its queue overflowed, or a write waited
        too long)."""
        if not c.closed:
            self.counts["stalled"] += 1
            self.release(c)
            c.abort()

    def _sweep(self) -> None:
        now = self._now()
        for c in list(self.conns):
            if c.deadline is not None and now >= c.deadline:
                self.counts["timed_out"] += 1
                self.release(c)
                c.abort()
            elif c.state is State.STREAM:
                unsent = c.unsent()
                if unsent == 0:
                    c.stalled_since = None
                elif unsent > STREAM_MAX_BUFFER:
                    self.close_stalled(c)
                elif c.stalled_since is None:
                    c.stalled_since = now
                elif now - c.stalled_since >= STREAM_STALL:
                    self.close_stalled(c)
        assert self._loop is not None
        self._sweeper = self._loop.call_later(SWEEP_EVERY, self._sweep)

    def figures(self) -> dict[str, Any]:
        """What `/api/server` shows of the admin port."""
        busy = sum(1 for c in self.conns if c.state is State.BUSY)
        streams = sum(1 for c in self.conns if c.state is State.STREAM)
        return {"connections": len(self.conns), "max_connections": MAX_CONNECTIONS, "busy": busy,
                "streams": streams, "tls": self.ssl is not None,
                **{k: self.counts[k] for k in ("accepted", "refused", "evicted", "timed_out", "stalled",
                                               "tls_failed", "bad_requests", "internal_errors")}}
