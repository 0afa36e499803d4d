"""Tier 1: the sans-I/O core, bytes to events.  No sockets, no event loop, no clock."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tcpulse
from tcpulse import (
    Ack,
    Bye,
    Connection,
    Err,
    ErrorCode,
    Heartbeat,
    Hello,
    Info,
    LocalProtocolError,
    Msg,
    Ok,
    Ping,
    Pong,
    ProtocolError,
    RemoteProtocolError,
    Role,
)
from tcpulse.protocol import errors
from tcpulse.protocol.connection import PRE_INFO_CAP
from tcpulse.protocol.events import as_float, as_int

INFO = Info(server_id="s1", version="1.0.0", heartbeat_interval=5.0, heartbeat_timeout=10.0,
            auth_required=False, durable=False, max_line=4096, max_payload=1 << 20)


def server(**kw: int) -> Connection:
    c = Connection(Role.SERVER, **kw)
    c.send(INFO)
    c.data_to_send()
    return c


def hello_ok(c: Connection, hello: bytes = b'HELLO {"id":"a","session":"s"}\n', acked: int = 0) -> None:
    evs = c.receive_data(hello)
    assert isinstance(evs[-1], Hello)
    c.send(Ok(id=evs[-1].id, heartbeat_interval=5, heartbeat_timeout=10, acked=acked))
    c.data_to_send()


def tr(make: object, data: bytes, expected: list[object]) -> Connection:
    """h11's tr(): the same bytes fed whole, one byte at a time, and with more data behind."""
    results = []
    for chunks in ([data], [data[i:i + 1] for i in range(len(data))]):
        c = make()  # type: ignore[operator]
        evs: list[object] = []
        for ch in chunks:
            evs += c.receive_data(ch)
        assert c.error is None, c.error
        assert evs == expected
        results.append(c)
    # Followed by more data: the frame still parses, and the extra is held for later.
    c = make()  # type: ignore[operator]
    assert c.receive_data(data + b"MSG 3\nab") == expected
    assert c.error is None
    return results[0]


def tr_bad(make: object, data: bytes, code: ErrorCode) -> str:
    """tr() for a bad frame: whole, one byte at a time and followed by more data, the same
    RemoteProtocolError (returned: its text), no events, and (server role) its ERR last out."""
    texts = set()
    for chunks in ([data], [data[i:i + 1] for i in range(len(data))], [data + b"HEARTBEAT\nMSG 3\nab"]):
        c = make()  # type: ignore[operator]
        evs: list[object] = []
        for ch in chunks:
            evs += c.receive_data(ch)
        assert evs == []
        assert isinstance(c.error, RemoteProtocolError) and c.error.code == code, c.error
        out = c.data_to_send()
        if c.role is Role.SERVER:
            assert out == b"ERR %d %s\n" % (code, c.error.text.encode())
        else:
            assert out == b""  # a client sends no ERR
        texts.add(c.error.text)
    assert len(texts) == 1
    return texts.pop()


# ------------------------------------------------------------------------------ framing

def test_msg_whole_bytewise_and_followed() -> None:
    tr(server, b"MSG 5\nhello\n", [Msg(payload=b"hello")])


def test_msg_crlf_line_endings() -> None:
    tr(server, b"MSG 5\r\nhello\r\n", [Msg(payload=b"hello")])


def test_payload_may_hold_anything_including_heartbeat_and_newlines() -> None:
    body = b"HEARTBEAT\nMSG 3\n\x00\xff\r"
    tr(server, b"MSG %d\n" % len(body) + body + b"\n", [Msg(payload=body)])


def test_heartbeat_then_message_is_two_frames_not_HEARTBEAThello() -> None:
    # The seed's bug: "HEARTBEAT" and the next message merged in one read.
    c = server()
    assert c.receive_data(b"HEARTBEAThello") == []  # no LF yet: nothing complete, nothing wrong
    assert c.error is None
    tr(server, b"HEARTBEAT\nMSG 5\nhello\n", [Heartbeat(), Msg(payload=b"hello")])


def test_utf8_character_split_across_reads() -> None:
    text = "心跳".encode()
    data = b"MSG %d\n" % len(text) + text + b"\n"
    c = server()
    evs = c.receive_data(data[:8]) + c.receive_data(data[8:])
    assert evs == [Msg(payload=text)]
    assert evs[0].payload.decode() == "心跳"  # type: ignore[union-attr]


