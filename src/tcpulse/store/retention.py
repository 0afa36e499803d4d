"""Retention: what the SQLite store deletes, when, and how big it may grow (docs/store.md,
"Retention and size").

    SQLiteStore("tcpulse.db", retain=parse_duration("7d"), max_size=parse_size("4G"))

- `retain`: rows older than this many seconds are deleted: messages by `received_at`, timeouts
  by `at`, connections that ended (or whose run is gone) by their times, sessions by the last
  time they stored a message (`sessions.last_at`), and runs with nothing left of them.
- `max_size`: the database file never grows beyond this many bytes (`PRAGMA max_page_count`).
  At the limit a transaction fails like one on a full disk: the store reports `failing`, the
  server answers numbered senders `ERR 503` and acknowledges nothing it has not stored; space that
  retention frees is used again, and the store recovers by itself.

`Pruner` does the deleting in the writer thread, between the store's own transactions and one
chunk of rows per transaction, so that a big backlog of old rows never holds the write lock for
long; it never runs on the event loop.
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
from dataclasses import dataclass, field

from tcpulse.errors import N_, ConfigError
from tcpulse.store.base import SessionKey

__all__ = [
    "MIN_MAX_SIZE",
    "PRUNE_CHUNK",
    "PRUNE_EVERY",
    "Pruner",
    "parse_duration",
    "parse_size",
]

#: The smallest size limit: the schema itself takes a few pages.
MIN_MAX_SIZE = 64 << 10
#: Seconds between pruning cycles.
PRUNE_EVERY = 60.0
#: Rows looked at (and at most deleted) per table per transaction.
PRUNE_CHUNK = 10_000

_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_SIZE_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_OFF = ("none", "off", "0")


def parse_duration(text: str | float | None, *, setting: str = "retain") -> float | None:
    """`30s`, `10m`, `2h`, `7d`, `1w` (or a number of seconds) in seconds; None for None, `none`,
    `off` or 0 (keep everything).  Raises ConfigError naming `setting`."""
    if text is None:
        return None
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value = float(text)
    else:
        s = str(text).strip().lower()
        if s in _OFF:
            return None
        m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smhdw]?)", s)
        if m is None:
            raise ConfigError("bad-duration", N_("{field} {value} is not a duration: give 30s, 10m, 2h, 7d or 1w, "
                                                 "or none to keep everything"), names={"field": setting},
                              value=repr(text))
        value = float(m.group(1)) * _DURATION_UNITS[m.group(2) or "s"]
    if value < 0 or value != value or value == float("inf"):
        raise ConfigError("bad-duration", N_("{field} {value} is not a duration: give 30s, 10m, 2h, 7d or 1w, "
                                             "or none to keep everything"), names={"field": setting},
                          value=repr(text))
    return value or None


def parse_size(text: str | int | None, *, setting: str = "max_size") -> int | None:
    """`500M`, `4G`, `64KiB`, `1T` (powers of 1024) or a number of bytes; None for None, `none`,
    `off` or 0 (no limit).  Raises ConfigError naming `setting` (at least MIN_MAX_SIZE)."""
    if text is None:
        return None
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        s = str(text).strip().lower()
        if s in _OFF:
            return None
        m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?", s)
        if m is None:
            raise ConfigError("bad-size", N_("{field} {value} is not a size: give bytes or 500M, 4G, 1T (powers "
                                             "of 1024), or none for no limit"), names={"field": setting},
                              value=repr(text))
        value = int(float(m.group(1)) * _SIZE_UNITS[m.group(2)])
    if value == 0:
        return None
    if value < MIN_MAX_SIZE:
        raise ConfigError("size-too-small", N_("{field} must be at least {least} bytes, or none for no limit "
                                               "(got {value})"), names={"field": setting}, least=MIN_MAX_SIZE,
                          value=value)
    return value


@dataclass
class _Table:
    """How one table is pruned: rows are looked at in `id` order, `chunk` at a time; `order` is
    the time column that grows with `id` (None: it does not, look at every row), `old` the SQL
    condition of a row to delete."""

    name: str
    order: str | None
    old: str


#: In this order: messages before the connections and sessions they name.
_TABLES = (
    _Table("messages", "received_at", "received_at < :cutoff"),
    _Table("timeouts", "at", "at < :cutoff"),
    # A connection still open is kept: it ended (before the cutoff), or its run is over without
    # it having ended (the server was killed), which the run's own end settles.
    _Table("connections", "connected_at",
           "connected_at < :cutoff AND ((ended_at IS NOT NULL AND ended_at < :cutoff) "
           "OR (ended_at IS NULL AND run_id != :run))"),
    _Table("sessions", None, "last_at < :cutoff"),
)


@dataclass
class Pruner:
    """Deletes what is older than `retain` seconds, a chunk per `step()`, a cycle every `every`
    seconds.  Driven by the store's writer thread, which owns the connection: call `wait(now)`
    to know how long it may sleep, `step(con, ...)` between transactions when that is 0."""

    retain: float
    every: float = PRUNE_EVERY
    chunk: int = PRUNE_CHUNK
    #: Rows deleted so far, per table (for the curious: tests, the admin).
    deleted: dict[str, int] = field(default_factory=dict)
    #: Pruning cycles completed.
    cycles: int = 0
    _next: float = 0.0  # monotonic time of the next cycle (0: at once)
    _table: int = -1  # index in _TABLES of the table being pruned; -1: no cycle in progress
    _cursor: int = 0  # the last id looked at in that table
    _cutoff: float = 0.0
    _retry_at: float = 0.0

    def wait(self, now: float) -> float:
        """Seconds until a step is due (0: now)."""
        if self._table >= 0:
            return max(0.0, self._retry_at - now)
        return max(0.0, self._next - now)

    def failed(self, now: float, delay: float) -> None:
        """The step at `now` failed (locked, I/O error): try again `delay` seconds later, not in a
        tight loop."""
        self._retry_at = now + delay

    def step(self, con: sqlite3.Connection, now: float, wall: float, run_id: int) -> list[SessionKey]:
        """One transaction of pruning on `con` (autocommit mode, no transaction open), at
        monotonic `now` and wall-clock `wall`.  Returns the sessions deleted: the caller must
        forget them from its caches (they would be read back from the database if used again).
        On an exception the transaction is rolled back and the step is tried again next time
        (after `failed()`)."""
        if self._table < 0:
            if now < self._next:
                return []
            self._table, self._cursor, self._cutoff = 0, 0, wall - self.retain
        t = _TABLES[self._table]
        args = {"cutoff": self._cutoff, "run": run_id}
        gone: list[SessionKey] = []
        con.execute("BEGIN IMMEDIATE")
        try:
            cols = "id" if t.order is None else f"id, {t.order}"
            rows = con.execute(f"SELECT {cols} FROM {t.name} WHERE id > ? ORDER BY id LIMIT ?",
                               (self._cursor, self.chunk)).fetchall()
            if rows:
                window = {**args, "lo": self._cursor, "hi": rows[-1][0]}
                where = f"id > :lo AND id <= :hi AND {t.old}"
                if t.name == "sessions":
                    gone = [(str(c), str(s)) for c, s in
                            con.execute(f"SELECT client_id, session FROM sessions WHERE {where}", window)]
                n = con.execute(f"DELETE FROM {t.name} WHERE {where}", window).rowcount
                self.deleted[t.name] = self.deleted.get(t.name, 0) + max(0, n)
            # Rows come in `id` order, and for an ordered table in time order too: past the
            # cutoff, the rest of the table is newer.
            done = len(rows) < self.chunk or (t.order is not None and rows[-1][1] >= self._cutoff)
            if done and self._table == len(_TABLES) - 1:
                # Runs with nothing left of them (connections are in run order): the last step.
                n = con.execute(
                    "DELETE FROM runs WHERE id != :run AND started_at < :cutoff "
                    "AND (ended_at IS NULL OR ended_at < :cutoff) "
                    "AND id < coalesce((SELECT run_id FROM connections ORDER BY id LIMIT 1), :run)", args).rowcount
                self.deleted["runs"] = self.deleted.get("runs", 0) + max(0, n)
            con.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                con.execute("ROLLBACK")
            raise
        if not done:
            self._cursor = rows[-1][0]
        elif self._table == len(_TABLES) - 1:
            self._table = -1
            self._next = now + self.every
            self.cycles += 1
        else:
            self._table += 1
            self._cursor = 0
        return gone
