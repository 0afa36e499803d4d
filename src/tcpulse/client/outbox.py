"""Where a client keeps its session and every message the server has not acknowledged.

    client = tcpulse.connect(host, port, id="sensor-7", outbox="sensor-7.outbox")   # on disk
    client = tcpulse.connect(host, port, id="sensor-7", session="s1")               # in memory

**Message ids.**  `send()` returns the message's id: 1, 2, 3, ... within the session, never
reused and never changed.  On the wire a message goes as `MSG n seq` with `seq = id - offset`
(PROTOCOL.md, "Delivery").  `offset` is 0 until a server that keeps no store restarts and forgets
the session: its `OK` then says an `acked` below what it had acknowledged, and the client numbers
what it holds from `acked + 1` on by changing `offset` (a `Renumbered` event says so).  A program
therefore keys its own records by id; only the server's log shows seqs.

**On disk** (`SQLiteOutbox`), a message is written and committed before it goes on the wire, so a
client process that is killed and started again with the same file continues the same
`(id, session)` and sends again, in order, whatever the server's `acked` does not cover.  Its
numbers are never reused, so nothing is stored twice and nothing is mistaken for a duplicate.
The SQLite work runs in a thread of the outbox's own (group commit: everything queued goes in
one transaction); the event loop never waits for the disk.  One process at a time: the file is
locked while open (`OutboxError` if another process has it).

Every operation the client makes per message or per `ACK` is O(1) (amortized: an `ACK` releases
the messages it covers, each once); only a reconnect walks the outbox, to send it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import queue
import secrets
import sqlite3
import threading
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from tcpulse.client.errors import OutboxError, OutboxOwnerError
from tcpulse.errors import N_

__all__ = ["OUTBOX_APPLICATION_ID", "MemoryOutbox", "Outbox", "OutboxError", "OutboxOwnerError", "SQLiteOutbox",
           "new_session"]

#: `PRAGMA application_id` of an outbox file ("tcpo"), told apart from a server database.
OUTBOX_APPLICATION_ID = 0x7463706F

# `pending.seq` holds the message id (files written before ids and seqs were told apart held the
# seq there, with an offset of 0: the same number).
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS pending (seq INTEGER PRIMARY KEY, payload BLOB NOT NULL)",
)


def new_session() -> str:
    """A fresh random session name (PROTOCOL.md: 1-64 characters of [A-Za-z0-9_-])."""
    return secrets.token_urlsafe(12).replace("-", "_")


class Outbox:
    """The messages not yet acknowledged, in id order, with the session they belong to.

    `MemoryOutbox` (the default) lives as long as the process; `SQLiteOutbox` survives it."""

    session: str
    #: The client id this outbox belongs to (its session is numbered for that id), if known.
    client_id: str | None = None
    #: Whether what it holds survives the process.
    durable: bool = False

    def __init__(self, session: str) -> None:
        self.session = session
        self._q: deque[tuple[int, bytes]] = deque()
        self._bytes = 0
        self._last_id = 0
        self._offset = 0

    # ---------------------------------------------------------------- what it holds

    def __len__(self) -> int:
        """How many messages it holds (O(1))."""
        return len(self._q)

    @property
    def nbytes(self) -> int:
        """The payload bytes it holds (O(1))."""
        return self._bytes

    @property
    def last_id(self) -> int:
        """The id of the last message added (0: none yet)."""
        return self._last_id

    @property
    def offset(self) -> int:
        """A message's wire seq is its id minus this (see the module docstring)."""
        return self._offset

    @property
    def last_seq(self) -> int:
        """The wire seq of the last message added."""
        return self._last_id - self._offset

    @property
    def committed_id(self) -> int:
        """The highest id that is kept for good (written to disk, for a file): the client sends
        nothing above it."""
        return self._last_id

    def first_id(self) -> int | None:
        """The id of the oldest message held, if any."""
        return self._q[0][0] if self._q else None

    def items(self) -> Iterator[tuple[int, bytes]]:
        """`(id, payload)` of every message held, oldest first (O(n): for a resend)."""
        return iter(self._q)

    def pending(self) -> list[tuple[int, bytes]]:
        """A copy of `(id, payload)` of every message held (O(n))."""
        return list(self._q)

    # ---------------------------------------------------------------- owner

    def check_owner(self, client_id: str | None) -> None:
        """Raise OutboxOwnerError if this outbox belongs to a client id other than `client_id`
        (None: no id chosen yet, any owner will do): its session is numbered for its owner, and
        another id must not continue it."""
        if client_id is not None and self.client_id is not None and self.client_id != client_id:
            raise OutboxOwnerError(self.client_id, client_id)

    def bind(self, client_id: str) -> None:
        """Remember which client id the session belongs to."""
        if self.client_id is None:
            self.client_id = client_id

    # ---------------------------------------------------------------- changes (O(1) each)

    def add(self, payload: bytes) -> int:
        """Keep `payload` as the next message and return its id."""
        mid = self._last_id + 1
        self._q.append((mid, payload))
        self._bytes += len(payload)
        self._last_id = mid
        return mid

    def ack(self, upto_seq: int) -> int:
        """The server stored everything up to wire seq `upto_seq`: forget those messages.
        Returns how many were released (the work done is proportional to that)."""
        q = self._q
        upto = upto_seq + self._offset
        n = 0
        released = 0
        while q and q[0][0] <= upto:
            released += len(q.popleft()[1])
            n += 1
        self._bytes -= released
        return n

    def renumber(self, next_seq: int) -> None:
        """From now on the oldest message held (or, if none, the next one added) goes out as
        `next_seq` (PROTOCOL.md, "Delivery": the client numbers from the server's `acked + 1`).
        Ids do not change; `offset` does.  O(1)."""
        first = self.first_id()
        self._offset = (self._last_id + 1 if first is None else first) - next_seq

    # ---------------------------------------------------------------- life cycle

    def attach(self, loop: asyncio.AbstractEventLoop, on_commit: Callable[[], None],
               on_trouble: Callable[[OutboxError | None], None]) -> None:
        """Called by the client when it starts: where to report that more is kept for good
        (`on_commit`) or that writing fails (`on_trouble`).  A memory outbox keeps at once."""

    async def flush(self) -> None:
        """Return once everything asked of the outbox so far is kept for good."""

    def close(self) -> None:
        """Finish what is queued and let go (a memory outbox can be used again)."""

    async def aclose(self) -> None:
        """`close()` without blocking the event loop."""
        self.close()


