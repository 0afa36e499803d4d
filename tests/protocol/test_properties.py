"""Property tests of the protocol core beyond the parser basics (tests/protocol/test_connection.py):
random event sequences in both roles, encoded by one `Connection` and parsed by another with
arbitrary splits; hostile bytes in both roles with the memory held checked after every read; and
the regressions found by the coverage-guided fuzzer (fuzz/fuzz_connection.py).
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tcpulse.protocol.connection import Connection, Role
from tcpulse.protocol.events import Ack, Bye, Err, Heartbeat, Hello, Info, Msg, Ok, Ping, Pong

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
    server = Connection(Role.SERVER)
    server.auto_pong = False
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
                     b"9" * 30, b"[" * 50]),
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


def test_non_fatal_429_keeps_the_connection_open() -> None:
    c = Connection(Role.SERVER)
    c.send(_info())
    c.data_to_send()
    c.send(Err(code=429, text="too many"))
    assert c.data_to_send() == b"ERR 429 too many\n"
    assert not c.closed and c.error is None
    assert c.receive_data(b"HEARTBEAT\n") == [Heartbeat()]
