"""The sans-I/O protocol core: bytes in, events out; events in, bytes out.

`Connection` contains no networking code and no clock.  Feed it what the socket read with
`receive_data()` (and `receive_eof()` at end of stream); it returns the complete frames as events.
Send frames with `send()`, then you must call `data_to_send()` and write the bytes it returns to
the network.  A bad frame never raises out of `receive_data()`: the connection queues the
`ERR <code> <text>` the protocol requires (server role), stops parsing, and keeps the
`ProtocolError` in `.error` for the log; the caller must then write `data_to_send()` and close.
"""

from __future__ import annotations

import enum
import json
import math
from typing import Any

from tcpulse.protocol.errors import ErrorCode, ProtocolError
from tcpulse.protocol.events import (
    CTX_RE,
    ID_RE,
    SEQ_LIMIT,
    SESSION_RE,
    TEXT_RE,
    Ack,
    Bye,
    Err,
    Event,
    Heartbeat,
    Hello,
    Info,
    Msg,
    Ok,
    Ping,
    Pong,
)

__all__ = [
    "DEFAULT_MAX_LINE",
    "DEFAULT_MAX_PAYLOAD",
    "PRE_INFO_CAP",
    "Connection",
    "ProtocolError",
    "Role",
]

#: PROTOCOL.md, "Framing": a control line is at most 4096 bytes by default.  Control lines carry
#: a verb and a little JSON; anything longer is an attack or a bug, and we must never buffer it.
DEFAULT_MAX_LINE = 4096
#: PROTOCOL.md, "Framing": 1 MiB payloads by default; big enough for any status report, small
#: enough that thousands of clients sending at once cannot exhaust memory.
DEFAULT_MAX_PAYLOAD = 1 << 20
#: PROTOCOL.md, "Framing": before INFO announces the caps, a client holds frames to 64 KiB.
PRE_INFO_CAP = 64 * 1024

_LF = 10
_CR = 13


class Role(enum.Enum):
    CLIENT = "client"
    SERVER = "server"


class _Bad(Exception):
    # Internal: raised by the field parsers, turned into ProtocolError in one place.
    def __init__(self, code: ErrorCode, text: str) -> None:
        self.code = code
        self.text = text


def _bad(text: str) -> _Bad:
    return _Bad(ErrorCode.BAD_FRAME, text)


def _number(arg: bytes, what: str) -> int:
    # PROTOCOL.md, "Framing": decimal, without sign or leading zeros.  The length guard keeps
    # int() away from its 4300-digit limit and from needless work on hostile input.
    if not arg or len(arg) > 20 or not arg.isdigit() or (arg[0] == 48 and len(arg) > 1):
        raise _bad(f"bad {what}")
    return int(arg)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON here")


def _json_object(raw: bytes, verb: str) -> dict[str, Any]:
    try:
        obj = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        # UnicodeDecodeError is a ValueError; RecursionError comes from deeply nested arrays.
        raise _bad(f"bad JSON in {verb}") from None
    if not isinstance(obj, dict):
        raise _bad(f"{verb} must carry a JSON object")
    return obj


