"""How a client connection fails: `TcpulseError`s with a `kind` (or a `code`) and English text."""

from __future__ import annotations

from tcpulse.errors import N_, TcpulseError

__all__ = ["ConnectError", "ServerClosed", "ServerDead", "ServerError"]


class ConnectError(TcpulseError):
    """The client could not connect (refused, unreachable, handshake failed).

    `kind` says what failed: "refused", "tls", "timeout", "resolve", "os", "bad-frame",
    "handshake-timeout", "handshake-lost", "bye", "replaced"."""


class ServerError(TcpulseError):
    """The server answered with `ERR code text` (kind "server-error"; `code` says which)."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__("server-error", N_("ERR {code} {text}"), code=code, text=text)
        self.code = code
        self.text = text


class ServerDead(TcpulseError, TimeoutError):
    """Nothing arrived from the server within the timeout after a PING (kind "dead").  A
    TimeoutError, so that `is_retryable` says yes: a frozen server may resume or be restarted."""

    def __init__(self, timeout: float) -> None:
        super().__init__("dead", N_("no answer from the server within {timeout:g} s"), timeout=timeout)


class ServerClosed(TcpulseError, EOFError):
    """The server ended the connection: "eof" (it closed the socket) or "bye" (it said `BYE`,
    with `reason` in `params`).  An EOFError, so that `is_retryable` says yes."""

    @classmethod
    def bye(cls, reason: str | None) -> ServerClosed:
        if reason:
            return cls("bye", N_("server said BYE {reason}"), reason=reason)
        return cls("bye", N_("server said BYE"))

    @classmethod
    def eof(cls) -> ServerClosed:
        return cls("eof", N_("server closed the connection"))
