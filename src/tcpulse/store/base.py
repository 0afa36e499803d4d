"""Where the server keeps what it was sent: the interface.  `MemoryStore` in `memory`; `SQLiteStore` in `sqlite`.

The server talks to a store only through this interface, and only from the event loop:

- `add_message()` queues one numbered or unnumbered message; a store must never block the loop.
- When messages are durably kept, the store calls the commit listener (in the loop) with the
  highest stored `seq` per `(id, session)`; only then may the server send `ACK`
  (PROTOCOL.md, "Delivery").  A store whose `immediate` is true has kept them by the time
  `add_message()` returns, and the server acknowledges at once.
- `flush()` returns once everything queued so far is kept (takeover, shutdown).
- The `record_*` calls keep the history of connections and timeouts; they may be batched.
- When the store cannot write, it sets `failing` and calls the state listener (in the loop) with
  `(True, why)`; when it can again, with `(False, why)`.  Meanwhile the server acknowledges
  nothing and closes numbered senders with `ERR 503` (PROTOCOL.md, "Errors").
- After `open()`, `warnings` holds what an operator must know that does not stop the store (its
  database directory can be written by other users, ...): the server shows each one.
- `acked()` may answer from memory, which a store bounds (`max_sessions`): a session it has
  forgotten is read back from its file, or, with no file (`MemoryStore`), is 0 as after a restart.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tcpulse.errors import TcpulseError
from tcpulse.protocol.events import Msg

__all__ = [
    "CommitListener",
    "ConnectionRecord",
    "MessageRecord",
    "SessionKey",
    "StateListener",
    "Store",
    "StoreOpenError",
    "StoreUnavailable",
    "StoreWarning",
]

SessionKey = tuple[str, str]
CommitListener = Callable[[dict[SessionKey, int]], None]
StateListener = Callable[[bool, str], None]


class StoreOpenError(TcpulseError):
    """The store cannot be opened; the message says why and what to do (shown as one line).
    `kind`: "missing" (no such database to read), "not-sqlite", "no-directory", "is-directory",
    "cannot-create" (the lock file beside it cannot be made: /proc, /sys, read-only), "in-use"
    (another server has it), "unusable" (SQLite cannot open it), "foreign" (a database of
    something else), "newer-schema", "no-wal", "unwritable"; a file the server may not trust
    (store/files.py): "symlink", "not-a-file", "not-owner" (another user's), "hard-linked",
    "unsafe-mode" (writable by other users)."""


class StoreWarning(TcpulseError):
    """Something about the store an operator must know, which does not stop it (never raised:
    found in `Store.warnings` after `open()`).  `kind`: "dir-writable" (other users can write the
    database's directory), "readable" (other users can read the database)."""


class StoreUnavailable(Exception):
    """The store cannot keep anything now (locked, disk full, ...).  The server answers 503."""


@dataclass(slots=True)
class MessageRecord:
    client_id: str
    session: str | None
    seq: int | None
    received_at: float  # wall clock, seconds since the epoch
    payload: bytes
    conn_id: int = 0


@dataclass(slots=True)
class ConnectionRecord:
    conn_id: int
    client_id: str | None
    addr: str
    connected_at: float
    ended_at: float | None = None
    end_reason: str | None = None
    heartbeats: int = 0
    messages: int = 0
    rtt: float | None = None
    detail: str | None = None  # e.g. the BYE reason, or "503 store unavailable ..."


class Store:
    """The interface.  Subclasses override what they keep."""

    durable = False
    immediate = True
    #: False for a store whose `add_message()` ignores messages without `seq`: the server then
    #: does not build their records at all (the hot path of `--db none`).
    keeps_unnumbered = True
    #: True while the store cannot write; the server stops acknowledging and sheds senders.
    failing = False
    #: Bytes of messages taken by `add_messages()` and not kept yet (0 for a store that keeps
    #: them at once).  The server stops reading from senders while this is high (flow control),
    #: and the commit listener is called when it goes down.
    backlog = 0

    def __init__(self) -> None:
        self._listener: CommitListener | None = None
        self._state_listener: StateListener | None = None
        #: What `open()` found that an operator must know but that does not stop the store (a
        #: database directory other users can write, ...): the server shows each as a warning.
        self.warnings: list[StoreWarning] = []

    def set_commit_listener(self, listener: CommitListener) -> None:
        """`listener(highs)` is called in the loop after each commit, with the highest stored seq
        of each session that had numbered messages in it (possibly none: `backlog` went down)."""
        self._listener = listener

    def set_state_listener(self, listener: StateListener) -> None:
        """`listener(failing, why)` is called in the loop when the store fails or recovers."""
        self._state_listener = listener

    async def open(self) -> None:
        """Prepare the store; raise with a clear message if it cannot be used."""

    async def close(self) -> None:
        """Flush and release everything."""

    async def acked(self, client_id: str, session: str) -> int:
        """The highest stored seq of `(client_id, session)`, 0 if none.  May raise
        StoreUnavailable; the server then refuses the HELLO with `ERR 503`."""
        raise NotImplementedError

    def add_message(self, rec: MessageRecord) -> None:
        raise NotImplementedError

    def add_messages(self, client_id: str, session: str | None, conn_id: int, received_at: float,
                     msgs: list[Msg]) -> None:
        """Queue messages that arrived together (one read) on one connection, in order.  The
        server's hot path: a store may override it to avoid a record per message."""
        for m in msgs:
            self.add_message(MessageRecord(client_id, session, m.seq, received_at, m.payload, conn_id))

    async def flush(self) -> None:
        """Return once everything queued so far is kept.  Raises StoreUnavailable if it cannot be."""

    def record_connection(self, rec: ConnectionRecord) -> None:
        """A connection began (ended_at None) or ended (ended_at set)."""

    def record_timeout(self, conn_id: int, client_id: str | None, at: float, silent_for: float,
                       late_by: float, phi: float | None = None) -> None:
        """A client was timed out."""


