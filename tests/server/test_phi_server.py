"""`--detector phi` in a real server over loopback: it learns a steady client and times it out
well before the fixed backstop, shows phi in the status rows, and records it with the timeout."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from tcpulse.server.config import ServerConfig
from tcpulse.server.events import ServerEvent, TimedOut
from tcpulse.store.memory import MemoryStore
from tests.conftest import MS, RawClient


class RecordingStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.timeouts: list[dict[str, Any]] = []

    def record_timeout(self, conn_id: int, client_id: str | None, at: float, silent_for: float,
                       late_by: float, phi: float | None = None) -> None:
        self.timeouts.append({"client": client_id, "silent_for": silent_for, "phi": phi})


async def test_phi_times_out_a_steady_client_before_the_backstop(start_server) -> None:  # type: ignore[no-untyped-def]
    interval = 100 * MS
    backstop = 20 * interval
    store = RecordingStore()
    srv = await start_server(heartbeat_interval=interval, heartbeat_timeout=backstop, detector="phi",
                             phi_acceptable_pause=0.0, store=store)
    seen: list[ServerEvent] = []
    srv.subscribe(seen.append)
    c = await RawClient.open(srv.port)
    await c.hello("steady")
    for _ in range(15):
        await c.send(b"HEARTBEAT\n")
        await asyncio.sleep(interval)
    rows = srv.status_rows()
    assert rows[0]["phi"] is not None and rows[0]["phi"] < 8
    # Silent from here on.
    bye = await c.expect(b"BYE", timeout=backstop * 2)
    assert bye == b"BYE heartbeat-timeout"
    timed_out = [e for e in seen if isinstance(e, TimedOut)]
    assert len(timed_out) == 1
    ev = timed_out[0]
    # Never before 1.5 intervals (PROTOCOL.md, "Liveness"); well before the fixed backstop.
    assert 1.5 * interval <= ev.silent_for < backstop / 2
    assert ev.phi is not None and ev.phi >= 8.0 - 1e-6
    assert store.timeouts == [{"client": "steady", "silent_for": ev.silent_for, "phi": ev.phi}]
    c.close()


async def test_fixed_detector_shows_no_phi(start_server) -> None:  # type: ignore[no-untyped-def]
    srv = await start_server(heartbeat_interval=100 * MS, heartbeat_timeout=200 * MS)
    seen: list[ServerEvent] = []
    srv.subscribe(seen.append)
    c = await RawClient.open(srv.port)
    await c.hello("plain")
    assert srv.status_rows()[0]["phi"] is None
    assert await c.expect(b"BYE", timeout=2) == b"BYE heartbeat-timeout"
    assert [e.phi for e in seen if isinstance(e, TimedOut)] == [None]
    c.close()


def test_detector_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="detector must be fixed or phi"):
        ServerConfig(detector="magic").validate()
    with pytest.raises(ValueError, match="--phi-threshold"):
        ServerConfig(detector="phi", phi_threshold=-1).validate()
    ServerConfig(detector="phi").validate()


def test_serve_rejects_a_bad_phi_setting_in_one_line(server_process) -> None:  # type: ignore[no-untyped-def]
    import subprocess

    from tests.conftest import tcpulse_cmd
    out = subprocess.run(tcpulse_cmd("serve", "--port", "0", "--db", "none", "--detector", "phi",
                                     "--phi-window", "1"),
                         capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert out.returncode == 2
    assert "--phi-window" in out.stderr and "Traceback" not in out.stderr


def test_serve_logs_phi_with_the_timeout(server_process) -> None:  # type: ignore[no-untyped-def]
    import socket
    p = server_process("--db", "none", "--detector", "phi", "--heartbeat-interval", "0.1",
                       "--heartbeat-timeout", "2", "--phi-acceptable-pause", "0")
    with socket.create_connection(("127.0.0.1", p.port)) as s:
        s.sendall(b'HELLO {"id":"x1"}\n')
        ev = p.wait_event("timeout", timeout=10)
    assert ev["client"] == "x1"
    assert ev["phi"] >= 8.0 - 1e-3
    assert 0.15 <= ev["silent_for"] < 2.0
    json.dumps(ev)


def test_status_table_shows_phi_only_under_phi() -> None:
    import io

    from tcpulse.cli.console import ConsoleLog
    from tcpulse.server.events import Status
    row = {"client": "a", "addr": "127.0.0.1:1", "connected_at": 0.0, "last_heard_ago": 1.2, "heartbeats": 3,
           "messages": 0, "state": "suspect", "rtt": None}
    for rich in (False, True):
        out = io.StringIO()
        ConsoleLog(out, rich_tables=rich)(Status([{**row, "phi": 4.26}]))
        assert "phi" in out.getvalue() and "4.3" in out.getvalue(), out.getvalue()
        out = io.StringIO()
        ConsoleLog(out, rich_tables=rich)(Status([{**row, "phi": None}]))
        assert "phi" not in out.getvalue()
    out = io.StringIO()
    ConsoleLog(out, json_format=True)(Status([{**row, "phi": 4.26}]))
    assert json.loads(out.getvalue())["clients"][0]["phi"] == 4.26


async def test_sqlite_store_records_phi_with_the_timeout(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import sqlite3

    from tcpulse.server.server import Server
    from tcpulse.store.sqlite import SQLiteStore
    db = tmp_path / "phi.db"
    srv = Server(ServerConfig(port=0, status_every=0, heartbeat_interval=100 * MS, heartbeat_timeout=2.0,
                              detector="phi", phi_acceptable_pause=0.0), store=SQLiteStore(str(db)))
    await srv.start()
    try:
        c = await RawClient.open(srv.port)
        await c.hello("x2")
        assert await c.expect(b"BYE", timeout=5) == b"BYE heartbeat-timeout"
        c.close()
    finally:
        await srv.close(grace=1)
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT client_id, silent_for, phi FROM timeouts").fetchall()
    assert len(rows) == 1
    client, silent_for, phi = rows[0]
    assert client == "x2" and silent_for < 2.0 and phi >= 8.0 - 1e-3
