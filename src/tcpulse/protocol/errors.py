"""The protocol's errors: the `ERR` codes, and the exception for a frame the protocol forbids."""

from __future__ import annotations

import enum

__all__ = ["ErrorCode", "ProtocolError"]


class ErrorCode(enum.IntEnum):
    """The `ERR` codes of PROTOCOL.md, "Errors"."""

    BAD_FRAME = 400
    UNAUTHORIZED = 401
    AUTH_TIMEOUT = 408
    TOO_LARGE = 413
    TOO_MANY = 429
    UNAVAILABLE = 503


class ProtocolError(Exception):
    """A frame the protocol forbids.  `code` is the `ERR` code PROTOCOL.md gives it."""

    def __init__(self, code: ErrorCode, text: str) -> None:
        super().__init__(f"{int(code)} {text}")
        self.code = code
        self.text = text