def test_many_frames_in_one_read() -> None:
    data = b"HEARTBEAT\n" * 3 + b"PING a\nPONG b\nMSG 0\n\n"
    c = tr(server, data, [Heartbeat()] * 3 + [Ping(ctx="a"), Pong(ctx="b"), Msg(payload=b"")])
    assert c.data_to_send() == b"PONG a\n"


def test_empty_line_is_skipped() -> None:
    tr(server, b"\nHEARTBEAT\n\r\n", [Heartbeat()])


def test_numbered_message_after_hello() -> None:
    c = server()
    hello_ok(c)
    assert c.receive_data(b"MSG 2 1\nhi\nMSG 2 2\nho\n") == [Msg(payload=b"hi", seq=1), Msg(payload=b"ho", seq=2)]
    assert c.error is None


def test_parser_holds_bytes_after_hello_until_ok() -> None:
    c = server()
    evs = c.receive_data(b'HELLO {"id":"a","session":"s"}\nMSG 1 3\nx\n')
    assert evs == [Hello(id="a", session="s")]
    assert c.paused
    assert c.receive_data(b"") == []  # still paused: OK not sent yet
    c.send(Ok(id="a", heartbeat_interval=5, heartbeat_timeout=10, acked=2))
    assert c.data_to_send().startswith(b"OK ")
    assert c.receive_data(b"") == [Msg(payload=b"x", seq=3)]


# ------------------------------------------------------------------------------ errors

@pytest.mark.parametrize(("data", "code"), [
    (b"NOPE\n", ErrorCode.BAD_FRAME),
    (b"heartbeat\n", ErrorCode.BAD_FRAME),  # verbs are case-sensitive
    (b"HEARTBEAT x\n", ErrorCode.BAD_FRAME),
    (b"MSG -1\n", ErrorCode.BAD_FRAME),
    (b"MSG +1\n", ErrorCode.BAD_FRAME),
    (b"MSG 01\nx\n", ErrorCode.BAD_FRAME),
    (b"MSG x\n", ErrorCode.BAD_FRAME),
    (b"MSG  1\n", ErrorCode.BAD_FRAME),  # exactly one space
    (b"MSG 1\nxy", ErrorCode.BAD_FRAME),  # payload not followed by LF
    (b"MSG 1 1\nx\n", ErrorCode.BAD_FRAME),  # seq without a session
    (b"ACK 1\n", ErrorCode.BAD_FRAME),  # wrong direction
    (b"INFO {}\n", ErrorCode.BAD_FRAME),
    (b"PING " + b"x" * 33 + b"\n", ErrorCode.BAD_FRAME),
    (b"PING a b\n", ErrorCode.BAD_FRAME),
    (b"HELLO {bad json\n", ErrorCode.BAD_FRAME),
    (b"HELLO []\n", ErrorCode.BAD_FRAME),
    (b'HELLO {"id":"a:b"}\n', ErrorCode.BAD_FRAME),  # ':' would look like an address
    (b'HELLO {"id":"a","session":null}\n', ErrorCode.BAD_FRAME),
    (b'HELLO {"id":"a","heartbeat_interval":true}\n', ErrorCode.BAD_FRAME),
    (b'HELLO {"id":"a","heartbeat_interval":NaN}\n', ErrorCode.BAD_FRAME),
    (b'HELLO {"id":"a","heartbeat_interval":-1}\n', ErrorCode.BAD_FRAME),
    (b"HELLO " + b"[" * 3000 + b"\n", ErrorCode.BAD_FRAME),  # deeply nested JSON
    (b"HEARTBEAT\nHELLO {\"id\":\"a\"}\n", ErrorCode.BAD_FRAME),  # HELLO not first
    (b"MSG 2000000\n", ErrorCode.TOO_LARGE),
    (b"X" * 5000, ErrorCode.TOO_LARGE),  # rejected before the LF arrives
    (b"PING " + b"a" * 5000 + b"\n", ErrorCode.TOO_LARGE),
])
def test_bad_frames_get_err_and_close(data: bytes, code: ErrorCode) -> None:
    c = server()
    c.receive_data(data)
    assert c.error is not None and c.error.code == code
    out = c.data_to_send()
    assert out.startswith(b"ERR %d " % code) and out.endswith(b"\n")
    assert c.closed
    # Nothing more is parsed, and BYE never follows ERR.
    assert c.receive_data(b"HEARTBEAT\n") == []
    c.send(Bye(reason="shutdown"))
    assert c.data_to_send() == b""


