"""Tier 1: the state machine of `tcpulse.protocol.states`, checked against `Connection`.

Every row of TRANSITIONS happens: through `send()` on our side, and through bytes fed (whole,
one byte at a time, and with more data behind) on their side, wherever that side can be in that
state.  Every triple that is not in the table is refused: `LocalProtocolError` from `send()` (or
the frame is dropped, once our side is closing), a bad frame from the peer.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import pytest

from tcpulse import (
    Ack,
    Bye,
    Connection,
    ConnectionState,
    Err,
    ErrorCode,
    Event,
    Heartbeat,
    Hello,
    Info,
    LocalProtocolError,
    Msg,
    Ok,
    Ping,
    Pong,
    RemoteProtocolError,
    Role,
)
from tcpulse.protocol.states import EFFECTS, TRANSITIONS, sends

S = ConnectionState
CLIENT, SERVER = Role.CLIENT, Role.SERVER

INFO = Info(server_id="s1", version="1.0.0", heartbeat_interval=5.0, heartbeat_timeout=10.0,
            auth_required=False, durable=False, max_line=4096, max_payload=1 << 20)
HELLO = Hello(id="c", session="s")
OK = Ok(id="c", heartbeat_interval=5.0, heartbeat_timeout=10.0, acked=0)

#: One event and its wire bytes for every key of the table (EOF has no event: receive_eof()).
EVENTS: dict[str, Event] = {
    "INFO": INFO, "HELLO": HELLO, "OK": OK, "MSG": Msg(payload=b"x"), "HEARTBEAT": Heartbeat(),
    "PING": Ping(ctx="p"), "PONG": Pong(ctx="p"), "ACK": Ack(seq=1), "ERR": Err(code=400, text="bad"),
    "ERR 429": Err(code=429, text="slow down"), "BYE": Bye(reason="done"),
}
WIRE: dict[str, bytes] = {
    "INFO": b"INFO " + json.dumps(INFO.to_json(), separators=(",", ":")).encode() + b"\n",
    "HELLO": b'HELLO {"id":"c","session":"s"}\n',
    "OK": b'OK {"id":"c","heartbeat_interval":5.0,"heartbeat_timeout":10.0,"acked":0}\n',
    "MSG": b"MSG 1\nx\n", "HEARTBEAT": b"HEARTBEAT\n", "PING": b"PING p\n", "PONG": b"PONG p\n",
    "ACK": b"ACK 1\n", "ERR": b"ERR 400 bad\n", "ERR 429": b"ERR 429 slow down\n", "BYE": b"BYE done\n",
}
KEYS = [*EVENTS, "EOF"]


def _server() -> Connection:
    c = Connection(SERVER)
    c.send(INFO)
    c.data_to_send()
    return c


def _server_answering() -> Connection:
    c = _server()
    assert c.receive_data(WIRE["HELLO"]) == [HELLO]
    return c


def _server_closing() -> Connection:
    c = _server()
    c.receive_data(b"NOPE\n")  # a bad frame: our ERR is queued
    return c


def _sent(role: Role, *events: Event) -> Callable[[], Connection]:
    def make() -> Connection:
        c = Connection(role) if role is CLIENT else _server()
        for ev in events:
            c.send(ev)
        return c
    return make


#: Our side in each state it can reach: how to get a `Connection` there.
OURS: dict[tuple[Role, ConnectionState], Callable[[], Connection]] = {
    (CLIENT, S.IDLE): lambda: Connection(CLIENT),
    (CLIENT, S.HELLO): _sent(CLIENT, HELLO),
    (CLIENT, S.OPEN): _sent(CLIENT, Heartbeat()),
    (CLIENT, S.CLOSED): _sent(CLIENT, Bye()),
    (SERVER, S.IDLE): lambda: Connection(SERVER),
    (SERVER, S.OPEN): _server,
    (SERVER, S.ANSWER): _server_answering,
    (SERVER, S.CLOSING): _server_closing,
    (SERVER, S.CLOSED): _sent(SERVER, Bye()),
}


def _fed(role: Role, *data: bytes, sent: tuple[Event, ...] = ()) -> Callable[[], Connection]:
    def make() -> Connection:
        c = Connection(role) if role is CLIENT else _server()
        for ev in sent:
            c.send(ev)
        for d in data:
            c.receive_data(d)
        c.data_to_send()
        return c
    return make


#: Their side in each state where their frames are parsed (a client's frames behind its HELLO
#: are held, not parsed, until the OK: that state is reached by EOF only).  Keyed by their role.
THEIRS: dict[tuple[Role, ConnectionState], Callable[[], Connection]] = {
    (CLIENT, S.IDLE): _server,
    (CLIENT, S.OPEN): _fed(SERVER, b"HEARTBEAT\n"),
    (SERVER, S.IDLE): lambda: Connection(CLIENT),
    (SERVER, S.OPEN): _fed(CLIENT, WIRE["INFO"]),
    (SERVER, S.ANSWER): _fed(CLIENT, WIRE["INFO"], sent=(HELLO,)),
}
THEIRS_EOF = {**THEIRS, (CLIENT, S.HELLO): _server_answering}


def _other(role: Role) -> Role:
    return SERVER if role is CLIENT else CLIENT


def _feeds(data: bytes) -> Iterator[list[bytes]]:
    """h11's tr(): the bytes whole, one at a time, and followed by the start of another frame."""
    yield [data]
    yield [data[i:i + 1] for i in range(len(data))]
    yield [data + b"MSG 3\nab"]


