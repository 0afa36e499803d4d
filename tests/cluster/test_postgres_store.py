"""The shared store on a real PostgreSQL: ACK after commit, exactly-once per (id, session, seq)
enforced by the database when two servers store the same session, `acked` right on another
server, backpressure, ERR 503 while PostgreSQL is down and recovery once it is back, and
`tcpulse history` / `tcpulse messages` reading it."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from typing import Any

import pytest

from tcpulse.store.factory import open_store
from tcpulse.store.postgres import PostgresStore
from tests.cluster.parts import Postgres
from tests.conftest import RawClient

pytestmark = pytest.mark.slow


def msgs(first: int, last: int, size: int = 4) -> bytes:
    return b"".join(b"MSG %d %d\n%s\n" % (size, i, (b"m%03d" % (i % 1000)).ljust(size, b"."))
                    for i in range(first, last + 1))


def stored(pg: Postgres, client: str, session: str) -> list[int]:
    out = pg.psql("SELECT m.seq FROM messages m JOIN sessions s ON s.id = m.session_id "
                  f"WHERE s.client_id = '{client}' AND s.session = '{session}' ORDER BY m.seq")
    return [int(x) for x in out.split()] if out else []


async def ack_upto(c: RawClient, seq: int, timeout: float = 10.0) -> int:
    got = 0
    while got < seq:
        got = int((await c.expect(b"ACK", timeout))[4:])
    return got


async def test_ack_after_commit_and_acked_on_another_server(start_server: Any, postgres: Postgres) -> None:
    a = await start_server(store=PostgresStore(postgres.url, server_id="a"))
    b = await start_server(store=PostgresStore(postgres.url, server_id="b"))
    assert open_store(postgres.url).__class__ is PostgresStore
    c = await RawClient.open(a.port)
    assert (await c.hello("dev", session="s1"))["acked"] == 0
    await c.send(msgs(1, 200))
    await ack_upto(c, 200)
    # What was acknowledged is committed: another connection sees it.
    assert stored(postgres, "dev", "s1") == list(range(1, 201))
    # A duplicate is stored once and acknowledged again with the highest stored seq.
    await c.send(b"MSG 4 7\nm007\n")
    assert await c.expect(b"ACK") == b"ACK 200"
    c.close()
    # The other server reads acked from the database, and continues the session.
    d = await RawClient.open(b.port)
    assert (await d.hello("dev", session="s1"))["acked"] == 200
    await d.send(msgs(201, 210))
    await ack_upto(d, 210)
    d.close()
    assert stored(postgres, "dev", "s1") == list(range(1, 211))
    assert postgres.psql("SELECT high FROM sessions WHERE client_id = 'dev'") == "210"
    assert postgres.psql("SELECT count(*) FROM runs") == "2"


async def test_two_servers_storing_one_session_store_each_seq_once(start_server: Any, postgres: Postgres) -> None:
    # The takeover across nodes normally keeps two connections of one session apart; here the
    # database alone is the guard: two servers get the same seqs at once, each from a
    # connection whose OK said acked 0.
    a = await start_server(store=PostgresStore(postgres.url, server_id="a"))
    b = await start_server(store=PostgresStore(postgres.url, server_id="b"))
    ca, cb = await RawClient.open(a.port), await RawClient.open(b.port)
    await ca.hello("twin", session="s")
    await cb.hello("twin", session="s")
    await asyncio.gather(ca.send(msgs(1, 3000)), cb.send(msgs(1, 3000)))
    await asyncio.gather(ack_upto(ca, 3000), ack_upto(cb, 3000))
    assert stored(postgres, "twin", "s") == list(range(1, 3001))
    assert a.store.duplicates + b.store.duplicates == 3000  # type: ignore[attr-defined]
    ca.close()
    cb.close()


async def test_postgres_down_means_err_503_and_nothing_acknowledged(start_server: Any, postgres: Postgres) -> None:
    store = PostgresStore(postgres.url, server_id="a", retry_every=0.1)
    srv = await start_server(store=store)
    c = await RawClient.open(srv.port)
    await c.hello("dev", session="s1")
    await c.send(msgs(1, 10))
    await ack_upto(c, 10)
    postgres.stop()
    try:
        # Numbered messages while PostgreSQL is down: never acknowledged; the sender is told 503.
        await c.send(msgs(11, 20))
        lines = []
        while True:
            ln = await c.line(15)
            if not ln:
                break
            lines.append(ln)
        assert not any(ln.startswith(b"ACK") for ln in lines), lines
        assert any(ln.startswith(b"ERR 503") for ln in lines), lines
        assert store.failing
        # A HELLO with a session meanwhile is refused as well.
        d = await RawClient.open(srv.port)
        await d.info()
        await d.send(b'HELLO {"id":"dev","session":"s1"}\n')
        assert (await d.line(15)).startswith(b"ERR 503")
        d.close()
    finally:
        postgres.start()
    # Back: the held batch is written, the store recovers, and the client resumes from acked.
    end = time.monotonic() + 20
    while store.failing and time.monotonic() < end:
        await asyncio.sleep(0.05)
    assert not store.failing
    e = await RawClient.open(srv.port)
    acked = (await e.hello("dev", session="s1"))["acked"]
    assert 10 <= acked <= 20
    await e.send(msgs(acked + 1, 30))
    await ack_upto(e, 30)
    e.close()
    assert stored(postgres, "dev", "s1") == list(range(1, 31))


async def test_backpressure_pauses_readers_and_resumes(start_server: Any, postgres: Postgres) -> None:
    srv = await start_server(store=PostgresStore(postgres.url), max_store_backlog=64 << 10)
    c = await RawClient.open(srv.port)
    await c.hello("big", session="s")
    payload = b"x" * 1000
    n = 2000
    await c.send(b"".join(b"MSG 1000 %d\n%s\n" % (i, payload) for i in range(1, n + 1)))
    await ack_upto(c, n, 30)
    assert srv._hub.pauses >= 1
    assert stored(postgres, "big", "s") == list(range(1, n + 1))
    c.close()


async def test_history_and_messages_read_postgres(start_server: Any, postgres: Postgres) -> None:
    srv = await start_server(store=PostgresStore(postgres.url))
    c = await RawClient.open(srv.port)
    await c.hello("reader", session="s")
    await c.send(b"MSG 5 1\nhello\nMSG 5\nplain\n")
    await ack_upto(c, 1)
    await c.send(b"BYE done\n")
    await c.lines_until_eof()
    await srv.close(grace=1)
    from tcpulse.store.queries import read_connections, read_messages
    got = read_messages(postgres.url, client_id="reader")
    assert [(m.seq, m.payload) for m in got] == [(1, b"hello"), (None, b"plain")]
    conns = read_connections(postgres.url, client_id="reader")
    assert conns and conns[-1].end_reason == "bye"
    out = subprocess.run([sys.executable, "-m", "tcpulse", "messages", "--db", postgres.url, "--json"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert '"hello"' in out.stdout or "aGVsbG8" in out.stdout, out.stdout
    out = subprocess.run([sys.executable, "-m", "tcpulse", "history", "--db", postgres.url],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "reader" in out.stdout


async def test_a_row_stored_behind_the_stores_back_is_skipped_not_fatal(start_server: Any, postgres: Postgres) -> None:
    # A seq the store did not expect to find (written by something that ignored the session's
    # lock): the fast path (COPY) meets the unique index, the batch is stored again with
    # ON CONFLICT DO NOTHING, and the store goes on; the row is not stored twice.
    srv = await start_server(store=PostgresStore(postgres.url))
    c = await RawClient.open(srv.port)
    await c.hello("odd", session="s")
    await c.send(msgs(1, 2))
    await ack_upto(c, 2)
    sid = postgres.psql("SELECT id FROM sessions WHERE client_id = 'odd'")
    postgres.psql(f"INSERT INTO messages(session_id, seq, received_at, payload) VALUES ({sid}, 5, 0, 'planted')")
    await c.send(msgs(3, 10))
    await ack_upto(c, 10)
    assert stored(postgres, "odd", "s") == list(range(1, 11))
    assert postgres.psql(f"SELECT payload FROM messages WHERE session_id = {sid} AND seq = 5") == "\\x706c616e746564"
    assert not srv.store.failing
    c.close()
