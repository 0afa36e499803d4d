"""The arguments of control lines, read and checked: decimal numbers, `PING`/`PONG` ctx, free
text, and the JSON objects of `INFO`, `HELLO` and `OK`.

Used by the parser (`tcpulse.protocol.connection`) only.  Each function returns the value or
raises `RemoteProtocolError` (a bad frame: `ERR 400`); nothing else escapes, whatever the bytes:
every JSON number goes through `as_float()` / `as_int()`, which cannot overflow.
"""

from __future__ import annotations

import json
from typing import Any

from tcpulse.protocol.errors import ErrorCode, RemoteProtocolError
from tcpulse.protocol.events import (
    CTX_RE,
    DEFAULT_MAX_LINE,
    DEFAULT_MAX_PAYLOAD,
    ID_RE,
    INT_LIMIT,
    PROTO_VERSION,
    SESSION_RE,
    TEXT_RE,
    Hello,
    Info,
    Ok,
    as_float,
    as_int,
    is_utf8,
)

__all__ = [
    "bad",
    "ctx",
    "number",
    "parse_hello",
    "parse_info",
    "parse_ok",
    "text",
]

def bad(text: str) -> RemoteProtocolError:
    """A bad frame (`ERR 400`) that says `text`."""
    return RemoteProtocolError(ErrorCode.BAD_FRAME, text)


def number(arg: bytes, what: str) -> int:
    """A decimal number as PROTOCOL.md, "Framing" has it: no sign, no leading zeros."""
    # The length guard keeps int() away from its 4300-digit limit and from needless work on
    # hostile input: 20 digits hold every 64-bit number.
    if not arg or len(arg) > 20 or not arg.isdigit() or (arg[0] == 48 and len(arg) > 1):
        raise bad(f"bad {what}")
    return int(arg)


def ctx(rest: bytes | None, verb: str) -> str | None:
    """The optional ctx of `PING`/`PONG`: 1-32 printable ASCII bytes, no space."""
    if rest is None:
        return None
    c = rest.decode("ascii", "replace")
    if CTX_RE.fullmatch(c) is None:
        raise bad(f"bad {verb} ctx")
    return c


def text(rest: bytes | None, what: str) -> str | None:
    """Free text on a control line (a `BYE` reason, an `ERR` text): UTF-8, printable."""
    if rest is None:
        return None
    try:
        t = rest.decode("utf-8")
    except UnicodeDecodeError:
        raise bad(f"{what} is not UTF-8") from None
    if TEXT_RE.fullmatch(t) is None:
        raise bad(f"bad {what}")
    return t


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON here")


def _json_object(raw: bytes, verb: str) -> dict[str, Any]:
    try:
        # Decoded as UTF-8 first: json.loads(bytes) would also take UTF-16 and UTF-32, and
        # surrogates encoded in UTF-8 (it decodes with "surrogatepass").
        obj = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        # UnicodeDecodeError is a ValueError, and so is an integer beyond int()'s 4300 digits;
        # RecursionError comes from deeply nested arrays.
        raise bad(f"bad JSON in {verb}") from None
    if not isinstance(obj, dict):
        raise bad(f"{verb} must carry a JSON object")
    return obj


_MISSING: Any = object()


def _opt_str(obj: dict[str, Any], key: str, verb: str, *, any_string: bool = False) -> str | None:
    # `any_string`: a JSON string with a lone surrogate escape (`"\ud800"`) is still a string: a
    # HELLO token of any shape is the guard's to refuse (ERR 401, audited: issue 15), not a bad frame.
    v = obj.get(key, _MISSING)
    if v is _MISSING:
        return None
    if not isinstance(v, str) or not (any_string or is_utf8(v)):
        raise bad(f"{verb} {key} must be a string")
    return v


