"""The sans-I/O protocol core: bytes in, events out; events in, bytes out.

`Connection` contains no networking code and no clock.  Feed it what the socket read with
`receive_data()` (and `receive_eof()` at end of stream); it returns the complete frames as events.
Send frames with `send()`, then you must call `data_to_send()` and write the bytes it returns to
the network.

It follows both sides of the connection through the state machine of `tcpulse.protocol.states`
(`our_state`, `their_state`), as h11 does.  A frame the peer may not send never raises out of
`receive_data()`: their side goes to ERROR, parsing stops, the `RemoteProtocolError` is kept in
`.error` for the log and (server role) the `ERR <code> <text>` the protocol requires is queued;
the caller must then write `data_to_send()` and close.  A frame our own program may not send
raises `LocalProtocolError` from `send()`.
"""

from __future__ import annotations

import json
from typing import Any

from tcpulse.protocol.errors import ErrorCode, LocalProtocolError, ProtocolError, RemoteProtocolError
from tcpulse.protocol.events import (
    DEFAULT_MAX_LINE,
    DEFAULT_MAX_PAYLOAD,
    SEQ_LIMIT,
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
from tcpulse.protocol.fields import bad, ctx, number, parse_hello, parse_info, parse_ok, text
from tcpulse.protocol.states import EFFECTS, TRANSITIONS, ConnectionState, Role, sends

__all__ = [
    "DEFAULT_MAX_LINE",
    "DEFAULT_MAX_PAYLOAD",
    "PRE_INFO_CAP",
    "Connection",
    "ConnectionState",
    "ProtocolError",
    "Role",
]

#: PROTOCOL.md, "Framing": before INFO announces the caps, a client holds frames to 64 KiB.
PRE_INFO_CAP = 64 * 1024

_LF = 10
_CR = 13

IDLE = ConnectionState.IDLE
HELLO = ConnectionState.HELLO
ANSWER = ConnectionState.ANSWER
OPEN = ConnectionState.OPEN
CLOSING = ConnectionState.CLOSING
CLOSED = ConnectionState.CLOSED
ERROR = ConnectionState.ERROR

# TRANSITIONS as the connection reads them: for each side in each state, verb (bytes, as on the
# wire) -> next state.  A connection keeps the row of each side's current state at hand, so that
# checking a frame is one lookup of a bytes key.
_MOVES: dict[tuple[Role, ConnectionState], dict[bytes, ConnectionState]] = {
    (side, state): {} for side in Role for state in ConnectionState
}
for (_side, _state, _verb), _next in TRANSITIONS.items():
    _MOVES[(_side, _state)][_verb.encode()] = _next
_SENDS = {role: frozenset(v.encode() for v in sends(role)) for role in Role}
_ALL_VERBS = _SENDS[Role.CLIENT] | _SENDS[Role.SERVER]
_VERB: dict[type, bytes] = {Info: b"INFO", Hello: b"HELLO", Ok: b"OK", Heartbeat: b"HEARTBEAT", Ping: b"PING",
                            Pong: b"PONG", Msg: b"MSG", Ack: b"ACK", Err: b"ERR", Bye: b"BYE"}
_ONLY = {Role.CLIENT: "server to client only", Role.SERVER: "client to server only"}  # what the other side sends

_HEARTBEAT = Heartbeat()
# Msg.unchecked() without the call, for the parser's hottest line: the slot descriptors of the
# frozen dataclass (the parser has validated both fields already).
_MSG_NEW = object.__new__
_MSG_PAYLOAD = Msg.__dict__["payload"].__set__
_MSG_SEQ = Msg.__dict__["seq"].__set__


def _dumps(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


class Connection:
    """One side of one tcpulse connection, as a state machine over bytes.

    `our_state` and `their_state` say where each side stands (`ConnectionState`; the table of
    moves is `tcpulse.protocol.states.TRANSITIONS`).  "We closed" (our `BYE` or `ERR` went out:
    `our_state` is CLOSED) and "they closed" (their `BYE`, or EOF: `their_state` is CLOSED) are
    told apart; a peer that broke the protocol is in ERROR, with the reason in `.error`.

    Server role: the caller must `send(Info(...))` first (or an `Err` instead), before feeding
    any bytes.  After a `Hello` event the connection stops parsing (`.paused`; their side is in
    HELLO, ours in ANSWER) until the caller answers with `send(Ok(...))` or an `Err`; the caller
    should pause reading meanwhile, and after the answer must call `receive_data(b"")` to get the
    events of the bytes held back.  This keeps `seq` checks exact: the `acked` in `OK` is where
    numbering continues (PROTOCOL.md, "Delivery").  Once our `BYE` or `ERR` is out, a server
    parses nothing more.

    Client role: `send(Hello(...))` as the first frame, if at all (before or after `INFO`
    arrives); frames may follow it at once.  Frames keep being parsed after our `BYE`, for the
    `ACK`s the server still owes.

    `auto_pong=False`: PINGs are handed up but not answered here; the caller answers the ones it
    allows with `send(Pong(...))` (a server that rate-limits PINGs: PROTOCOL.md, "Errors", 429).
    """

    __slots__ = (
        "_ending",
        "_err_out",
        "_error",
        "_hello",
        "_info",
        "_next_seq",
        "_our",
        "_our_moves",
        "_out",
        "_payload",
        "_payload_need",
        "_payload_seq",
        "_peer",
        "_pending",
        "_server",
        "_their",
        "_their_moves",
        "auth_required",
        "auto_pong",
        "discarded",
        "keep_unnumbered",
        "max_line",
        "max_payload",
        "role",
    )

    def __init__(self, role: Role, *, max_line: int = DEFAULT_MAX_LINE, max_payload: int = DEFAULT_MAX_PAYLOAD,
                 auto_pong: bool = True) -> None:
        self.role = role
        self._server = role is Role.SERVER
        self._peer = Role.CLIENT if self._server else Role.SERVER
        if not self._server:
            # Until INFO says otherwise (PROTOCOL.md, "Framing").
            max_line = max_payload = PRE_INFO_CAP
        self.max_line = max_line
        self.max_payload = max_payload
        #: Answer PING here (the default).  Set it with the constructor's keyword; assigning it
        #: later still works but is kept only for older callers.
        self.auto_pong = auto_pong
        #: Whether INFO says that HELLO with a token must come first (server role: the INFO sent).
        self.auth_required = False
        self._error: RemoteProtocolError | None = None
        self._hello: Hello | None = None
        self._info: Info | None = None
        self._our = IDLE
        self._our_moves = _MOVES[(role, IDLE)]
        self._their = IDLE
        self._their_moves = _MOVES[(self._peer, IDLE)]
        self._pending = b""
        self._payload: bytearray | None = None
        self._payload_need = 0
        self._payload_seq: int | None = None
        self._ending = 0  # after a payload: 0 = want CR or LF, 1 = had CR, want LF
        # What send() queued, made when needed and let go by data_to_send(): an idle connection
        # holds no buffer (memory per idle client matters at 10,000).
        self._out: bytearray | None = None
        self._err_out = b""
        self._next_seq = 0  # 0 = numbering not open yet (no OK sent, or no session)
        #: Server role: False when nobody wants the payloads of unnumbered messages (no store
        #: keeps them, no program reads them): each is then checked and counted in `discarded`
        #: instead of being returned as a `Msg` (the caller sets it before `receive_data()`).
        self.keep_unnumbered = True
        self.discarded = 0

    # ------------------------------------------------------------------ state

    @property
    def our_state(self) -> ConnectionState:
        """Where our side stands: what `send()` accepts now (`states.TRANSITIONS`)."""
        return self._our

    @property
    def their_state(self) -> ConnectionState:
        """Where the peer's side stands: what `receive_data()` accepts from it now."""
        return self._their

    @property
    def error(self) -> RemoteProtocolError | None:
        """The peer's frame that broke the protocol, kept for the log (None: none did).  Set only
        by the parser: an `Err` our program sends closes the connection but is not an error of the
        peer's here.  Once set, nothing more is parsed."""
        return self._error

    @property
    def hello(self) -> Hello | None:
        """Server role: the client's HELLO once received.  Client role: the HELLO sent."""
        return self._hello

    @property
    def info(self) -> Info | None:
        """Client role: the server's INFO once received.  Server role: the INFO sent."""
        return self._info

    @property
    def closed(self) -> bool:
        """True once either side has ended the connection: we sent BYE or ERR, or the peer's
        BYE, EOF or bad frame arrived."""
        return self._our is CLOSED or self._our is CLOSING or self._their is CLOSED or self._their is ERROR

    @property
    def paused(self) -> bool:
        """Server role: a HELLO is held until the caller answers it (`send(Ok(...))` or an
        `Err`); until then the bytes that follow it are kept, not parsed."""
        return self._their is HELLO and self._our is ANSWER

    @property
    def buffered(self) -> int:
        """Bytes held between reads: a partial control line or payload (within the caps), and,
        while `paused`, the bytes held back behind HELLO.  A server adds these up across its
        connections to bound its memory (PROTOCOL.md, "Framing")."""
        p = self._payload
        return len(self._pending) + (0 if p is None else len(p))

    def _set_our(self, state: ConnectionState) -> None:
        self._our = state
        self._our_moves = _MOVES[(self.role, state)]
        if state is CLOSED and self._server:
            # A server reads nothing after its own BYE or ERR (it only lingers so that the frame
            # arrives): what it held is dropped.
            self._pending = b""
            self._payload = None

    def _set_their(self, state: ConnectionState) -> None:
        self._their = state
        self._their_moves = _MOVES[(self._peer, state)]

    def _effect(self, sender: Role, verb: str) -> None:
        # states.EFFECTS: a frame of one side that moves the other side too.
        if sender is self.role:
            nxt = EFFECTS.get((sender, verb, self._their))
            if nxt is not None:
                self._set_their(nxt)
        else:
            nxt = EFFECTS.get((sender, verb, self._our))
            if nxt is not None:
                self._set_our(nxt)

    def _why_not(self, side: Role, state: ConnectionState, verb: str) -> str:
        # Why `side` may not send `verb` in `state` (no such triple in TRANSITIONS).
        verb = verb.split(" ")[0]  # ERR 429 is an ERR
        if verb not in sends(side):
            return f"{verb} is {_ONLY[side]}"
        if verb == "HELLO":
            return "HELLO twice" if self._hello is not None else "HELLO not first"
        if side is Role.SERVER and state is IDLE:
            return "the server must send INFO first"
        if verb == "INFO":
            return "INFO twice"
        if verb == "OK":
            return "OK twice" if self._hello is not None else "OK without HELLO"
        return f"{verb} not allowed when the {side.value} is {state.value}"

    # ------------------------------------------------------------------ receiving

    def receive_data(self, data: bytes) -> list[Event]:
        """Feed bytes read from the network; returns the complete frames they finish.

        Afterwards you must call `data_to_send()` (a `PING` is answered here, a bad frame gets its
        `ERR`) and, if `.error` is set or a `Bye` arrived, close the connection.  Never raises for
        anything the peer sent; raises `LocalProtocolError` only for a server that feeds bytes
        before it has sent its INFO.
        """
        their = self._their
        if their is not OPEN and their is not IDLE and their is not ANSWER:
            if their is HELLO and self._our is ANSWER:
                self._pending += data  # held behind the HELLO until it is answered
            return []  # they closed or broke the protocol: nothing more counts
        if self._server:
            our = self._our
            if our is not OPEN and our is not ANSWER:
                if our is IDLE:
                    raise LocalProtocolError("a server sends INFO before it reads: send(Info(...)) first")
                return []  # our BYE or ERR is out
        events: list[Event] = []
        if self._pending:
            data = self._pending + data
            self._pending = b""
        try:
            self._parse(data, events)
        except RemoteProtocolError as e:
            self._fail(e)
        return events

    def receive_eof(self) -> None:
        """The peer closed its sending side: their side is CLOSED.  A frame cut short by it is
        lost, and so are the frames held behind an unanswered HELLO: nothing more is parsed."""
        nxt = self._their_moves.get(b"EOF")
        if nxt is not None:
            self._set_their(nxt)
            self._pending = b""
            self._payload = None

    def _fail(self, e: RemoteProtocolError) -> None:
        self._error = e
        self._set_their(ERROR)
        self._pending = b""
        self._payload = None
        if self._server:
            # PROTOCOL.md, "Errors": the ERR goes out, then the server closes; never BYE after.
            # It is queued behind whatever the caller sends in answer to the frames that came
            # before the bad one (their ACKs), and goes out with the next data_to_send().
            self._err_out = b"ERR %d %s\n" % (int(e.code), e.text.encode("utf-8"))
            self._set_our(CLOSING)
        else:
            self._set_our(CLOSED)  # a client answers a bad frame with nothing: it closes

    def _their_frame(self, verb: bytes) -> None:
        # The peer's frame `verb` moves their side along TRANSITIONS, or is a bad frame.
        their = self._their
        if their is IDLE and self._server and self.auth_required and verb != b"HELLO":
            raise RemoteProtocolError(ErrorCode.UNAUTHORIZED, "HELLO with a token required first")
        nxt = self._their_moves.get(verb)
        if nxt is None:
            raise bad(self._why_not(self._peer, their, verb.decode()))
        if nxt is not their:
            self._set_their(nxt)

    def _parse(self, data: bytes, events: list[Event]) -> None:
        pos = 0
        end = len(data)
        if self._payload is not None:
            pos = self._continue_payload(data, events)
            if pos < 0:
                return
        find = data.find
        max_line = self.max_line
        max_payload = self.max_payload
        append = events.append
        new_msg, set_payload, set_seq = _MSG_NEW, _MSG_PAYLOAD, _MSG_SEQ
        unchecked = Msg.unchecked
        server = self._server
        opened = OPEN
        keep = self.keep_unnumbered or not server
        while pos < end:
            nl = find(b"\n", pos)
            if nl < 0:
                if end - pos > max_line + 1:  # +1: a CR of the LF still to come
                    raise RemoteProtocolError(ErrorCode.TOO_LARGE, "control line too long")
                self._pending = data[pos:]
                return
            stop = nl - 1 if nl > pos and data[nl - 1] == _CR else nl
            if stop - pos > max_line:
                raise RemoteProtocolError(ErrorCode.TOO_LARGE, "control line too long")
            # Hot path first: MSG and HEARTBEAT are nearly all the traffic.
            if data.startswith(b"MSG ", pos):
                args = data[pos + 4:stop]
                # Fast path, an unnumbered MSG once their side is OPEN: bytes.isdigit() is true
                # only for ASCII digits (no sign, blank or the space before a seq); what it
                # lets through is checked exactly as fields.number() does.  Anything else, and
                # any number that is not plain, takes _msg_line().
                if args.isdigit() and len(args) <= 20 and (args[0] != 48 or len(args) == 1) \
                        and self._their is opened:
                    n = int(args)
                    if n > max_payload:
                        raise RemoteProtocolError(ErrorCode.TOO_LARGE, "payload too large")
                    seq = None
                else:
                    # Fast path too: a numbered MSG that is the next of its session, in plain
                    # digits (what every client sends); anything else is _msg_line()'s to judge.
                    sp = args.find(b" ")
                    nxt = self._next_seq
                    if sp > 0 and nxt and self._their is opened:
                        a, s = args[:sp], args[sp + 1:]
                        if a.isdigit() and s.isdigit() and len(a) <= 20 and len(s) <= 19 \
                                and (a[0] != 48 or sp == 1) and s[0] != 48 and int(s) == nxt < SEQ_LIMIT:
                            n, seq = int(a), nxt
                            if n > max_payload:
                                raise RemoteProtocolError(ErrorCode.TOO_LARGE, "payload too large")
                            self._next_seq = nxt + 1
                        else:
                            n, seq = self._msg_line(args)
                    else:
                        n, seq = self._msg_line(args)
                body = nl + 1
                tail = body + n
                if tail < end and data[tail] == _LF:
                    if seq is None and not keep:
                        self.discarded += 1  # nobody wants it: checked and counted, not built
                        pos = tail + 1
                        continue
                    # Msg.unchecked() inlined: one call less per message (STYLE.md, "Hot paths").
                    m = new_msg(Msg)
                    set_payload(m, data[body:tail])
                    set_seq(m, seq)
                    append(m)
                    pos = tail + 1
                    continue
                if tail + 1 < end and data[tail] == _CR and data[tail + 1] == _LF:
                    append(unchecked(data[body:tail], seq))
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
                    raise bad("payload not followed by LF")
                # The payload runs into later reads.
                self._payload = bytearray(data[body:end])
                self._payload_need = n - (end - body)
                self._payload_seq = seq
                self._ending = 0
                return
            if stop == pos + 9 and data.startswith(b"HEARTBEAT", pos):
                if not server:
                    raise bad("HEARTBEAT is client to server only")
                if self._their is not opened:
                    self._their_frame(b"HEARTBEAT")
                append(_HEARTBEAT)
                pos = nl + 1
                continue
            line = data[pos:stop]
            pos = nl + 1
            if not line:
                # A bare line ending (Enter pressed in nc) carries no frame: skipped.
                continue
            append(self._control(line))
            # An INFO sets the caps for what follows it, in this read too (found by
            # fuzz/fuzz_connection.py: a long line behind INFO was judged by the pre-INFO cap).
            max_line = self.max_line
            max_payload = self.max_payload
            their = self._their
            if their is not opened and their is not IDLE and their is not ANSWER:
                # A HELLO to hold until it is answered, or their BYE: stop here.
                if their is HELLO and pos < end:
                    self._pending = data[pos:]
                return

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
                events.append(Msg.unchecked(bytes(payload), self._payload_seq))
                self._payload = None
                return pos
            if b == _CR and self._ending == 0:
                self._ending = 1
                continue
            raise bad("payload not followed by LF")
        return -1

    def _msg_line(self, args: bytes) -> tuple[int, int | None]:
        sp = args.find(b" ")
        if sp < 0:
            n = number(args, "MSG length")
            seq = None
        else:
            n = number(args[:sp], "MSG length")
            seq = number(args[sp + 1:], "MSG seq")
        if self._their is not OPEN:
            self._their_frame(b"MSG")
        if n > self.max_payload:
            raise RemoteProtocolError(ErrorCode.TOO_LARGE, "payload too large")
        if seq is not None:
            if not self._server:
                raise bad("seq is client to server only")
            if seq == 0 or seq >= SEQ_LIMIT:
                raise bad("bad MSG seq")
            nxt = self._next_seq
            if nxt == 0:
                raise bad("seq without a session")
            if seq > nxt:
                raise bad(f"seq {seq} skips ahead of {nxt}")
            if seq == nxt:
                self._next_seq = nxt + 1
        return n, seq

    def _control(self, line: bytes) -> Event:
        sp = line.find(b" ")
        if sp < 0:
            verb, rest = line, None
        else:
            verb, rest = line[:sp], line[sp + 1:]
            if not rest:
                raise bad("empty argument")
        if verb not in _SENDS[self._peer]:
            if verb in _ALL_VERBS:
                raise bad(f"{verb.decode()} is not allowed in this direction")
            raise bad("unknown verb")
        if verb != b"ERR":  # judged once its code is known: ERR 429 is not the end
            self._their_frame(verb)
        if verb == b"PING":
            c = ctx(rest, "PING")
            # PROTOCOL.md, "Verbs": the peer answers PONG with the same ctx.
            if self.auto_pong:
                nxt = self._our_moves.get(b"PONG")
                if nxt is not None:  # not once our side has closed
                    if self._out is None:
                        self._out = bytearray()
                    self._out += b"PONG\n" if rest is None else b"PONG " + rest + b"\n"
                    if nxt is not self._our:
                        self._set_our(nxt)
            return Ping(ctx=c)
        if verb == b"PONG":
            return Pong(ctx=ctx(rest, "PONG"))
        if verb == b"BYE":
            return Bye(reason=text(rest, "BYE reason"))
        if verb == b"HEARTBEAT":
            raise bad("HEARTBEAT takes no argument")
        if verb == b"MSG":
            raise bad("MSG needs a length")
        if verb == b"HELLO":
            if rest is None:
                raise bad("HELLO needs a JSON object")
            hello = parse_hello(rest)
            self._hello = hello
            self._effect(Role.CLIENT, "HELLO")  # we owe the answer: parsing holds until it
            return hello
        # Client role from here on.
        if verb == b"ACK":
            seq = number(rest or b"", "ACK seq")
            if seq == 0 or seq >= SEQ_LIMIT:
                raise bad("bad ACK seq")
            return Ack(seq=seq)
        if verb == b"ERR":
            if rest is None:
                raise bad("ERR needs a code")
            sp2 = rest.find(b" ")
            code = number(rest if sp2 < 0 else rest[:sp2], "ERR code")
            txt = "" if sp2 < 0 else (text(rest[sp2 + 1:], "ERR text") or "")
            if not 100 <= code <= 999:
                raise bad("bad ERR code")
            # PROTOCOL.md, "Errors": after ERR 429 the connection goes on; any other ERR closes it.
            self._their_frame(b"ERR 429" if code == ErrorCode.TOO_MANY else b"ERR")
            return Err(code=code, text=txt or "error")
        if verb == b"INFO":
            info = parse_info(rest or b"")
            self._info = info
            self.max_line = info.max_line
            self.max_payload = info.max_payload
            self.auth_required = info.auth_required
            if self._hello is not None:
                # Our HELLO went out before this INFO: the server owes its answer from now on.
                self._effect(Role.CLIENT, "HELLO")
            return info
        if verb == b"OK":
            ok = parse_ok(rest or b"")
            self._effect(Role.SERVER, "OK")  # our handshake is done
            return ok
        raise bad("unknown verb")  # pragma: no cover - every verb is handled above

    # ------------------------------------------------------------------ sending

    def send(self, event: Event) -> None:
        """Queue a frame; you must then call `data_to_send()` and write what it returns.

        Raises `LocalProtocolError` (a `ValueError`) for a frame that this role, or our side in
        its present state, may not send (`states.TRANSITIONS`); nothing is queued then.  Once our
        side is closing (our `BYE` or `ERR` sent, or the peer's bad frame answered), frames of
        the right direction are dropped instead: the connection is ending (and PROTOCOL.md,
        "Errors": one `ERR` per connection, `BYE` never after it).
        """
        verb = _VERB.get(type(event))
        if verb is None:  # pragma: no cover - Event is a closed union
            raise TypeError(f"not an event: {event!r}")
        key = b"ERR 429" if isinstance(event, Err) and event.code == ErrorCode.TOO_MANY else verb
        nxt = self._our_moves.get(key)
        if nxt is None:
            our = self._our
            if (our is CLOSED or our is CLOSING) and verb in _SENDS[self.role]:
                return
            raise LocalProtocolError(self._why_not(self.role, our, key.decode()))
        out = self._out
        if out is None:
            out = self._out = bytearray()
        if isinstance(event, Msg):
            if event.seq is not None:
                if self._server:
                    raise LocalProtocolError("a server MSG carries no seq")
                hello = self._hello
                if hello is None or hello.session is None:
                    raise LocalProtocolError("a numbered MSG needs a HELLO with a session")
                out += b"MSG %d %d\n" % (len(event.payload), event.seq)
            else:
                out += b"MSG %d\n" % len(event.payload)
            out += event.payload
            out += b"\n"
        elif isinstance(event, Heartbeat):
            out += b"HEARTBEAT\n"
        elif isinstance(event, Ping):
            out += b"PING\n" if event.ctx is None else b"PING %s\n" % event.ctx.encode()
        elif isinstance(event, Pong):
            out += b"PONG\n" if event.ctx is None else b"PONG %s\n" % event.ctx.encode()
        elif isinstance(event, Ack):
            out += b"ACK %d\n" % event.seq
        elif isinstance(event, Bye):
            out += b"BYE\n" if event.reason is None else b"BYE %s\n" % event.reason.encode()
        elif isinstance(event, Err):
            out += b"ERR %d %s\n" % (event.code, event.text.encode("utf-8"))
        elif isinstance(event, Info):
            self._info = event
            self.auth_required = event.auth_required
            out += b"INFO " + _dumps(event.to_json()) + b"\n"
        elif isinstance(event, Ok):
            hello = self._hello
            if hello is not None and hello.session is not None:
                self._next_seq = event.acked + 1
            out += b"OK " + _dumps(event.to_json()) + b"\n"
        else:
            self._hello = event
            out += b"HELLO " + _dumps(event.to_json()) + b"\n"
        if nxt is not self._our:
            self._set_our(nxt)
        if verb == b"OK":
            self._effect(Role.SERVER, "OK")  # their HELLO is answered: parse what followed it
        elif verb == b"HELLO":
            self._effect(Role.CLIENT, "HELLO")  # the server owes an answer (once its INFO is here)

    def ack(self, seq: int) -> None:
        """Queue `ACK seq` (server role): `send(Ack(seq=seq))` without building the event, for
        the reply the server writes after nearly every read of a numbered sender.  `seq` must be
        1 to 2^63-1; dropped once our side is closing, as `send()` drops it."""
        if self._our is OPEN and self._server:
            if self._out is None:
                self._out = bytearray()
            self._out += b"ACK %d\n" % seq
        else:
            self.send(Ack(seq=seq))

    def data_to_send(self) -> bytes:
        """The bytes queued by `send()` and by automatic replies; you must write them out.

        After a bad frame (server role) they end in its `ERR`, and our side is then CLOSED."""
        if self._err_out:
            if self._out is None:
                self._out = bytearray()
            self._out += self._err_out
            self._err_out = b""
            self._set_our(CLOSED)
        out = self._out
        if not out:
            return b""
        self._out = None
        return bytes(out)
