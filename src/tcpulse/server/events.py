"""What a running server reports: one small dataclass per thing that happens to a client.

Subscribers (the console log, the store, the admin API, your program) receive these through
`Server.subscribe()` or `Server.events()`.  `client` is the live `ClientInfo` of the connection:
read its attributes, do not keep it past the `Disconnected` event if you need a frozen copy
(`ClientInfo.snapshot()` gives one).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Union

if TYPE_CHECKING:
    from tcpulse.server.connection import ClientInfo

__all__ = [
    "Connected",
    "DisconnectReason",
    "Disconnected",
    "HeartbeatReceived",
    "HelloReceived",
    "Listening",
    "MessageReceived",
    "ProtocolErrorOccurred",
    "Recovered",
    "RttMeasured",
    "ServerEvent",
    "Status",
    "Suspect",
    "TimedOut",
    "Warning_",
]


class DisconnectReason(enum.StrEnum):
    """Why a connection ended (the `reason` of the JSON log's `disconnect` event)."""

    BYE = "bye"
    EOF = "eof"
    RESET = "reset"
    TIMEOUT = "timeout"
    REPLACED = "replaced"
    ERROR = "error"
    SHUTDOWN = "shutdown"
    SLOW_CONSUMER = "slow-consumer"
    REFUSED = "refused"


@dataclass(frozen=True, slots=True)
class Listening:
    host: str
    port: int
    heartbeat_interval: float
    heartbeat_timeout: float
    durable: bool


@dataclass(frozen=True, slots=True)
class Connected:
    client: ClientInfo


@dataclass(frozen=True, slots=True)
class HelloReceived:
    client: ClientInfo
    heartbeat_interval: float
    heartbeat_timeout: float
    session: str | None
    acked: int
    replaced: bool


@dataclass(frozen=True, slots=True)
class MessageReceived:
    client: ClientInfo
    payload: bytes
    seq: int | None
    duplicate: bool = False


@dataclass(frozen=True, slots=True)
class HeartbeatReceived:
    client: ClientInfo


@dataclass(frozen=True, slots=True)
class Suspect:
    client: ClientInfo
    silent_for: float


@dataclass(frozen=True, slots=True)
class Recovered:
    client: ClientInfo
    silent_for: float


@dataclass(frozen=True, slots=True)
class RttMeasured:
    """The answer to the server's PING arrived: `rtt` seconds round trip (also `client.rtt`)."""

    client: ClientInfo
    rtt: float


@dataclass(frozen=True, slots=True)
class TimedOut:
    client: ClientInfo
    silent_for: float
    late_by: float
    #: With `--detector phi`: the client's phi when it was declared dead (None: fixed timeout).
    phi: float | None = None


@dataclass(frozen=True, slots=True)
class Disconnected:
    client: ClientInfo
    reason: DisconnectReason
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class ProtocolErrorOccurred:
    client: ClientInfo
    code: int
    text: str


@dataclass(frozen=True, slots=True)
class Status:
    rows: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Warning_:
    """Something an operator must know that concerns no single client (store trouble, ...)."""

    text: str
    fields: dict[str, Any] = field(default_factory=dict)


ServerEvent = Union[
    Listening, Connected, HelloReceived, MessageReceived, HeartbeatReceived, Suspect, Recovered,
    TimedOut, Disconnected, ProtocolErrorOccurred, Status, Warning_, RttMeasured,
]
