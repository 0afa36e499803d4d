"""The load generator itself, on small runs: its verdicts must be right, not fast.

Real sockets on 127.0.0.1, a real server (in-process, or spawned by `tcpulse bench --spawn`).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from typing import Any

import pytest

from tcpulse.bench.load import Kind, _Conn, client_frames, hold, ingest, proc_sample, source_addresses
from tcpulse.protocol.connection import Connection, Role
from tcpulse.protocol.events import Heartbeat, Hello, Info, Msg, Ok
from tcpulse.server.events import MessageReceived
from tests.conftest import MS


async def test_hold_times_out_the_silent_and_only_them(start_server) -> None:  # type: ignore[no-untyped-def]
    interval = 100 * MS
    srv = await start_server(heartbeat_interval=interval, heartbeat_timeout=2 * interval,
                             min_heartbeat_interval=interval / 2)
    res = await hold("127.0.0.1", srv.port, 50, interval, 5, settle=3 * interval, measure=2 * interval,
                     grace=4 * interval)
    assert res.connected == 50
    assert res.silent == 5
    assert res.timed_out == 5 and res.missed == 0
    assert res.false_timeouts == 0 and res.other_closes == 0
    assert res.timeout == 2 * interval
    # Never before the deadline (the server judges from when it received the last frame, which is
    # after we sent it); and told within the wait.
    assert res.early == 0
    assert res.lateness_ms["min"] >= -1.0
    assert res.lateness_ms["max"] < (2 * interval + 4 * interval) * 1000
    assert srv.totals["timeouts"] == 5


async def test_hold_counts_false_timeouts_when_clients_beat_too_slowly(start_server) -> None:  # type: ignore[no-untyped-def]
    # The server insists on a shorter interval than the clients keep (it clamps their HELLO):
    # beating ones are timed out, and the tool must say so.
    interval = 100 * MS
    srv = await start_server(heartbeat_interval=interval / 2, heartbeat_timeout=interval,
                             min_heartbeat_interval=interval / 4, max_heartbeat_interval=interval / 4)
    res = await hold("127.0.0.1", srv.port, 10, interval, 0, settle=4 * interval, measure=interval,
                     grace=interval)
    assert res.false_timeouts == 10


async def test_ingest_reaches_the_barrier_with_every_message(start_server) -> None:  # type: ignore[no-untyped-def]
    srv = await start_server()
    received: list[int | None] = []
    srv.subscribe(lambda ev: received.append(ev.seq) if isinstance(ev, MessageReceived) else None)
    # The barrier is passed only once the server has handled every message: counted at the moment
    # ingest() returns, before the server can read anything more.
    res = await ingest("127.0.0.1", srv.port, 4, 3000, 64)
    assert res.connected == 4 and res.rate > 0
    assert len(received) == 4 * 3000
    received.clear()
    # With --seq, the barrier is the ACK of each client's last message, not the first ACK that
    # arrives while it still sends (the server acknowledges after every read).
    res = await ingest("127.0.0.1", srv.port, 3, 20000, 10, seq=True)
    assert res.connected == 3
    assert len(received) == 3 * 20000
    assert received.count(20000) == 3
    await _settle()
    assert srv.totals["messages"] >= 4 * 3000 + 3 * 20000


INFO = (b'INFO {"proto":1,"server_id":"s","version":"1","heartbeat_interval":5.0,"heartbeat_timeout":10.0,'
        b'"auth_required":false,"durable":false,"max_line":4096,"max_payload":1048576}\n')


class _Wire(asyncio.Transport):
    """Collects what a simulated client writes."""

    def __init__(self) -> None:
        super().__init__()
        self.out = bytearray()
        self.aborted = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.out += data

    def abort(self) -> None:
        self.aborted = True

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 40000) if name == "sockname" else default


def _client(hello: Hello | None = None, kind: Kind = Kind.TCPULSE) -> tuple[_Conn, _Wire]:
    loop = asyncio.get_running_loop()
    c = _Conn(0, kind, hello, loop.create_future())
    wire = _Wire()
    c.connection_made(wire)
    return c, wire


async def test_an_ack_while_still_sending_is_not_the_barrier() -> None:
    # The server acknowledges after every read, so ACKs arrive while a --seq client still sends;
    # only the ACK of its last message ends its run (else the rate counts to the first ACK).
    loop = asyncio.get_running_loop()
    c, _wire = _client()
    c.data_received(INFO)
    c.barrier = loop.create_future()
    c.data_received(b"ACK 512\n")
    assert not c.barrier.done()
    c.ack_target = 20000  # the last message is written
    c.data_received(b"ACK 19999\n")
    assert not c.barrier.done()
    c.data_received(b"ACK 20000\n")
    assert c.barrier.done() and c.acked == 20000


async def test_the_client_speaks_through_the_protocol() -> None:
    # What the server sends is parsed by a client-role Connection, split anywhere: INFO gets the
    # HELLO (built by the protocol), OK makes it ready with the values in force, a PING is
    # answered with its ctx, BYE is recorded with its reason.
    c, wire = _client(Hello(id="bench-1", heartbeat_interval=0.5))
    stream = (INFO + b'OK {"id":"bench-1","heartbeat_interval":0.5,"heartbeat_timeout":1.0,"acked":0}\r\n'
              + b"PING abc\nMSG 3\nx\ny\nBYE heartbeat-timeout\n")
    for i in range(len(stream)):
        c.data_received(stream[i:i + 1])
    assert bytes(wire.out) == b'HELLO {"id":"bench-1","heartbeat_interval":0.5}\nPONG abc\n'
    assert c.ready.done() and c.ready.exception() is None
    assert (c.timeout, c.interval) == (1.0, 0.5)
    assert c.bye == "heartbeat-timeout" and c.bye_at > 0 and not wire.aborted


async def test_a_silent_client_does_not_answer_pings() -> None:
    c, wire = _client(Hello(id="bench-2"))
    c.data_received(INFO)  # the server answers HELLO, so OK never comes in the same read as INFO
    c.data_received(b'OK {"id":"bench-2","heartbeat_interval":5.0,"heartbeat_timeout":10.0,"acked":0}\n')
    assert c.ready.done() and c.ready.exception() is None
    wire.out.clear()
    c.silent = True
    c.data_received(b"PING\n")
    assert wire.out == b""  # a PONG would be proof of life
    c.silent = False
    c.data_received(b"PING\n")
    assert wire.out == b"PONG\n"


async def test_the_floor_server_is_read_by_the_protocol_too() -> None:
    # The floor server's INFO leaves keys out (the protocol takes their defaults) and it answers
    # no HELLO: the client is ready at INFO and sends nothing.
    c, wire = _client(Hello(id="never-sent"), kind=Kind.FLOOR)
    c.data_received(b'INFO {"proto":1,"server_id":"floor-1","version":"0.0.0-floor","heartbeat_interval":5.0,'
                    b'"heartbeat_timeout":10.0,"auth_required":false,"max_payload":1048576}\n')
    assert c.ready.done() and c.timeout == 10.0 and wire.out == b""


async def test_an_err_or_a_bad_frame_fails_the_client_in_one_line() -> None:
    c, _wire = _client(Hello(id="bench-3"))
    c.data_received(b"ERR 503 server full\n")
    assert c.error == "ERR 503 server full"
    with pytest.raises(ConnectionError, match="ERR 503 server full"):
        c.ready.result()
    c, wire = _client(Hello(id="bench-4"))
    c.data_received(INFO + b"ACK x\n")  # not a number: the protocol rejects it
    assert wire.aborted and c.error is not None and c.error.startswith("bad frame from the server: 400 ")


def test_frames_are_the_protocols() -> None:
    # Built by Connection.send(), so they parse back, with a server-role Connection, into the
    # events they came from, in every kind of batch.
    from tcpulse.bench.load import _Batches

    def parse(data: bytes, session: bool = False) -> list[Any]:
        srv = Connection(Role.SERVER)
        srv.send(Info(server_id="s", version="1", heartbeat_interval=5.0, heartbeat_timeout=10.0,
                      auth_required=False, durable=False, max_line=4096, max_payload=1 << 20))
        if session:
            evs = srv.receive_data(b'HELLO {"id":"c","session":"s"}\n')
            srv.send(Ok(id="c", heartbeat_interval=5.0, heartbeat_timeout=10.0, acked=0))
            assert evs == [Hello(id="c", session="s")]
        evs = srv.receive_data(data)
        assert srv.error is None, srv.error
        return evs

    assert parse(client_frames(Heartbeat())) == [Heartbeat()]
    plain = _Batches(Kind.TCPULSE, b"abc", 4, numbered=False, users=1)
    assert parse(plain.take(1, 4)) == [Msg(payload=b"abc")] * 4
    assert parse(plain.take(5, 3)) == [Msg(payload=b"abc")] * 3  # the last, shorter batch
    numbered = _Batches(Kind.TCPULSE, b"abc", 4, numbered=True, users=2)
    first = numbered.take(1, 4)
    assert numbered.take(1, 4) is first  # built once for both clients...
    assert numbered.shared == {}  # ...and dropped once both have it
    assert parse(first + numbered.take(5, 4) + numbered.take(9, 2), session=True) == [
        Msg(payload=b"abc", seq=s) for s in range(1, 11)]
    nats = _Batches(Kind.NATS, b"abc", 4, numbered=False, users=1)
    assert nats.take(1, 2) == b"PUB bench 3\r\nabc\r\n" * 2


async def _settle() -> None:
    for _ in range(100):
        await asyncio.sleep(0.01)


def test_source_addresses_spread_only_when_needed() -> None:
    assert source_addresses(4000) == ["127.0.0.1"]
    many = source_addresses(12000)
    assert len(many) == 3 and len(set(many)) == 3
    assert all(a.startswith("127.0.0.") for a in many)


def test_proc_sample_reads_this_process() -> None:
    s = proc_sample(os.getpid())
    assert s is not None and s.rss > 1 << 20 and s.threads >= 1
    assert proc_sample(2 ** 22 + 12345) is None


def test_bench_hold_command_with_spawn_prints_json() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "tcpulse", "bench", "hold", "--spawn", "-n", "30", "--interval", "0.2",
         "--silent", "3", "--settle", "0.4", "--measure", "0.5", "--json"],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert res["kind"] == Kind.TCPULSE.value
    assert res["connected"] == 30 and res["timed_out"] == 3 and res["false_timeouts"] == 0
    assert res["server_rss"] > 0 and res["rss_per_client"] is not None


def test_bench_errors_are_one_line() -> None:
    out = subprocess.run([sys.executable, "-m", "tcpulse", "bench", "ingest", "--port", "1", "-n", "1", "-m", "1"],
                         capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert out.returncode != 0
    assert out.stderr.startswith("tcpulse: error: cannot reach a server at 127.0.0.1:1")
    assert "Traceback" not in out.stderr


def test_bench_spawn_with_a_bad_server_arg_fails_in_one_line() -> None:
    out = subprocess.run([sys.executable, "-m", "tcpulse", "bench", "hold", "--spawn", "-n", "1",
                          "--server-arg=--detector=bogus"],
                         capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert out.returncode != 0
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert out.stderr.startswith("tcpulse: error: --spawn: the server exited with 2:")
    assert "--detector" in out.stderr and "--server-arg" in out.stderr