def test_hello_twice_is_bad() -> None:
    c = server()
    hello_ok(c, b'HELLO {"id":"a"}\n')
    c.receive_data(b'HELLO {"id":"a"}\n')
    assert c.error is not None and "twice" in c.error.text


def test_seq_that_skips_ahead_is_bad_and_duplicates_pass() -> None:
    c = server()
    hello_ok(c, acked=5)
    # At or below acked: duplicates, handed up (the server re-acknowledges them).
    assert c.receive_data(b"MSG 1 4\na\nMSG 1 6\nb\n") == [Msg(payload=b"a", seq=4), Msg(payload=b"b", seq=6)]
    c.receive_data(b"MSG 1 8\nc\n")
    assert c.error is not None and "skips ahead" in c.error.text


def test_seq_bounds() -> None:
    c = server()
    hello_ok(c)
    c.receive_data(b"MSG 1 0\nx\n")
    assert c.error is not None
    c = server()
    hello_ok(c, acked=(1 << 63) - 1)
    c.receive_data(b"MSG 1 %d\nx\n" % (1 << 63))
    assert c.error is not None


def test_auth_required_first_frame_must_be_hello() -> None:
    c = Connection(Role.SERVER)
    c.send(Info(server_id="s", version="1", heartbeat_interval=5, heartbeat_timeout=10, auth_required=True,
                durable=False, max_line=4096, max_payload=1024))
    c.data_to_send()
    c.receive_data(b"PING x\n")
    assert c.error is not None and c.error.code == ErrorCode.UNAUTHORIZED


def test_line_cap_counts_without_line_ending() -> None:
    line = b"PING " + b"a" * 27  # 32 bytes
    c = server(max_line=64)
    assert c.receive_data(line.ljust(64, b"a")[:32] + b"\r\n")  # fine
    c = server(max_line=64)
    c.receive_data(b"X" * 64 + b"\r")  # 64 bytes + CR: could still be a 64-byte line
    assert c.error is None
    c.receive_data(b"\n")
    assert c.error is not None and c.error.code == ErrorCode.BAD_FRAME  # unknown verb, not too long
    c = server(max_line=64)
    c.receive_data(b"X" * 66)
    assert c.error is not None and c.error.code == ErrorCode.TOO_LARGE


def test_payload_cap() -> None:
    c = server(max_payload=10)
    assert c.receive_data(b"MSG 10\n0123456789\n") == [Msg(payload=b"0123456789")]
    c.receive_data(b"MSG 11\n")
    assert c.error is not None and c.error.code == ErrorCode.TOO_LARGE


def test_large_payload_in_many_reads_is_linear() -> None:
    body = bytes(range(256)) * 4096  # 1 MiB
    data = b"MSG %d\n" % len(body) + body + b"\n"
    c = server()
    evs = []
    for i in range(0, len(data), 65536):
        evs += c.receive_data(data[i:i + 65536])
    assert evs == [Msg(payload=body)]


# ------------------------------------------------------------------------------ client role

def client() -> Connection:
    return Connection(Role.CLIENT)


def test_client_reads_info_and_adopts_caps() -> None:
    c = client()
    assert c.max_line == PRE_INFO_CAP
    data = b"INFO " + json.dumps(INFO.to_json()).encode() + b"\n"
    assert c.receive_data(data) == [INFO]
    assert c.max_line == 4096 and c.max_payload == 1 << 20


def test_client_accepts_err_instead_of_info() -> None:
    c = client()
    assert c.receive_data(b"ERR 503 server full\n") == [Err(code=503, text="server full")]


def test_client_rejects_frames_before_info_and_server_seq() -> None:
    c = client()
    c.receive_data(b"ACK 1\n")
    assert c.error is not None and c.data_to_send() == b""  # a client sends no ERR
    c = client()
    c.receive_data(b"INFO {}\nMSG 1 1\nx\n")
    assert c.error is not None