class MemoryOutbox(Outbox):
    """The default: kept in memory, lost with the process (the session too)."""

    def __init__(self, session: str | None = None) -> None:
        super().__init__(session or new_session())


_STOP: Any = object()
#: How long the writer waits before it tries a failed transaction again.
_RETRY_EVERY = 0.25


class SQLiteOutbox(Outbox):
    """Session and unacknowledged messages in an SQLite file (see the module docstring).

    Writes are group commits (WAL, synchronous=NORMAL) in the outbox's own thread: they survive
    the process being killed, which is what this file is for; a power cut may lose the last ones.
    Opening reads the file in the calling thread: in a coroutine use `await SQLiteOutbox.open(path)`
    (or hand the client the path: it opens it so)."""

    durable = True

    def __init__(self, path: str, session: str | None = None) -> None:
        super().__init__("")
        self.path = path
        self._lock_fd = -1
        self._db: sqlite3.Connection | None = None
        # Both files are created private (the outbox holds what the program sends; SQLite gives
        # its -wal and -shm the database's mode), and never through a symbolic link that someone
        # planted in a directory others can write to.
        private = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW
        try:
            self._lock_fd = os.open(path + ".lock", private, 0o600)
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.close(os.open(path, private, 0o600))
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
            db = self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            app = db.execute("PRAGMA application_id").fetchone()[0]
            tables = db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            if app != OUTBOX_APPLICATION_ID and (app != 0 or tables):
                raise OutboxError("foreign", N_("{path} is not a tcpulse outbox: choose another --outbox"), path=path)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("BEGIN IMMEDIATE")
            for stmt in _SCHEMA:
                db.execute(stmt)
            db.execute(f"PRAGMA application_id = {OUTBOX_APPLICATION_ID}")
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
            if "session" not in meta:
                meta["session"] = session or new_session()
                db.execute("INSERT INTO meta VALUES ('session', ?)", (meta["session"],))
            db.execute("COMMIT")
            if session is not None and meta["session"] != session:
                raise OutboxError("session", N_("outbox {path} holds session {held!r}, not {wanted!r}: use another "
                                                "outbox for another session"), path=path, held=meta["session"],
                                  wanted=session)
            for mid, payload in db.execute("SELECT seq, payload FROM pending ORDER BY seq"):
                self._q.append((int(mid), bytes(payload)))
                self._bytes += len(payload)
        except sqlite3.Error as e:
            self._release()
            raise OutboxError("unusable", N_("cannot use {path} as an outbox: {error} (choose another --outbox)"),
                              path=path, error=e) from e
        except OutboxError:
            self._release()
            raise
        self.session = meta["session"]
        self.client_id = meta.get("client_id")
        self._last_id = int(meta.get("last_seq", "0"))
        if self._q:
            self._last_id = max(self._last_id, self._q[-1][0])
        self._offset = int(meta.get("offset", "0"))
        self._committed = self._last_id
        # The loop's side: ops queued, how many the writer has finished.
        self._ops: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._queued = 0
        self._done = 0
        self._flushes: deque[tuple[int, asyncio.Future[None]]] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._on_commit: Callable[[], None] | None = None
        self._on_trouble: Callable[[OutboxError | None], None] | None = None
        # The writer's side of the same figures, for an outbox attached to a loop late.
        self._t_done = 0
        self._t_committed = self._last_id
        self._thread: threading.Thread | None = threading.Thread(target=self._writer, daemon=True,
                                                                 name="tcpulse-outbox")
        self._thread.start()

    @classmethod
    async def open(cls, path: str, session: str | None = None) -> SQLiteOutbox:
        """Open (or create) the outbox file in a thread: the event loop does not wait for it."""
        return await asyncio.to_thread(cls, path, session)

    # ---------------------------------------------------------------- Outbox

    @property
    def committed_id(self) -> int:
        return self._committed

    def bind(self, client_id: str) -> None:
        if self.client_id is None:
            self.client_id = client_id
            self._push(("meta", "client_id", client_id))

    def add(self, payload: bytes) -> int:
        mid = super().add(payload)
        self._push(("add", mid, payload))
        return mid

    def ack(self, upto_seq: int) -> int:
        n = super().ack(upto_seq)
        if n:
            # Forgetting is not urgent: a delete lost to a crash only means a resend, which the
            # server answers as a duplicate.
            self._push(("ack", upto_seq + self._offset))
        return n

    def renumber(self, next_seq: int) -> None:
        before = self._offset
        super().renumber(next_seq)
        if self._offset != before:
            self._push(("meta", "offset", str(self._offset)))

    def attach(self, loop: asyncio.AbstractEventLoop, on_commit: Callable[[], None],
               on_trouble: Callable[[OutboxError | None], None]) -> None:
        self._on_commit = on_commit
        self._on_trouble = on_trouble
        self._loop = loop
        # What the writer finished before there was a loop to tell (read after `_loop` is set,
        # so that nothing finished in between is missed).
        self._report_done(self._t_done, self._t_committed)

    async def flush(self) -> None:
        if self._done >= self._queued or self._thread is None:
            return
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
            self._report_done(self._t_done, self._t_committed)
            if self._done >= self._queued:
                return
        fut: asyncio.Future[None] = loop.create_future()
        self._flushes.append((self._queued, fut))
        await fut

    def close(self) -> None:
        self._stop()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._release()

    async def aclose(self) -> None:
        self._stop()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
            self._thread = None
        self._release()

    # ---------------------------------------------------------------- the loop's side

    def _push(self, op: tuple[Any, ...]) -> None:
        if self._thread is None:
            raise OutboxError("closed", N_("outbox {path} is closed"), path=self.path)
        self._queued += 1
        self._ops.put(op)

    def _stop(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            self._ops.put(_STOP)

    def _report_done(self, done: int, committed: int) -> None:
        # In the loop: the writer finished ops up to `done`, adds up to id `committed`.
        self._done = max(self._done, done)
        if committed > self._committed:
            self._committed = committed
            if self._on_commit is not None:
                self._on_commit()
        while self._flushes and self._flushes[0][0] <= self._done:
            fut = self._flushes.popleft()[1]
            if not fut.done():
                fut.set_result(None)

    def _report(self, fn: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(fn, *args)

    def _trouble(self, error: OutboxError | None) -> None:
        if self._on_trouble is not None:
            self._on_trouble(error)

    # ---------------------------------------------------------------- the writer thread

    def _writer(self) -> None:
        db = self._db
        assert db is not None
        done = 0
        failing = False
        stopping = False
        while not stopping:
            batch = [self._ops.get()]
            with contextlib.suppress(queue.Empty):
                while True:
                    batch.append(self._ops.get_nowait())
            if batch[-1] is _STOP or _STOP in batch:
                stopping = True
                batch = [op for op in batch if op is not _STOP]
            tries = 0
            while batch:
                try:
                    committed = self._write(db, batch)
                except sqlite3.Error as e:
                    tries += 1
                    with contextlib.suppress(sqlite3.Error):
                        db.execute("ROLLBACK")
                    if not failing:
                        failing = True
                        self._report(self._trouble, OutboxError(
                            "write-failed", N_("cannot write outbox {path}: {error}"), path=self.path, error=e))
                    if stopping and tries >= 8:
                        break  # closing: what is still unwritten is sent again by nobody; said above
                    threading.Event().wait(_RETRY_EVERY)
                    continue
                if failing:
                    failing = False
                    self._report(self._trouble, None)
                done += len(batch)
                self._t_done = done
                if committed:
                    self._t_committed = committed
                self._report(self._report_done, done, committed)
                break
        with contextlib.suppress(sqlite3.Error):
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def _write(self, db: sqlite3.Connection, batch: list[Any]) -> int:
        top = 0
        db.execute("BEGIN")
        for op in batch:
            what = op[0]
            if what == "add":
                db.execute("INSERT OR REPLACE INTO pending VALUES (?, ?)", (op[1], op[2]))
                top = op[1]
            elif what == "ack":
                db.execute("DELETE FROM pending WHERE seq <= ?", (op[1],))
            else:  # meta
                db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (op[1], op[2]))
        if top:
            db.execute("INSERT OR REPLACE INTO meta VALUES ('last_seq', ?)", (str(top),))
        db.execute("COMMIT")
        return top

    def _release(self) -> None:
        db = self._db
        if db is not None:
            with contextlib.suppress(sqlite3.Error):
                db.close()
            self._db = None
        if self._lock_fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)
            self._lock_fd = -1
