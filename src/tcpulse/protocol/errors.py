"""The protocol's errors: the `ERR` codes, and the exceptions for frames the protocol forbids.

As in h11, whose side broke the rule decides the class:

- `RemoteProtocolError`: the peer sent a frame the protocol forbids.  `Connection` never raises
  it out of `receive_data()`: it keeps it in `Connection.error`, and (server role) turns it into
  the `ERR <code> <text>` it queues for the peer.
- `LocalProtocolError`: our own program asked `Connection.send()` for a frame that this role, in
  this state, may not send.  A bug in the caller, raised at once; nothing is queued.  It is also a
  `ValueError`, which `send()` raised for these cases before the two were told apart.

`ProtocolError` is their common base: catch it to handle both.
"""

from __future__ import annotations

import enum

__all__ = ["ErrorCode", "LocalProtocolError", "ProtocolError", "RemoteProtocolError"]


class ErrorCode(enum.IntEnum):
    """The `ERR` codes of PROTOCOL.md, "Errors"."""

    BAD_FRAME = 400
    UNAUTHORIZED = 401
    AUTH_TIMEOUT = 408
    TOO_LARGE = 413
    TOO_MANY = 429
    UNAVAILABLE = 503


class ProtocolError(Exception):
    """A frame the protocol forbids, from either side (see the two subclasses).

    `code` is the `ERR` code PROTOCOL.md gives such a frame; `text` says what was wrong, in
    English (it goes on the wire, so it is never translated).
    """

    def __init__(self, code: ErrorCode, text: str) -> None:
        super().__init__(f"{int(code)} {text}")
        self.code = code
        self.text = text


class RemoteProtocolError(ProtocolError):
    """The peer sent a frame the protocol forbids.

    Kept in `Connection.error`; in the server role it becomes the `ERR <code> <text>` that
    `data_to_send()` returns, after which the caller must close the connection.
    """


class LocalProtocolError(ProtocolError, ValueError):
    """Our program tried to send a frame this role, in this state, may not send.

    Raised by `Connection.send()`; the frame is not queued and the connection's state has not
    changed.  `code` is what the peer would answer such a frame with (400).
    """

    def __init__(self, text: str, code: ErrorCode = ErrorCode.BAD_FRAME) -> None:
        super().__init__(code, text)
        self.args = (text,)
