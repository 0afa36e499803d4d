"""How a client connection fails: exceptions with a `kind` or `code` and English text."""

from __future__ import annotations

__all__ = ["ConnectError", "ServerDead", "ServerError"]


class ConnectError(Exception):
    """The client could not connect (refused, unreachable, handshake failed).

    The message is in the language of `_i18n.set_language()`; `kind` says what failed whatever the
    language: "refused", "tls", "timeout", "resolve", "os", "bad-frame", "handshake-timeout",
    "handshake-lost", "bye", "replaced" (or "" when not given)."""

    def __init__(self, message: str, kind: str = "") -> None:
        super().__init__(message)
        self.kind = kind


class ServerError(Exception):
    """The server answered with `ERR code text`."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(f"ERR {code} {text}")
        self.code = code
        self.text = text


class ServerDead(TimeoutError):
    """Nothing arrived from the server within the timeout after a PING.  A TimeoutError, so that
    `is_retryable` says yes: a frozen server may resume or be restarted."""