# ------------------------------------------------------------------------------ the table itself


def test_the_table_covers_the_verbs_and_directions_of_PROTOCOL_md() -> None:
    # PROTOCOL.md, "Verbs", the direction column.
    assert sends(CLIENT) == {"HELLO", "HEARTBEAT", "PING", "PONG", "MSG", "BYE"}
    assert sends(SERVER) == {"INFO", "OK", "PING", "PONG", "MSG", "ACK", "ERR", "BYE"}
    assert {v for (_, _, v) in TRANSITIONS} == set(KEYS)
    # No way out of the end states: CLOSED and ERROR have no rows.
    assert not [k for k in TRANSITIONS if k[1] in (S.CLOSED, S.ERROR)]
    # HELLO belongs to the client side, ANSWER and CLOSING to the server side.
    assert {side for (side, st, _) in TRANSITIONS if st is S.HELLO} == {CLIENT}
    assert {side for (side, st, _) in TRANSITIONS if st in (S.ANSWER, S.CLOSING)} == {SERVER}
    assert EFFECTS == {(CLIENT, "HELLO", S.OPEN): S.ANSWER, (SERVER, "OK", S.HELLO): S.OPEN}


def test_every_row_is_exercised_below() -> None:
    for (side, state, verb) in TRANSITIONS:
        by_send = verb != "EOF" and (side, state) in OURS
        by_receive = (side, state) in (THEIRS_EOF if verb == "EOF" else THEIRS)
        assert by_send or by_receive, (side, state, verb)


# ------------------------------------------------------------------------------ our side: send()


@pytest.mark.parametrize(("side", "state", "verb"),
                         [k for k in TRANSITIONS if k[2] != "EOF" and (k[0], k[1]) in OURS])
def test_every_allowed_send_makes_its_transition(side: Role, state: ConnectionState, verb: str) -> None:
    c = OURS[(side, state)]()
    assert c.our_state is state
    c.send(EVENTS[verb])
    expected = TRANSITIONS[(side, state, verb)]
    assert c.our_state is expected
    out = c.data_to_send()
    if state is S.CLOSING:
        # An ACK owed (or the like) goes out before the queued ERR, which closes our side.
        assert out.endswith(WIRE[verb] + b"ERR 400 unknown verb\n")
        assert c.our_state is S.CLOSED
    else:
        assert out.endswith(WIRE[verb])


def _forbidden_sends() -> Iterator[tuple[Role, ConnectionState, str]]:
    for (side, state) in OURS:
        for verb in EVENTS:
            if (side, state, verb) not in TRANSITIONS:
                yield side, state, verb


@pytest.mark.parametrize(("side", "state", "verb"), list(_forbidden_sends()))
def test_every_forbidden_send_is_refused_or_dropped(side: Role, state: ConnectionState, verb: str) -> None:
    c = OURS[(side, state)]()
    their = c.their_state
    ending = state in (S.CLOSING, S.CLOSED) and verb.split()[0] in sends(side)
    if ending:
        c.send(EVENTS[verb])  # the connection is ending: dropped, not refused
    else:
        with pytest.raises(LocalProtocolError) as info:
            c.send(EVENTS[verb])
        assert isinstance(info.value, ValueError)
        assert info.value.text == str(info.value)
    # Either way nothing was queued and neither side moved.
    assert (c.our_state, c.their_state) == (state, their)
    assert c.data_to_send() == OURS[(side, state)]().data_to_send()


