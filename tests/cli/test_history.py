"""`tcpulse history` and `tcpulse messages` over a database written by a real server."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from tcpulse.cli.history import parse_since
from tcpulse.cli.main import main
from tcpulse.server.config import ServerConfig
from tcpulse.server.events import Disconnected, TimedOut
from tcpulse.server.server import Server
from tcpulse.store.sqlite import APPLICATION_ID, SCHEMA_VERSION, SQLiteStore
from tests.conftest import MS, RawClient


async def _fill(db: Path) -> None:
    srv = Server(ServerConfig(port=0, status_every=0, heartbeat_interval=100 * MS, heartbeat_timeout=200 * MS),
                 store=SQLiteStore(str(db)))
    evs: list[Any] = []
    srv.subscribe(evs.append, messages=False)
    await srv.start()
    try:
        quiet = await RawClient.open(srv.port)
        await quiet.hello("sleepy")
        talker = await RawClient.open(srv.port)
        await talker.hello("talker", session="s1")
        await talker.send(b"MSG 5 1\nhello\nMSG 4 2\n\xff\xfe\x00\x01\nMSG 2\nhi\nBYE done\n")
        await talker.lines_until_eof()
        end = time.monotonic() + 5
        while not (any(isinstance(e, TimedOut) for e in evs)
                   and sum(isinstance(e, Disconnected) for e in evs) == 2):
            assert time.monotonic() < end
            await asyncio.sleep(0.01)
    finally:
        await srv.close(grace=1)


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("hist") / "h.db"
    asyncio.run(_fill(path))
    return path


def run(*args: str) -> Any:
    return CliRunner().invoke(main, list(args))


def test_history_json_lists_connections_and_their_ends(db: Path) -> None:
    r = run("history", "--db", str(db), "--json")
    assert r.exit_code == 0, r.output
    rows = [json.loads(ln) for ln in r.stdout.splitlines()]
    by = {row["client"]: row for row in rows}
    assert set(by) == {"sleepy", "talker"}
    assert by["sleepy"]["end_reason"] == "timeout"
    assert by["sleepy"]["timeout"]["silent_for"] >= 200 * MS and by["sleepy"]["duration"] >= 200 * MS
    assert by["talker"]["end_reason"] == "bye" and by["talker"]["detail"] == "done"
    assert by["talker"]["messages"] == 3 and by["talker"]["timeout"] is None


def test_history_filters_and_table(db: Path) -> None:
    r = run("history", "--db", str(db), "--client", "sleepy", "--json")
    assert [json.loads(ln)["client"] for ln in r.stdout.splitlines()] == ["sleepy"]
    r = run("history", "--db", str(db), "--limit", "1", "--json")
    assert len(r.stdout.splitlines()) == 1
    r = run("history", "--db", str(db), "--since", "2999-01-01", "--json")
    assert r.exit_code == 0 and r.stdout == ""
    r = run("history", "--db", str(db), "--since", "1h")
    assert r.exit_code == 0 and "sleepy" in r.stdout and "timeout" in r.stdout and "talker" in r.stdout


def test_messages_json_and_table(db: Path) -> None:
    r = run("messages", "--db", str(db), "--json")
    assert r.exit_code == 0, r.output
    rows = [json.loads(ln) for ln in r.stdout.splitlines()]
    assert [(m["client"], m["session"], m["seq"], m["size"]) for m in rows] == [
        ("talker", "s1", 1, 5), ("talker", "s1", 2, 4), ("talker", "s1", None, 2)]
    assert rows[0]["text"] == "hello" and rows[1]["base64"] == "//4AAQ==" and rows[2]["text"] == "hi"
    r = run("messages", "--db", str(db), "--client", "sleepy", "--json")
    assert r.stdout == ""
    r = run("messages", "--db", str(db))
    assert "hello" in r.stdout and "not UTF-8" in r.stdout


def test_missing_and_foreign_databases_give_one_line(tmp_path: Path) -> None:
    r = run("history", "--db", str(tmp_path / "nope.db"))
    assert r.exit_code == 1 and r.stderr.count("\n") == 1 and "does not exist" in r.stderr
    foreign = tmp_path / "foreign.db"
    con = sqlite3.connect(foreign)
    con.execute("CREATE TABLE t(x)")
    con.close()
    r = run("messages", "--db", str(foreign))
    assert r.exit_code == 1 and r.stderr.count("\n") == 1 and "not a tcpulse database" in r.stderr
    newer = tmp_path / "newer.db"
    con = sqlite3.connect(newer)
    con.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    con.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    con.close()
    r = run("history", "--db", str(newer))
    assert r.exit_code == 1 and r.stderr == (f"tcpulse: error: {newer} has schema version {SCHEMA_VERSION + 1}, newer "
                                             f"than this tcpulse understands ({SCHEMA_VERSION}): upgrade tcpulse\n")
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"\x00garbage" * 512)
    r = run("history", "--db", str(junk))
    assert r.exit_code == 1 and r.stderr.count("\n") == 1 and "not an SQLite database" in r.stderr
    assert junk.read_bytes() == b"\x00garbage" * 512  # looked at, never written


def test_reading_leaves_no_wal_files_behind(db: Path) -> None:
    # The server has stopped; `history` and `messages` read the database and, as its last
    # connection, fold the WAL back instead of leaving -wal and -shm files next to it.
    before = db.read_bytes()
    for cmd in ("history", "messages"):
        r = run(cmd, "--db", str(db), "--json")
        assert r.exit_code == 0, r.output
        assert r.stdout.strip()
        left = sorted(p.name for p in db.parent.iterdir() if p.name.startswith(db.name + "-"))
        assert left == [], left
    assert db.read_bytes() == before


def test_since_parsing() -> None:
    assert parse_since("10m", now=1000.0) == 400.0
    assert parse_since("2h", now=10000.0) == 2800.0
    assert parse_since("2025-04-10T15:30+00:00") == 1744299000.0
    with pytest.raises(Exception, match="neither a duration"):
        parse_since("yesterday")
