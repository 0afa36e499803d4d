"""`tcpulse.store.queries` over a real SQLite file written by a real `SQLiteStore`, and
`tcpulse.store.factory.open_store`.  No server and no sockets: the store is fed its records
directly, with times chosen so that every filter has something to leave out."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from tcpulse.protocol.events import Msg
from tcpulse.store.base import ConnectionRecord, StoreOpenError
from tcpulse.store.factory import open_store
from tcpulse.store.memory import MemoryStore
from tcpulse.store.queries import (
    ConnectionRow,
    MessageRow,
    NotATcpulseDatabase,
    SchemaTooNew,
    TimeoutRow,
    open_database,
    read_connections,
    read_messages,
)
from tcpulse.store.sqlite import APPLICATION_ID, SCHEMA_VERSION, SQLiteStore

T0 = 1_700_000_000.0  # seconds since the epoch: the first connection


def _leftovers(db: Path) -> list[str]:
    return sorted(p.name for p in db.parent.iterdir() if p.name.startswith(db.name + "-"))


async def _write(store: SQLiteStore) -> None:
    # conn 1: "alpha", timed out; conn 2: no HELLO, still open; conn 3: "beta", said BYE;
    # conn 4: "alpha" again, later, still open.  (Closing the store ends 2 and 4 as "shutdown".)
    store.record_connection(ConnectionRecord(1, "alpha", "127.0.0.1:1001", T0))
    store.record_timeout(1, "alpha", T0 + 12.5, silent_for=10.25, late_by=0.002, phi=None)
    store.record_connection(ConnectionRecord(1, "alpha", "127.0.0.1:1001", T0, ended_at=T0 + 12.5,
                                             end_reason="timeout", heartbeats=4, messages=2, rtt=0.0015,
                                             detail="heartbeat-timeout"))
    store.record_connection(ConnectionRecord(2, None, "127.0.0.1:1002", T0 + 100))
    store.record_connection(ConnectionRecord(3, "beta", "127.0.0.1:1003", T0 + 200))
    store.record_connection(ConnectionRecord(3, "beta", "127.0.0.1:1003", T0 + 200, ended_at=T0 + 260,
                                             end_reason="bye", messages=1, detail="done"))
    store.record_connection(ConnectionRecord(4, "alpha", "127.0.0.1:1004", T0 + 300))
    store.add_messages("alpha", "s1", 1, T0 + 1, [Msg(payload=b"one", seq=1), Msg(payload=b"\xff\x00", seq=2)])
    store.add_messages("127.0.0.1:1002", None, 2, T0 + 101, [Msg(payload=b"anonymous")])
    store.add_messages("beta", "s2", 3, T0 + 201, [Msg(payload=b"from beta", seq=1)])
    store.add_messages("alpha", None, 4, T0 + 301, [Msg(payload=b"unnumbered")])
    await store.flush()


@pytest.fixture
async def db(tmp_path: Path) -> Path:
    path = tmp_path / "q.db"
    store = SQLiteStore(str(path), server_id="srv-1")
    await store.open()
    try:
        await _write(store)
    finally:
        await store.close()
    return path


async def test_connections_are_typed_rows_oldest_first(db: Path) -> None:
    rows = read_connections(str(db))
    assert [r.id for r in rows] == [1, 2, 3, 4]
    first = rows[0]
    assert first == ConnectionRow(id=1, client_id="alpha", addr="127.0.0.1:1001", connected_at=T0,
                                  ended_at=T0 + 12.5, end_reason="timeout", detail="heartbeat-timeout",
                                  heartbeats=4, messages=2, rtt=0.0015,
                                  timeout=TimeoutRow(silent_for=10.25, late_by=0.002, phi=None))
    assert first.duration == 12.5
    anonymous, beta, last = rows[1:]
    assert anonymous.client_id is None and anonymous.timeout is None
    # Still open when the store closed: ended by the shutdown (`_end_run`).
    assert anonymous.end_reason == "shutdown" and anonymous.ended_at is not None
    assert beta.end_reason == "bye" and beta.detail == "done" and beta.timeout is None and beta.duration == 60
    assert last.client_id == "alpha" and last.end_reason == "shutdown"
    with pytest.raises(AttributeError):
        first.id = 9  # type: ignore[misc]  # frozen


async def test_connection_filters_and_limit(db: Path) -> None:
    assert [r.id for r in read_connections(str(db), client_id="alpha")] == [1, 4]
    assert [r.id for r in read_connections(str(db), since=T0 + 200)] == [3, 4]  # at `since` counts
    assert [r.id for r in read_connections(str(db), client_id="alpha", since=T0 + 1)] == [4]
    # The most recent `limit`, still oldest first.
    assert [r.id for r in read_connections(str(db), limit=2)] == [3, 4]
    assert [r.id for r in read_connections(str(db), limit=None)] == [1, 2, 3, 4]
    assert read_connections(str(db), client_id="nobody") == []
    assert read_connections(str(db), since=T0 + 10_000) == []
    with pytest.raises(ValueError, match="limit"):
        read_connections(str(db), limit=0)


async def test_messages_are_typed_rows_in_stored_order(db: Path) -> None:
    rows = read_messages(str(db))
    assert rows == [
        MessageRow(id=1, client_id="alpha", session="s1", seq=1, received_at=T0 + 1, payload=b"one"),
        MessageRow(id=2, client_id="alpha", session="s1", seq=2, received_at=T0 + 1, payload=b"\xff\x00"),
        # No session: the schema's '' comes back as None.
        MessageRow(id=3, client_id="127.0.0.1:1002", session=None, seq=None, received_at=T0 + 101,
                   payload=b"anonymous"),
        MessageRow(id=4, client_id="beta", session="s2", seq=1, received_at=T0 + 201, payload=b"from beta"),
        MessageRow(id=5, client_id="alpha", session=None, seq=None, received_at=T0 + 301, payload=b"unnumbered"),
    ]
    assert all(type(r.payload) is bytes for r in rows)


async def test_message_filters_and_limit(db: Path) -> None:
    assert [r.id for r in read_messages(str(db), client_id="alpha")] == [1, 2, 5]
    assert [r.id for r in read_messages(str(db), since=T0 + 201)] == [4, 5]
    assert [r.id for r in read_messages(str(db), client_id="alpha", since=T0 + 2, limit=5)] == [5]
    assert [r.id for r in read_messages(str(db), limit=1)] == [5]
    assert read_messages(str(db), client_id="beta", since=T0 + 202) == []
    with pytest.raises(ValueError, match="limit"):
        read_messages(str(db), limit=-1)


async def test_reading_beside_a_live_store_and_leaving_no_wal_behind(tmp_path: Path) -> None:
    path = tmp_path / "live.db"
    store = SQLiteStore(str(path))
    await store.open()
    try:
        await _write(store)
        # The store holds the database open (WAL): a reader sees what it committed.
        live = read_connections(str(path))
        assert [r.id for r in live] == [1, 2, 3, 4]
        assert live[3].ended_at is None and live[3].end_reason is None and live[3].duration is None
        assert len(read_messages(str(path))) == 5
    finally:
        await store.close()
    before = path.read_bytes()
    assert _leftovers(path) == []
    read_connections(str(path))
    read_messages(str(path))
    # Opened read-write with query_only, so the reader closes as the last connection without
    # leaving -wal or -shm files, and writes nothing.
    assert _leftovers(path) == []
    assert path.read_bytes() == before
    con = open_database(str(path))
    try:
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            con.execute("DELETE FROM messages")
    finally:
        con.close()


def test_files_that_are_not_a_readable_tcpulse_database(tmp_path: Path) -> None:
    missing = tmp_path / "missing.db"
    with pytest.raises(StoreOpenError, match="does not exist"):
        read_connections(str(missing))
    assert not missing.exists()  # looked for, never created

    foreign = tmp_path / "foreign.db"
    con = sqlite3.connect(foreign)
    con.execute("CREATE TABLE t(x)")
    con.close()
    with pytest.raises(NotATcpulseDatabase) as not_ours:
        read_messages(str(foreign))
    assert not_ours.value.path == str(foreign)

    newer = tmp_path / "newer.db"
    con = sqlite3.connect(newer)
    con.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    con.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    con.execute("CREATE TABLE t(x)")
    con.close()
    with pytest.raises(SchemaTooNew) as too_new:
        read_connections(str(newer))
    assert (too_new.value.version, too_new.value.known) == (SCHEMA_VERSION + 1, SCHEMA_VERSION)

    junk = tmp_path / "junk.db"
    junk.write_bytes(b"\x00garbage" * 512)
    with pytest.raises(StoreOpenError, match="not an SQLite database"):
        read_messages(str(junk))
    assert junk.read_bytes() == b"\x00garbage" * 512


async def test_a_reader_never_follows_a_symbolic_link(db: Path, tmp_path: Path) -> None:
    """`tcpulse history`/`messages` may run as root beside a database in a directory others can
    write to: a link as the database, or as a file SQLite writes beside it even for a reader
    (`-wal`, `-shm`), is refused with one line, and its target is left untouched."""
    target = tmp_path / "precious"
    target.write_bytes(b"keep me")
    link = tmp_path / "link.db"
    link.symlink_to(db)
    with pytest.raises(StoreOpenError, match="symbolic link"):
        read_connections(str(link))
    for suffix in ("-wal", "-shm"):
        planted = Path(str(db) + suffix)
        planted.symlink_to(target)
        with pytest.raises(StoreOpenError, match="symbolic link") as info:
            read_messages(str(db))
        assert info.value.params["path"] == str(planted)
        planted.unlink()
    assert target.read_bytes() == b"keep me"
    assert len(read_connections(str(db))) > 0  # the real file, once nothing is planted


def test_open_store_chooses_by_spec(tmp_path: Path) -> None:
    for spec in (None, "none", "NONE", "None"):
        assert type(open_store(spec)) is MemoryStore
    store = open_store(str(tmp_path / "s.db"), server_id="srv-9")
    assert isinstance(store, SQLiteStore)
    assert store.path == str(tmp_path / "s.db") and store.server_id == "srv-9" and store.durable
    assert not (tmp_path / "s.db").exists()  # nothing opened before the server starts it
