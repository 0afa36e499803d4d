"""The interface of one client connection to the rest of `server/`.

The per-connection protocol object (`connection.ServerConnection`) has all of this; the hub
(`hub.Hub`), the guard (`guard.Guard`) and the registry know a connection only through `Peer`,
so that none of them imports the asyncio protocol object, and it can be replaced (by a fake in a
test, or by another transport) without touching them.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Protocol

from tcpulse.policy.ratelimit import FrameRate
from tcpulse.protocol.errors import ErrorCode
from tcpulse.protocol.events import Event
from tcpulse.server.view import ClientView, DisconnectReason, Record

__all__ = ["ConnLimits", "Peer"]


@dataclass(slots=True)
class ConnLimits:
    """What the guard keeps for one connection (`Peer.limits`)."""

    host: str
    rate: FrameRate | None
    held: int = 0
    #: Bytes queued for the client as last seen (its transport's write buffer), and since when
    #: (monotonic) that buffer has not been empty.
    queued: int = 0
    queued_since: float = 0.0
    timer: asyncio.TimerHandle | None = None


class Peer(Record, Protocol):
    """One client connection, as the hub and the guard see it: what a view reads of it
    (`Record`), and what they may do with it."""

    #: Per-connection limits state, set by the guard when it admits the connection.
    limits: ConnLimits | None

    def __hash__(self) -> int: ...

    @property
    def view(self) -> ClientView: ...
    @property
    def closed(self) -> bool:
        """True once the connection has ended for the server (its socket may still linger)."""
    @property
    def hello_seen(self) -> bool:
        """True once a HELLO has arrived (answered or not)."""
    @property
    def owes_acks(self) -> bool:
        """True while numbered messages taken from this client are not all acknowledged."""
    @property
    def transport(self) -> Any:
        """The asyncio transport (None before it is made)."""

    def accept(self, client_id: str, session: str | None, interval: float, timeout: float, acked: int) -> None:
        """The HELLO is accepted: the client is `client_id` now, and `acked` of its session are stored."""

    def resume(self) -> None:
        """After `OK`: handle what arrived behind the HELLO, then read on."""

    def hold_reading(self, hold: bool) -> None:
        """Stop (True) or start again (False) reading from the socket for the store's sake."""

    def unread(self) -> int:
        """Bytes the client sent that wait unread in the kernel (0 if unknown)."""

    def send_frame(self, event: Event) -> None:
        """Send one frame now."""

    def acknowledge(self, seq: int) -> None:
        """The store committed this client's session up to `seq`: send the `ACK` it is owed."""

    def ping(self) -> None:
        """PING the client to measure the round trip."""

    def run_deferred(self) -> None:
        """Handle the bytes kept back for this loop iteration (Hub.defer), then read on."""

    def finish(self) -> None:
        """After a BYE or a bad frame that waited for the store: write what is owed, then close."""

    def fail(self, code: ErrorCode, text: str, reason: DisconnectReason = DisconnectReason.ERROR) -> None:
        """Send `ERR code text` and close."""

    def say_bye(self, reason: str, why: DisconnectReason) -> None:
        """Send `BYE reason` and close."""

    def announce_timeout(self) -> None:
        """Put `BYE heartbeat-timeout` on the wire at once (the bookkeeping follows in `end()`)."""

    def close_slow(self, detail: str) -> None:
        """Close a client that does not read what it is sent (a slow consumer), at once."""

    def end(self, reason: DisconnectReason, detail: str | None = None, linger: bool = False) -> None:
        """The connection is over for the server: report it, then close (after a linger)."""
