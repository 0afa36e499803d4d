"""The load generator itself, on small runs: its verdicts must be right, not fast.

Real sockets on 127.0.0.1, a real server (in-process, or spawned by `tcpulse bench --spawn`).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

from tcpulse.bench.load import Kind, _Conn, hold, ingest, proc_sample, source_addresses
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


async def test_an_ack_while_still_sending_is_not_the_barrier() -> None:
    # The server acknowledges after every read, so ACKs arrive while a --seq client still sends;
    # only the ACK of its last message ends its run (else the rate counts to the first ACK).
    loop = asyncio.get_running_loop()
    c = _Conn(0, Kind.TCPULSE, b"", loop.create_future())
    c.barrier = loop.create_future()
    c.data_received(b"ACK 512\n")
    assert not c.barrier.done()
    c.ack_target = 20000  # the last message is written
    c.data_received(b"ACK 19999\n")
    assert not c.barrier.done()
    c.data_received(b"ACK 20000\n")
    assert c.barrier.done() and c.acked == 20000


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
