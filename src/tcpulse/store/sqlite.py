"""The durable store: SQLite in WAL mode, written by one thread of its own.

    store = SQLiteStore("tcpulse.db")
    server = Server(config, store=store)      # or server.use_store(store) before start()

The event loop never touches the database.  It appends what happens to a list; once per loop
iteration that list goes to the writer thread, which writes everything waiting in one transaction
(group commit) and only then reports, back in the loop, the highest stored `seq` per
`(id, session)`; the server sends `ACK` from there (PROTOCOL.md, "Delivery").  A slow disk
therefore delays acknowledgements, never heartbeats or deadlines.

When a transaction fails (database locked by another process, disk full, I/O error) the writer
keeps the batch, reports `failing`, and tries the same batch again every `retry_every` seconds
until it commits; then it reports recovery.  Nothing is acknowledged that is not committed.

Reads that the server needs (`acked()`) run on a second connection in a thread of their own; WAL
lets them proceed while the writer writes.  The schema is in `docs/store.md` (and `schema`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import fcntl
import os
import queue
import sqlite3
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

from tcpulse.errors import N_, ConfigError
from tcpulse.store import files
from tcpulse.store.base import SessionKey, StoreOpenError, StoreUnavailable
from tcpulse.store.retention import PRUNE_EVERY, Pruner, parse_duration, parse_size
from tcpulse.store.schema import APPLICATION_ID, MIGRATIONS, SCHEMA_VERSION, statements
from tcpulse.store.writer import STOP, Flush, WriterStore

__all__ = ["APPLICATION_ID", "SCHEMA_VERSION", "SQLiteStore", "check_database", "open_reader"]

#: Most operations in one transaction: bounds the time a commit holds the write lock.
MAX_BATCH = 50_000

#: Sessions whose row id and high the writer keeps in memory; beyond, the least recently used are
#: forgotten (the database keeps them, and they are read back when used again).  About 400 bytes
#: each: 50,000 hold far more than the clients one server serves at once, in some 20 MB.
MAX_SESSIONS = 50_000

#: Seconds between WAL checkpoints while writing (in the checkpointer thread).
CHECKPOINT_EVERY = 1.0

#: The WAL's size past which the writer restarts it (`wal_checkpoint(RESTART)`, between two of its
#: transactions).  The checkpointer's PASSIVE checkpoints copy the WAL into the database but never
#: rewind it while the writer keeps appending, so under a steady flood the WAL grew without end
#: (1.3 GB after a minute of one numbered sender), and its index (`-shm`, mapped into the
#: server's memory) with it.  A restart waits for readers, never for the loop.
WAL_LIMIT = 64 << 20

#: Message rows per INSERT statement: one statement of many rows costs about 40 % less per row
#: than a statement per row (bench/RESULTS.md); 100 x 5 parameters stay below SQLite's 999.
ROWS_PER_INSERT = 100
ROW_PARAMS = 5
_INSERT = "INSERT INTO messages(session_id, seq, connection_id, received_at, payload) VALUES "
_INSERT_MANY = _INSERT + ",".join(["(?, ?, ?, ?, ?)"] * ROWS_PER_INSERT)
_INSERT_ONE = _INSERT + "(?, ?, ?, ?, ?)"


def _insert_messages(con: sqlite3.Connection, flat: list[Any]) -> None:
    """Insert message rows given as one flat parameter list, in order."""
    step = ROWS_PER_INSERT * ROW_PARAMS
    full = len(flat) // step * step
    if full:
        con.executemany(_INSERT_MANY, (flat[i:i + step] for i in range(0, full, step)))
    if full < len(flat):
        con.executemany(_INSERT_ONE, (flat[i:i + ROW_PARAMS] for i in range(full, len(flat), ROW_PARAMS)))



def open_reader(path: str) -> sqlite3.Connection:
    """A connection that only reads `path` (never creates it).  Opened read-write with
    `query_only` where it can be, so that when it is the last connection to close, SQLite folds
    the WAL back and removes the `-wal` and `-shm` files instead of leaving them behind; read-only
    where the file cannot be written.  A symbolic link as the database or beside it (`-wal`,
    `-shm`, `-journal`) is refused, not followed (files.check_no_links)."""
    real = files.real_path(path)
    files.check_no_links(real)
    uri = Path(real).as_uri()
    try:
        con = sqlite3.connect(uri + "?mode=rw", uri=True)
        con.execute("PRAGMA query_only=ON")
    except sqlite3.OperationalError:
        con = sqlite3.connect(uri + "?mode=ro", uri=True)
    return con


def check_database(path: str) -> tuple[int, int]:
    """Open `path` read-only and return `(application_id, user_version)`.  Raises StoreOpenError
    with a one-line explanation if it is missing or not an SQLite database."""
    if not os.path.exists(path):
        raise StoreOpenError("missing", N_("database {path} does not exist: give the --db the server was started "
                                           "with"), path=path)
    try:
        con = open_reader(path)
        try:
            app = con.execute("PRAGMA application_id").fetchone()[0]
            ver = con.execute("PRAGMA user_version").fetchone()[0]
        finally:
            con.close()
    except sqlite3.DatabaseError as e:
        raise StoreOpenError("not-sqlite", N_("{path} is not an SQLite database ({error}): give a tcpulse --db file"),
                             path=path, error=e) from e
    return int(app), int(ver)


class SQLiteStore(WriterStore):
    """Keeps connections, timeouts and messages in an SQLite file (see module docstring).

    `busy_timeout`: how long a write waits for a lock held by another process before the store
    counts as failing.  `retry_every`: how often a failing store tries again.  `max_page_count`:
    a cap on the file's size in pages (tests use it to simulate a full disk).

    Retention (store/retention.py; the library keeps everything unless told): `retain`, seconds
    (or "7d") after which rows are deleted, checked every `prune_every` seconds; `max_size`,
    bytes (or "4G") the file may not grow beyond: at the limit the store fails as on a full disk
    (numbered senders get `ERR 503`) until retention frees space.  `max_sessions`: sessions kept
    in memory (MAX_SESSIONS).  Raises ConfigError for a value that cannot work."""

    durable = True
    immediate = False

    def __init__(self, path: str, *, busy_timeout: float = 1.0, retry_every: float = 0.25,
                 max_page_count: int | None = None, server_id: str = "", retain: float | str | None = None,
                 max_size: int | str | None = None, max_sessions: int = MAX_SESSIONS,
                 prune_every: float = PRUNE_EVERY, wal_limit: int = WAL_LIMIT) -> None:
        super().__init__()
        self.path = path
        #: Bytes of WAL past which the writer rewinds it (WAL_LIMIT); `wal_restarts` counts them.
        self.wal_limit = wal_limit
        self.wal_restarts = 0
        self.retain = parse_duration(retain, setting="retain")
        self.max_size = parse_size(max_size, setting="max_size")
        if max_sessions < 1:
            raise ConfigError("too-small", N_("{field} must be at least 1 (got {value})"),
                              names={"field": "max_sessions"}, value=max_sessions)
        self.max_sessions = max_sessions
        self._pruner = None if self.retain is None else Pruner(self.retain, every=prune_every)
        self.busy_timeout = busy_timeout
        self.retry_every = retry_every
        self.max_page_count = max_page_count
        self.server_id = server_id
        #: Sessions forgotten from memory (MAX_SESSIONS), not from the database.
        self.evicted = 0
        #: Figures for the curious (bench, admin): transactions committed and rows in them.
        self.commits = 0
        self.committed_messages = 0
        self._reader_local = threading.local()
        self._run_id = 0
        # Owned by the writer thread; the loop only reads `_high` (a dict get is atomic).  Both
        # hold only what is committed, have the same keys, and are bounded by `max_sessions`
        # (least recently used first out, in `_sid`'s order): see `_forget()`.
        self._high: dict[SessionKey, int] = {}
        self._sid: OrderedDict[SessionKey, int] = OrderedDict()
        self._conn_rows: dict[int, int] = {}
        self._lock_fd = -1
        #: The database's real path (files.real_path), set when it is opened.
        self._file = path
        self._ckpt_wake = threading.Event()
        self._ckpt_stop = False
        self._ckpt_thread: threading.Thread | None = None
        self._ckpt_last = 0.0

    # ---------------------------------------------------------------- Store interface (loop side)

    async def acked(self, client_id: str, session: str) -> int:
        key = (client_id, session)
        high = self._high.get(key)
        if high is not None:
            return high
        assert self._reader is not None, "open() first"
        try:
            return await asyncio.wrap_future(self._reader.submit(self._read_high, key))
        except sqlite3.Error as e:
            raise StoreUnavailable(f"cannot read {self.path}: {e}") from e

    # ---------------------------------------------------------------- the writer thread

    def _connect(self) -> sqlite3.Connection:
        # The real path, checked by files.prepare_database() before the first connection.
        con = sqlite3.connect(self._file, isolation_level=None, check_same_thread=False,
                              timeout=self.busy_timeout)
        con.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
        return con

    def _writer_main(self, ready: concurrent.futures.Future[None]) -> None:
        try:
            con = self._open_db()
        except BaseException as e:  # hand every failure to open() in the loop
            self._unlock()
            ready.set_exception(e)
            return
        self._ckpt_thread = threading.Thread(target=self._checkpointer, daemon=True, name="tcpulse-store-ckpt")
        self._ckpt_thread.start()
        ready.set_result(None)
        try:
            self._writer_loop(con)
        finally:
            self._ckpt_stop = True
            self._ckpt_wake.set()
            self._ckpt_thread.join(10.0)
            self._end_run(con)
            with contextlib.suppress(sqlite3.Error):
                con.close()
            self._unlock()

    def _checkpointer(self) -> None:
        con: sqlite3.Connection | None = None
        while True:
            self._ckpt_wake.wait()
            self._ckpt_wake.clear()
            if self._ckpt_stop:
                break
            with contextlib.suppress(sqlite3.Error):
                if con is None:
                    con = self._connect()
                # PASSIVE: copies what it can without waiting for, or blocking, the writer.
                con.execute("PRAGMA wal_checkpoint(PASSIVE)")
        if con is not None:
            con.close()

    def _bound_wal(self, con: sqlite3.Connection) -> None:
        # Writer thread, between transactions: rewind a WAL grown past `wal_limit` (WAL_LIMIT).
        try:
            size = os.stat(self._file + "-wal").st_size
        except OSError:
            return
        if size <= self.wal_limit:
            return
        with contextlib.suppress(sqlite3.Error):
            busy = con.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()[0]
            if not busy:
                self.wal_restarts += 1

    def _lock(self) -> None:
        # One server per database: the writer's own record of each session's high is what keeps
        # a seq from being stored twice, so no second writer may exist (PROTOCOL.md, "Delivery").
        # The lock is next to the database's real path, checked and never through a link
        # (files.open_lock), so that two names of one file share one lock.  It lives only while
        # it is held (_unlock removes it), so a failed start leaves none behind; a lock taken on a
        # file that its holder removed meanwhile is taken again on the new one.
        lock_path = self._file + files.LOCK_SUFFIX
        while True:
            fd = files.open_lock(self._file)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise StoreOpenError("in-use", N_("{path} is in use by another tcpulse server: stop it or choose "
                                                  "another --db"), path=self.path) from None
            try:
                same = os.fstat(fd).st_ino == os.lstat(lock_path).st_ino
            except OSError:
                same = False
            if same:
                files.make_lock_private(fd)
                self._lock_fd = fd
                return
            os.close(fd)

    def _unlock(self) -> None:
        if self._lock_fd >= 0:
            # Removed while still held, so that no other server can hold the removed file.
            with contextlib.suppress(OSError):
                os.unlink(self._file + files.LOCK_SUFFIX)
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)
            self._lock_fd = -1

    def _open_db(self) -> sqlite3.Connection:
        path = self.path
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            raise StoreOpenError("no-directory", N_("cannot create {path}: directory {parent} does not exist "
                                                    "(create it or choose another --db)"), path=path, parent=parent)
        if os.path.isdir(path):
            raise StoreOpenError("is-directory", N_("{path} is a directory: give --db a file in it, e.g. "
                                                    "{example}"), path=path, example=os.path.join(path, "tcpulse.db"))
        self._file = files.real_path(path)
        warnings = files.check_directory(self._file)
        files.check_database_files(self._file)  # before the lock: a refused name leaves no lock behind
        self._lock()
        warnings += files.prepare_database(self._file)
        self.warnings = warnings
        try:
            con = self._connect()
            app = con.execute("PRAGMA application_id").fetchone()[0]
            ver = con.execute("PRAGMA user_version").fetchone()[0]
            tables = con.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        except sqlite3.DatabaseError as e:
            raise StoreOpenError("unusable", N_("cannot use {path} as the database: {error} "
                                                "(choose another --db, or --db none to keep nothing)"),
                                 path=path, error=e) from e
        if app != APPLICATION_ID and (app != 0 or tables):
            con.close()
            raise StoreOpenError("foreign", N_("{path} is not a tcpulse database: choose another --db "
                                               "(or --db none to keep nothing)"), path=path)
        if ver > SCHEMA_VERSION:
            con.close()
            raise StoreOpenError("newer-schema", N_("{path} has schema version {version}, newer than this tcpulse "
                                                    "understands ({known}): upgrade tcpulse or choose another --db"),
                                 path=path, version=ver, known=SCHEMA_VERSION)
        try:
            mode = con.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreOpenError("no-wal", N_("cannot switch {path} to WAL mode (got {mode})"), path=path,
                                     mode=mode)
            # WAL + NORMAL: a commit survives a crash of the process (what the ACK promises
            # against kill -9); after a power cut the last transactions may roll back.
            con.execute("PRAGMA synchronous=NORMAL")
            # Checkpoints (copying the WAL into the database, with an fsync) run in a thread of
            # their own (_checkpointer), not in the commit that happens to cross the threshold:
            # the writer goes on while they copy.  They cost ~15 % of ingest when inline.
            con.execute("PRAGMA wal_autocheckpoint = 0")
            con.execute(f"PRAGMA journal_size_limit = {self.wal_limit}")  # the file, once rewound
            limit = self._page_limit(con)
            if limit is not None:
                # A file already bigger keeps its size (SQLite never sets the cap below it).
                con.execute(f"PRAGMA max_page_count = {limit}")
            for v in range(ver, SCHEMA_VERSION):
                con.execute("BEGIN IMMEDIATE")
                for stmt in statements(MIGRATIONS[v]):
                    con.execute(stmt)
                con.execute(f"PRAGMA user_version = {v + 1}")
                con.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                con.execute("COMMIT")
            con.execute("BEGIN IMMEDIATE")
            now = time.time()
            # Connections left open by a run that is gone (killed) ended with it.
            con.execute("UPDATE connections SET end_reason = 'server-gone' WHERE ended_at IS NULL "
                        "AND end_reason IS NULL AND run_id IN (SELECT id FROM runs WHERE ended_at IS NULL)")
            cur = con.execute("INSERT INTO runs(server_id, pid, started_at) VALUES (?, ?, ?)",
                              (self.server_id, os.getpid(), now))
            self._run_id = int(cur.lastrowid or 0)
            con.execute("COMMIT")
        except sqlite3.Error as e:
            with contextlib.suppress(sqlite3.Error):
                con.execute("ROLLBACK")
            con.close()
            raise StoreOpenError("unwritable", N_("cannot write {path}: {error} (is another program holding it? "
                                                  "choose another --db, or --db none to keep nothing)"),
                                 path=path, error=e) from e
        return con

    def _page_limit(self, con: sqlite3.Connection) -> int | None:
        """The cap on the file's pages: `max_page_count`, `max_size` in pages, the lower of both."""
        caps = []
        if self.max_page_count is not None:
            caps.append(int(self.max_page_count))
        if self.max_size is not None:
            page = int(con.execute("PRAGMA page_size").fetchone()[0])
            caps.append(max(1, self.max_size // page))
        return min(caps) if caps else None

    def _failure_text(self, con: sqlite3.Connection, e: BaseException) -> str:
        """Why a transaction failed, for the log: at the size limit, say so (SQLite only says full)."""
        if self.max_size is not None and isinstance(e, sqlite3.OperationalError) and "full" in str(e):
            with contextlib.suppress(sqlite3.Error, OSError):
                # The failed transaction was rolled back, so the file may be below its cap now:
                # it is the cap that stopped it if the disk has room for more than the cap allows.
                page = int(con.execute("PRAGMA page_size").fetchone()[0])
                room = int(con.execute("PRAGMA max_page_count").fetchone()[0]) - int(
                    con.execute("PRAGMA page_count").fetchone()[0])
                disk = os.statvfs(os.path.dirname(self._file))
                if disk.f_bavail * disk.f_frsize > room * page:
                    keep = "until retention frees space" if self.retain is not None else "until space is freed"
                    return (f"cannot write {self.path}: it has reached its size limit of {self.max_size} bytes "
                            f"(max_size, serve --max-db-size); not acknowledging {keep} (numbered senders are "
                            "told ERR 503)")
        return (f"cannot write {self.path}: {e}; not acknowledging until it can (numbered senders are told "
                "ERR 503)")

    def _take(self) -> list[Any]:
        """The next list of operations; with retention on, [] when a pruning step is due first."""
        pruner = self._pruner
        if pruner is None:
            return self._q.get()
        wait = pruner.wait(time.monotonic())
        try:
            return self._q.get(timeout=wait) if wait > 0 else self._q.get_nowait()
        except queue.Empty:
            return []

    def _prune(self, con: sqlite3.Connection) -> None:
        """One pruning step if one is due (writer thread, between transactions).  A failure is
        left for the next step: pruning never fails the store."""
        pruner = self._pruner
        if pruner is None or pruner.wait(time.monotonic()) > 0:
            return
        try:
            gone = pruner.step(con, time.monotonic(), time.time(), self._run_id)
        except sqlite3.Error:
            pruner.failed(time.monotonic(), max(self.retry_every, 0.01))
            return
        for key in gone:  # deleted from the database: read back (as new) if used again
            self._sid.pop(key, None)
            self._high.pop(key, None)

    def _writer_loop(self, con: sqlite3.Connection) -> None:
        held: list[Any] = []
        stopping = False
        failed_since = 0.0
        while True:
            if held:
                # Failing: try the same batch again, in the same order, with what came since.
                ops = held
                self._drain(ops, None)
            else:
                ops = self._take()
                if not ops:
                    self._prune(con)
                    continue
                # Group commit: everything waiting (up to a bound) goes into this transaction.
                self._drain(ops, MAX_BATCH)
            if ops and ops[-1] is STOP:  # close() queues it last, after everything else
                stopping = True
                ops.pop()
            try:
                self._write(con, ops)
            except Exception as e:
                # Not only sqlite3.Error: the writer must never die silently.  Any failure is
                # reported, stops acknowledgements and is retried, like a full disk.
                with contextlib.suppress(sqlite3.Error):
                    con.execute("ROLLBACK")
                if not self.failing:
                    failed_since = time.monotonic()
                    self.failing = True  # seen at once by add_message(); the loop learns why next
                    self._report(self._state_changed, True, self._failure_text(con, e))
                if stopping:
                    if time.monotonic() - failed_since > 2.0:
                        return  # shutting down: what is held was never acknowledged; clients resend it
                    ops.append(STOP)
                held = ops
                self._prune(con)  # at the size limit, what retention frees is what lets it recover
                time.sleep(self.retry_every)
                continue
            held = []
            if self.failing:
                self.failing = False
                self._report(self._state_changed, False,
                             f"{self.path} can be written again after {time.monotonic() - failed_since:.1f} s; "
                             "acknowledging again")
            if stopping:
                return
            self._prune(con)

    def _write(self, con: sqlite3.Connection, ops: list[Any]) -> None:
        """Write `ops` in one transaction; on success update the caches and report commits."""
        high = self._high
        sid = self._sid
        rows = self._conn_rows
        new_high: dict[SessionKey, int] = {}
        new_sid: dict[SessionKey, int] = {}
        new_rows: dict[int, int] = {}
        ended: list[int] = []
        flushes: list[Flush] = []
        msgs: list[Any] = []  # the parameters of every message row, flat: ROW_PARAMS per row
        touched: set[SessionKey] = set()
        done = 0  # backlog bytes this transaction takes off the loop's count
        con.execute("BEGIN IMMEDIATE")
        # Hot loop.  Each item is one read's messages from one connection; consecutive items
        # often come from the same one, so its session row, connection row and running high
        # are looked up once per run.
        run_conn, run_cid = -1, ""
        run_sess: str | None = ""
        key: SessionKey = ("", "")
        s = conn_row = 0
        top = -1  # running high of `key`; -1: no run yet
        extend = msgs.extend
        for op in ops:
            if type(op) is tuple and op[0] == "m":
                _, cid, sess, conn_id, at, items, size = op
                done += size
                if conn_id != run_conn or cid is not run_cid or sess is not run_sess:
                    if top >= 0:
                        new_high[key] = top
                    run_conn, run_cid, run_sess = conn_id, cid, sess
                    key = (cid, sess or "")
                    got = new_sid.get(key) or sid.get(key)
                    if got is None:
                        got, stored = self._session_row(con, key)
                        new_sid[key] = got
                        if key not in high:
                            new_high[key] = stored
                    s = got
                    conn_row = new_rows.get(conn_id) or rows.get(conn_id) or 0
                    h = new_high.get(key)
                    top = high.get(key, 0) if h is None else h
                    if sess is not None:
                        touched.add(key)
                row = conn_row or None
                for m in items:
                    seq = m.seq
                    if seq is not None:
                        if seq <= top:
                            continue  # stored already: the commit report re-acknowledges it
                        top = seq
                    extend((s, seq, row, at, m.payload))
            elif type(op) is tuple:
                if op[0] == "c":
                    self._write_connection(con, op, rows, new_rows, ended)
                else:
                    _, conn_id, client_id, at, silent, late, phi = op
                    trow = new_rows.get(conn_id) or rows.get(conn_id)
                    con.execute("INSERT INTO timeouts(connection_id, client_id, at, silent_for, late_by, phi) "
                                "VALUES (?, ?, ?, ?, ?, ?)", (trow, client_id, at, silent, late, phi))
            elif type(op) is Flush:
                flushes.append(op)
        if top >= 0:
            new_high[key] = top
        n_msgs = len(msgs) // ROW_PARAMS
        if msgs:
            _insert_messages(con, msgs)
        if new_high:
            # Every session used (its key is in new_high): its high, and when it was last used
            # (retention forgets sessions idle for longer than `retain`).
            wall = time.time()
            con.executemany("UPDATE sessions SET high = max(high, ?), last_at = ? WHERE id = ?",
                            [(h, wall, new_sid.get(k) or sid[k]) for k, h in new_high.items()])
        con.execute("COMMIT")
        # Committed: only now may anything be acknowledged (PROTOCOL.md, "Delivery").
        sid.update(new_sid)
        high.update(new_high)
        for k in new_high:
            sid.move_to_end(k)  # most recently used last: the first to be forgotten are the idlest
        rows.update(new_rows)
        for c in ended:
            rows.pop(c, None)
        self.commits += 1
        now = time.monotonic()
        if now - self._ckpt_last > CHECKPOINT_EVERY:
            self._ckpt_last = now
            self._ckpt_wake.set()
        self.committed_messages += n_msgs
        # Every session with a numbered message in this batch gets its high, duplicates included:
        # a duplicate is acknowledged again by an ACK of the highest stored seq.
        highs = {k: high.get(k, 0) for k in touched}
        self._forget()  # after `highs`: what was just committed is reported whatever is forgotten
        if highs or flushes or done:
            self._report(self._committed, highs, flushes, done)
        self._bound_wal(con)  # after the ACKs are on their way: they never wait for it

    def _forget(self) -> None:
        """Keep at most `max_sessions` sessions in memory: the least recently used go first.  Safe
        at any moment between transactions, in-flight messages or not: the caches hold only what
        is committed, and a session used again is read back from `sessions`, which is the truth
        (the writer, the only one that stores, reads it in the same transaction that writes)."""
        sid, high = self._sid, self._high
        over = len(sid) - self.max_sessions
        while over > 0:
            key, _ = sid.popitem(last=False)
            high.pop(key, None)
            self.evicted += 1
            over -= 1

    def _session_row(self, con: sqlite3.Connection, key: SessionKey) -> tuple[int, int]:
        row = con.execute("SELECT id, high FROM sessions WHERE client_id = ? AND session = ?", key).fetchone()
        if row is not None:
            return int(row[0]), int(row[1])
        cur = con.execute("INSERT INTO sessions(client_id, session, last_at) VALUES (?, ?, ?)", (*key, time.time()))
        return int(cur.lastrowid or 0), 0

    def _write_connection(self, con: sqlite3.Connection, op: tuple[Any, ...], rows: dict[int, int],
                          new_rows: dict[int, int], ended: list[int]) -> None:
        _, conn_id, client_id, addr, connected_at, ended_at, reason, beats, msgs, rtt, detail = op
        row = new_rows.get(conn_id) or rows.get(conn_id)
        if row is None:
            cur = con.execute("INSERT INTO connections(run_id, client_id, addr, connected_at) VALUES (?, ?, ?, ?)",
                              (self._run_id, client_id, addr, connected_at))
            row = int(cur.lastrowid or 0)
            new_rows[conn_id] = row
        if ended_at is None:
            if client_id is not None:  # HELLO: the connection now has a name
                con.execute("UPDATE connections SET client_id = ? WHERE id = ?", (client_id, row))
            return
        con.execute("UPDATE connections SET client_id = ?, ended_at = ?, end_reason = ?, detail = ?, "
                    "heartbeats = ?, messages = ?, rtt = ? WHERE id = ?",
                    (client_id, ended_at, reason, detail, beats, msgs, rtt, row))
        ended.append(conn_id)

    def _end_run(self, con: sqlite3.Connection) -> None:
        with contextlib.suppress(sqlite3.Error):
            con.execute("UPDATE runs SET ended_at = ? WHERE id = ?", (time.time(), self._run_id))
            con.execute("UPDATE connections SET end_reason = 'shutdown', ended_at = ? "
                        "WHERE run_id = ? AND ended_at IS NULL", (time.time(), self._run_id))
            con.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    # ---------------------------------------------------------------- the reader thread

    def _read_high(self, key: SessionKey) -> int:
        con = getattr(self._reader_local, "con", None)
        if con is None:
            con = self._reader_local.con = self._connect()
        row = con.execute("SELECT high FROM sessions WHERE client_id = ? AND session = ?", key).fetchone()
        return 0 if row is None else int(row[0])

    def _close_reader(self) -> None:
        con = getattr(self._reader_local, "con", None)
        if con is not None:
            con.close()