def test_local_error_messages_say_why() -> None:
    cases: list[tuple[Callable[[], Connection], Event, str]] = [
        (OURS[(SERVER, S.OPEN)], Heartbeat(), "HEARTBEAT is client to server only"),
        (OURS[(CLIENT, S.OPEN)], Ack(seq=1), "ACK is server to client only"),
        (OURS[(CLIENT, S.OPEN)], Err(code=429, text="x"), "ERR is server to client only"),
        (OURS[(SERVER, S.IDLE)], Msg(payload=b""), "the server must send INFO first"),
        (OURS[(SERVER, S.OPEN)], INFO, "INFO twice"),
        (OURS[(SERVER, S.OPEN)], OK, "OK without HELLO"),
        (OURS[(CLIENT, S.HELLO)], HELLO, "HELLO twice"),
        (OURS[(CLIENT, S.OPEN)], HELLO, "HELLO not first"),
    ]
    for make, ev, why in cases:
        with pytest.raises(LocalProtocolError, match=f"^{why}$"):
            make().send(ev)


def test_numbered_msg_rules_are_local_errors() -> None:
    with pytest.raises(LocalProtocolError, match="a server MSG carries no seq"):
        _server().send(Msg(payload=b"x", seq=1))
    with pytest.raises(LocalProtocolError, match="needs a HELLO with a session"):
        Connection(CLIENT).send(Msg(payload=b"x", seq=1))
    c = Connection(CLIENT)
    c.send(Hello(id="c"))
    with pytest.raises(LocalProtocolError, match="needs a HELLO with a session"):
        c.send(Msg(payload=b"x", seq=1))
    assert c.our_state is S.HELLO


# ------------------------------------------------------------------------------ their side: bytes in


def _their_rows() -> Iterator[tuple[Role, ConnectionState, str]]:
    for (side, state, verb) in TRANSITIONS:
        if verb != "EOF" and (side, state) in THEIRS:
            yield side, state, verb


@pytest.mark.parametrize(("side", "state", "verb"), list(_their_rows()))
def test_every_allowed_frame_received_makes_its_transition(side: Role, state: ConnectionState, verb: str) -> None:
    expected = TRANSITIONS[(side, state, verb)]
    for chunks in _feeds(WIRE[verb]):
        c = THEIRS[(side, state)]()
        assert c.their_state is state
        evs = []
        for ch in chunks:
            evs += c.receive_data(ch)
        assert c.error is None, c.error
        assert evs == [EVENTS[verb]]
        assert c.their_state is expected


@pytest.mark.parametrize(("side", "state"), list(THEIRS_EOF))
def test_eof_closes_their_side(side: Role, state: ConnectionState) -> None:
    c = THEIRS_EOF[(side, state)]()
    our = c.our_state
    c.receive_data(b"PIN")  # cut short by the EOF: lost
    assert c.buffered == 3
    c.receive_eof()
    assert c.their_state is S.CLOSED is TRANSITIONS[(side, state, "EOF")]
    assert c.our_state is our  # they closed; we did not
    assert c.buffered == 0 and c.closed and c.error is None
    assert c.receive_data(b"HEARTBEAT\n") == []


def _forbidden_frames() -> Iterator[tuple[Role, ConnectionState, str]]:
    for (side, state) in THEIRS:
        for verb in EVENTS:
            if (side, state, verb) not in TRANSITIONS:
                yield side, state, verb


@pytest.mark.parametrize(("side", "state", "verb"), list(_forbidden_frames()))
def test_every_forbidden_frame_received_is_a_bad_frame(side: Role, state: ConnectionState, verb: str) -> None:
    for chunks in _feeds(WIRE[verb]):
        c = THEIRS[(side, state)]()
        evs = []
        for ch in chunks:
            evs += c.receive_data(ch)
        assert evs == []
        assert isinstance(c.error, RemoteProtocolError) and c.error.code == ErrorCode.BAD_FRAME
        assert c.their_state is S.ERROR
        out = c.data_to_send()
        if side is CLIENT:  # we are the server: the ERR goes out, then our side is closed
            assert out.endswith(b"ERR 400 %s\n" % c.error.text.encode())
        else:  # we are the client: it sends nothing, and is done
            assert out == b""
        assert c.our_state is S.CLOSED


