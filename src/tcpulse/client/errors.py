"""How the client fails: one hierarchy, every class a `TcpulseError` with a stable `kind` and
English text (the command line translates it, `tcpulse.cli.common.error_text`).

    ClientError                       anything the client raises
    ├── ConnectError                  start() could not connect (kind: refused, tls, timeout, ...)
    ├── ConnectionClosed              a connection ended; `reason` (a CloseReason) says how
    │   ├── ServerDead                    nothing from the server within its timeout (TimeoutError)
    │   ├── ServerClosed                  EOF, or BYE shutdown / heartbeat-timeout / replaced / other
    │   ├── ServerError                   the server said ERR (`code`, `text`)
    │   └── ConnectionLost                the socket failed (reset, unreachable, ...)
    ├── NotConnected                  ping() (or an unnumbered send()) while reconnecting
    ├── PingTimeout                   no PONG within ping(timeout=) (TimeoutError)
    ├── OutboxFull                    send() with outbox_full="raise" and the outbox at its limit
    └── OutboxError                   the outbox file cannot be used (tcpulse.client.outbox)

While the client reconnects, a ConnectionClosed only shows in its `Disconnected` event.  Once the
client is gone for good (closed by the program, replaced, refused, or ended with `reconnect=False`)
`send()`, `ping()`, `recv()` and `async for` raise the ConnectionClosed that ended it; its `kind`
is `reason.value`.
"""

from __future__ import annotations

import enum

from tcpulse.errors import N_, TcpulseError

__all__ = ["ClientError", "CloseReason", "ConnectError", "ConnectionClosed", "ConnectionLost", "NotConnected",
           "OutboxError", "OutboxFull", "OutboxOwnerError", "PingTimeout", "ServerClosed", "ServerDead", "ServerError"]


class CloseReason(enum.Enum):
    """Why a connection ended: the `reason` of `Disconnected`, `Closed` and `ConnectionClosed`
    (whose `kind` is the value)."""

    #: The program closed the client (`close()`, leaving `async with`).
    CLOSED = "closed"
    #: The server closed the socket without a word (a crash, a proxy, a kill -9 of its host).
    EOF = "eof"
    #: The socket failed: reset, unreachable, broken pipe.
    NETWORK = "network"
    #: Nothing at all arrived within the server's `heartbeat_timeout` after our PING (frozen,
    #: partitioned): the client's own verdict (PROTOCOL.md, "Liveness").
    DEAD = "dead"
    #: The server said `BYE heartbeat-timeout`: it heard nothing from us in time.
    TIMED_OUT = "timed-out"
    #: The server said `BYE shutdown`.
    SHUTDOWN = "shutdown"
    #: The server said `BYE replaced`: another connection signed in with this id.
    REPLACED = "replaced"
    #: The server said `BYE` with another reason (or none).
    BYE = "bye"
    #: The server said `ERR code text` and closed.
    SERVER_ERROR = "server-error"
    #: The server sent something that is not the protocol.
    BAD_FRAME = "bad-frame"


class ClientError(TcpulseError):
    """Anything the client raises.  `kind` is stable; `str(e)` is English."""


class ConnectError(ClientError):
    """The client could not connect (refused, unreachable, handshake failed).

    `kind` says what failed: "refused", "tls", "timeout", "resolve", "os", "bad-frame",
    "handshake-timeout", "handshake-lost", "bye".  The `host` param is written as in an address
    (an IPv6 address in brackets)."""


class ConnectionClosed(ClientError):
    """A connection ended.  `reason` (a `CloseReason`) says how; `kind` is `reason.value`.

    Raised by `send()`, `ping()`, `recv()` and `async for` once the client is gone for good; while
    it reconnects, the same exception is the `error` of its `Disconnected` event."""

    reason: CloseReason

    def __init__(self, reason: CloseReason, template: str, /, **params: object) -> None:
        super().__init__(reason.value, template, **params)
        self.reason = reason

    @classmethod
    def closed(cls) -> ConnectionClosed:
        """The program closed the client."""
        return cls(CloseReason.CLOSED, N_("the client was closed"))

    @classmethod
    def bad_frame(cls, text: str) -> ConnectionClosed:
        return cls(CloseReason.BAD_FRAME, N_("server sent a bad frame: {text}"), text=text)