def test_client_full_exchange() -> None:
    c = client()
    c.receive_data(b"INFO {}\n")
    c.send(Hello(id="a", session="s", heartbeat_interval=5))
    assert c.data_to_send() == b'HELLO {"id":"a","session":"s","heartbeat_interval":5}\n'
    evs = c.receive_data(b'OK {"id":"a","heartbeat_interval":5.0,"heartbeat_timeout":10.0,"acked":0}\n'
                         b"ACK 3\nMSG 2\nhi\nPING z\nBYE shutdown\n")
    assert evs == [Ok(id="a", heartbeat_interval=5.0, heartbeat_timeout=10.0, acked=0), Ack(seq=3),
                   Msg(payload=b"hi"), Ping(ctx="z"), Bye(reason="shutdown")]
    assert c.data_to_send() == b"PONG z\n"
    c2 = client()
    c2.receive_data(b"INFO {}\n")
    c2.send(Hello(id="a", session="s"))
    c2.send(Msg(payload=b"xy", seq=1))
    c2.send(Heartbeat())
    assert c2.data_to_send().endswith(b"MSG 2 1\nxy\nHEARTBEAT\n")


def test_send_direction_checks() -> None:
    # LocalProtocolError is a ValueError: callers that caught ValueError still do.
    c = server()
    with pytest.raises(ValueError):
        c.send(Heartbeat())
    with pytest.raises(LocalProtocolError):
        c.send(Msg(payload=b"x", seq=1))
    cl = client()
    with pytest.raises(ValueError):
        cl.send(Ack(seq=1))
    with pytest.raises(LocalProtocolError):
        cl.send(Msg(payload=b"x", seq=1))  # no HELLO with a session


def test_event_validation() -> None:
    with pytest.raises(ValueError):
        Hello(id="bad id")
    with pytest.raises(ValueError):
        Hello(id="a", heartbeat_interval=True)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Ping(ctx="has space")
    with pytest.raises(ValueError):
        Err(code=400, text="two\nlines")
    with pytest.raises(ValueError):
        Ack(seq=1 << 63)


# ------------------------------------------------------------------------------ properties

FRAMES = st.lists(st.one_of(
    st.just(b"HEARTBEAT\n"),
    st.binary(max_size=40).map(lambda b: b"MSG %d\n" % len(b) + b + b"\n"),
    st.binary(max_size=40).map(lambda b: b"MSG %d\r\n" % len(b) + b + b"\r\n"),
    st.from_regex(rb"\A[!-~]{1,32}\Z").map(lambda c: b"PING " + c + b"\n"),
    st.from_regex(rb"\A[!-~]{1,32}\Z").map(lambda c: b"PONG " + c + b"\n"),
    st.just(b"PING\n"),
), max_size=30)


@settings(max_examples=300, deadline=None)
@given(FRAMES, st.lists(st.integers(min_value=0, max_value=2000), max_size=12))
def test_any_split_gives_the_same_events(frames: list[bytes], cuts: list[int]) -> None:
    data = b"".join(frames)
    whole = server()
    expected = whole.receive_data(data)
    assert whole.error is None
    assert len(expected) == len(frames)
    points = sorted({min(c, len(data)) for c in cuts})
    c = server()
    got = []
    prev = 0
    for p in [*points, len(data)]:
        got += c.receive_data(data[prev:p])
        prev = p
    assert got == expected
    assert c.data_to_send() == whole.data_to_send()


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=600), st.sampled_from([Role.SERVER, Role.CLIENT]))
def test_any_bytes_give_events_or_a_protocol_error(data: bytes, role: Role) -> None:
    c = server(max_line=128, max_payload=256) if role is Role.SERVER else Connection(role)
    for i in range(0, len(data), 7):
        c.receive_data(data[i:i + 7])  # must never raise
    if c.error is not None:
        assert c.closed
    # Never buffers past the caps.
    assert c.buffered <= max(c.max_line + 1, c.max_payload) or c.paused


# ------------------------------------------------------------------------------ local and remote errors


def test_remote_and_local_errors_are_told_apart() -> None:
    assert issubclass(RemoteProtocolError, ProtocolError) and not issubclass(RemoteProtocolError, ValueError)
    assert issubclass(LocalProtocolError, ProtocolError) and issubclass(LocalProtocolError, ValueError)
    assert tcpulse.RemoteProtocolError is errors.RemoteProtocolError
    assert tcpulse.LocalProtocolError is errors.LocalProtocolError
    assert tcpulse.ConnectionState is tcpulse.protocol.connection.ConnectionState
    # Remote: kept, never raised out of receive_data(), and it is what the ERR says.
    c = server()
    c.receive_data(b"ACK 1\n")
    assert isinstance(c.error, RemoteProtocolError)
    assert (c.error.code, c.error.text) == (ErrorCode.BAD_FRAME, "ACK is not allowed in this direction")
    assert str(c.error) == "400 ACK is not allowed in this direction"
    assert c.data_to_send() == b"ERR 400 ACK is not allowed in this direction\n"
    # Local: raised by send(), nothing queued, and .error untouched.
    c = server()
    with pytest.raises(LocalProtocolError) as info:
        c.send(Hello(id="a"))
    assert str(info.value) == info.value.text == "HELLO is client to server only"
    assert info.value.code == ErrorCode.BAD_FRAME
    assert c.error is None and c.data_to_send() == b""


