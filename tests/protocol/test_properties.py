"""Property tests of the protocol core beyond the parser basics (tests/protocol/test_connection.py):
random event sequences in both roles, encoded by one `Connection` and parsed by another with
arbitrary splits; hostile bytes in both roles with the memory held checked after every read;
hostile JSON numbers (and other junk) in every field of INFO, HELLO and OK (issue 15); and the
regressions found by the coverage-guided fuzzer (fuzz/fuzz_connection.py).
"""

from __future__ import annotations

import json
import math
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tcpulse.protocol.connection import Connection, ConnectionState, Role
from tcpulse.protocol.errors import ErrorCode, RemoteProtocolError
from tcpulse.protocol.events import INT_LIMIT, Ack, Bye, Err, Heartbeat, Hello, Info, Msg, Ok, Ping, Pong

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

ctx = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=32)
reason = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x2FF, exclude_characters="\x7f"),
                 min_size=1, max_size=40)
payload = st.binary(max_size=300)
ids = st.from_regex(r"[A-Za-z0-9._@-]{1,20}", fullmatch=True)


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, last = [], 0
    for p in points:
        out.append(data[last:p])
        last = p
    out.append(data[last:])
    return out


def _info(max_line: int = 4096, max_payload: int = 1 << 20) -> Info:
    return Info(server_id="s", version="1", heartbeat_interval=1.0, heartbeat_timeout=2.0, auth_required=False,
                durable=False, max_line=max_line, max_payload=max_payload)


# ------------------------------------------------------------------------------ client -> server

client_frame = st.one_of(
    st.just(Heartbeat()),
    st.builds(lambda c: Ping(ctx=c), st.none() | ctx),
    st.builds(lambda c: Pong(ctx=c), st.none() | ctx),
    st.builds(lambda p: Msg(payload=p), payload),
    st.builds(lambda p: ("numbered", p), payload),  # numbered in order below
)


@SETTINGS
@given(hello=st.none() | st.builds(lambda i, s: Hello(id=i, session=s), ids, st.none() | st.just("sess-1")),
       frames=st.lists(client_frame, max_size=25), bye=st.none() | reason,
       cuts=st.lists(st.integers(0, 1 << 16), max_size=12))
def test_client_sequences_parse_back_identically(hello: Hello | None, frames: list[Any], bye: str | None,
                                                 cuts: list[int]) -> None:
    client = Connection(Role.CLIENT)
    client.receive_data(b"INFO " + b'{"max_line":4096,"max_payload":1048576}\n')
    sent: list[Any] = []
    if hello is not None:
        client.send(hello)
        sent.append(hello)
    seq = 0
    numbered = hello is not None and hello.session is not None
    for f in frames:
        if isinstance(f, tuple):
            if not numbered:
                f = Msg(payload=f[1])
            else:
                seq += 1
                f = Msg(payload=f[1], seq=seq)
        client.send(f)
        sent.append(f)
    if bye is not None:
        client.send(Bye(reason=bye))
        sent.append(Bye(reason=bye))
    wire = client.data_to_send()

    server = Connection(Role.SERVER)
    server.send(_info())
    server.data_to_send()
    got: list[Any] = []
    for chunk in _split(wire, cuts):
        got += server.receive_data(chunk)
        while server.paused:  # answer HELLO as a server does, then parse what was held back
            server.send(Ok(id=server.hello.id if server.hello else "x", heartbeat_interval=1.0,
                           heartbeat_timeout=2.0, acked=0))
            got += server.receive_data(b"")
    assert server.error is None, server.error
    assert got == sent
    # Every PING was answered with its own ctx, in order.
    pongs = [ln for ln in server.data_to_send().split(b"\n") if ln.startswith(b"PONG")]
    assert pongs == [b"PONG" + (b" " + p.ctx.encode() if p.ctx else b"") for p in sent if isinstance(p, Ping)]


# ------------------------------------------------------------------------------ server -> client

server_frame = st.one_of(
    st.builds(lambda c: Ping(ctx=c), st.none() | ctx),
    st.builds(lambda c: Pong(ctx=c), st.none() | ctx),
    st.builds(lambda p: Msg(payload=p), payload),
    st.builds(lambda n: Ack(seq=n), st.integers(1, (1 << 63) - 1)),
    st.builds(lambda t: Err(code=429, text=t), reason),
)


@SETTINGS
@given(frames=st.lists(server_frame, max_size=25), end=st.sampled_from(["none", "bye", "err"]),
       cuts=st.lists(st.integers(0, 1 << 16), max_size=12))
