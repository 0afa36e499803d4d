"""Every frame before a BYE or an ERR counts (PROTOCOL.md, "Errors"): the server handles the
frames that came before in order, and writes the ACK it owes for them before it closes, with
every store."""

from __future__ import annotations

import asyncio
import json
import socket
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from tcpulse.store.memory import MemoryStore
from tcpulse.store.sqlite import SQLiteStore
from tests.conftest import RawClient


def _store(kind: str, tmp_path: Path) -> Any:
    return SQLiteStore(str(tmp_path / "t.db")) if kind == "sqlite" else MemoryStore()


def _one_write(tail: bytes) -> bytes:
    hello = b"HELLO " + json.dumps({"id": "bye-1", "session": "s1"}).encode() + b"\n"
    return hello + b"MSG 1 1\na\nMSG 1 2\nb\nMSG 1 3\nc\n" + tail


async def _all_until_eof(c: RawClient) -> list[bytes]:
    await c.info()
    return [ln for ln in await c.lines_until_eof() if not ln.startswith(b"PING ")]


@pytest.mark.parametrize("kind", ["sqlite", "none"])
async def test_acks_before_the_close_after_bye(start_server: Any, tmp_path: Path, kind: str) -> None:
    srv = await start_server(store=_store(kind, tmp_path))
    c = await RawClient.open(srv.port)
    await c.send(_one_write(b"PING x\nBYE done\n"))
    got = await _all_until_eof(c)
    assert got[0].startswith(b"OK ")
    assert b"PONG x" in got
    assert got[-1] == b"ACK 3", got
    c.close()
    if kind == "sqlite":
        await srv.close()
        con = sqlite3.connect(tmp_path / "t.db")
        assert [r[0] for r in con.execute("SELECT seq FROM messages ORDER BY seq")] == [1, 2, 3]
        con.close()


@pytest.mark.parametrize("kind", ["sqlite", "none"])
async def test_ack_goes_out_before_the_err(start_server: Any, tmp_path: Path, kind: str) -> None:
    srv = await start_server(store=_store(kind, tmp_path))
    c = await RawClient.open(srv.port)
    await c.send(_one_write(b"NOPE\n"))
    got = await _all_until_eof(c)
    assert got[0].startswith(b"OK ")
    assert got[1:] == [b"ACK 3", b"ERR 400 unknown verb"], got
    c.close()


async def test_a_client_that_closes_its_side_after_bye_still_gets_its_ack(start_server: Any,
                                                                          tmp_path: Path) -> None:
    srv = await start_server(store=SQLiteStore(str(tmp_path / "t.db")))
    c = await RawClient.open(srv.port)
    await c.send(_one_write(b"BYE done\n"))
    sock = c.writer.get_extra_info("socket")
    sock.shutdown(socket.SHUT_WR)  # as `nc -N` does at the end of its input
    got = await _all_until_eof(c)
    assert got[-1] == b"ACK 3", got
    c.close()
    await asyncio.sleep(0)
