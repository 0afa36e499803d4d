"""One frozen dataclass per verb of the wire protocol (PROTOCOL.md, "Verbs").

Each class validates its own fields when built by application code, so a program cannot send a
frame the protocol forbids.  The parser validates what it reads once and skips re-validation on
the hot path: `Msg.unchecked()` builds a message from fields it has checked, and every
`HEARTBEAT` is one shared `Heartbeat()`.

`as_float()` and `as_int()` are the one check of every JSON number the protocol carries (INFO,
HELLO, OK), used both here and by the parser (`tcpulse.protocol.fields`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Union

__all__ = [
    "CTX_RE",
    "DEFAULT_MAX_LINE",
    "DEFAULT_MAX_PAYLOAD",
    "ID_RE",
    "INT_LIMIT",
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
    "as_float",
    "as_int",
    "is_utf8",
]

PROTO_VERSION = 1
#: PROTOCOL.md, "Framing": a control line is at most 4096 bytes by default.  Control lines carry
#: a verb and a little JSON; anything longer is an attack or a bug, and we must never buffer it.
DEFAULT_MAX_LINE = 4096
#: PROTOCOL.md, "Framing": 1 MiB payloads by default; big enough for any status report, small
#: enough that thousands of clients sending at once cannot exhaust memory.
DEFAULT_MAX_PAYLOAD = 1 << 20
#: PROTOCOL.md, "Verbs": `seq` is a positive integer below 2^63 (fits a signed 64-bit column).
SEQ_LIMIT = 1 << 63
#: Every integer of the JSON frames (`max_line`, `max_payload`, `proto`, `acked`) stays below
#: 2^63 too: what a client in another language holds in a 64-bit integer.  JSON itself has no
#: limit, so without one a peer could announce a 400-digit `max_line`.
INT_LIMIT = 1 << 63

ID_RE = re.compile(r"[A-Za-z0-9._@-]{1,128}")
SESSION_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
#: PING/PONG ctx: 1-32 printable ASCII bytes, no space.
CTX_RE = re.compile(r"[\x21-\x7e]{1,32}")
#: BYE reasons and ERR texts are free text on one control line: printable, no CR/LF.
TEXT_RE = re.compile(r"[^\x00-\x1f\x7f]+")


def _check(cond: bool, what: str) -> None:
    if not cond:
        raise ValueError(what)


def as_float(v: object) -> float | None:
    """`v` as a float if it is a JSON number a float can hold: an int or a finite float, not a
    boolean; else None.

    JSON integers have no size limit, and `float()` (or `math.isfinite()`) of one beyond ~1.8e308
    raises `OverflowError` (issue 15: a 310-digit `heartbeat_interval` in HELLO escaped from
    `receive_data()`).  Every seconds field goes through here, so that error cannot reach a caller.
    """
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, int) and not isinstance(v, bool):
        try:
            return float(v)
        except OverflowError:
            return None
    return None


def as_int(v: object, lo: int, hi: int) -> int | None:
    """`v` if it is an integer with `lo <= v < hi` (not a boolean, not a float such as 4096.0);
    else None.  Comparing Python ints never overflows, so a 400-digit one is simply out of range."""
    if isinstance(v, int) and not isinstance(v, bool) and lo <= v < hi:
        return v
    return None


def is_utf8(s: str) -> bool:
    """True when `s` can go on the wire as UTF-8.  A JSON string may hold a lone surrogate
    (`"\\ud800"`), which no UTF-8 encoder accepts: a token or server id with one would raise far
    from the parser (hashing a token, printing a server id)."""
    if s.isascii():
        return True
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _positive(v: object) -> bool:
    f = as_float(v)
    return f is not None and f > 0


def _text_field(v: object) -> bool:
    return isinstance(v, str) and is_utf8(v)


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
        _check(_text_field(self.server_id), "server_id must be a string")
        _check(_text_field(self.version), "version must be a string")
        _check(_positive(self.heartbeat_interval), "heartbeat_interval must be a positive number")
        _check(_positive(self.heartbeat_timeout), "heartbeat_timeout must be a positive number")
        _check(isinstance(self.auth_required, bool), "auth_required must be a boolean")
        _check(isinstance(self.durable, bool), "durable must be a boolean")
        for name in ("max_line", "max_payload", "proto"):
            _check(as_int(getattr(self, name), 1, INT_LIMIT) is not None,
                   f"{name} must be a positive integer below 2^63")

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
            _check(_text_field(self.token), "token must be a string")
        if self.heartbeat_interval is not None:
            _check(_positive(self.heartbeat_interval), "heartbeat_interval must be a positive number")

    @classmethod
    def received(cls, *, id: str, session: str | None, token: str | None, heartbeat_interval: float | None) -> Hello:
        """A `Hello` as the parser read it, fields checked there.  Unlike one a program builds,
        its token may be any JSON string, one with a lone surrogate escape included: the server
        refuses such a token as a wrong one (ERR 401, audited), not as a bad frame."""
        h = object.__new__(cls)
        for name, value in (("id", id), ("session", session), ("token", token),
                            ("heartbeat_interval", heartbeat_interval)):
            object.__setattr__(h, name, value)
        return h

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
        _check(_positive(self.heartbeat_interval), "heartbeat_interval must be a positive number")
        _check(_positive(self.heartbeat_timeout), "heartbeat_timeout must be a positive number")
        _check(as_int(self.acked, 0, SEQ_LIMIT) is not None, "acked must be an integer from 0 to 2^63-1")

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
        _check_ctx(self.ctx)


@dataclass(frozen=True, slots=True, kw_only=True)
class Pong:
    """Either way; the answer to `PING`."""

    ctx: str | None = None

    def __post_init__(self) -> None:
        _check_ctx(self.ctx)


def _check_ctx(ctx: object) -> None:
    if ctx is not None:
        _check(isinstance(ctx, str) and CTX_RE.fullmatch(ctx) is not None,
               "ctx must be 1-32 printable ASCII characters without space")


@dataclass(frozen=True, slots=True, kw_only=True)
class Msg:
    """One message; `seq` only client -> server, and only after a `HELLO` with a session."""

    payload: bytes
    seq: int | None = None

    def __post_init__(self) -> None:
        _check(isinstance(self.payload, (bytes, bytearray, memoryview)), "payload must be bytes")
        if self.seq is not None:
            _check(as_int(self.seq, 1, SEQ_LIMIT) is not None, "seq must be a positive integer below 2^63")

    @classmethod
    def unchecked(cls, payload: bytes, seq: int | None) -> Msg:
        """A `Msg` built without validation, for the parser: it has checked both fields as it
        read them, and `MSG` is nearly all the traffic (STYLE.md, "Hot paths stay cheap").

        Only for fields known to be valid (`payload` bytes, `seq` None or 1 to 2^63-1); any other
        code builds `Msg(payload=..., seq=...)`.  The parser's hottest line inlines this body.
        """
        m = object.__new__(cls)
        object.__setattr__(m, "payload", payload)
        object.__setattr__(m, "seq", seq)
        return m


@dataclass(frozen=True, slots=True, kw_only=True)
class Ack:
    """Server -> client: every message of this (id, session) up to `seq` is stored."""

    seq: int

    def __post_init__(self) -> None:
        _check(as_int(self.seq, 1, SEQ_LIMIT) is not None, "seq must be a positive integer below 2^63")


@dataclass(frozen=True, slots=True, kw_only=True)
class Err:
    """Server -> client; the server closes after it (PROTOCOL.md, "Errors")."""

    code: int
    text: str

    def __post_init__(self) -> None:
        _check(as_int(self.code, 100, 1000) is not None, "code must be a three-digit integer")
        _check(isinstance(self.text, str) and TEXT_RE.fullmatch(self.text) is not None and is_utf8(self.text),
               "text must be printable, on one line")


@dataclass(frozen=True, slots=True, kw_only=True)
class Bye:
    """Either way: an orderly close; the sender closes after it."""

    reason: str | None = None

    def __post_init__(self) -> None:
        if self.reason is not None:
            _check(isinstance(self.reason, str) and TEXT_RE.fullmatch(self.reason) is not None
                   and is_utf8(self.reason),
                   "reason must be printable, on one line")


Event = Union[Info, Hello, Ok, Heartbeat, Ping, Pong, Msg, Ack, Err, Bye]
