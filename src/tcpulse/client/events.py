"""What the client reports: one frozen dataclass per thing that happens, as the server's events.

    def on_event(ev: ClientEvent) -> None:           # Client(on_event=...): called in the loop
        if isinstance(ev, Disconnected):
            print("lost:", ev.reason.value, ev.error, "reconnecting" if ev.reconnect else "for good")

    async for ev in client.events():                 # or as a stream, beside the callback
        ...

Every class has a `kind` (a stable string, also for logs) and its fields.  The order for one
connection is: `Connected`, `InfoReceived`, `SignedIn`, then any of `HeartbeatSent`,
`RttMeasured`, `Acked`, `MessageReceived`, `ServerErrorReceived`, `ByeReceived`, and at its end
`Disconnected`; between connections `Reconnecting` and `RetryFailed`.  The last event of a client
is always `Closed`.  A callback that raises is reported as `CallbackFailed` (to the other
listeners) and the client carries on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Union

from tcpulse.client.errors import ClientError, CloseReason, ConnectionClosed, OutboxError
from tcpulse.protocol.events import Info, Ok

__all__ = [
    "Acked",
    "ByeReceived",
    "CallbackFailed",
    "ClientEvent",
    "CloseReason",
    "Closed",
    "Connected",
    "Disconnected",
    "EventsDropped",
    "HeartbeatSent",
    "InboxOverflow",
    "InfoReceived",
    "MessageReceived",
    "OutboxTrouble",
    "Reconnecting",
    "Renumbered",
    "RetryFailed",
    "RttMeasured",
    "ServerErrorReceived",
    "SignedIn",
    "Waiting",
]


@dataclass(frozen=True, slots=True)
class Connected:
    """The TCP (and TLS) connection is open; the handshake starts."""

    kind: ClassVar[str] = "connected"
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class InfoReceived:
    """The server's `INFO`: its version, heartbeat settings, whether it is durable, its caps."""

    kind: ClassVar[str] = "info"
    info: Info


@dataclass(frozen=True, slots=True)
class SignedIn:
    """The server answered `HELLO` with `OK`: the connection is up.  `resent`: messages of the
    outbox sent again because `ok.acked` did not cover them; `first`: the client's first sign-in
    (False after a reconnect)."""

    kind: ClassVar[str] = "ok"
    ok: Ok
    resent: int
    first: bool


@dataclass(frozen=True, slots=True)
class HeartbeatSent:
    """A `HEARTBEAT` went out (the client had sent nothing for an interval); `n` counts them."""

    kind: ClassVar[str] = "beat"
    n: int


@dataclass(frozen=True, slots=True)
class RttMeasured:
    """A `PONG` came back, `rtt` seconds after its `PING` (ours, or `ping()`'s)."""

    kind: ClassVar[str] = "rtt"
    rtt: float


@dataclass(frozen=True, slots=True)
class Acked:
    """The server's `ACK`: every message up to message id `id` (wire `seq`) is stored (or handled,
    by a server that is not durable); `unacked` messages remain in the outbox."""

    kind: ClassVar[str] = "ack"
    id: int
    seq: int
    unacked: int


@dataclass(frozen=True, slots=True)
class MessageReceived:
    """A message from the server's program (also handed to `recv()` / `async for`)."""

    kind: ClassVar[str] = "message"
    payload: bytes


@dataclass(frozen=True, slots=True)
class ServerErrorReceived:
    """The server said `ERR code text`.  After `429` the connection goes on; after any other
    code the server closes it, and `Disconnected` follows."""

    kind: ClassVar[str] = "error"
    code: int
    text: str


@dataclass(frozen=True, slots=True)
class ByeReceived:
    """The server said `BYE [reason]` (`shutdown`, `heartbeat-timeout`, `replaced`, ...);
    `Disconnected` follows."""

    kind: ClassVar[str] = "bye"
    reason: str | None


@dataclass(frozen=True, slots=True)
class Disconnected:
    """A connection that was up (after `SignedIn`) ended.  `reason` says how and `error` is the
    exception (a `ConnectionClosed`: `kind`, English text, what an edge needs to translate it);
    `reconnect`: whether the client will try again (False: `Closed` follows); `unacked`: the
    messages kept in the outbox, sent again after reconnecting."""

    kind: ClassVar[str] = "disconnected"
    reason: CloseReason
    error: ConnectionClosed
    reconnect: bool
    unacked: int


@dataclass(frozen=True, slots=True)
class Reconnecting:
    """The next connection attempt starts in `delay` seconds (`attempt` counts from 1)."""

    kind: ClassVar[str] = "reconnecting"
    delay: float
    attempt: int


@dataclass(frozen=True, slots=True)
class RetryFailed:
    """A reconnect attempt failed with `error` (a `ConnectError` or a `ServerError` the client
    retries, such as `503`); another `Reconnecting` follows."""

    kind: ClassVar[str] = "retry-failed"
    error: ClientError


@dataclass(frozen=True, slots=True)
class Waiting:
    """`start()` with `wait_for_server`: the server is not up yet (`error`); trying again."""

    kind: ClassVar[str] = "waiting"
    error: ClientError


@dataclass(frozen=True, slots=True)
class Renumbered:
    """A server without a store restarted and forgot this session (its `OK` said `acked`, below
    what it had acknowledged before): the `held` messages of the outbox go out again numbered
    from `acked + 1`.  Their message ids do not change; from now on a message's wire seq is its
    id minus `offset`."""

    kind: ClassVar[str] = "renumbered"
    acked: int
    held: int
    offset: int


@dataclass(frozen=True, slots=True)
class InboxOverflow:
    """The inbox held `max_inbox` messages (or `max_inbox_bytes`) that the program had not taken,
    so messages from the server were dropped: `dropped` in all so far (also `client.inbox_dropped`).
    Reported once per overflow, when the first message is dropped; again after the inbox has
    emptied to half and overflows anew."""

    kind: ClassVar[str] = "inbox-overflow"
    dropped: int


@dataclass(frozen=True, slots=True)
class OutboxTrouble:
    """The outbox file cannot be written (`error`: disk full, I/O error, ...): the client keeps
    trying, and sends nothing that is not written.  `error` is None when it works again."""

    kind: ClassVar[str] = "outbox-trouble"
    error: OutboxError | None


@dataclass(frozen=True, slots=True)
class CallbackFailed:
    """The `on_event` callback raised `error` while handling `event`.  The client carries on;
    this event goes to the `events()` streams (not back to the callback)."""

    kind: ClassVar[str] = "callback-failed"
    error: Exception
    event: ClientEvent


@dataclass(frozen=True, slots=True)
class EventsDropped:
    """In an `events()` stream only: the stream's consumer fell `maxsize` events behind, and
    `count` events after the one before this were dropped.  `Closed` is never dropped."""

    kind: ClassVar[str] = "events-dropped"
    count: int


@dataclass(frozen=True, slots=True)
class Closed:
    """The client is gone for good: the last event.  `error` is what `send()`, `ping()`,
    `recv()` and `async for` raise from now on (`reason` CLOSED: the program closed it)."""

    kind: ClassVar[str] = "closed"
    reason: CloseReason
    error: ConnectionClosed


ClientEvent = Union[
    Connected, InfoReceived, SignedIn, HeartbeatSent, RttMeasured, Acked, MessageReceived, ServerErrorReceived,
    ByeReceived, Disconnected, Reconnecting, RetryFailed, Waiting, Renumbered, InboxOverflow, OutboxTrouble,
    CallbackFailed, EventsDropped, Closed,
]
