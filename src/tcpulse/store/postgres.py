"""The shared store: PostgreSQL, written by a thread of its own (`serve --db postgresql://...`).

    store = PostgresStore("postgresql://tcpulse@127.0.0.1:5432/tcpulse")
    server = Server(config, store=store)

Every node of a cluster (and every worker of `serve --workers`) can write one database, so the
rule "a `(id, session, seq)` is stored once" (PROTOCOL.md, "Delivery") cannot rest on one
writer's memory as it does in `sqlite.py`: the database enforces it.  Each transaction

1. upserts the `sessions` rows it touches, in key order, which locks them (`ON CONFLICT DO
   UPDATE ... RETURNING high`): two nodes storing the same session queue behind each other, and
   each reads the high the other committed;
2. stores only the `seq`s above that high, with `ON CONFLICT DO NOTHING` on the unique index
   `messages (session_id, seq)` as the last word;
3. raises `sessions.high`, and commits.  Only then are the ACKs sent.

So `acked` in `OK` (read from `sessions.high`) is right on whichever node the client reaches.
The model is the SQLite store: the event loop only appends to a list that goes to the writer
thread once per loop iteration (group commit), `backlog` counts what is not committed yet (flow
control), and when PostgreSQL cannot be reached the store reports `failing` (numbered senders
get `ERR 503`), keeps its batch, reconnects and tries it again.  docs/cluster.md has the schema.

Needs the `cluster` extra (psycopg 3); importing this module without it raises ImportError.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import time
from typing import Any

import psycopg

from tcpulse.errors import N_
from tcpulse.store.base import SessionKey, StoreOpenError, StoreUnavailable
from tcpulse.store.dsn import is_postgres_url, redact
from tcpulse.store.writer import STOP, Flush, WriterStore

__all__ = ["MAX_BATCH", "PG_SCHEMA_VERSION", "PostgresStore", "is_postgres_url", "read_rows", "redact"]

#: Most operations in one transaction (as sqlite.MAX_BATCH).
MAX_BATCH = 50_000
#: The schema version this module writes (the table `tcpulse_schema`).
PG_SCHEMA_VERSION = 1
#: Seconds a connection attempt may take before the store counts as unreachable.
CONNECT_TIMEOUT = 5


#: The tables, created by the first node that opens the database (under an advisory lock, so
#: that nodes starting together do not race).  Times are seconds since the epoch, as in SQLite.
SCHEMA = """
CREATE TABLE IF NOT EXISTS tcpulse_schema (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id          BIGSERIAL PRIMARY KEY,
    server_id   TEXT NOT NULL,
    pid         INTEGER NOT NULL,
    started_at  DOUBLE PRECISION NOT NULL,
    ended_at    DOUBLE PRECISION
);
CREATE TABLE IF NOT EXISTS connections (
    id           BIGSERIAL PRIMARY KEY,
    run_id       BIGINT NOT NULL REFERENCES runs(id),
    client_id    TEXT,
    addr         TEXT NOT NULL,
    connected_at DOUBLE PRECISION NOT NULL,
    ended_at     DOUBLE PRECISION,
    end_reason   TEXT,
    detail       TEXT,
    heartbeats   BIGINT NOT NULL DEFAULT 0,
    messages     BIGINT NOT NULL DEFAULT 0,
    rtt          DOUBLE PRECISION
);
CREATE INDEX IF NOT EXISTS connections_client ON connections(client_id, connected_at);
CREATE INDEX IF NOT EXISTS connections_at ON connections(connected_at);
CREATE TABLE IF NOT EXISTS timeouts (
    id            BIGSERIAL PRIMARY KEY,
    connection_id BIGINT REFERENCES connections(id),
    client_id     TEXT,
    at            DOUBLE PRECISION NOT NULL,
    silent_for    DOUBLE PRECISION NOT NULL,
    late_by       DOUBLE PRECISION NOT NULL,
    phi           DOUBLE PRECISION
);
CREATE INDEX IF NOT EXISTS timeouts_connection ON timeouts(connection_id);
CREATE TABLE IF NOT EXISTS sessions (
    id        BIGSERIAL PRIMARY KEY,
    client_id TEXT NOT NULL,
    session   TEXT NOT NULL,
    high      BIGINT NOT NULL DEFAULT 0,
    last_at   DOUBLE PRECISION,
    UNIQUE (client_id, session)
);
CREATE TABLE IF NOT EXISTS messages (
    id            BIGSERIAL PRIMARY KEY,
    session_id    BIGINT NOT NULL REFERENCES sessions(id),
    seq           BIGINT,
    connection_id BIGINT,
    received_at   DOUBLE PRECISION NOT NULL,
    payload       BYTEA NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS messages_session_seq ON messages(session_id, seq) WHERE seq IS NOT NULL;
"""
#: pg_advisory_xact_lock key of schema creation ("tcpu").
_SCHEMA_LOCK = 0x74637075

_UPSERT_SESSIONS = (
    "INSERT INTO sessions(client_id, session, last_at) "
    "SELECT c, s, %(at)s FROM unnest(%(c)s::text[], %(s)s::text[]) AS k(c, s) ORDER BY c, s "
    "ON CONFLICT (client_id, session) DO UPDATE SET last_at = EXCLUDED.last_at "
    "RETURNING id, client_id, session, high")
_COPY_MESSAGES = "COPY messages(session_id, seq, connection_id, received_at, payload) FROM STDIN"
#: The same rows when COPY met a row stored already (it cannot skip one): never in normal work,
#: since the session rows are locked and only seqs above their high are sent; kept so that a
#: batch is never refused for ever.
_INSERT_MESSAGES = (
    "INSERT INTO messages(session_id, seq, connection_id, received_at, payload) "
    "SELECT * FROM unnest(%s::bigint[], %s::bigint[], %s::bigint[], %s::float8[], %s::bytea[]) "
    "ON CONFLICT (session_id, seq) WHERE seq IS NOT NULL DO NOTHING")
_RAISE_HIGHS = (
    "UPDATE sessions SET high = GREATEST(sessions.high, v.h) "
    "FROM unnest(%s::bigint[], %s::bigint[]) AS v(i, h) WHERE sessions.id = v.i")



class PostgresStore(WriterStore):
    """Keeps connections, timeouts and messages in PostgreSQL (see the module docstring).

    `retry_every`: seconds between attempts while the database cannot be written.  `server_id`
    is recorded in the `runs` table."""

    durable = True
    immediate = False
    thread_name = "tcpulse-store-pg"

    def __init__(self, url: str, *, server_id: str = "", retry_every: float = 0.25) -> None:
        super().__init__()
        self.url = url
        self.name = redact(url)
        self.server_id = server_id
        self.retry_every = retry_every
        #: Transactions committed and message rows in them; numbered messages the database
        #: refused as stored already (a duplicate another node or an earlier batch stored).
        self.commits = 0
        self.committed_messages = 0
        self.duplicates = 0
        self._reader_con: psycopg.Connection[Any] | None = None
        self._run_id = 0
        # Writer thread only: the database row of each of this run's connections.
        self._conn_rows: dict[int, int] = {}

    # ---------------------------------------------------------------- Store interface (loop side)

    async def acked(self, client_id: str, session: str) -> int:
        """`sessions.high`, read from the database every time: another node may have stored
        more of this session since this one last looked."""
        assert self._reader is not None, "open() first"
        try:
            return await asyncio.wrap_future(self._reader.submit(self._read_high, (client_id, session)))
        except psycopg.Error as e:
            raise StoreUnavailable(f"cannot read {self.name}: {_one_line(e)}") from e

    # ---------------------------------------------------------------- the writer thread

    def _connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT,
                               application_name="tcpulse")

    def _open_db(self) -> psycopg.Connection[Any]:
        try:
            con = self._connect()
        except psycopg.Error as e:
            raise StoreOpenError("unreachable", N_("cannot connect to {url}: {error} (is PostgreSQL running, and "
                                                   "may this user connect? check --db)"),
                                 url=self.name, error=_one_line(e)) from e
        try:
            with con.transaction():
                con.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                con.execute(SCHEMA)
                row = con.execute("SELECT max(version) FROM tcpulse_schema").fetchone()
                version = None if row is None else row[0]
                if version is None:
                    con.execute("INSERT INTO tcpulse_schema(version) VALUES (%s)", (PG_SCHEMA_VERSION,))
                elif version > PG_SCHEMA_VERSION:
                    raise StoreOpenError("newer-schema", N_("{path} has schema version {version}, newer than this "
                                                            "tcpulse understands ({known}): upgrade tcpulse or "
                                                            "choose another --db"),
                                         path=self.name, version=version, known=PG_SCHEMA_VERSION)
                row = con.execute("INSERT INTO runs(server_id, pid, started_at) VALUES (%s, %s, %s) RETURNING id",
                                  (self.server_id, os.getpid(), time.time())).fetchone()
                self._run_id = int(row[0]) if row else 0
        except StoreOpenError:
            con.close()
            raise
        except psycopg.Error as e:
            con.close()
            raise StoreOpenError("unwritable", N_("cannot write {path}: {error} (may this user create tables? "
                                                  "choose another --db, or --db none to keep nothing)"),
                                 path=self.name, error=_one_line(e)) from e
        return con

    def _writer_main(self, ready: concurrent.futures.Future[None]) -> None:
        try:
            con: psycopg.Connection[Any] | None = self._open_db()
        except BaseException as e:
            ready.set_exception(e)
            return
        ready.set_result(None)
        held: list[Any] = []
        stopping = False
        failed_since = 0.0
        try:
            while True:
                if held:
                    ops = held
                    self._drain(ops, None)
                else:
                    ops = self._q.get()
                    self._drain(ops, MAX_BATCH)
                if ops and ops[-1] is STOP:
                    stopping = True
                    ops.pop()
                try:
                    if con is None or con.closed:
                        con = self._connect()
                    self._write(con, ops)
                except Exception as e:
                    # Not only psycopg.Error: the writer must never die silently.  The batch is
                    # kept and tried again, on a new connection if this one broke.
                    if con is not None and con.broken:
                        with contextlib.suppress(Exception):
                            con.close()
                        con = None
                    if not self.failing:
                        failed_since = time.monotonic()
                        self.failing = True
                        self._report(self._state_changed, True,
                                     f"cannot write {self.name}: {_one_line(e)}; not acknowledging until it can "
                                     "(numbered senders are told ERR 503)")
                    if stopping:
                        if time.monotonic() - failed_since > 2.0:
                            return  # never acknowledged: the clients send it again
                        ops.append(STOP)
                    held = ops
                    time.sleep(self.retry_every)
                    continue
                held = []
                if self.failing:
                    self.failing = False
                    self._report(self._state_changed, False,
                                 f"{self.name} can be written again after {time.monotonic() - failed_since:.1f} s; "
                                 "acknowledging again")
                if stopping:
                    return
        finally:
            if con is not None:
                with contextlib.suppress(Exception):
                    con.execute("UPDATE runs SET ended_at = %s WHERE id = %s", (time.time(), self._run_id))
                    con.execute("UPDATE connections SET end_reason = 'shutdown', ended_at = %s "
                                "WHERE run_id = %s AND ended_at IS NULL", (time.time(), self._run_id))
                with contextlib.suppress(Exception):
                    con.close()

    def _write(self, con: psycopg.Connection[Any], ops: list[Any]) -> None:
        """Write `ops` in one transaction (see the module docstring); report what it stored."""
        batches: list[tuple[SessionKey, int, int, float, list[Any]]] = []
        keys: set[SessionKey] = set()
        records: list[tuple[Any, ...]] = []
        flushes: list[Flush] = []
        done = 0
        for op in ops:
            if type(op) is tuple and op[0] == "m":
                _, cid, sess, conn_id, at, items, size = op
                done += size
                key = (cid, sess or "")
                keys.add(key)
                batches.append((key, conn_id, 0 if sess is None else 1, at, items))
            elif type(op) is tuple:
                records.append(op)
            elif type(op) is Flush:
                flushes.append(op)
        new_rows: dict[int, int] = {}
        ended: list[int] = []
        highs: dict[SessionKey, int] = {}
        stored = dups = 0
        with con.transaction():
            sid: dict[SessionKey, int] = {}
            high: dict[SessionKey, int] = {}
            if keys:
                ordered = sorted(keys)
                cur = con.execute(_UPSERT_SESSIONS, {"c": [k[0] for k in ordered], "s": [k[1] for k in ordered],
                                                     "at": time.time()})
                for i, c, s, h in cur.fetchall():
                    sid[(c, s)] = int(i)
                    high[(c, s)] = int(h)
            # Connections first: messages name their row.
            for op in records:
                if op[0] == "c":
                    self._write_connection(con, op, new_rows, ended)
            cols: tuple[list[Any], ...] = ([], [], [], [], [])
            s_ids, seqs, crow, ats, payloads = cols
            top = dict(high)
            touched: set[SessionKey] = set()
            for key, conn_id, numbered, at, items in batches:
                s = sid[key]
                row = new_rows.get(conn_id) or self._conn_rows.get(conn_id)
                t = top[key]
                for m in items:
                    seq = m.seq
                    if seq is not None:
                        if seq <= t:
                            dups += 1
                            continue  # stored already (here or on another node): ACKed again below
                        t = seq
                    s_ids.append(s)
                    seqs.append(seq)
                    crow.append(row)
                    ats.append(at)
                    payloads.append(bytes(m.payload))
                top[key] = t
                if numbered:
                    touched.add(key)
            if s_ids:
                stored = self._insert(con, cols)
            raised = [k for k in top if top[k] > high[k]]
            if raised:
                con.execute(_RAISE_HIGHS, ([sid[k] for k in raised], [top[k] for k in raised]))
            for op in records:
                if op[0] == "t":
                    _, conn_id, client_id, at, silent, late, phi = op
                    trow = new_rows.get(conn_id) or self._conn_rows.get(conn_id)
                    con.execute("INSERT INTO timeouts(connection_id, client_id, at, silent_for, late_by, phi) "
                                "VALUES (%s, %s, %s, %s, %s, %s)", (trow, client_id, at, silent, late, phi))
            highs = {k: top[k] for k in touched}
        # Committed: only now may anything be acknowledged (PROTOCOL.md, "Delivery").
        self._conn_rows.update(new_rows)
        for c in ended:
            self._conn_rows.pop(c, None)
        self.commits += 1
        self.committed_messages += max(0, stored)
        self.duplicates += dups + max(0, len(s_ids) - max(0, stored))
        if highs or flushes or done:
            self._report(self._committed, highs, flushes, done)

    @staticmethod
    def _insert(con: psycopg.Connection[Any], cols: tuple[list[Any], ...]) -> int:
        """Insert the message rows (COPY: about three times as fast as one INSERT ... unnest);
        returns how many were stored."""
        s_ids, seqs, crow, ats, payloads = cols
        try:
            with con.transaction(), con.cursor().copy(_COPY_MESSAGES) as cp:
                write = cp.write_row
                for row in zip(s_ids, seqs, crow, ats, payloads, strict=True):
                    write(row)
            return len(s_ids)
        except psycopg.errors.UniqueViolation:
            return int(con.execute(_INSERT_MESSAGES, cols).rowcount)

    def _write_connection(self, con: psycopg.Connection[Any], op: tuple[Any, ...], new_rows: dict[int, int],
                          ended: list[int]) -> None:
        _, conn_id, client_id, addr, connected_at, ended_at, reason, beats, msgs, rtt, detail = op
        row = new_rows.get(conn_id) or self._conn_rows.get(conn_id)
        if row is None:
            got = con.execute("INSERT INTO connections(run_id, client_id, addr, connected_at) VALUES (%s, %s, %s, %s) "
                              "RETURNING id", (self._run_id, client_id, addr, connected_at)).fetchone()
            row = int(got[0]) if got else 0
            new_rows[conn_id] = row
        if ended_at is None:
            if client_id is not None:
                con.execute("UPDATE connections SET client_id = %s WHERE id = %s", (client_id, row))
            return
        con.execute("UPDATE connections SET client_id = %s, ended_at = %s, end_reason = %s, detail = %s, "
                    "heartbeats = %s, messages = %s, rtt = %s WHERE id = %s",
                    (client_id, ended_at, reason, detail, beats, msgs, rtt, row))
        ended.append(conn_id)

    # ---------------------------------------------------------------- the reader thread

    def _read_high(self, key: SessionKey) -> int:
        # A connection PostgreSQL dropped (a restart) is noticed only when used: one more try
        # on a new connection before the HELLO is refused.
        for attempt in (1, 2):
            con = self._reader_con
            if con is None or con.closed or con.broken:
                con = self._reader_con = self._connect()
            try:
                row = con.execute("SELECT high FROM sessions WHERE client_id = %s AND session = %s", key).fetchone()
            except psycopg.OperationalError:
                with contextlib.suppress(Exception):
                    con.close()
                self._reader_con = None
                if attempt == 2:
                    raise
                continue
            return 0 if row is None else int(row[0])
        raise AssertionError("unreachable")

    def _close_reader(self) -> None:
        if self._reader_con is not None:
            self._reader_con.close()
            self._reader_con = None


def read_rows(url: str, sql: str, args: list[Any]) -> list[tuple[Any, ...]]:
    """Run one read query on `url` (store/queries.py: `tcpulse history` and `messages`).  Raises
    StoreOpenError when the database cannot be reached or holds no tcpulse tables."""
    try:
        with psycopg.connect(url, connect_timeout=CONNECT_TIMEOUT, application_name="tcpulse-read") as con:
            con.read_only = True
            return [tuple(bytes(v) if isinstance(v, memoryview) else v for v in r)
                    for r in con.execute(sql, args).fetchall()]
    except psycopg.errors.UndefinedTable as e:
        raise StoreOpenError("foreign", N_("{path} is not a tcpulse database (give the --db that `tcpulse serve` "
                                           "used)"), path=redact(url)) from e
    except psycopg.Error as e:
        raise StoreOpenError("unreachable", N_("cannot connect to {url}: {error} (is PostgreSQL running, and "
                                               "may this user connect? check --db)"),
                             url=redact(url), error=_one_line(e)) from e


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__
