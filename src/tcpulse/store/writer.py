"""The loop side of a store whose writes run in a thread of their own (`SQLiteStore`,
`PostgresStore`): what the event loop calls queues an operation, handed to the writer thread
once per loop iteration; the writer reports commits and failures back with
`call_soon_threadsafe`.  Each store supplies its thread (`_writer_main`, `_write`, ...).

Bounds: `backlog` (base.py) counts what is queued and not committed, and the server stops
reading from senders past its limit; while the store fails, unnumbered messages are dropped and
counted (`dropped`), and history records beyond MAX_FAILING_RECORDS too (`dropped_records`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any

from tcpulse.store.base import ConnectionRecord, MessageRecord, SessionKey, Store, StoreUnavailable

__all__ = ["MAX_FAILING_RECORDS", "MSG_OVERHEAD", "STOP", "Flush", "WriterStore"]

#: History records (connections, timeouts) held while the store is failing; beyond, they are
#: dropped and counted (`dropped_records`), so that a store failing for long (full, at its size
#: limit, its server gone) does not grow the server's memory with every connection attempt.
#: Messages are not: numbered senders are refused with `ERR 503` meanwhile (base.py).
MAX_FAILING_RECORDS = 100_000

#: What a queued message costs in memory beyond its payload (the frame object, its place in the
#: lists): the unit of `backlog` is an estimate of the memory it holds, not the payload bytes.
MSG_OVERHEAD = 100

#: Queued last by `close()`: the writer writes what came before it, then stops.
STOP = object()


class Flush:
    """A `flush()` waiting in the queue: its future is resolved once what came before it is
    committed."""

    __slots__ = ("fut",)

    def __init__(self, fut: asyncio.Future[None]) -> None:
        self.fut = fut


class WriterStore(Store):
    """Queues operations for a writer thread, in order: `("m", ...)` messages, `("c", ...)`
    connection records, `("t", ...)` timeouts, `Flush`, and `STOP`.  A subclass supplies
    `_writer_main(ready)` (opens the database, sets `ready`, writes until STOP) and
    `_close_reader()` (in the reader thread that answers `acked()`)."""

    #: The writer thread's name; the reader's is this and "-read".
    thread_name = "tcpulse-store"

    def __init__(self) -> None:
        super().__init__()
        self.failing = False
        self.failure: str | None = None
        #: Unnumbered messages dropped while failing (fire-and-forget: nobody will send them again).
        self.dropped = 0
        #: History records dropped while failing, beyond MAX_FAILING_RECORDS.
        self.dropped_records = 0
        self._failing_records = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._buf: list[Any] = []
        self._handing = False
        self._q: queue.SimpleQueue[list[Any]] = queue.SimpleQueue()
        self._flushes: set[asyncio.Future[None]] = set()
        self._thread: threading.Thread | None = None
        self._reader: concurrent.futures.ThreadPoolExecutor | None = None

    def _writer_main(self, ready: concurrent.futures.Future[None]) -> None:
        raise NotImplementedError

    def _close_reader(self) -> None:
        raise NotImplementedError

    # ---------------------------------------------------------------- Store interface (loop side)

    async def open(self) -> None:
        """Start the writer thread, which opens the database, and the reader thread.  Raises
        what the writer raised opening it (StoreOpenError naming the problem)."""
        self._loop = asyncio.get_running_loop()
        ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._writer_main, args=(ready,), daemon=True,
                                        name=self.thread_name)
        self._thread.start()
        await asyncio.wrap_future(ready)
        self._reader = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=self.thread_name + "-read")

    async def close(self) -> None:
        """Write what is queued (trying for a while if the store is failing) and stop."""
        if self._thread is None:
            return
        self._hand_over()
        self._q.put([STOP])
        thread, self._thread = self._thread, None
        await asyncio.get_running_loop().run_in_executor(None, thread.join, 10.0)
        if self._reader is not None:
            with contextlib.suppress(Exception):
                await asyncio.wrap_future(self._reader.submit(self._close_reader))
            self._reader.shutdown(wait=False)
            self._reader = None

    def add_message(self, rec: MessageRecord) -> None:
        self.add_messages(rec.client_id, rec.session, rec.conn_id, rec.received_at, [rec])

    def add_messages(self, client_id: str, session: str | None, conn_id: int, received_at: float,
                     msgs: list[Any]) -> None:
        """Queue one read's messages as one item (`msgs`: anything with `.seq` and `.payload`)."""
        if self.failing:
            # Fire-and-forget messages are dropped while the store cannot write (never
            # acknowledged, so no one is misled); numbered ones are kept and tried again.
            kept = [m for m in msgs if m.seq is not None]
            self.dropped += len(msgs) - len(kept)
            if not kept:
                return
            msgs = kept
        size = MSG_OVERHEAD * len(msgs)
        for m in msgs:
            size += len(m.payload)
        self.backlog += size
        self._push(("m", client_id, session, conn_id, received_at, msgs, size))

    async def flush(self) -> None:
        """Return once everything queued so far is committed; raise StoreUnavailable if the
        store is failing (the caller must then refuse with `ERR 503`)."""
        if self.failing:
            raise StoreUnavailable(self.failure or "store unavailable")
        assert self._loop is not None
        fut: asyncio.Future[None] = self._loop.create_future()
        self._flushes.add(fut)
        fut.add_done_callback(self._flushes.discard)
        self._push(Flush(fut))
        await fut

    def record_connection(self, rec: ConnectionRecord) -> None:
        if self.failing and self._shed_record():
            return
        self._push(("c", rec.conn_id, rec.client_id, rec.addr, rec.connected_at, rec.ended_at,
                    rec.end_reason, rec.heartbeats, rec.messages, rec.rtt, rec.detail))

    def record_timeout(self, conn_id: int, client_id: str | None, at: float, silent_for: float,
                       late_by: float, phi: float | None = None) -> None:
        if self.failing and self._shed_record():
            return
        self._push(("t", conn_id, client_id, at, silent_for, late_by, phi))

    def _shed_record(self) -> bool:
        # While failing, the writer holds everything that comes: past MAX_FAILING_RECORDS, history
        # is dropped (and counted) instead of growing without bound.  A dropped connection start
        # is made up by its end; what was acknowledged is never touched.
        self._failing_records += 1
        if self._failing_records <= MAX_FAILING_RECORDS:
            return False
        self.dropped_records += 1
        return True

    # ---------------------------------------------------------------- loop -> writer

    def _push(self, op: Any) -> None:
        self._buf.append(op)
        if not self._handing:
            # Hand the list over once per loop iteration, not once per message.
            self._handing = True
            assert self._loop is not None, "open() first"
            self._loop.call_soon(self._hand_over)

    def _hand_over(self) -> None:
        self._handing = False
        if self._buf:
            self._q.put(self._buf)
            self._buf = []

    def _drain(self, ops: list[Any], limit: int | None) -> None:
        # Writer thread: take what else is queued, up to `limit` operations, never past STOP.
        while (limit is None or len(ops) < limit) and not (ops and ops[-1] is STOP):
            try:
                ops.extend(self._q.get_nowait())
            except queue.Empty:
                return

    # ---------------------------------------------------------------- writer -> loop

    def _report(self, fn: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(fn, *args)

    def _committed(self, highs: dict[SessionKey, int], flushes: list[Flush], done: int) -> None:
        self.backlog -= done
        if (highs or done) and self._listener is not None:
            self._listener(highs)
        for f in flushes:
            if not f.fut.done():
                f.fut.set_result(None)

    def _state_changed(self, failing: bool, text: str) -> None:
        self.failing = failing
        self.failure = text if failing else None
        if failing:
            for fut in list(self._flushes):
                if not fut.done():
                    fut.set_exception(StoreUnavailable(text))
        else:
            self._failing_records = 0
        if self._state_listener is not None:
            self._state_listener(failing, text)