def test_an_err_our_program_sends_closes_without_blaming_the_peer() -> None:
    c = server()
    c.send(Err(code=503, text="store unavailable"))
    assert c.closed and c.error is None
    assert c.receive_data(b"HEARTBEAT\n") == []
    assert c.data_to_send() == b"ERR 503 store unavailable\n"


# ------------------------------------------------------------------------------ issue 15: numbers in JSON


BIG = b"9" * 400  # beyond a float: float() of it raises OverflowError
HUGE_INT = b"1" + b"0" * 320


def hello_line(value: bytes, key: bytes = b"heartbeat_interval") -> bytes:
    return b'HELLO {"id":"a","%s":%s}\n' % (key, value)


def info_line(key: bytes, value: bytes) -> bytes:
    return b'INFO {"%s":%s}\n' % (key, value)


def client_waiting_ok() -> Connection:
    c = client()
    c.receive_data(b"INFO {}\n")
    c.send(Hello(id="a"))
    c.data_to_send()
    return c


def ok_line(key: bytes, value: bytes) -> bytes:
    obj = {b"id": b'"a"', b"heartbeat_interval": b"5.0", b"heartbeat_timeout": b"10.0", b"acked": b"0"}
    obj[key] = value
    return b"OK {" + b",".join(b'"%s":%s' % kv for kv in obj.items()) + b"}\n"


BAD_SECONDS = [BIG, b"-" + BIG, HUGE_INT, b"1e400", b"-1e400", b"0", b"-0.0", b"-5", b"1e-400", b"true",
               b"null", b'"5"', b"[5]", b'{"s":5}', b"NaN", b"Infinity", b"-Infinity", b"[[[[1]]]]"]
BAD_INTS = [BIG, b"-" + BIG, HUGE_INT, b"%d" % (1 << 63), b"4096.0", b"1e3", b"0", b"-1", b"true", b"null",
            b'"4096"', b"[4096]", b"{}"]


@pytest.mark.parametrize("value", BAD_SECONDS)
def test_hello_interval_that_is_no_positive_float_is_err_400(value: bytes) -> None:
    # Issue 15, row 4: a 400-digit integer raised OverflowError out of receive_data().
    text = tr_bad(server, hello_line(value), ErrorCode.BAD_FRAME)
    assert text in ("HELLO heartbeat_interval must be a positive number", "bad JSON in HELLO")  # NaN: not JSON


@pytest.mark.parametrize("key", [b"heartbeat_interval", b"heartbeat_timeout"])
@pytest.mark.parametrize("value", BAD_SECONDS)
def test_info_seconds_that_are_no_positive_float_are_a_bad_frame(key: bytes, value: bytes) -> None:
    text = tr_bad(client, info_line(key, value), ErrorCode.BAD_FRAME)
    assert text in (f"INFO {key.decode()} must be a positive number", "bad JSON in INFO")


@pytest.mark.parametrize("key", [b"max_line", b"max_payload", b"proto"])
@pytest.mark.parametrize("value", BAD_INTS)
def test_info_integers_out_of_range_or_not_integers_are_a_bad_frame(key: bytes, value: bytes) -> None:
    assert tr_bad(client, info_line(key, value), ErrorCode.BAD_FRAME).startswith(f"INFO {key.decode()} must be")


@pytest.mark.parametrize("key", [b"heartbeat_interval", b"heartbeat_timeout"])
@pytest.mark.parametrize("value", BAD_SECONDS)
def test_ok_seconds_that_are_no_positive_float_are_a_bad_frame(key: bytes, value: bytes) -> None:
    text = tr_bad(client_waiting_ok, ok_line(key, value), ErrorCode.BAD_FRAME)
    assert text in (f"OK {key.decode()} must be a positive number", "bad JSON in OK")