def test_server_sequences_parse_back_identically(frames: list[Any], end: str, cuts: list[int]) -> None:
    server = Connection(Role.SERVER, auto_pong=False)
    server.send(_info())
    server.receive_data(b'HELLO {"id":"c1"}\n')
    ok = Ok(id="c1", heartbeat_interval=1.0, heartbeat_timeout=2.0, acked=0)
    server.send(ok)
    sent: list[Any] = [_info(), ok, *frames]
    for f in frames:
        server.send(f)
    if end == "bye":
        server.send(Bye(reason="shutdown"))
        sent.append(Bye(reason="shutdown"))
    elif end == "err":
        server.send(Err(code=503, text="full"))
        sent.append(Err(code=503, text="full"))
    wire = server.data_to_send()

    client = Connection(Role.CLIENT)
    client.send(Hello(id="c1"))
    client.data_to_send()
    got: list[Any] = []
    for chunk in _split(wire, cuts):
        got += client.receive_data(chunk)
    assert client.error is None, client.error
    assert got == sent


# ------------------------------------------------------------------------------ hostile bytes, memory bounded

noise = st.one_of(
    st.binary(max_size=400),
    st.sampled_from([b"MSG ", b"MSG 5 1\n", b"HEARTBEAT\n", b"PING x\n", b"\r\n", b"\n", b"HELLO {", b"}\n",
                     b"BYE\n", b"ACK 1\n", b"INFO {}\n", b"OK {}\n", b"ERR 429 x\n", b"\x00", b"\xff",
                     b"9" * 30, b"9" * 400, b"[" * 50, b'HELLO {"id":"c","heartbeat_interval":', b"1e400",
                     b'OK {"id":"c","heartbeat_interval":1,"heartbeat_timeout":', b'INFO {"max_line":']),
)


@SETTINGS
@given(role=st.sampled_from([Role.SERVER, Role.CLIENT]), parts=st.lists(noise, max_size=30),
       max_line=st.integers(64, 256), max_payload=st.integers(1, 512), auth=st.booleans())
def test_any_bytes_in_either_role_end_in_events_or_an_error_with_bounded_memory(
        role: Role, parts: list[bytes], max_line: int, max_payload: int, auth: bool) -> None:
    conn = Connection(role, max_line=max_line, max_payload=max_payload)
    if role is Role.SERVER:
        conn.send(Info(server_id="s", version="1", heartbeat_interval=1.0, heartbeat_timeout=2.0,
                       auth_required=auth, durable=False, max_line=max_line, max_payload=max_payload))
    else:
        conn.send(Hello(id="c", session="s"))
    conn.data_to_send()
    for part in parts:
        before_error = conn.error
        evs = conn.receive_data(part)
        if before_error is not None:
            assert evs == []  # nothing is parsed after a protocol error
        while conn.paused and conn.error is None:
            conn.send(Ok(id="c", heartbeat_interval=1.0, heartbeat_timeout=2.0, acked=0))
            conn.receive_data(b"")
        out = conn.data_to_send()
        # What the connection holds between reads never exceeds the caps (PROTOCOL.md, "Framing").
        assert conn.buffered <= max(conn.max_line + 1, conn.max_payload)
        if conn.error is not None and role is Role.SERVER and out:
            assert out.rstrip(b"\n").rsplit(b"\n", 1)[-1].startswith(b"ERR ")
    conn.receive_eof()
    assert conn.closed


# ------------------------------------------------------------------------------ regressions found by the fuzzer


def _feed(chunks: list[bytes]) -> tuple[list[Any], Any]:
    c = Connection(Role.SERVER)
    c.send(_info())
    events: list[Any] = []
    for ch in chunks:
        events += c.receive_data(ch)
    return events, None if c.error is None else (c.error.code, c.error.text)


def test_payload_cr_at_the_end_of_a_read_is_not_a_bad_frame() -> None:
    # fuzz/fuzz_connection.py found it: "MSG 0\r\n\r" then "\n" in the next read was a 400,
    # although the same bytes in one read are a good frame.
    data = b"MSG 1\n\x00\nMSG 0\r\n\r\nMSG 2\nab\r\n"
    whole = _feed([data])
    assert whole == ([Msg(payload=b"\x00"), Msg(payload=b""), Msg(payload=b"ab")], None)
    for cut in range(len(data) + 1):
        assert _feed([data[:cut], data[cut:]]) == whole, cut
    # A CR followed by anything but LF is still a bad frame, however split.
    bad = b"MSG 2\nab\rX"
    for cut in range(len(bad) + 1):
        assert _feed([bad[:cut], bad[cut:]])[1] == (400, "payload not followed by LF")


def test_caps_from_info_hold_for_the_rest_of_the_same_read() -> None:
    # fuzz/fuzz_connection.py found it: a client judged a line behind INFO, in the same read, by
    # the 64 KiB cap it holds before INFO (a bad JSON 400) instead of INFO's max_line (413).
    data = b'INFO {"max_line":128,"max_payload":16}\nPING ' + b"a" * 200 + b"\n"
    results = set()
    for cut in (len(data), 40, 45):
        c = Connection(Role.CLIENT)
        c.receive_data(data[:cut])
        c.receive_data(data[cut:])
        assert c.error is not None
        results.add((c.error.code, c.error.text))
    assert results == {(ErrorCode.TOO_LARGE, "control line too long")}
    c = Connection(Role.CLIENT)
    c.receive_data(b'INFO {"max_line":128,"max_payload":16}\nMSG 17\n')
    assert c.error is not None and c.error.code == ErrorCode.TOO_LARGE


