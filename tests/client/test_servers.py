"""A client with several servers (`Client(servers=[...])`, `tcpulse connect HOST:PORT ...`): the
addresses it reads, the next server when one is down, and the session going on there."""

from __future__ import annotations

import subprocess
from typing import Any

import pytest

from tcpulse.client.client import Client, parse_server
from tcpulse.policy.backoff import Backoff
from tests.cluster.parts import free_port
from tests.conftest import tcpulse_cmd


def test_parse_server() -> None:
    assert parse_server("10.0.0.1") == ("10.0.0.1", 12345)
    assert parse_server("10.0.0.1:99") == ("10.0.0.1", 99)
    assert parse_server("host.example:7", 1) == ("host.example", 7)
    assert parse_server("[::1]:5") == ("::1", 5)
    assert parse_server("[::1]", 8) == ("::1", 8)
    assert parse_server("::1", 8) == ("::1", 8)  # a bare IPv6 address has no port
    for bad in ("host:x", "host:0", "[::1", ":5", "[::1]x"):
        with pytest.raises(ValueError):
            parse_server(bad)


async def test_the_next_server_when_one_is_down(start_server: Any) -> None:
    down = free_port()
    a = await start_server()
    b = await start_server()
    cl = Client(servers=[f"127.0.0.1:{down}", ("127.0.0.1", a.port), f"127.0.0.1:{b.port}"], id="roamer",
                backoff=Backoff(base=0.01, cap=0.05), heartbeat_interval=0.2)
    await cl.start()  # the first is refused: the second answers
    assert (cl.host, cl.port) == ("127.0.0.1", a.port)
    await cl.send("one", wait_ack=True)
    await a.close(grace=0.2)  # lost: the next attempts go round the list, to b
    await cl.send("two", wait_ack=True)
    assert (cl.host, cl.port) == ("127.0.0.1", b.port)
    assert b.client("roamer") is not None
    await cl.close()


def test_connect_takes_several_servers(server_process: Any) -> None:
    srv = server_process()
    down = free_port()
    r = subprocess.run(tcpulse_cmd("connect", f"127.0.0.1:{down}", f"127.0.0.1:{srv.port}", "--id", "cli-multi",
                                   "--no-reconnect"), input=b"hello\n", capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert f"127.0.0.1:{srv.port}".encode() in r.stdout
    r = subprocess.run(tcpulse_cmd("connect", "host:x"), capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "bad server address" in r.stderr and r.stderr.count("\n") == 1, r.stderr