class ServerDead(ConnectionClosed, TimeoutError):
    """Nothing arrived from the server within the timeout after a PING (kind "dead").  A
    TimeoutError: a frozen server may resume or be restarted, so the client reconnects."""

    def __init__(self, timeout: float) -> None:
        super().__init__(CloseReason.DEAD, N_("no answer from the server within {timeout:g} s"), timeout=timeout)


_BYE_REASONS = {"shutdown": CloseReason.SHUTDOWN, "heartbeat-timeout": CloseReason.TIMED_OUT,
                "replaced": CloseReason.REPLACED}


class ServerClosed(ConnectionClosed, EOFError):
    """The server ended the connection: it closed the socket (kind "eof") or said `BYE` (kind
    "shutdown", "timed-out", "replaced", or "bye" for another reason, which is in `params`).
    An EOFError."""

    @classmethod
    def bye(cls, reason: str | None) -> ServerClosed:
        why = _BYE_REASONS.get(reason or "", CloseReason.BYE)
        if why is CloseReason.REPLACED:
            return cls(why, N_("replaced by another connection with the same id"))
        if reason:
            return cls(why, N_("server said BYE {reason}"), reason=reason)
        return cls(why, N_("server said BYE"))

    @classmethod
    def eof(cls) -> ServerClosed:
        return cls(CloseReason.EOF, N_("server closed the connection"))


class ServerError(ConnectionClosed):
    """The server answered with `ERR code text` (kind "server-error"; `code` says which)."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(CloseReason.SERVER_ERROR, N_("ERR {code} {text}"), code=code, text=text)
        self.code = code
        self.text = text


class ConnectionLost(ConnectionClosed):
    """The socket failed under an open connection (kind "network"); `error` is the OSError."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(CloseReason.NETWORK, N_("connection lost: {error}"),
                         error=getattr(error, "strerror", None) or error)


class NotConnected(ClientError):
    """`ping()`, or an unnumbered `send()`, while the client is between connections (kind
    "not-connected").  A numbered `send()` never raises it: the outbox keeps the message."""

    def __init__(self) -> None:
        super().__init__("not-connected", N_("not connected to the server (reconnecting)"))


class PingTimeout(ClientError, TimeoutError):
    """No PONG within `ping(timeout=)` seconds (kind "ping-timeout")."""

    def __init__(self, timeout: float) -> None:
        super().__init__("ping-timeout", N_("no PONG from the server within {timeout:g} s"), timeout=timeout)


class OutboxFull(ClientError):
    """`send()` with `outbox_full="raise"` while the outbox holds `max_outbox` messages or
    `max_outbox_bytes` bytes not yet acknowledged (kind "outbox-full"), as nats.py raises when its
    pending buffer is full.  Nothing was kept: send it again later, or drop it."""

    def __init__(self, messages: int, size: int) -> None:
        super().__init__("outbox-full", N_("the outbox is full: {messages} message(s), {size} bytes not yet "
                                           "acknowledged by the server"), messages=messages, size=size)


class OutboxError(ClientError):
    """The outbox file cannot be used; the message says why and what to do.  `kind`: "in-use"
    (another process has it), "cannot-open" (the lock file cannot be made), "foreign" (the file is
    something else), "unusable" (SQLite cannot use it), "session" (it holds another session than
    the one asked for), "write-failed" (a write failed; the `OutboxTrouble` event carries it)."""


class OutboxOwnerError(OutboxError, ValueError):
    """The outbox belongs to client id `owner`, and `wanted` is another (`Outbox.check_owner`)."""

    def __init__(self, owner: str, wanted: str) -> None:
        super().__init__("owner", N_("the outbox belongs to client id {owner!r}, not {wanted!r}: "
                                     "its session is numbered for that id"), owner=owner, wanted=wanted)
        self.owner = owner
        self.wanted = wanted
