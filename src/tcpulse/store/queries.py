"""Reading a server's database back: the connections it saw and the messages it kept.

    rows = read_connections("tcpulse.db", client_id="sensor-7", since=time.time() - 3600, limit=50)

The queries behind `tcpulse history` and `tcpulse messages`, for any program that wants the
same answers; `path` may also be a `postgresql://` URL (the shared store, store/postgres.py).
Each opens the file only to read it, and may run beside a live server (WAL lets readers in
while it writes): a read-write handle with `query_only` on (`sqlite.open_reader`), so
that, as the last connection to close once the server has stopped, it folds the WAL back and
leaves no `-wal` or `-shm` file behind.  A file that is missing, not SQLite, not a tcpulse
database or from a newer tcpulse raises a `StoreOpenError` (one line, to be shown as is, or, for
the last two, rebuilt from the exception's fields).  The schema is in `docs/store.md`.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Any

from tcpulse.errors import N_
from tcpulse.store.base import StoreOpenError
from tcpulse.store.dsn import is_postgres_url
from tcpulse.store.sqlite import APPLICATION_ID, SCHEMA_VERSION, check_database, open_reader

__all__ = [
    "ConnectionRow",
    "MessageRow",
    "NotATcpulseDatabase",
    "SchemaTooNew",
    "TimeoutRow",
    "open_database",
    "read_connections",
    "read_messages",
]


class NotATcpulseDatabase(StoreOpenError):
    """An SQLite file, but not one a tcpulse server wrote (its `application_id` is not ours)."""

    def __init__(self, path: str) -> None:
        super().__init__("foreign", N_("{path} is not a tcpulse database (give the --db that `tcpulse serve` used)"),
                         path=path)
        self.path = path


class SchemaTooNew(StoreOpenError):
    """A tcpulse database from a newer tcpulse: `version` is above what this one knows (`known`)."""

    def __init__(self, path: str, version: int, known: int) -> None:
        super().__init__("newer-schema", N_("{path} has schema version {version}, newer than this tcpulse "
                                            "understands ({known}): upgrade tcpulse"),
                         path=path, version=version, known=known)
        self.path = path
        self.version = version
        self.known = known


@dataclass(frozen=True, slots=True)
class TimeoutRow:
    """How a connection that timed out was judged (the `timeouts` table)."""

    silent_for: float  # seconds since the client was last heard
    late_by: float  # seconds between its deadline and the server noticing
    phi: float | None  # the phi detector's level, with --detector phi


@dataclass(frozen=True, slots=True)
class ConnectionRow:
    """One connection (the `connections` table); times are seconds since the epoch."""

    id: int
    client_id: str | None  # None: the client sent no HELLO
    addr: str
    connected_at: float
    ended_at: float | None  # None: still open, or the server was killed
    end_reason: str | None
    detail: str | None
    heartbeats: int
    messages: int
    rtt: float | None
    timeout: TimeoutRow | None  # set when the connection ended in a timeout

    @property
    def duration(self) -> float | None:
        """Seconds from connect to end; None while it has not ended."""
        return None if self.ended_at is None else self.ended_at - self.connected_at


@dataclass(frozen=True, slots=True)
class MessageRow:
    """One stored message (the `messages` table with its session)."""

    id: int  # the order in which messages were stored
    client_id: str
    session: str | None  # None: sent without a session
    seq: int | None  # None: unnumbered (fire-and-forget)
    received_at: float
    payload: bytes


def open_database(path: str) -> sqlite3.Connection:
    """A reading connection to the tcpulse database at `path` (see the module docstring); the
    caller must close it.  Raises StoreOpenError (or its subclasses above) naming the problem."""
    app, ver = check_database(path)
    if app != APPLICATION_ID:
        raise NotATcpulseDatabase(path)
    if ver > SCHEMA_VERSION:
        raise SchemaTooNew(path, ver, SCHEMA_VERSION)
    return open_reader(path)


_CONNECTIONS = (
    "SELECT * FROM (SELECT c.id, c.client_id, c.addr, c.connected_at, c.ended_at, c.end_reason, "
    "c.detail, c.heartbeats, c.messages, c.rtt, t.silent_for, t.late_by, t.phi "
    "FROM connections c LEFT JOIN timeouts t ON t.connection_id = c.id{where} "
    "ORDER BY c.connected_at DESC, c.id DESC LIMIT ?) AS r ORDER BY connected_at, id")

_MESSAGES = (
    "SELECT * FROM (SELECT m.id, s.client_id, s.session, m.seq, m.received_at, m.payload "
    "FROM messages m JOIN sessions s ON s.id = m.session_id{where} "
    "ORDER BY m.id DESC LIMIT ?) AS r ORDER BY id")


def _run(path: str, sql: str, client_col: str, at_col: str, client_id: str | None, since: float | None,
         limit: int | None) -> list[tuple[Any, ...]]:
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be at least 1 (got {limit}), or None for all")
    where: list[str] = []
    args: list[Any] = []
    if client_id is not None:
        where.append(f"{client_col} = ?")
        args.append(client_id)
    if since is not None:
        where.append(f"{at_col} >= ?")
        args.append(since)
    clause = (" WHERE " + " AND ".join(where)) if where else ""
    if is_postgres_url(path):
        # The shared store (store/postgres.py): the same tables, PostgreSQL's placeholders, and
        # NULL for "no limit".
        from tcpulse.store.postgres import read_rows
        return read_rows(path, sql.format(where=clause).replace("?", "%s"), [*args, limit])
    con = open_database(path)
    try:
        # LIMIT -1: SQLite's "no limit".
        return list(con.execute(sql.format(where=clause), [*args, -1 if limit is None else limit]).fetchall())
    finally:
        con.close()


def read_connections(path: str, *, client_id: str | None = None, since: float | None = None,
                     limit: int | None = 50) -> list[ConnectionRow]:
    """The most recent `limit` connections (None: all) of `client_id` (None: every client) that
    began at or after `since` (seconds since the epoch; None: any time), oldest first."""
    rows = _run(path, _CONNECTIONS, "c.client_id", "c.connected_at", client_id, since, limit)
    return [ConnectionRow(id=r[0], client_id=r[1], addr=r[2], connected_at=r[3], ended_at=r[4], end_reason=r[5],
                          detail=r[6], heartbeats=r[7], messages=r[8], rtt=r[9],
                          timeout=None if r[10] is None else TimeoutRow(silent_for=r[10], late_by=r[11], phi=r[12]))
            for r in rows]


def read_messages(path: str, *, client_id: str | None = None, since: float | None = None,
                  limit: int | None = 50) -> list[MessageRow]:
    """The most recently stored `limit` messages (None: all) of `client_id` (None: every
    client) received at or after `since` (seconds since the epoch; None: any time), in the
    order they were stored."""
    rows = _run(path, _MESSAGES, "s.client_id", "m.received_at", client_id, since, limit)
    # The schema keeps '' for "no session" (UNIQUE (client_id, session) would let NULLs repeat).
    return [MessageRow(id=r[0], client_id=r[1], session=r[2] or None, seq=r[3], received_at=r[4],
                       payload=bytes(r[5]))
            for r in rows]