@pytest.mark.parametrize("value", [v for v in BAD_INTS if v != b"0"])
def test_ok_acked_out_of_range_or_not_an_integer_is_a_bad_frame(value: bytes) -> None:
    assert tr_bad(client_waiting_ok, ok_line(b"acked", value), ErrorCode.BAD_FRAME) == \
        "OK acked must be an integer from 0 to 2^63-1"


def test_big_but_finite_numbers_are_floats_and_integers_up_to_2_63_pass() -> None:
    # A 300-digit integer is a float (1e300): the server clamps it like any other interval.
    c = tr(server, hello_line(b"1" + b"0" * 300), [Hello(id="a", heartbeat_interval=1e300)])
    assert type(c.hello.heartbeat_interval) is float  # type: ignore[union-attr]
    tr(server, hello_line(b"5e-324"), [Hello(id="a", heartbeat_interval=5e-324)])
    c = tr(server, hello_line(b"5"), [Hello(id="a", heartbeat_interval=5.0)])
    assert type(c.hello.heartbeat_interval) is float  # type: ignore[union-attr]
    top = (1 << 63) - 1
    tr(client_waiting_ok, ok_line(b"acked", b"%d" % top),
       [Ok(id="a", heartbeat_interval=5.0, heartbeat_timeout=10.0, acked=top)])
    c = client()
    [info] = c.receive_data(b'INFO {"max_line":%d,"heartbeat_timeout":1e300}\n' % top)
    assert isinstance(info, Info) and info.max_line == c.max_line == top and info.heartbeat_timeout == 1e300


def test_an_integer_past_ints_digit_limit_is_bad_json() -> None:
    c = client()
    c.receive_data(info_line(b"max_line", b"9" * 5000))
    assert c.error is not None and c.error.text == "bad JSON in INFO"


def test_a_token_with_a_lone_surrogate_escape_is_a_token_for_the_guard_to_refuse() -> None:
    # Valid JSON, a string no UTF-8 can carry: not a bad frame, but a token that matches nothing
    # (the server answers ERR 401 and audits it: issue 15, row 3; tests/server/test_hardening.py).
    want = Hello.received(id="a", session=None, token="\ud800", heartbeat_interval=None)
    tr(server, b'HELLO {"id":"a","token":"\\ud800"}\n', [want])
    with pytest.raises(ValueError):
        Hello(id="a", token="\ud800")  # a program cannot send one: no UTF-8 for it


@pytest.mark.parametrize("data", [
    b'HELLO {"id":"a","token":"\xed\xa0\x80"}\n',  # a surrogate encoded as UTF-8: not UTF-8
    b'HELLO {"id":"a","token":"\xff"}\n',
    b"HELLO " + '{"id":"a"}'.encode("utf-16-le") + b"\n",  # json.loads(bytes) would take UTF-16
    b"HELLO " + '{"id":"a"}'.encode("utf-8-sig") + b"\n",
    b'HELLO {"id":"a","session":5}\n',
    b'HELLO {"id":"a","token":["t"]}\n',
    b'HELLO {"id":5}\n',
    b'HELLO {"id":["a"]}\n',
])
def test_hello_strings_must_be_strings_of_utf8(data: bytes) -> None:
    tr_bad(server, data, ErrorCode.BAD_FRAME)


@pytest.mark.parametrize("data", [
    b'INFO {"server_id":"\\udfff"}\n',
    b'INFO {"version":7}\n',
    b'INFO {"auth_required":1}\n',
    b'INFO {"durable":"yes"}\n',
    b'OK {"id":"a:b","heartbeat_interval":1,"heartbeat_timeout":2}\n',
    b'OK {"id":"a","heartbeat_interval":1}\n',
])
def test_info_and_ok_fields_of_the_wrong_type_are_bad_frames(data: bytes) -> None:
    tr_bad(client_waiting_ok if data.startswith(b"OK") else client, data, ErrorCode.BAD_FRAME)


