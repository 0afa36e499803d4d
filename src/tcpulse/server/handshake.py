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

The first bytes of the handshake can be read before the upgrade starts: uvloop starts reading
an accepted socket right after `connection_made` returns, so the `pause_reading()` made there
does not hold, and the client's hello (sent with the TCP handshake) arrives here.  Those bytes
are kept (at most `EARLY_MAX`) and given to the TLS layer, ahead of anything it reads itself,
once it is in place (`_Handshake._replay`).  Dropping them left the handshake waiting for a
hello that had already come: a quarter of `openssl s_client` connections timed out.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

from tcpulse.server.connection import ServerConnection
from tcpulse.server.hub import Hub
from tcpulse.server.view import format_addr

__all__ = ["EARLY_MAX", "Handshake"]

#: Bytes kept from before the TLS layer is in place: a client hello is well under this; more
#: is not TLS, and the handshake fails on what was kept.
EARLY_MAX = 16 * 1024


class Handshake(asyncio.Protocol):
    """The protocol of an accepted socket until its TLS handshake is done; then the socket is
    handed to a `ServerConnection`."""

    __slots__ = ("_addr", "_ctx", "_early", "_hub", "_task", "_timeout", "_transport")

    def __init__(self, hub: Hub, ctx: ssl.SSLContext, timeout: float) -> None:
        self._hub = hub
        self._ctx = ctx
        self._timeout = timeout
        self._transport: Any = None
        self._addr = "?"
        self._task: asyncio.Task[None] | None = None
        self._early = bytearray()

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
            upgrade = asyncio.ensure_future(loop.start_tls(self._transport, early, self._ctx, server_side=True,
                                                           ssl_handshake_timeout=self._timeout))
            await self._replay(upgrade)
            tls = await upgrade
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

    async def _replay(self, upgrade: asyncio.Future[Any]) -> None:
        """Give the TLS layer the bytes read before it was in place.  `start_tls` pauses reading,
        puts its protocol on the transport and schedules that protocol's `connection_made` and
        the resumption of reading (asyncio and uvloop alike): two turns of the loop later the
        layer has started its handshake and has read nothing yet, and the kept bytes go first."""
        transport = self._transport
        for _ in range(2):
            await asyncio.sleep(0)
        tls_layer = transport.get_protocol()
        if not self._early or upgrade.done() or tls_layer is self or transport.is_closing():
            return
        data, self._early = bytes(self._early), bytearray()
        if isinstance(tls_layer, asyncio.BufferedProtocol) or hasattr(tls_layer, "get_buffer"):
            view = memoryview(data)
            while view:
                buf = tls_layer.get_buffer(len(view))
                n = min(len(buf), len(view))
                buf[:n] = view[:n]
                tls_layer.buffer_updated(n)
                view = view[n:]
        else:
            tls_layer.data_received(data)

    def data_received(self, data: bytes) -> None:
        # Before the TLS layer is in place (see the module's docstring): kept for it.
        self._transport.pause_reading()
        room = EARLY_MAX - len(self._early)
        self._early += data[:room]

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
