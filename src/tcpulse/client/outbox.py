"""A client's outbox on disk: its id, its session and every message not yet acknowledged.

    client = Client(host, port, outbox=SQLiteOutbox("sensor.outbox"))

A message is written here (and committed) before it goes on the wire, so a client process that
is killed and started again with the same file continues the same `(id, session)` and sends
again, in order, whatever the server's `acked` does not cover (PROTOCOL.md, "Delivery").  Its
numbers are never reused, so nothing is stored twice and nothing is mistaken for a duplicate.

One process at a time: the file is locked while open (`OutboxError` if another process has it).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import sqlite3
from collections import deque

from tcpulse.errors import N_, TcpulseError

__all__ = ["OUTBOX_APPLICATION_ID", "MemoryOutbox", "Outbox", "OutboxError", "OutboxOwnerError", "SQLiteOutbox",
           "new_session"]

#: `PRAGMA application_id` of an outbox file ("tcpo"), told apart from a server database.
OUTBOX_APPLICATION_ID = 0x7463706F

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS pending (seq INTEGER PRIMARY KEY, payload BLOB NOT NULL)",
)


class Outbox:
    """Where the client keeps its session and unacknowledged messages.  Memory by default; an
    SQLite file (`tcpulse.outbox.SQLiteOutbox`) survives a restart of the process."""

    session: str
    last_seq: int
    #: The client id this outbox belongs to (its session is numbered for that id), if known.
    client_id: str | None = None

    def check_owner(self, client_id: str | None) -> None:
        """Raise OutboxOwnerError if this outbox belongs to a client id other than `client_id`
        (None: no id chosen yet, any owner will do): its session is numbered for its owner, and
        another id must not continue it."""
        if client_id is not None and self.client_id is not None and self.client_id != client_id:
            raise OutboxOwnerError(self.client_id, client_id)

    def bind(self, client_id: str) -> None:
        """Remember which client id the session belongs to."""
        self.client_id = client_id

    def add(self, seq: int, payload: bytes) -> None:
        """Keep `(seq, payload)` (durably, for a file outbox) before it is sent."""
        raise NotImplementedError

    def ack(self, upto: int) -> None:
        raise NotImplementedError

    def pending(self) -> list[tuple[int, bytes]]:
        raise NotImplementedError

    def renumber(self, start: int) -> None:
        """Number the held messages start, start+1, ... in order, and go on from there."""
        raise NotImplementedError

    def close(self) -> None:
        pass


class MemoryOutbox(Outbox):
    def __init__(self, session: str | None = None) -> None:
        self.session = session or new_session()
        self.last_seq = 0
        self._q: deque[tuple[int, bytes]] = deque()

    def add(self, seq: int, payload: bytes) -> None:
        self._q.append((seq, payload))
        self.last_seq = max(self.last_seq, seq)

    def ack(self, upto: int) -> None:
        q = self._q
        while q and q[0][0] <= upto:
            q.popleft()

    def renumber(self, start: int) -> None:
        self._q = deque((start + i, p) for i, (_, p) in enumerate(self._q))
        self.last_seq = start + len(self._q) - 1

    def pending(self) -> list[tuple[int, bytes]]:
        return list(self._q)


def new_session() -> str:
    return secrets.token_urlsafe(12).replace("-", "_")


class OutboxError(TcpulseError):
    """The outbox file cannot be used; the message says why and what to do.  `kind`: "in-use"
    (another process has it), "cannot-open" (the lock file cannot be made), "foreign" (the file is
    something else), "unusable" (SQLite cannot use it)."""


class OutboxOwnerError(OutboxError, ValueError):
    """The outbox belongs to client id `owner`, and `wanted` is another (`Outbox.check_owner`)."""

    def __init__(self, owner: str, wanted: str) -> None:
        super().__init__("owner", N_("the outbox belongs to client id {owner!r}, not {wanted!r}: "
                                     "its session is numbered for that id"), owner=owner, wanted=wanted)
        self.owner = owner
        self.wanted = wanted


class SQLiteOutbox(Outbox):
    """Session and unacknowledged messages in an SQLite file (see the module docstring).

    Writes are small synchronous commits (WAL, synchronous=NORMAL): they survive the process
    being killed, which is what this file is for; a power cut may lose the last ones."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock_fd = -1
        try:
            self._lock_fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise OutboxError("in-use", N_("outbox {path} is in use by another tcpulse client: stop it or choose "
                                           "another --outbox"), path=path) from None
        except OSError as e:
            if self._lock_fd >= 0:
                os.close(self._lock_fd)
            raise OutboxError("cannot-open", N_("cannot open outbox {path}: {error}"), path=path,
                              error=e.strerror or e) from e
        try:
            self._db = sqlite3.connect(path, isolation_level=None)
            app = self._db.execute("PRAGMA application_id").fetchone()[0]
            tables = self._db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            if app != OUTBOX_APPLICATION_ID and (app != 0 or tables):
                raise OutboxError("foreign", N_("{path} is not a tcpulse outbox: choose another --outbox"), path=path)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("BEGIN IMMEDIATE")
            for stmt in _SCHEMA:
                self._db.execute(stmt)
            self._db.execute(f"PRAGMA application_id = {OUTBOX_APPLICATION_ID}")
            meta = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
            if "session" not in meta:
                meta["session"] = new_session()
                self._db.execute("INSERT INTO meta VALUES ('session', ?)", (meta["session"],))
            self._db.execute("COMMIT")
        except sqlite3.Error as e:
            self._release()
            raise OutboxError("unusable", N_("cannot use {path} as an outbox: {error} (choose another --outbox)"),
                              path=path, error=e) from e
        except OutboxError:
            self._release()
            raise
        self.session = meta["session"]
        self.client_id = meta.get("client_id")
        self._q: deque[tuple[int, bytes]] = deque(
            (int(s), bytes(p)) for s, p in self._db.execute("SELECT seq, payload FROM pending ORDER BY seq"))
        self._last = int(meta.get("last_seq", "0"))
        if self._q:
            self._last = max(self._last, self._q[-1][0])

    # ---------------------------------------------------------------- Outbox

    @property
    def last_seq(self) -> int:  # type: ignore[override]
        return self._last

    @last_seq.setter
    def last_seq(self, value: int) -> None:
        # The server knows more than this file (PROTOCOL.md, "Delivery": number from `acked` on).
        if value > self._last:
            self._last = value
            self._db.execute("INSERT OR REPLACE INTO meta VALUES ('last_seq', ?)", (str(value),))

    def bind(self, client_id: str) -> None:
        if self.client_id is None:
            self.client_id = client_id
            self._db.execute("INSERT OR REPLACE INTO meta VALUES ('client_id', ?)", (client_id,))

    def add(self, seq: int, payload: bytes) -> None:
        db = self._db
        db.execute("BEGIN")
        db.execute("INSERT INTO pending VALUES (?, ?)", (seq, payload))
        if seq > self._last:
            db.execute("INSERT OR REPLACE INTO meta VALUES ('last_seq', ?)", (str(seq),))
        db.execute("COMMIT")
        self._q.append((seq, payload))
        self._last = max(self._last, seq)

    def ack(self, upto: int) -> None:
        q = self._q
        if not q or q[0][0] > upto:
            return
        self._db.execute("DELETE FROM pending WHERE seq <= ?", (upto,))
        while q and q[0][0] <= upto:
            q.popleft()

    def pending(self) -> list[tuple[int, bytes]]:
        return list(self._q)

    def renumber(self, start: int) -> None:
        db = self._db
        items = [(start + i, p) for i, (_, p) in enumerate(self._q)]
        db.execute("BEGIN IMMEDIATE")
        db.execute("DELETE FROM pending")
        db.executemany("INSERT INTO pending VALUES (?, ?)", items)
        self._last = start + len(items) - 1
        db.execute("INSERT OR REPLACE INTO meta VALUES ('last_seq', ?)", (str(self._last),))
        db.execute("COMMIT")
        self._q = deque(items)

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self._release()

    def _release(self) -> None:
        db = getattr(self, "_db", None)
        if db is not None:
            with contextlib.suppress(sqlite3.Error):
                db.close()
            self._db = None  # type: ignore[assignment]
        if self._lock_fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)
            self._lock_fd = -1