def test_events_refuse_numbers_no_float_can_hold() -> None:
    huge = 10 ** 400
    for make in (lambda: Hello(id="a", heartbeat_interval=huge),
                 lambda: Ok(id="a", heartbeat_interval=huge, heartbeat_timeout=1),
                 lambda: Info(server_id="s", version="1", heartbeat_interval=1, heartbeat_timeout=huge,
                              auth_required=False, durable=False, max_line=1, max_payload=1),
                 lambda: Info(server_id="s", version="1", heartbeat_interval=1, heartbeat_timeout=1,
                              auth_required=False, durable=False, max_line=huge, max_payload=1),
                 lambda: Hello(id="a", token="\ud800"),
                 lambda: Err(code=400, text="\udc80")):
        with pytest.raises(ValueError):
            make()
    assert as_float(huge) is None and as_float(10 ** 300) == 1e300 and as_float(True) is None
    assert as_float(float("inf")) is None and as_float(2) == 2.0 and as_float("2") is None
    assert as_int(huge, 0, 1 << 63) is None and as_int(4096.0, 0, 1 << 63) is None and as_int(False, 0, 2) is None
    assert as_int(7, 0, 8) == 7 and as_int(8, 0, 8) is None


# ------------------------------------------------------------------------------ construction


def test_auto_pong_is_a_keyword_and_still_an_attribute() -> None:
    c = Connection(Role.SERVER, auto_pong=False)
    c.send(INFO)
    c.data_to_send()
    assert c.auto_pong is False
    assert c.receive_data(b"PING a\n") == [Ping(ctx="a")]
    assert c.data_to_send() == b""  # the caller answers the PINGs it allows
    c.auto_pong = True  # older callers set it after construction: still honoured
    c.receive_data(b"PING b\n")
    assert c.data_to_send() == b"PONG b\n"


def test_msg_unchecked_is_a_plain_msg() -> None:
    m = Msg.unchecked(b"abc", 7)
    assert m == Msg(payload=b"abc", seq=7) and hash(m) == hash(Msg(payload=b"abc", seq=7))
    assert Msg.unchecked(b"", None) == Msg(payload=b"")


def _session_server(acked: int = 0) -> Connection:
    c = server()
    hello_ok(c, acked=acked)
    return c


@pytest.mark.parametrize("data", [
    b"MSG 1 1\na\nMSG 2 2\nbb\nMSG 0 3\n\n",          # the next seqs, plain: the fast path
    b"MSG 1 1\r\na\r\nMSG 2 2\nbb\r\n",               # with CR
])
def test_numbered_msgs_in_order_take_the_fast_path_and_keep_their_seqs(data: bytes) -> None:
    want = [m for m in [Msg(payload=b"a", seq=1), Msg(payload=b"bb", seq=2), Msg(payload=b"", seq=3)]
            if b"MSG %d %d" % (len(m.payload), m.seq) in data]
    tr(_session_server, data, want)


@pytest.mark.parametrize(("data", "code"), [
    (b"MSG 1 2\nx\n", ErrorCode.BAD_FRAME),           # skips ahead of 1
    (b"MSG 1 01\nx\n", ErrorCode.BAD_FRAME),          # a leading zero
    (b"MSG 01 1\nx\n", ErrorCode.BAD_FRAME),
    (b"MSG 1 9223372036854775808\nx\n", ErrorCode.BAD_FRAME),  # 2^63
    (b"MSG 2000000 1\n", ErrorCode.TOO_LARGE),
])
def test_numbered_msgs_off_the_fast_path_are_judged_as_before(data: bytes, code: ErrorCode) -> None:
    tr_bad(_session_server, data, code)


def test_a_duplicate_is_returned_and_numbering_goes_on() -> None:
    c = _session_server(acked=5)
    evs = c.receive_data(b"MSG 1 3\nx\nMSG 1 6\ny\nMSG 1 7\nz\n")
    assert [m.seq for m in evs if isinstance(m, Msg)] == [3, 6, 7]


def test_unnumbered_messages_nobody_wants_are_checked_and_counted_not_built() -> None:
    c = _session_server()
    c.keep_unnumbered = False
    evs = c.receive_data(b"MSG 3\nabc\nMSG 1 1\nx\nHEARTBEAT\nMSG 2\nde\n")
    assert evs == [Msg(payload=b"x", seq=1), Heartbeat()]
    assert c.discarded == 2
    # Still checked: a bad one is a bad frame, counted or not.
    assert not c.receive_data(b"MSG 2\nabc\n") and c.error is not None and c.error.code is ErrorCode.BAD_FRAME


def test_ack_is_the_same_frame_as_sending_an_ack_event() -> None:
    a, b = _session_server(), _session_server()
    a.ack(7)
    b.send(Ack(seq=7))
    assert a.data_to_send() == b.data_to_send() == b"ACK 7\n"
    with pytest.raises(ValueError):
        client().ack(1)  # a client never acknowledges