def test_non_fatal_429_keeps_the_connection_open() -> None:
    c = Connection(Role.SERVER)
    c.send(_info())
    c.data_to_send()
    c.send(Err(code=429, text="too many"))
    assert c.data_to_send() == b"ERR 429 too many\n"
    assert not c.closed and c.error is None
    assert c.receive_data(b"HEARTBEAT\n") == [Heartbeat()]


# ------------------------------------------------------------------------------ hostile JSON numbers (issue 15)

#: JSON number literals a peer may send, valid or not: integers of any size (a float holds up to
#: ~1.8e308: issue 15 was a 310-digit one), exponents past a float's range, negative zero, and
#: everything that is not a number at all.
number_literal = st.one_of(
    st.integers(min_value=-(10 ** 420), max_value=10 ** 420).map(str),
    st.integers(min_value=300, max_value=1000).map(lambda n: "9" * n),
    st.integers(min_value=0, max_value=64).map(lambda k: str(2 ** k)),
    st.integers(min_value=0, max_value=64).map(lambda k: str(2 ** k - 1)),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.integers(min_value=-999, max_value=999).map(lambda e: f"1e{e}"),
    st.sampled_from(["-0", "-0.0", "0", "1.0", "4096.0", "5e-324", "1e308", "1.8e308", "NaN", "Infinity",
                     "-Infinity", "true", "false", "null"]),
)
json_junk = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(min_value=-(10 ** 400), max_value=10 ** 400),
              st.floats(), st.text(max_size=8)),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=8,
).map(lambda v: json.dumps(v))
field_value = number_literal | json_junk

SECONDS = {"heartbeat_interval", "heartbeat_timeout"}
INTS = {"max_line": 1, "max_payload": 1, "proto": 1, "acked": 0}  # key: lowest valid value
FRAMES: dict[str, tuple[str, dict[str, str]]] = {
    # verb: (the role that reads it, a valid object as JSON literals)
    "HELLO": ("server", {"id": '"c"', "session": '"s"', "heartbeat_interval": "1"}),
    "INFO": ("client", {"proto": "1", "server_id": '"s"', "version": '"1"', "heartbeat_interval": "1.0",
                        "heartbeat_timeout": "2.0", "auth_required": "false", "durable": "false",
                        "max_line": "4096", "max_payload": "1048576"}),
    "OK": ("client", {"id": '"c"', "heartbeat_interval": "1.0", "heartbeat_timeout": "2.0", "acked": "0"}),
}


def _sane(ev: Any) -> None:
    # Every number of an event read off the wire is a finite positive float or an integer of
    # the protocol's range: nothing that can overflow later in the server or the client.
    for key in SECONDS & set(type(ev).__slots__):
        v = getattr(ev, key)
        if v is None:
            continue
        assert type(v) is float and math.isfinite(v) and v > 0, (key, v)
    for key, lo in INTS.items():
        if key in type(ev).__slots__:
            v = getattr(ev, key)
            assert type(v) is int and lo <= v < INT_LIMIT, (key, v)


@SETTINGS
@given(verb=st.sampled_from(sorted(FRAMES)), data=st.data(), value=field_value,
       cuts=st.lists(st.integers(0, 1 << 12), max_size=6))
def test_any_json_value_in_any_field_is_an_event_or_a_bad_frame(verb: str, data: st.DataObject, value: str,
                                                                  cuts: list[int]) -> None:
    reader, fields = FRAMES[verb]
    key = data.draw(st.sampled_from(sorted(fields)))
    obj = {**fields, key: value}
    line = f"{verb} {{{','.join(f'{json.dumps(k)}:{v}' for k, v in obj.items())}}}\n".encode()
    results = []
    for chunks in ([line], _split(line, cuts)):
        if reader == "server":
            c = Connection(Role.SERVER)
            c.send(_info())
            c.data_to_send()
        else:
            c = Connection(Role.CLIENT)
            if verb == "OK":
                c.receive_data(b"INFO {}\n")
                c.send(Hello(id="c"))
                c.data_to_send()
        evs: list[Any] = []
        for ch in chunks:
            evs += c.receive_data(ch)  # never raises, whatever the value
        out = c.data_to_send()
        if c.error is None:
            [ev] = evs
            _sane(ev)
            assert out == b""
        else:
            assert evs == [] and isinstance(c.error, RemoteProtocolError)
            assert c.error.code == ErrorCode.BAD_FRAME and c.their_state is ConnectionState.ERROR
            assert out == (b"ERR 400 " + c.error.text.encode() + b"\n" if reader == "server" else b"")
        results.append((evs, None if c.error is None else c.error.text))
    assert results[0] == results[1]
