"""TLS handshakes, bounded: a socket is a client only once its handshake is done.

asyncio's own TLS server holds a half-done handshake for as long as its timeout, and nothing
counts how many there are: a flood of TCP connections that never finish the handshake would
hold descriptors kept back for clients.  Here the server accepts plain TCP and upgrades each
socket itself (`loop.start_tls`), so that

- a handshake has a timeout of its own (`ServerConfig.tls_handshake_timeout`, a few seconds,
  not the heartbeat timeout);
- half-done handshakes take a slot of the same small pool as sockets lingering after their last
  frame (hub.MAX_LINGERING): beyond it, a new socket is closed at once;
- a failed handshake is counted and reported (`HandshakeFailed`, at most a few a second).
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

from tcpulse.server.connection import ServerConnection
from tcpulse.server.hub import Hub
from tcpulse.server.view import format_addr

__all__ = ["Handshake"]


class Handshake(asyncio.Protocol):
    """The protocol of an accepted socket until its TLS handshake is done; then the socket is
    handed to a `ServerConnection`."""

    __slots__ = ("_addr", "_ctx", "_hub", "_task", "_timeout", "_transport")

    def __init__(self, hub: Hub, ctx: ssl.SSLContext, timeout: float) -> None:
        self._hub = hub
        self._ctx = ctx
        self._timeout = timeout
        self._transport: Any = None
        self._addr = "?"
        self._task: asyncio.Task[None] | None = None

    def connection_made(self, transport: Any) -> None:
        self._transport = transport
        self._addr = format_addr(transport.get_extra_info("peername"))
        hub = self._hub
        if hub.closing or not hub.linger_slot():
            # Too many sockets that are not clients yet: this one waits for nothing.
            hub.handshake_failed(self._addr, "refused: too many handshakes in progress")
            transport.abort()
            return
        # Nothing may be read before the TLS layer is in place (start_tls resumes reading).
        transport.pause_reading()
        self._task = asyncio.ensure_future(self._upgrade())

    async def _upgrade(self) -> None:
        hub = self._hub
        conn = ServerConnection(hub)
        early = _Early()
        loop = asyncio.get_running_loop()
        try:
            tls = await loop.start_tls(self._transport, early, self._ctx, server_side=True,
                                       ssl_handshake_timeout=self._timeout)
        except (OSError, ssl.SSLError, TimeoutError, asyncio.CancelledError, ConnectionError) as e:
            hub.linger_done()
            hub.handshake_failed(self._addr, _why(e))
            self._transport.abort()
            if isinstance(e, asyncio.CancelledError):
                raise
            return
        hub.linger_done()
        if tls is None:  # the peer went away as the handshake ended
            return
        # The connection starts (INFO) before it sees a byte of the client's, even of bytes
        # that came with the end of the handshake (openssl s_client sends at once).
        conn.connection_made(tls)
        tls.set_protocol(conn)
        early.hand_over(conn)

    def data_received(self, data: bytes) -> None:  # pragma: no cover - reading is paused
        pass

    def connection_lost(self, exc: Exception | None) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()


class _Early(asyncio.Protocol):
    """What the TLS layer delivers between the end of the handshake and the connection's start:
    kept, then handed over in order (`hand_over`)."""

    __slots__ = ("_data", "_eof", "_lost")

    def __init__(self) -> None:
        self._data: list[bytes] = []
        self._eof = False
        self._lost: tuple[Exception | None] | None = None

    def data_received(self, data: bytes) -> None:
        self._data.append(data)

    def eof_received(self) -> bool:
        self._eof = True
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = (exc,)

    def hand_over(self, conn: asyncio.Protocol) -> None:
        for data in self._data:
            conn.data_received(data)
        self._data.clear()
        if self._eof:
            conn.eof_received()
        if self._lost is not None:
            conn.connection_lost(self._lost[0])


def _why(e: BaseException) -> str:
    if isinstance(e, ssl.SSLError):
        return e.reason or str(e)
    if isinstance(e, (TimeoutError, asyncio.CancelledError)):
        return "no handshake in time"
    return str(e) or type(e).__name__