def test_remote_error_messages_say_why() -> None:
    cases: list[tuple[Callable[[], Connection], bytes, str]] = [
        (THEIRS[(SERVER, S.IDLE)], WIRE["MSG"], "the server must send INFO first"),
        (THEIRS[(SERVER, S.IDLE)], WIRE["ERR 429"], "the server must send INFO first"),
        (THEIRS[(SERVER, S.OPEN)], WIRE["INFO"], "INFO twice"),
        (THEIRS[(SERVER, S.OPEN)], WIRE["OK"], "OK without HELLO"),
        (THEIRS[(CLIENT, S.OPEN)], WIRE["HELLO"], "HELLO not first"),
        (THEIRS[(CLIENT, S.OPEN)], WIRE["ACK"], "ACK is not allowed in this direction"),
        (THEIRS[(SERVER, S.OPEN)], WIRE["HEARTBEAT"], "HEARTBEAT is client to server only"),
    ]
    for make, data, why in cases:
        c = make()
        c.receive_data(data)
        assert c.error is not None and c.error.text == why


def test_ok_twice_is_a_bad_frame() -> None:
    c = THEIRS[(SERVER, S.ANSWER)]()
    c.receive_data(WIRE["OK"])
    assert (c.our_state, c.their_state) == (S.OPEN, S.OPEN)
    c.receive_data(WIRE["OK"])
    assert c.error is not None and c.error.text == "OK twice"


# ------------------------------------------------------------------------------ effects: the handshake


def test_server_hello_is_held_until_ok_then_both_sides_open() -> None:
    c = _server()
    assert (c.our_state, c.their_state) == (S.OPEN, S.IDLE)
    evs = c.receive_data(WIRE["HELLO"] + b"MSG 1 1\nx\n")
    assert evs == [HELLO]
    assert (c.our_state, c.their_state) == (S.ANSWER, S.HELLO) and c.paused
    assert c.receive_data(b"HEARTBEAT\n") == []  # held too
    assert c.buffered == len(b"MSG 1 1\nx\nHEARTBEAT\n")
    c.send(OK)
    assert (c.our_state, c.their_state) == (S.OPEN, S.OPEN) and not c.paused
    assert c.receive_data(b"") == [Msg(payload=b"x", seq=1), Heartbeat()]


def test_server_err_answers_a_hello_and_drops_what_was_held() -> None:
    c = _server()
    c.receive_data(WIRE["HELLO"] + b"HEARTBEAT\n")
    c.send(Err(code=401, text="bad token"))
    assert (c.our_state, c.their_state) == (S.CLOSED, S.HELLO)
    assert not c.paused and c.closed and c.buffered == 0
    assert c.error is None  # our program's ERR is not an error of the peer's
    assert c.receive_data(b"") == []
    c.send(OK)  # too late: dropped
    assert c.data_to_send() == b"ERR 401 bad token\n"


def test_server_eof_while_a_hello_is_held_still_lets_the_program_answer() -> None:
    c = _server_answering()
    c.receive_eof()
    assert (c.our_state, c.their_state) == (S.ANSWER, S.CLOSED) and not c.paused
    c.send(OK)  # answering a HELLO that was received is never a local error
    assert c.our_state is S.OPEN


@pytest.mark.parametrize("hello_first", [True, False])
def test_client_handshake_either_order(hello_first: bool) -> None:
    c = Connection(CLIENT)
    if hello_first:
        c.send(HELLO)  # before INFO arrives: allowed, and frames may follow at once
        c.send(Msg(payload=b"x", seq=1))
        assert (c.our_state, c.their_state) == (S.HELLO, S.IDLE)
        c.receive_data(WIRE["INFO"])
    else:
        c.receive_data(WIRE["INFO"])
        assert (c.our_state, c.their_state) == (S.IDLE, S.OPEN)
        c.send(HELLO)
    assert (c.our_state, c.their_state) == (S.HELLO, S.ANSWER)
    assert c.receive_data(WIRE["OK"]) == [OK]
    assert (c.our_state, c.their_state) == (S.OPEN, S.OPEN)