def _is_num(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _opt_str(obj: dict[str, Any], key: str, verb: str) -> str | None:
    v = obj.get(key, _MISSING)
    if v is _MISSING:
        return None
    if not isinstance(v, str):
        raise _bad(f"{verb} {key} must be a string")
    return v


_MISSING: Any = object()


def _parse_hello(raw: bytes) -> Hello:
    obj = _json_object(raw, "HELLO")
    cid = obj.get("id")
    if not isinstance(cid, str) or ID_RE.fullmatch(cid) is None:
        raise _bad("HELLO id must be 1-128 characters of [A-Za-z0-9._@-]")
    session = _opt_str(obj, "session", "HELLO")
    if session is not None and SESSION_RE.fullmatch(session) is None:
        raise _bad("HELLO session must be 1-64 characters of [A-Za-z0-9_-]")
    token = _opt_str(obj, "token", "HELLO")
    interval = obj.get("heartbeat_interval", _MISSING)
    if interval is _MISSING:
        interval = None
    elif not _is_num(interval) or interval <= 0:
        raise _bad("HELLO heartbeat_interval must be a positive number")
    return Hello(id=cid, session=session, token=token, heartbeat_interval=interval)


def _parse_info(raw: bytes) -> Info:
    obj = _json_object(raw, "INFO")
    try:
        # Lenient in what we accept: keys a minimal server leaves out take their defaults.
        return Info(
            proto=obj.get("proto", 1),
            server_id=obj.get("server_id", ""),
            version=obj.get("version", ""),
            heartbeat_interval=obj.get("heartbeat_interval", 5.0),
            heartbeat_timeout=obj.get("heartbeat_timeout", 10.0),
            auth_required=obj.get("auth_required", False),
            durable=obj.get("durable", False),
            max_line=obj.get("max_line", DEFAULT_MAX_LINE),
            max_payload=obj.get("max_payload", DEFAULT_MAX_PAYLOAD),
        )
    except ValueError as e:
        raise _bad(f"bad INFO: {e}") from None


def _parse_ok(raw: bytes) -> Ok:
    obj = _json_object(raw, "OK")
    try:
        return Ok(
            id=obj.get("id"),  # type: ignore[arg-type]
            heartbeat_interval=obj.get("heartbeat_interval"),  # type: ignore[arg-type]
            heartbeat_timeout=obj.get("heartbeat_timeout"),  # type: ignore[arg-type]
            acked=obj.get("acked", 0),
        )
    except (ValueError, TypeError) as e:
        raise _bad(f"bad OK: {e}") from None


def _ctx(rest: bytes | None, verb: str) -> str | None:
    if rest is None:
        return None
    ctx = rest.decode("ascii", "replace")
    if CTX_RE.fullmatch(ctx) is None:
        raise _bad(f"bad {verb} ctx")
    return ctx


def _text(rest: bytes | None, what: str) -> str | None:
    if rest is None:
        return None
    try:
        text = rest.decode("utf-8")
    except UnicodeDecodeError:
        raise _bad(f"{what} is not UTF-8") from None
    if TEXT_RE.fullmatch(text) is None:
        raise _bad(f"bad {what}")
    return text


def _dumps(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


_HEARTBEAT = Heartbeat()
# Msg._fast() without the call: the slot descriptors of the frozen dataclass (the parser has
# validated both fields already).
_MSG_NEW = object.__new__
_MSG_PAYLOAD = Msg.__dict__["payload"].__set__
_MSG_SEQ = Msg.__dict__["seq"].__set__
_CODES = frozenset(int(c) for c in ErrorCode)
_SERVER_VERBS = frozenset({b"HELLO", b"HEARTBEAT", b"PING", b"PONG", b"MSG", b"BYE"})
_CLIENT_VERBS = frozenset({b"INFO", b"OK", b"PING", b"PONG", b"MSG", b"ACK", b"ERR", b"BYE"})
_ALL_VERBS = _SERVER_VERBS | _CLIENT_VERBS


class Connection:
    """One side of one tcpulse connection, as a state machine over bytes.

    Server role: the caller must `send(Info(...))` first.  After a `Hello` event the connection
    stops parsing (`.paused` is true) until the caller answers with `send(Ok(...))` or an `Err`;
    the caller should pause reading meanwhile, and after the answer must call
    `receive_data(b"")` to get the events of the bytes held back.  This keeps `seq` checks exact:
    the `acked` in `OK` is where numbering continues (PROTOCOL.md, "Delivery").
    """

    __slots__ = (
        "_bye_received",
        "_ending",
        "_err_out",
        "_hello_sent",
        "_next_seq",
        "_out",
        "_payload",
        "_payload_need",
        "_payload_seq",
        "_pending",
        "_seen_frame",
        "_sent_close",
        "auth_required",
        "auto_pong",
        "closed",
        "error",
        "hello",
        "info",
        "max_line",
        "max_payload",
        "paused",
        "peer_caps_known",
        "role",
    )

    def __init__(self, role: Role, *, max_line: int = DEFAULT_MAX_LINE,
                 max_payload: int = DEFAULT_MAX_PAYLOAD) -> None:
        self.role = role
        if role is Role.CLIENT:
            # Until INFO says otherwise (PROTOCOL.md, "Framing").
            max_line = max_payload = PRE_INFO_CAP
        self.max_line = max_line
        self.max_payload = max_payload
        #: The protocol error that ended this connection, kept for the log.
        self.error: ProtocolError | None = None
        #: True once this side sent BYE or ERR, or the peer's BYE/EOF arrived.
        self.closed = False
        #: Server role: the client's HELLO once received.  Client role: the HELLO sent.
        self.hello: Hello | None = None
        #: Client role: the server's INFO once received.  Server role: the INFO sent.
        self.info: Info | None = None
        self.paused = False
        self.auth_required = False
        self.peer_caps_known = role is Role.SERVER
        #: Answer PING here (the default).  A server that rate-limits PINGs sets it False and
        #: answers with `send(Pong(...))` only the PINGs it allows (PROTOCOL.md, "Errors", 429).
        self.auto_pong = True
        self._pending = b""
        self._payload: bytearray | None = None
        self._payload_need = 0
        self._payload_seq: int | None = None
        self._ending = 0  # after a payload: 0 = want CR or LF, 1 = had CR, want LF
        self._out = bytearray()
        self._err_out = b""
        self._seen_frame = False
        self._next_seq = 0  # 0 = numbering not open yet (no OK sent, or no session)
        self._hello_sent = False
        self._bye_received = False
        self._sent_close = False

    # ------------------------------------------------------------------ receiving

    def receive_data(self, data: bytes) -> list[Event]:
        """Feed bytes read from the network; returns the complete frames they finish.

        Afterwards you must call `data_to_send()` (a `PING` is answered here, a bad frame gets its
        `ERR`) and, if `.error` is set or a `Bye` arrived, close the connection.
        """
        if self.error is not None or self._bye_received:
            return []
        events: list[Event] = []
        if self._pending:
            data = self._pending + data
            self._pending = b""
        try:
            self._parse(data, events)
        except _Bad as e:
            self._fail(e.code, e.text)
        return events

    @property
    def buffered(self) -> int:
        """Bytes held between reads: a partial control line or payload (within the caps), and,
        while `paused`, the bytes held back behind HELLO.  A server adds these up across its
        connections to bound its memory (PROTOCOL.md, "Framing")."""
        p = self._payload
        return len(self._pending) + (0 if p is None else len(p))

    def receive_eof(self) -> None:
        """The peer closed its sending side.  A frame cut short by it is simply lost."""
        self.closed = True

    def _fail(self, code: ErrorCode, text: str) -> None:
        self.error = ProtocolError(code, text)
        self._pending = b""
        self._payload = None
        self.paused = False
        if self.role is Role.SERVER and not self._sent_close:
            # PROTOCOL.md, "Errors": the ERR goes out, then the server closes; never BYE after.
            # It is queued behind whatever the caller sends in answer to the frames that came
            # before the bad one (their ACKs), and goes out with the next data_to_send().
            self._err_out = b"ERR %d %s\n" % (int(code), text.encode("utf-8"))
        self.closed = True

    def _parse(self, data: bytes, events: list[Event]) -> None:
        pos = 0
        end = len(data)
        if self._payload is not None:
            pos = self._continue_payload(data, events)
            if pos < 0:
                return
        if self.paused:
            self._hold(data, pos)
            return
        find = data.find
        max_line = self.max_line
        max_payload = self.max_payload
        append = events.append
        new_msg, set_payload, set_seq = _MSG_NEW, _MSG_PAYLOAD, _MSG_SEQ
        server = self.role is Role.SERVER
        while pos < end:
            nl = find(b"\n", pos)
            if nl < 0:
                if end - pos > max_line + 1:  # +1: a CR of the LF still to come
                    raise _Bad(ErrorCode.TOO_LARGE, "control line too long")
                self._pending = data[pos:]
                return
            stop = nl - 1 if nl > pos and data[nl - 1] == _CR else nl
            if stop - pos > max_line:
                raise _Bad(ErrorCode.TOO_LARGE, "control line too long")
            # Hot path first: MSG and HEARTBEAT are nearly all the traffic.
            if data.startswith(b"MSG ", pos):
                args = data[pos + 4:stop]
                # Fast path, an unnumbered MSG after the first frame: bytes.isdigit() is true
                # only for ASCII digits (no sign, blank or the space before a seq); what it
                # lets through is checked exactly as _number() does.  Anything else, and any
                # number that is not plain, takes _msg_line().
                if args.isdigit() and len(args) <= 20 and (args[0] != 48 or len(args) == 1) \
                        and self._seen_frame:
                    n = int(args)
                    if n > max_payload:
                        raise _Bad(ErrorCode.TOO_LARGE, "payload too large")
                    seq = None
                else:
                    n, seq = self._msg_line(args)
                body = nl + 1
                tail = body + n
                if tail < end and data[tail] == _LF:
                    # Msg._fast() inlined: one call less per message (STYLE.md, "Hot paths").
                    m = new_msg(Msg)
                    set_payload(m, data[body:tail])
                    set_seq(m, seq)
                    append(m)
                    pos = tail + 1
                    continue
                if tail + 1 < end and data[tail] == _CR and data[tail + 1] == _LF:
                    append(Msg._fast(data[body:tail], seq))
                    pos = tail + 2
                    continue
                if tail + 1 == end and data[tail] == _CR:
                    # The payload and its CR are here, the LF is in the next read (found by
                    # fuzz/fuzz_connection.py: this was wrongly a bad frame).
                    self._payload = bytearray(data[body:tail])
                    self._payload_need = 0
                    self._payload_seq = seq
                    self._ending = 1
                    return
                if tail < end:
                    raise _bad("payload not followed by LF")
                # The payload runs into later reads.
                self._payload = bytearray(data[body:end])
                self._payload_need = n - (end - body)
                self._payload_seq = seq
                self._ending = 0
                return
            if stop == pos + 9 and data.startswith(b"HEARTBEAT", pos):
                if not server:
                    raise _bad("HEARTBEAT is client to server only")
                self._first_frame(b"HEARTBEAT")
                events.append(_HEARTBEAT)
                pos = nl + 1
                continue
            line = data[pos:stop]
            pos = nl + 1
            if not line:
                # A bare line ending (Enter pressed in nc) carries no frame: skipped.
                continue
            ev = self._control(line)
            if ev is None:
                continue
            events.append(ev)
            if self.paused or self._bye_received or self.error is not None:
                if self.paused:
                    self._hold(data, pos)
                return

    def _hold(self, data: bytes, pos: int) -> None:
        if pos < len(data):
            self._pending = data[pos:]

    def _continue_payload(self, data: bytes, events: list[Event]) -> int:
        # Returns where parsing goes on in `data`, or -1 when it was all consumed.
        payload = self._payload
        assert payload is not None
        pos = 0
        end = len(data)
        need = self._payload_need
        if need:
            take = min(need, end)
            payload += data[:take]
            need -= take
            self._payload_need = need
            pos = take
            if need:
                return -1
        while pos < end:
            b = data[pos]
            pos += 1
            if b == _LF:
                events.append(Msg._fast(bytes(payload), self._payload_seq))
                self._payload = None
                return pos
            if b == _CR and self._ending == 0:
                self._ending = 1
                continue
            raise _bad("payload not followed by LF")
        return -1

    def _msg_line(self, args: bytes) -> tuple[int, int | None]:
        sp = args.find(b" ")
        if sp < 0:
            n = _number(args, "MSG length")
            seq = None
        else:
            n = _number(args[:sp], "MSG length")
            seq = _number(args[sp + 1:], "MSG seq")
        self._first_frame(b"MSG")
        if n > self.max_payload:
            raise _Bad(ErrorCode.TOO_LARGE, "payload too large")
        if seq is not None:
            if self.role is Role.CLIENT:
                raise _bad("seq is client to server only")
            if seq == 0 or seq >= SEQ_LIMIT:
                raise _bad("bad MSG seq")
            nxt = self._next_seq
            if nxt == 0:
                raise _bad("seq without a session")
            if seq > nxt:
                raise _bad(f"seq {seq} skips ahead of {nxt}")
            if seq == nxt:
                self._next_seq = nxt + 1
        return n, seq

    def _first_frame(self, verb: bytes) -> None:
        if self._seen_frame:
            return
        if self.role is Role.SERVER:
            if self.auth_required and verb != b"HELLO":
                raise _Bad(ErrorCode.UNAUTHORIZED, "HELLO with a token required first")
        elif verb not in (b"INFO", b"ERR"):
            raise _bad("the server must send INFO first")
        self._seen_frame = True

    def _control(self, line: bytes) -> Event | None:
        sp = line.find(b" ")
        if sp < 0:
            verb, rest = line, None
        else:
            verb, rest = line[:sp], line[sp + 1:]
            if not rest:
                raise _bad("empty argument")
        server = self.role is Role.SERVER
        if verb not in (_SERVER_VERBS if server else _CLIENT_VERBS):
            if verb in _ALL_VERBS:
                raise _bad(f"{verb.decode()} is not allowed in this direction")
            raise _bad("unknown verb")
        first = not self._seen_frame
        self._first_frame(verb)
        if verb == b"PING":
            ctx = _ctx(rest, "PING")
            # PROTOCOL.md, "Verbs": the peer answers PONG with the same ctx.
            if self.auto_pong:
                self._out += b"PONG\n" if rest is None else b"PONG " + rest + b"\n"
            return Ping(ctx=ctx)
        if verb == b"PONG":
            return Pong(ctx=_ctx(rest, "PONG"))
        if verb == b"BYE":
            self._bye_received = True
            self.closed = True
            return Bye(reason=_text(rest, "BYE reason"))
        if verb == b"HEARTBEAT":
            raise _bad("HEARTBEAT takes no argument")
        if server:
            if verb == b"HELLO":
                if self.hello is not None:
                    raise _bad("HELLO twice")
                if not first:
                    raise _bad("HELLO not first")
                if rest is None:
                    raise _bad("HELLO needs a JSON object")
                hello = _parse_hello(rest)
                self.hello = hello
                self.paused = True
                return hello
            raise _bad("unknown verb")  # pragma: no cover - all server verbs handled above
        # Client role.
        if verb == b"ACK":
            seq = _number(rest or b"", "ACK seq")
            if seq == 0 or seq >= SEQ_LIMIT:
                raise _bad("bad ACK seq")
            return Ack(seq=seq)
        if verb == b"ERR":
            if rest is None:
                raise _bad("ERR needs a code")
            sp2 = rest.find(b" ")
            code = _number(rest if sp2 < 0 else rest[:sp2], "ERR code")
            text = "" if sp2 < 0 else (_text(rest[sp2 + 1:], "ERR text") or "")
            if not 100 <= code <= 999:
                raise _bad("bad ERR code")
            return Err(code=code, text=text or "error")
        if verb == b"INFO":
            if self.info is not None:
                raise _bad("INFO twice")
            info = _parse_info(rest or b"")
            self.info = info
            self.max_line = info.max_line
            self.max_payload = info.max_payload
            self.auth_required = info.auth_required
            self.peer_caps_known = True
            return info
        if verb == b"OK":
            if not self._hello_sent:
                raise _bad("OK without HELLO")
            return _parse_ok(rest or b"")
        raise _bad("unknown verb")  # pragma: no cover

    # ------------------------------------------------------------------ sending

    def send(self, event: Event) -> None:
        """Queue a frame; you must then call `data_to_send()` and write what it returns.

        Raises `ValueError` for a frame this role may not send.  Sending after this side's `BYE`
        or `ERR` does nothing: the connection is closing.
        """
        if self._sent_close:
            return
        out = self._out
        server = self.role is Role.SERVER
        if isinstance(event, Msg):
            if event.seq is not None:
                if server:
                    raise ValueError("a server MSG carries no seq")
                if self.hello is None or self.hello.session is None:
                    raise ValueError("a numbered MSG needs a HELLO with a session")
                out += b"MSG %d %d\n" % (len(event.payload), event.seq)
            else:
                out += b"MSG %d\n" % len(event.payload)
            out += event.payload
            out += b"\n"
        elif isinstance(event, Heartbeat):
            if server:
                raise ValueError("HEARTBEAT is client to server only")
            out += b"HEARTBEAT\n"
        elif isinstance(event, Ping):
            out += b"PING\n" if event.ctx is None else b"PING %s\n" % event.ctx.encode()
        elif isinstance(event, Pong):
            out += b"PONG\n" if event.ctx is None else b"PONG %s\n" % event.ctx.encode()
        elif isinstance(event, Ack):
            if not server:
                raise ValueError("ACK is server to client only")
            out += b"ACK %d\n" % event.seq
        elif isinstance(event, Bye):
            if self.error is not None:
                return  # PROTOCOL.md, "Errors": BYE never follows ERR
            out += b"BYE\n" if event.reason is None else b"BYE %s\n" % event.reason.encode()
            self._sent_close = True
            self.closed = True
        elif isinstance(event, Err):
            if not server:
                raise ValueError("ERR is server to client only")
            if self._err_out:
                return  # a bad frame's ERR is queued already: one ERR per connection
            if event.code == ErrorCode.TOO_MANY and self.error is None:
                # PROTOCOL.md, "Errors": after a 429 the frame is dropped and the connection goes
                # on; the caller closes (after another ERR 429) a client that keeps on.
                out += b"ERR %d %s\n" % (event.code, event.text.encode("utf-8"))
                return
            if self.error is None:
                code = ErrorCode(event.code) if event.code in _CODES else ErrorCode.BAD_FRAME
                self.error = ProtocolError(code, event.text)
            out += b"ERR %d %s\n" % (event.code, event.text.encode("utf-8"))
            self._sent_close = True
            self.closed = True
            self.paused = False
        elif isinstance(event, Info):
            if not server:
                raise ValueError("INFO is server to client only")
            self.info = event
            self.auth_required = event.auth_required
            out += b"INFO " + _dumps(event.to_json()) + b"\n"
        elif isinstance(event, Ok):
            if not server:
                raise ValueError("OK is server to client only")
            hello = self.hello
            if hello is not None and hello.session is not None:
                self._next_seq = event.acked + 1
            out += b"OK " + _dumps(event.to_json()) + b"\n"
            self.paused = False
        elif isinstance(event, Hello):
            if server:
                raise ValueError("HELLO is client to server only")
            if self._hello_sent:
                raise ValueError("HELLO was sent already")
            self._hello_sent = True
            self.hello = event
            out += b"HELLO " + _dumps(event.to_json()) + b"\n"
        else:  # pragma: no cover - Event is a closed union
            raise TypeError(f"not an event: {event!r}")

    def data_to_send(self) -> bytes:
        """The bytes queued by `send()` and by automatic replies; you must write them out."""
        if self._err_out:
            self._out += self._err_out
            self._err_out = b""
            self._sent_close = True
        if not self._out:
            return b""
        out = bytes(self._out)
        self._out.clear()
        return out
