"""What a running server reports: one small dataclass per thing that happens to a client.

Subscribers (the console log, the store, the admin API, your program) receive these through
`Server.subscribe()` or `Server.events()`.  `client` is the read-only `ClientView` of the
connection: it reads the live figures (and keeps the last ones once the connection is gone);
`client.snapshot()` gives a frozen copy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Union

from tcpulse.protocol.events import Msg
from tcpulse.server.view import ClientView, DisconnectReason

__all__ = [
    "Connected",
    "DisconnectReason",
    "Disconnected",
    "EventsDropped",
    "HandshakeFailed",
    "HeartbeatReceived",
    "HelloReceived",
    "Listening",
    "MessageReceived",
    "MessagesReceived",
    "ProtocolErrorOccurred",
    "Recovered",
    "RttMeasured",
    "ServerEvent",
    "Status",
    "Suspect",
    "TimedOut",
    "Warning_",
]


@dataclass(frozen=True, slots=True)
class Listening:
    host: str
    port: int
    heartbeat_interval: float
    heartbeat_timeout: float
    durable: bool


@dataclass(frozen=True, slots=True)
class Connected:
    client: ClientView


@dataclass(frozen=True, slots=True)
class HelloReceived:
    client: ClientView
    heartbeat_interval: float
    heartbeat_timeout: float
    session: str | None
    acked: int
    replaced: bool


@dataclass(frozen=True, slots=True)
class MessageReceived:
    client: ClientView
    payload: bytes
    seq: int | None
    duplicate: bool = False


@dataclass(frozen=True, slots=True)
class MessagesReceived:
    """The messages of one read from one client, in order: what a subscriber that asked for
    `batch_messages=True` gets instead of one `MessageReceived` each (the console log does: one
    event per read is what lets it print every message at full speed).  `duplicates` holds the
    places in `messages` of the duplicates (already stored; acknowledged again), usually none.
    Do not keep or change `messages`: it is the server's list."""

    client: ClientView
    messages: list[Msg]
    duplicates: frozenset[int] = frozenset()


@dataclass(frozen=True, slots=True)
class HeartbeatReceived:
    client: ClientView


@dataclass(frozen=True, slots=True)
class Suspect:
    client: ClientView
    silent_for: float


@dataclass(frozen=True, slots=True)
class Recovered:
    client: ClientView
    silent_for: float


@dataclass(frozen=True, slots=True)
class RttMeasured:
    """The answer to the server's PING arrived: `rtt` seconds round trip (also `client.rtt`)."""

    client: ClientView
    rtt: float


@dataclass(frozen=True, slots=True)
class TimedOut:
    client: ClientView
    silent_for: float
    late_by: float
    #: With `--detector phi`: the client's phi when it was declared dead (None: fixed timeout).
    phi: float | None = None


@dataclass(frozen=True, slots=True)
class Disconnected:
    client: ClientView
    reason: DisconnectReason
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class ProtocolErrorOccurred:
    client: ClientView
    code: int
    text: str


@dataclass(frozen=True, slots=True)
class HandshakeFailed:
    """A TLS handshake failed (bad certificate, plain TCP on a TLS port, too slow, refused
    because too many were in progress).  Reported at most `HANDSHAKE_REPORTS_PER_SEC` times a
    second: `suppressed` says how many failures since the last report were not reported one by
    one; `Server.handshake_failures` counts them all."""

    addr: str
    error: str
    suppressed: int = 0


@dataclass(frozen=True, slots=True)
class EventsDropped:
    """Only in `Server.events()`: `count` events before the next one were dropped, because the
    consumer fell behind (`maxsize`)."""

    count: int


@dataclass(frozen=True, slots=True)
class Status:
    rows: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Warning_:
    """Something an operator must know that concerns no single client (store trouble, ...)."""

    text: str
    fields: dict[str, Any] = field(default_factory=dict)
    #: The library error the text quotes, if any: an edge that speaks another language shows
    #: it translated (the text is English).
    error: BaseException | None = None


ServerEvent = Union[
    Listening, Connected, HelloReceived, MessageReceived, MessagesReceived, HeartbeatReceived, Suspect, Recovered,
    TimedOut, Disconnected, ProtocolErrorOccurred, Status, Warning_, RttMeasured, HandshakeFailed, EventsDropped,
]