def _seconds(obj: dict[str, Any], key: str, verb: str) -> float | None:
    # A positive finite number, as a float (None: left out).  A 400-digit integer is a bad frame
    # here, never an OverflowError later (issue 15).
    v = obj.get(key, _MISSING)
    if v is _MISSING:
        return None
    f = as_float(v)
    if f is None or f <= 0:
        raise bad(f"{verb} {key} must be a positive number")
    return f


def _int(obj: dict[str, Any], key: str, verb: str, default: int, lo: int) -> int:
    v = obj.get(key, _MISSING)
    if v is _MISSING:
        return default
    i = as_int(v, lo, INT_LIMIT)
    if i is None:
        raise bad(f"{verb} {key} must be an integer from {lo} to 2^63-1")
    return i


def parse_hello(raw: bytes) -> Hello:
    """The JSON of a `HELLO` (PROTOCOL.md, "Verbs"): `id` required, optional keys left out,
    never null; a wrong type is a bad frame; unknown keys are ignored."""
    obj = _json_object(raw, "HELLO")
    cid = obj.get("id")
    if not isinstance(cid, str) or ID_RE.fullmatch(cid) is None:
        raise bad("HELLO id must be 1-128 characters of [A-Za-z0-9._@-]")
    session = _opt_str(obj, "session", "HELLO")
    if session is not None and SESSION_RE.fullmatch(session) is None:
        raise bad("HELLO session must be 1-64 characters of [A-Za-z0-9_-]")
    token = _opt_str(obj, "token", "HELLO", any_string=True)
    interval = _seconds(obj, "heartbeat_interval", "HELLO")
    return Hello.received(id=cid, session=session, token=token, heartbeat_interval=interval)


def parse_info(raw: bytes) -> Info:
    """The JSON of an `INFO`.  Lenient in what we accept: keys a minimal server leaves out take
    their defaults; a key that is there must have the right type."""
    obj = _json_object(raw, "INFO")
    server_id = _opt_str(obj, "server_id", "INFO")
    version = _opt_str(obj, "version", "INFO")
    auth, durable = obj.get("auth_required", False), obj.get("durable", False)
    if not isinstance(auth, bool) or not isinstance(durable, bool):
        raise bad("INFO auth_required and durable must be booleans")
    interval = _seconds(obj, "heartbeat_interval", "INFO")
    timeout = _seconds(obj, "heartbeat_timeout", "INFO")
    try:
        return Info(
            proto=_int(obj, "proto", "INFO", PROTO_VERSION, 1),
            server_id=server_id or "",
            version=version or "",
            heartbeat_interval=5.0 if interval is None else interval,
            heartbeat_timeout=10.0 if timeout is None else timeout,
            auth_required=auth,
            durable=durable,
            max_line=_int(obj, "max_line", "INFO", DEFAULT_MAX_LINE, 1),
            max_payload=_int(obj, "max_payload", "INFO", DEFAULT_MAX_PAYLOAD, 1),
        )
    except ValueError as e:  # pragma: no cover - every field is checked above
        raise bad(f"bad INFO: {e}") from None


def parse_ok(raw: bytes) -> Ok:
    """The JSON of an `OK`: the values in force for this client, and `acked`."""
    obj = _json_object(raw, "OK")
    cid = obj.get("id")
    if not isinstance(cid, str) or ID_RE.fullmatch(cid) is None:
        raise bad("OK id must be 1-128 characters of [A-Za-z0-9._@-]")
    interval = _seconds(obj, "heartbeat_interval", "OK")
    timeout = _seconds(obj, "heartbeat_timeout", "OK")
    if interval is None or timeout is None:
        raise bad("OK needs heartbeat_interval and heartbeat_timeout")
    acked = _int(obj, "acked", "OK", 0, 0)  # below INT_LIMIT, which is SEQ_LIMIT
    try:
        return Ok(id=cid, heartbeat_interval=interval, heartbeat_timeout=timeout, acked=acked)
    except ValueError as e:  # pragma: no cover - every field is checked above
        raise bad(f"bad OK: {e}") from None
