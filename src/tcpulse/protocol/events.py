"""One frozen dataclass per verb of the wire protocol (PROTOCOL.md, "Verbs").

Each class validates its own fields when built by application code, so a program cannot send a
frame the protocol forbids.  The parser validates what it reads once and builds the hot classes
(`Msg`, `Heartbeat`) through `_fast()` constructors that skip re-validation.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Union

__all__ = [
    "CTX_RE",
    "ID_RE",
    "PROTO_VERSION",
    "SEQ_LIMIT",
    "SESSION_RE",
    "TEXT_RE",
    "Ack",
    "Bye",
    "Err",
    "Event",
    "Heartbeat",
    "Hello",
    "Info",
    "Msg",
    "Ok",
    "Ping",
    "Pong",
]

PROTO_VERSION = 1
#: PROTOCOL.md, "Verbs": `seq` is a positive integer below 2^63 (fits a signed 64-bit column).
SEQ_LIMIT = 1 << 63

ID_RE = re.compile(r"[A-Za-z0-9._@-]{1,128}")
SESSION_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
#: PING/PONG ctx: 1-32 printable ASCII bytes, no space.
CTX_RE = re.compile(r"[\x21-\x7e]{1,32}")
#: BYE reasons and ERR texts are free text on one control line: printable, no CR/LF.
TEXT_RE = re.compile(r"[^\x00-\x1f\x7f]+")


def _check(cond: bool, what: str) -> None:
    if not cond:
        raise ValueError(what)


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _positive_number(v: object) -> bool:
    return _is_number(v) and v > 0  # type: ignore[operator]


@dataclass(frozen=True, slots=True, kw_only=True)
class Info:
    """Server -> client, the first frame of every accepted connection."""

    server_id: str
    version: str
    heartbeat_interval: float
    heartbeat_timeout: float
    auth_required: bool
    durable: bool
    max_line: int
    max_payload: int
    proto: int = PROTO_VERSION

    def __post_init__(self) -> None:
        _check(isinstance(self.server_id, str), "server_id must be a string")
        _check(isinstance(self.version, str), "version must be a string")
        _check(_positive_number(self.heartbeat_interval), "heartbeat_interval must be > 0")
        _check(_positive_number(self.heartbeat_timeout), "heartbeat_timeout must be > 0")
        _check(isinstance(self.auth_required, bool), "auth_required must be a boolean")
        _check(isinstance(self.durable, bool), "durable must be a boolean")
        for name in ("max_line", "max_payload", "proto"):
            v = getattr(self, name)
            _check(isinstance(v, int) and not isinstance(v, bool) and v > 0, f"{name} must be a positive integer")

    def to_json(self) -> dict[str, Any]:
        return {
            "proto": self.proto,
            "server_id": self.server_id,
            "version": self.version,
            "heartbeat_interval": float(self.heartbeat_interval),
            "heartbeat_timeout": float(self.heartbeat_timeout),
            "auth_required": self.auth_required,
            "durable": self.durable,
            "max_line": self.max_line,
            "max_payload": self.max_payload,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class Hello:
    """Client -> server; if sent, the first client frame."""

    id: str
    session: str | None = None
    token: str | None = None
    heartbeat_interval: float | None = None

    def __post_init__(self) -> None:
        _check(isinstance(self.id, str) and ID_RE.fullmatch(self.id) is not None,
               "id must be 1-128 characters of [A-Za-z0-9._@-]")
        if self.session is not None:
            _check(isinstance(self.session, str) and SESSION_RE.fullmatch(self.session) is not None,
                   "session must be 1-64 characters of [A-Za-z0-9_-]")
        if self.token is not None:
            _check(isinstance(self.token, str), "token must be a string")
        if self.heartbeat_interval is not None:
            _check(_positive_number(self.heartbeat_interval), "heartbeat_interval must be a positive number")

    def to_json(self) -> dict[str, Any]:
        # Optional keys are left out, never null (PROTOCOL.md, "Verbs").
        d: dict[str, Any] = {"id": self.id}
        if self.session is not None:
            d["session"] = self.session
        if self.token is not None:
            d["token"] = self.token
        if self.heartbeat_interval is not None:
            d["heartbeat_interval"] = self.heartbeat_interval
        return d


@dataclass(frozen=True, slots=True, kw_only=True)
class Ok:
    """Server -> client, the answer to `HELLO`: the values in force and what is stored."""

    id: str
    heartbeat_interval: float
    heartbeat_timeout: float
    acked: int = 0

    def __post_init__(self) -> None:
        _check(isinstance(self.id, str) and ID_RE.fullmatch(self.id) is not None, "bad id")
        _check(_positive_number(self.heartbeat_interval), "heartbeat_interval must be > 0")
        _check(_positive_number(self.heartbeat_timeout), "heartbeat_timeout must be > 0")
        _check(isinstance(self.acked, int) and not isinstance(self.acked, bool)
               and 0 <= self.acked < SEQ_LIMIT, "acked must be an integer >= 0")

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "heartbeat_interval": float(self.heartbeat_interval),
            "heartbeat_timeout": float(self.heartbeat_timeout),
            "acked": self.acked,
        }


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Client -> server proof of life; no answer."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Ping:
    """Either way; the peer answers `PONG` with the same ctx (done by `Connection`)."""

    ctx: str | None = None

    def __post_init__(self) -> None:
        if self.ctx is not None:
            _check(isinstance(self.ctx, str) and CTX_RE.fullmatch(self.ctx) is not None,
                   "ctx must be 1-32 printable ASCII characters without space")


@dataclass(frozen=True, slots=True, kw_only=True)
class Pong:
    """Either way; the answer to `PING`."""

    ctx: str | None = None

    def __post_init__(self) -> None:
        if self.ctx is not None:
            _check(isinstance(self.ctx, str) and CTX_RE.fullmatch(self.ctx) is not None,
                   "ctx must be 1-32 printable ASCII characters without space")


@dataclass(frozen=True, slots=True, kw_only=True)
class Msg:
    """One message; `seq` only client -> server, and only after a `HELLO` with a session."""

    payload: bytes
    seq: int | None = None

    def __post_init__(self) -> None:
        _check(isinstance(self.payload, (bytes, bytearray, memoryview)), "payload must be bytes")
        if self.seq is not None:
            _check(isinstance(self.seq, int) and not isinstance(self.seq, bool)
                   and 0 < self.seq < SEQ_LIMIT, "seq must be a positive integer below 2^63")

    @classmethod
    def _fast(cls, payload: bytes, seq: int | None) -> Msg:
        # The parser has already validated both fields: skip __post_init__ on the hot path.
        m = object.__new__(cls)
        object.__setattr__(m, "payload", payload)
        object.__setattr__(m, "seq", seq)
        return m


@dataclass(frozen=True, slots=True, kw_only=True)
class Ack:
    """Server -> client: every message of this (id, session) up to `seq` is stored."""

    seq: int

    def __post_init__(self) -> None:
        _check(isinstance(self.seq, int) and not isinstance(self.seq, bool)
               and 0 < self.seq < SEQ_LIMIT, "seq must be a positive integer below 2^63")


@dataclass(frozen=True, slots=True, kw_only=True)
class Err:
    """Server -> client; the server closes after it (PROTOCOL.md, "Errors")."""

    code: int
    text: str

    def __post_init__(self) -> None:
        _check(isinstance(self.code, int) and not isinstance(self.code, bool)
               and 100 <= self.code <= 999, "code must be a three-digit integer")
        _check(isinstance(self.text, str) and TEXT_RE.fullmatch(self.text) is not None,
               "text must be printable, on one line")


@dataclass(frozen=True, slots=True, kw_only=True)
class Bye:
    """Either way: an orderly close; the sender closes after it."""

    reason: str | None = None

    def __post_init__(self) -> None:
        if self.reason is not None:
            _check(isinstance(self.reason, str) and TEXT_RE.fullmatch(self.reason) is not None,
                   "reason must be printable, on one line")


Event = Union[Info, Hello, Ok, Heartbeat, Ping, Pong, Msg, Ack, Err, Bye]