def test_client_without_hello_is_open_at_its_first_frame() -> None:
    c = Connection(CLIENT)
    c.receive_data(WIRE["INFO"])
    c.send(Msg(payload=b"hi"))
    assert (c.our_state, c.their_state) == (S.OPEN, S.OPEN)
    with pytest.raises(LocalProtocolError, match="HELLO not first"):
        c.send(HELLO)


def test_server_auth_required_wants_hello_first() -> None:
    c = Connection(SERVER)
    c.send(Info(server_id="s", version="1", heartbeat_interval=5, heartbeat_timeout=10, auth_required=True,
                durable=False, max_line=4096, max_payload=1024))
    c.receive_data(b"MSG 1\nx\n")
    assert c.error is not None and c.error.code == ErrorCode.UNAUTHORIZED and c.their_state is S.ERROR


def test_a_server_must_send_info_before_it_reads() -> None:
    c = Connection(SERVER)
    with pytest.raises(LocalProtocolError, match="INFO"):
        c.receive_data(b"HEARTBEAT\n")
    c.send(Err(code=503, text="server full"))  # instead of INFO
    assert c.our_state is S.CLOSED
    assert c.receive_data(b"HEARTBEAT\n") == []


# ------------------------------------------------------------------------------ we closed, they closed


def test_we_closed_server_reads_nothing_more() -> None:
    c = _fed(SERVER, b"HEARTBEAT\n")()
    c.send(Bye(reason="shutdown"))
    assert (c.our_state, c.their_state) == (S.CLOSED, S.OPEN) and c.closed and c.error is None
    assert c.receive_data(b"HEARTBEAT\nPING x\n") == []
    c.send(Ack(seq=1))  # dropped: we closed
    assert c.data_to_send() == b"BYE shutdown\n"


def test_we_closed_client_still_reads_the_acks_owed() -> None:
    c = Connection(CLIENT)
    c.receive_data(WIRE["INFO"])
    c.send(HELLO)
    c.receive_data(WIRE["OK"])
    c.send(Msg(payload=b"x", seq=1))
    c.send(Bye())
    assert (c.our_state, c.their_state) == (S.CLOSED, S.OPEN)
    assert c.receive_data(b"ACK 1\nPING z\nBYE shutdown\n") == [Ack(seq=1), Ping(ctx="z"), Bye(reason="shutdown")]
    assert c.data_to_send().endswith(b"BYE\n")  # no PONG after our BYE
    assert (c.our_state, c.their_state) == (S.CLOSED, S.CLOSED)


def test_they_closed_server_still_sends_the_acks_owed() -> None:
    c = _server()
    c.receive_data(WIRE["HELLO"])
    c.send(OK)
    c.data_to_send()
    assert c.receive_data(b"MSG 1 1\nx\nBYE done\nHEARTBEAT\n") == [Msg(payload=b"x", seq=1), Bye(reason="done")]
    assert (c.our_state, c.their_state) == (S.OPEN, S.CLOSED) and c.closed and c.error is None
    assert c.receive_data(b"HEARTBEAT\n") == []  # nothing after their BYE counts
    c.send(Ack(seq=1))
    assert c.data_to_send() == b"ACK 1\n"


def test_they_closed_with_a_fatal_err_but_429_goes_on() -> None:
    c = _fed(CLIENT, WIRE["INFO"])()
    assert c.receive_data(b"ERR 429 slow down\nMSG 1\nx\n") == [Err(code=429, text="slow down"), Msg(payload=b"x")]
    assert c.their_state is S.OPEN and not c.closed
    assert c.receive_data(b"ERR 503 shutting down\nMSG 1\nx\n") == [Err(code=503, text="shutting down")]
    assert (c.our_state, c.their_state) == (S.IDLE, S.CLOSED) and c.closed and c.error is None


def test_remote_error_server_side_acks_go_before_the_err() -> None:
    c = _server()
    c.receive_data(WIRE["HELLO"])
    c.send(OK)
    c.data_to_send()
    evs = c.receive_data(b"MSG 1 1\nx\nNOPE\nHEARTBEAT\n")
    assert evs == [Msg(payload=b"x", seq=1)]
    assert (c.our_state, c.their_state) == (S.CLOSING, S.ERROR)
    c.send(Ack(seq=1))
    c.send(Bye())  # never BYE after ERR
    c.send(Err(code=429, text="x"))  # one ERR per connection
    assert c.data_to_send() == b"ACK 1\nERR 400 unknown verb\n"
    assert c.our_state is S.CLOSED
