"""The asyncio client: a liveness-aware connection that numbers, keeps and resends messages.

    async with tcpulse.connect("127.0.0.1", 12345, id="sensor-7") as client:
        mid = await client.send("hello")                  # kept until the server's ACK covers it
        await client.send("stored?", wait_ack=True)       # returns once the server stored it
        async for payload in client:                      # messages from the server's program
            print(payload)

`send()` gives the message an id within this client's session and keeps it in the outbox until
the server's `ACK` covers it; if the connection fails (server gone, frozen, timed out) the client
reconnects with backoff and sends again what the server's `acked` does not cover (PROTOCOL.md,
"Delivery").  What happens is reported as typed events (`on_event=`, `client.events()`); once the
client is gone for good, `send()`, `ping()`, `recv()` and `async for` raise the
`ConnectionClosed` that ended it.

Flow control (STYLE.md): `send()` waits while the socket's write buffer is above `write_limit`,
and while the outbox is full (or raises `OutboxFull`, with `outbox_full="raise"`); messages from
the server wait in an inbox of at most `max_inbox` messages, beyond which they are dropped,
counted and reported (`InboxOverflow`); never is the socket left unread, since ACKs, PONGs and
the server's liveness travel on it.
"""

from __future__ import annotations

import asyncio
import collections
import secrets
import socket
import ssl
import time
from collections.abc import AsyncIterator, Callable, Generator, Sequence
from typing import Any, Literal

from tcpulse.client.errors import (
    CloseReason,
    ConnectError,
    ConnectionClosed,
    ConnectionLost,
    NotConnected,
    OutboxError,
    OutboxFull,
    PingTimeout,
    ServerClosed,
    ServerDead,
    ServerError,
)
from tcpulse.client.events import (
    Acked,
    ByeReceived,
    CallbackFailed,
    ClientEvent,
    Closed,
    Connected,
    Disconnected,
    HeartbeatSent,
    InboxOverflow,
    InfoReceived,
    MessageReceived,
    OutboxTrouble,
    Reconnecting,
    Renumbered,
    RetryFailed,
    RttMeasured,
    ServerErrorReceived,
    SignedIn,
    Waiting,
)
from tcpulse.client.outbox import MemoryOutbox, Outbox, SQLiteOutbox
from tcpulse.client.stream import EventStream
from tcpulse.errors import N_
from tcpulse.policy.backoff import Backoff, is_retryable
from tcpulse.policy.liveness import Action, ClientLiveness, ScheduledBeats
from tcpulse.protocol.connection import Connection, Role
from tcpulse.protocol.events import Ack, Bye, Err, Event, Heartbeat, Hello, Info, Msg, Ok, Ping, Pong

__all__ = ["DEFAULT_MAX_INBOX", "DEFAULT_MAX_INBOX_BYTES", "DEFAULT_MAX_OUTBOX", "DEFAULT_MAX_OUTBOX_BYTES",
           "DEFAULT_WRITE_LIMIT", "Client", "address", "connect", "default_id"]

#: Messages the outbox holds before `send()` blocks (or raises): the unacknowledged window, and
#: what a client keeps while the server is away.
DEFAULT_MAX_OUTBOX = 100_000
#: Payload bytes the outbox holds before `send()` blocks (or raises).
DEFAULT_MAX_OUTBOX_BYTES = 16 << 20
#: Messages from the server held until the program takes them; more are dropped and counted.
DEFAULT_MAX_INBOX = 10_000
DEFAULT_MAX_INBOX_BYTES = 16 << 20
#: The socket's write-buffer high watermark (the low one is a quarter of it), as websockets'.
DEFAULT_WRITE_LIMIT = 64 << 10

#: `ConnectError.kind`s that a server which is not up yet gives; the others (TLS, a bad frame)
#: come back on every attempt.
_WAITABLE = frozenset({"refused", "timeout", "os", "resolve", "handshake-timeout", "bye"})
#: Endings after which the client reconnects (with `reconnect=True`); ERR is judged by its code.
_RETRY = frozenset({CloseReason.EOF, CloseReason.NETWORK, CloseReason.DEAD, CloseReason.TIMED_OUT,
                    CloseReason.SHUTDOWN})


def default_id() -> str:
    """A client id made from the host name and a short random suffix (one per process)."""
    host = "".join(ch for ch in socket.gethostname() if ch.isalnum() or ch in "._-")[:100] or "client"
    return f"{host}-{secrets.token_hex(3)}"


def address(host: str, port: int) -> str:
    """`host:port` as written in an address: an IPv6 address in brackets (`[::1]:23013`)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_server(text: str, default_port: int = 12345) -> tuple[str, int]:
    """`host`, `host:port`, `[v6]` or `[v6]:port` (a bare IPv6 address has no port) ->
    (host, port).  Raises ValueError naming what is wrong."""
    text = text.strip()
    host, port_s = text, ""
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or (text[end + 1:] and not text[end + 1:].startswith(":")):
            raise ValueError(f"{text!r}: write an IPv6 address as [::1]:{default_port}")
        host, port_s = text[1:end], text[end + 2:]
    elif text.count(":") == 1:
        host, port_s = text.split(":")
    if not host:
        raise ValueError(f"{text!r}: no host")
    if not port_s:
        return host, default_port
    if not port_s.isdigit() or not 0 < int(port_s) <= 65535:
        raise ValueError(f"{text!r}: the port must be 1-65535")
    return host, int(port_s)


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class Client:
    """A tcpulse client connection.  `async with connect(...) as client:`, or
    `client = await connect(...)` ... `await client.close()`.

    Delivery: `session` names the session (default: a new random one, or the outbox file's);
    `outbox` is an `Outbox` or the path of an SQLite file that keeps the session and the
    unacknowledged messages across restarts of the process.  `numbered=False` sends
    fire-and-forget messages instead (no outbox, no ACK).

    Limits: `max_outbox` messages / `max_outbox_bytes` bytes not yet acknowledged (None: no
    limit), then `send()` waits for ACKs (`outbox_full="block"`) or raises `OutboxFull`
    (`"raise"`); `max_inbox` / `max_inbox_bytes` messages from the server not yet taken, then
    newer ones are dropped and counted (`max_inbox=0`: no inbox, messages only as events);
    `write_limit`: the socket's write-buffer high watermark.

    The client owns the outbox it is given: `close()` closes it.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 12345, *, id: str | None = None,
                 session: str | None = None, outbox: Outbox | str | None = None,
                 heartbeat_interval: float | None = None, reconnect: bool = True, numbered: bool = True,
                 token: str | None = None, ssl_context: ssl.SSLContext | None = None,
                 server_hostname: str | None = None, on_event: Callable[[ClientEvent], None] | None = None,
                 backoff: Backoff | None = None, seed_demo: bool = False, connect_timeout: float = 10.0,
                 source_address: tuple[str, int] | None = None, wait_for_server: bool = False,
                 max_outbox: int | None = DEFAULT_MAX_OUTBOX, max_outbox_bytes: int | None = DEFAULT_MAX_OUTBOX_BYTES,
                 outbox_full: Literal["block", "raise"] = "block", max_inbox: int = DEFAULT_MAX_INBOX,
                 max_inbox_bytes: int = DEFAULT_MAX_INBOX_BYTES, write_limit: int = DEFAULT_WRITE_LIMIT,
                 servers: Sequence[str | tuple[str, int]] | None = None) -> None:
        if outbox_full not in ("block", "raise"):
            raise ValueError(f"outbox_full must be 'block' or 'raise' (got {outbox_full!r})")
        for name, v in (("max_outbox", max_outbox), ("max_outbox_bytes", max_outbox_bytes)):
            if v is not None and v < 1:
                raise ValueError(f"{name} must be at least 1, or None for no limit (got {v})")
        if max_inbox < 0 or max_inbox_bytes < 1 or write_limit < 1:
            raise ValueError("max_inbox must be 0 or more, max_inbox_bytes and write_limit at least 1")
        #: The servers to use, in order (`servers=`: the nodes of a cluster, or `(host, port)`
        #: alone): after a failed attempt or a lost connection the next one is tried, with the
        #: same backoff, and the session resumes there (`acked` comes from the shared store).
        self.servers: list[tuple[str, int]] = [
            parse_server(x, port) if isinstance(x, str) else (str(x[0]), int(x[1])) for x in servers or ()
        ] or [(host, port)]
        self._server_index = 0
        self.host, self.port = self.servers[0]
        self._outbox_path: str | None = None
        self._outbox: Outbox | None = None
        self._session_name = session
        if isinstance(outbox, str):
            self._outbox_path = outbox
        else:
            if outbox is not None and session is not None and outbox.session != session:
                raise ValueError(f"session {session!r} given, but the outbox holds session {outbox.session!r}")
            self._outbox = outbox if outbox is not None else MemoryOutbox(session)
            self._outbox.check_owner(id)  # OutboxOwnerError (a ValueError) if it is another id's
        #: The client id; without `id=`, the outbox's (or a new one), known once it is chosen
        #: (at once, or at `start()` for an outbox file given by path).
        self.id = id or ""
        if self._outbox is not None:
            self._choose_id(self._outbox)
        self.requested_interval = heartbeat_interval
        self.reconnect = reconnect
        self.numbered = numbered
        self.token = token
        self.ssl_context = ssl_context
        self.server_hostname = server_hostname
        self.on_event = on_event
        self.backoff = backoff or Backoff()
        self.seed_demo = seed_demo
        self.connect_timeout = connect_timeout
        self.source_address = source_address
        self.wait_for_server = wait_for_server
        self.max_outbox = max_outbox
        self.max_outbox_bytes = max_outbox_bytes
        self.outbox_full = outbox_full
        self.max_inbox = max_inbox
        self.max_inbox_bytes = max_inbox_bytes
        self.write_limit = write_limit
        #: The server's INFO and OK of the current (or last) connection.
        self.info: Info | None = None
        self.ok: Ok | None = None
        #: The last round-trip time measured, in seconds.
        self.rtt: float | None = None
        #: The highest message id the server has acknowledged.
        self.acked = 0
        self.heartbeats_sent = 0
        #: Messages from the server dropped because the inbox was full.
        self.inbox_dropped = 0
        #: Set while a connection is up (after `OK`).
        self.connected = asyncio.Event()
        #: What ended the client, once it is gone for good; None while it runs, and when the
        #: program closed it.
        self.error: ConnectionClosed | None = None
        self._final: ConnectionClosed | None = None
        self._closing = False
        self._started = False
        self._signed_in = 0
        self._conn: Connection | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None
        self._live: ClientLiveness | ScheduledBeats | None = None
        self._leftover: list[Event] = []
        # Flow control: messages of the outbox not yet written to this connection, in id order;
        # whether send() may go on (the socket's buffer is below its high watermark).
        self._unsent: collections.deque[tuple[int, bytes]] = collections.deque()
        self._writable = asyncio.Event()
        self._writable.set()
        self._resume: asyncio.Task[None] | None = None
        self._room = asyncio.Event()  # set when the outbox may have room again
        self._all_acked = asyncio.Event()
        self._ack_waiters: collections.deque[tuple[int, asyncio.Future[int]]] = collections.deque()
        self._pings: dict[str, tuple[float, asyncio.Future[float] | None]] = {}
        self._inbox: collections.deque[bytes] = collections.deque()
        self._inbox_bytes = 0
        self._inbox_ready = asyncio.Event()
        self._overflowing = False
        self._streams: list[EventStream] = []

    # ---------------------------------------------------------------- public API

    @property
    def outbox(self) -> Outbox:
        """Where unacknowledged messages are kept (a file given by path is opened by `start()`)."""
        if self._outbox is None:
            raise RuntimeError("the outbox file is opened by start(): call it first")
        return self._outbox

    @property
    def session(self) -> str | None:
        """The session this client numbers its messages in (None before an outbox file is open)."""
        return self._outbox.session if self._outbox is not None else self._session_name

    @property
    def closed(self) -> bool:
        """True once the client is gone for good."""
        return self._final is not None

    async def start(self) -> None:
        """Connect once (raising `ConnectError`, or `ServerError` if the server refuses), then keep
        the connection up in the background.  With `wait_for_server`, a server that is not up yet
        (refused, no answer, unreachable, not resolvable yet, shutting down, full) is tried again
        with the reconnect backoff until it answers; a failure that waiting cannot mend (TLS, a
        bad token, something that is not a tcpulse server) still raises at once."""
        if self._started:
            raise RuntimeError("start() was called already")
        if self._final is not None:
            raise self._final.with_traceback(None)
        self._started = True
        opened = False
        try:
            loop = asyncio.get_running_loop()
            if self._outbox is None:
                assert self._outbox_path is not None
                opening = await SQLiteOutbox.open(self._outbox_path, self._session_name)
                opened = True
                self._outbox = opening
                opening.check_owner(self.id or None)
                self._choose_id(opening)
            box = self._outbox
            box.attach(loop, self._on_commit, self._on_outbox_trouble)
            if len(box):
                self._all_acked.clear()
            else:
                self._all_acked.set()
            self._room.set()
            try:
                reader, writer = await self._connect_first()
            except (ConnectError, ServerError) as e:
                if not (self.wait_for_server and _worth_waiting(e)):
                    raise
                self._emit(Waiting(e))
                reader, writer = await self._reconnect()
        except BaseException:
            # Not started: nothing is left open (an outbox file opened here is closed again),
            # and start() may be called again.
            self._started = False
            if opened and self._outbox is not None:
                done, self._outbox = self._outbox, None
                await done.aclose()
            raise
        self._task = asyncio.create_task(self._run(reader, writer), name=f"tcpulse-client-{self.id}")

    async def send(self, payload: bytes | str, *, wait_ack: bool = False) -> int | None:
        """Send a message and return its id (numbered, the default) or None (`numbered=False`).

        Numbered: the message is kept in the outbox until the server's `ACK` covers it, sent
        again after a reconnect, and its id (1, 2, 3, ... in this session) never changes.  This
        waits while the socket's write buffer is above `write_limit`, while the outbox is full
        (or raises `OutboxFull`), and, for an outbox file, until the message is on disk.  With
        `wait_ack`, it returns once the server has stored it.

        Unnumbered: written now; `NotConnected` between connections.

        Raises `ConnectionClosed` once the client is gone for good; `ValueError` for a message
        larger than the server's `max_payload`."""
        data = payload.encode("utf-8") if isinstance(payload, str) else bytes(payload)
        self._check_open()
        if self.info is not None and len(data) > self.info.max_payload:
            raise ValueError(f"message of {len(data)} bytes exceeds the server's max_payload "
                             f"of {self.info.max_payload}")
        await self._wait_writable()
        if not self.numbered:
            if wait_ack:
                raise ValueError("wait_ack needs numbered messages")
            if not self.connected.is_set():
                raise NotConnected()
            self._write_now(Msg(payload=data))
            return None
        box = self.outbox
        while not self._has_room(box):
            if self.outbox_full == "raise":
                raise OutboxFull(len(box), box.nbytes)
            self._room.clear()
            await self._room.wait()
            self._check_open()
        mid = box.add(data)
        self._all_acked.clear()
        if self.connected.is_set():
            self._unsent.append((mid, data))
            self._pump()
        if box.durable:
            await box.flush()
        if wait_ack:
            await self.wait_acked(mid)
        return mid

    async def wait_acked(self, mid: int) -> int:
        """Return `mid` once the server has acknowledged message id `mid`; `ConnectionClosed` if
        the client ends first."""
        if mid <= self.acked:
            return mid
        self._check_open()
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        waiters = self._ack_waiters
        if waiters and waiters[-1][0] > mid:  # rare: waiters are added in id order by send()
            items = sorted([*waiters, (mid, fut)], key=lambda w: w[0])
            waiters.clear()
            waiters.extend(items)
        else:
            waiters.append((mid, fut))
        return await fut

    def unacked(self) -> list[tuple[int, bytes]]:
        """`(id, payload)` of the messages sent but not yet acknowledged (a copy)."""
        return self.outbox.pending() if self._outbox is not None else []

    async def drain(self, timeout: float | None = None) -> bool:
        """Wait until every numbered message is acknowledged; False if `timeout` ran out or the
        client ended with messages left."""
        if self._outbox is None:
            return True
        try:
            async with asyncio.timeout(timeout):
                while len(self._outbox):
                    if self._final is not None:
                        return False
                    self._all_acked.clear()
                    await self._all_acked.wait()
        except TimeoutError:
            return False
        return True

    async def ping(self, timeout: float | None = None) -> float:
        """Send a PING and return the round-trip time in seconds.

        Raises `NotConnected` at once between connections, `PingTimeout` if no PONG comes within
        `timeout` seconds (None: until it comes or the connection ends, which the client's
        liveness check bounds), the `ConnectionClosed` that ended the connection if it ends first,
        and once the client is gone for good."""
        self._check_open()
        if not self.connected.is_set():
            raise NotConnected()
        ctx = "c" + secrets.token_hex(4)
        fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        # RTTs on time.perf_counter(), not the loop's clock: uvloop's has millisecond resolution.
        self._pings[ctx] = (time.perf_counter(), fut)
        self._write_now(Ping(ctx=ctx))
        try:
            async with asyncio.timeout(timeout):
                return await fut
        except TimeoutError:
            if fut.cancelled():
                raise PingTimeout(timeout or 0.0) from None
            raise
        finally:
            self._pings.pop(ctx, None)

    async def recv(self) -> bytes:
        """The next message from the server's program.  Raises `ConnectionClosed` once the
        client is gone for good and every message received before is taken."""
        while True:
            inbox = self._inbox
            if inbox:
                m = inbox.popleft()
                self._inbox_bytes -= len(m)
                if self._overflowing and len(inbox) <= self.max_inbox // 2:
                    self._overflowing = False
                return m
            if self._final is not None:
                raise self._final.with_traceback(None)
            if self.max_inbox == 0:
                raise RuntimeError("max_inbox=0: messages from the server come only as events")
            self._inbox_ready.clear()
            await self._inbox_ready.wait()

    def events(self, maxsize: int = 1000) -> EventStream:
        """A stream of this client's events (`async for ev in client.events():`), from now on,
        beside the `on_event` callback; it ends after `Closed`.  A consumer more than `maxsize`
        events behind loses the newer ones, and then gets `EventsDropped` with their count."""
        stream = EventStream(maxsize, self._streams.remove)
        self._streams.append(stream)
        if self._final is not None:
            stream.put(Closed(self._final.reason, self._final))
        return stream

    async def close(self, reason: str = "done", drain_timeout: float | None = 5.0) -> None:
        """Wait (up to `drain_timeout`) for outstanding acknowledgements, send `BYE`, close the
        connection and the outbox.  From then on `send()` and the others raise
        `ConnectionClosed` (kind "closed")."""
        if self._closing:
            return
        box = self._outbox
        task = self._task
        if drain_timeout and box is not None and len(box) and task is not None and not task.done():
            await self.drain(drain_timeout)
        self._closing = True
        conn, w = self._conn, self._writer
        if conn is not None and w is not None and self.connected.is_set() and not w.is_closing():
            conn.send(Bye(reason=reason))
            w.write(conn.data_to_send())
            try:
                async with asyncio.timeout(2):
                    await w.drain()
            except (OSError, TimeoutError):
                pass  # the server is gone or not reading: BYE is a courtesy
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task})
        self._drop_connection()
        self._finish(ConnectionClosed.closed())
        if box is not None:
            await box.aclose()

    async def wait_closed(self) -> None:
        """Wait until the client is gone for good, then raise what ended it (nothing if the
        program closed it)."""
        if self._task is not None:
            # wait(), not await: cancelling this waiter must not cancel the connection.
            await asyncio.wait({self._task})
        if self.error is not None:
            raise self.error.with_traceback(None)

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._messages()

    async def _messages(self) -> AsyncIterator[bytes]:
        while True:
            yield await self.recv()

    async def __aenter__(self) -> Client:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __await__(self) -> Generator[Any, None, Client]:
        """`client = await tcpulse.connect(...)`: start, and return the client."""
        return self.__aenter__().__await__()

    # ---------------------------------------------------------------- flow control

    def _has_room(self, box: Outbox) -> bool:
        return ((self.max_outbox is None or len(box) < self.max_outbox)
                and (self.max_outbox_bytes is None or box.nbytes < self.max_outbox_bytes))

    async def _wait_writable(self) -> None:
        while not self._writable.is_set():
            await self._writable.wait()
            self._check_open()

    def _pump(self) -> None:
        """Write the messages not yet sent on this connection, in id order and only what the
        outbox keeps for good, a chunk of `write_limit` bytes at a time; once the transport's
        buffer is above its high watermark (it paused), wait until it is below the low one
        (`_resume_pump`), and meanwhile make `send()` wait."""
        w, conn = self._writer, self._conn
        if w is None or conn is None or not self.connected.is_set() or w.is_closing():
            return
        unsent = self._unsent
        box = self.outbox
        committed = box.committed_id
        offset = box.offset
        transport = w.transport
        limit = self.write_limit
        while True:
            chunk = 0
            while unsent and chunk < limit and unsent[0][0] <= committed:
                mid, payload = unsent.popleft()
                conn.send(Msg(payload=payload, seq=mid - offset))
                chunk += len(payload) + 24
            if chunk:
                w.write(conn.data_to_send())
                if self._live is not None:
                    self._live.on_sent(asyncio.get_running_loop().time())
            if transport.get_write_buffer_size() > limit:
                self._writable.clear()
                if self._resume is None:
                    self._resume = asyncio.ensure_future(self._resume_pump(w))
                return
            if not chunk:
                break
        self._writable.set()

    async def _resume_pump(self, w: asyncio.StreamWriter) -> None:
        try:
            await w.drain()  # returns below the low watermark (the transport resumed writing)
        except (OSError, RuntimeError):
            return  # the connection is gone: the next one sends again
        finally:
            if self._resume is asyncio.current_task():
                self._resume = None
        if w is self._writer:
            self._pump()

    def _on_commit(self) -> None:
        if self.connected.is_set():
            self._pump()

    def _on_outbox_trouble(self, error: OutboxError | None) -> None:
        self._emit(OutboxTrouble(error))

    def _write_now(self, ev: Event) -> None:
        """Write a control frame (or an unnumbered message) at once, past the watermark: small,
        and what liveness depends on."""
        conn, w = self._conn, self._writer
        if conn is None or w is None or w.is_closing():
            return
        conn.send(ev)
        out = conn.data_to_send()
        if out:
            w.write(out)
            if self._live is not None:
                self._live.on_sent(asyncio.get_running_loop().time())

    # ---------------------------------------------------------------- reporting

    def _emit(self, ev: ClientEvent) -> None:
        cb = self.on_event
        if cb is not None:
            try:
                cb(ev)
            except Exception as e:  # the program's bug must not stop the client (as the server's hub)
                failed = CallbackFailed(e, ev)
                asyncio.get_running_loop().call_exception_handler({
                    "message": f"tcpulse client {self.id}: the on_event callback failed on {type(ev).__name__}",
                    "exception": e})
                for s in list(self._streams):
                    s.put(failed)
        for s in list(self._streams):
            s.put(ev)

    def _check_open(self) -> None:
        if self._final is not None:
            raise self._final.with_traceback(None)
        if not self._started:
            raise RuntimeError("call start() first (or use async with)")

    def _finish(self, why: ConnectionClosed) -> None:
        """The client is gone for good: wake and fail everything that waits, say `Closed`."""
        if self._final is not None:
            return
        self._final = why
        self.error = None if why.reason is CloseReason.CLOSED else why
        self.connected.clear()
        self._unsent.clear()
        while self._ack_waiters:
            fut = self._ack_waiters.popleft()[1]
            if not fut.done():
                fut.set_exception(why)
        self._fail_pings(why)
        for ev in (self._inbox_ready, self._room, self._writable, self._all_acked):
            ev.set()
        self._emit(Closed(why.reason, why))

    def _fail_pings(self, why: ConnectionClosed) -> None:
        for _sent, fut in self._pings.values():
            if fut is not None and not fut.done():
                fut.set_exception(why)
        self._pings.clear()

    # ---------------------------------------------------------------- connecting

    def _choose_id(self, box: Outbox) -> None:
        self.id = self.id or box.client_id or default_id()
        box.bind(self.id)

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        host = _bracketed(self.host)
        try:
            async with asyncio.timeout(self.connect_timeout):
                return await asyncio.open_connection(
                    self.host, self.port, ssl=self.ssl_context,
                    server_hostname=self.server_hostname if self.ssl_context else None,
                    local_addr=self.source_address, limit=1 << 21)
        except ConnectionRefusedError as e:
            raise ConnectError("refused", N_("connection to {host}:{port} refused: is the server running?"),
                               host=host, port=self.port) from e
        except ssl.SSLError as e:
            why = e.reason or str(e)
            if getattr(e, "verify_message", None):  # which check failed: CA, name, expiry
                why = f"{why}: {e.verify_message}"  # type: ignore[attr-defined]
            raise ConnectError("tls", N_("TLS handshake with {host}:{port} failed: {why}"),
                               host=host, port=self.port, why=why) from e
        except TimeoutError as e:
            raise ConnectError("timeout", N_("no answer from {host}:{port} within {seconds:g} s"),
                               host=host, port=self.port, seconds=self.connect_timeout) from e
        except socket.gaierror as e:
            raise ConnectError("resolve", N_("cannot resolve host {host}: {error}"),
                               host=repr(self.host), error=e.strerror) from e
        except OSError as e:
            raise ConnectError("os", N_("cannot connect to {host}:{port}: {error}"),
                               host=host, port=self.port, error=e.strerror or e) from e

    def _next_server(self) -> None:
        """Move on to the next server of the list (a no-op with one)."""
        if len(self.servers) > 1:
            self._server_index = (self._server_index + 1) % len(self.servers)
            self.host, self.port = self.servers[self._server_index]

    async def _connect_first(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """At start: each server once, in order, until one answers; the last failure if none
        does (a failure waiting cannot mend, such as a bad token, at once)."""
        for i in range(len(self.servers)):
            try:
                return await self._connect_once()
            except (ConnectError, ServerError) as e:
                if i == len(self.servers) - 1 or not _worth_waiting(e):
                    raise
                self._emit(RetryFailed(e))
                self._next_server()
        raise AssertionError("unreachable")

    async def _connect_once(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await self._open()
        try:
            await self._handshake(reader, writer)
        except BaseException:
            # A failed handshake closes its socket now (no ResourceWarning, no descriptor held
            # until the collector finds it), whatever ended it, cancellation included.
            writer.transport.abort()
            if self._writer is writer:
                self._writer = None
                self._conn = None
            raise
        return reader, writer

    async def _read_events(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> list[Event]:
        conn = self._conn
        assert conn is not None
        data = await reader.read(65536)
        if not data:
            conn.receive_eof()
            raise ServerClosed.eof()
        evs = conn.receive_data(data)
        out = conn.data_to_send()  # PONGs to the server's PINGs
        if out and not writer.is_closing():
            writer.write(out)
        if conn.error is not None:
            raise ConnectionClosed.bad_frame(conn.error.text)
        return evs

    async def _handshake(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._conn = conn = Connection(Role.CLIENT)
        self._writer = writer
        writer.transport.set_write_buffer_limits(high=self.write_limit, low=self.write_limit // 4)
        self._emit(Connected(self.host, self.port))
        box = self.outbox
        got_info = False
        try:
            async with asyncio.timeout(self.connect_timeout):
                while True:
                    try:
                        evs = await self._read_events(reader, writer)
                    except ConnectionClosed as e:
                        if e.reason is CloseReason.BAD_FRAME:
                            raise ConnectError("bad-frame", N_("server sent a bad frame: {text}"),
                                               text=e.params["text"]) from None
                        raise
                    for i, ev in enumerate(evs):
                        if isinstance(ev, Err):
                            raise ServerError(ev.code, ev.text)
                        if isinstance(ev, Info) and not got_info:
                            got_info = True
                            self.info = ev
                            self._emit(InfoReceived(ev))
                            conn.send(Hello(id=self.id, session=box.session if self.numbered else None,
                                            token=self.token, heartbeat_interval=self.requested_interval))
                            writer.write(conn.data_to_send())
                        elif isinstance(ev, Ok):
                            self.ok = ev
                            if self._renumber(ev) and box.durable:
                                await box.flush()  # the new numbering is on disk before it is used
                            self._after_ok(ev)
                            self._leftover = evs[i + 1:]
                            return
                        elif isinstance(ev, Bye):
                            if ev.reason:
                                raise ConnectError("bye", N_("server said BYE {reason}"), reason=ev.reason)
                            raise ConnectError("bye", N_("server said BYE"))
        except TimeoutError as e:
            raise ConnectError("handshake-timeout", N_("the server did not complete the handshake in time")) from e
        except (EOFError, OSError) as e:
            raise ConnectError("handshake-lost", N_("connection lost during the handshake: {error}"), error=e) from e

    def _renumber(self, ok: Ok) -> bool:
        """PROTOCOL.md, "Delivery": `acked` says where the server stands; what it covers is
        released, the rest goes out again numbered from `acked + 1`.  True if the numbering moved."""
        if not self.numbered:
            return False
        box = self.outbox
        self._on_ack(ok.acked, report=False)
        first = box.first_id()
        next_seq = (box.last_id + 1 if first is None else first) - box.offset
        if next_seq == ok.acked + 1:
            return False
        box.renumber(ok.acked + 1)
        if next_seq > ok.acked + 1:
            # The server has forgotten part of this session: one without a store restarted
            # (its `acked` does not survive a restart).  Sending our numbers would skip ahead.
            self._emit(Renumbered(ok.acked, len(box), box.offset))
        return True

    def _after_ok(self, ok: Ok) -> None:
        now = asyncio.get_running_loop().time()
        if self.seed_demo:
            iv = ok.heartbeat_interval
            self._live = ScheduledBeats(now, [iv, iv], 20 * iv)
        else:
            self._live = ClientLiveness(now, ok.heartbeat_interval, ok.heartbeat_timeout)
        self.backoff.reset()
        self._signed_in += 1
        self._unsent = collections.deque(self.outbox.items()) if self.numbered else collections.deque()
        resent = len(self._unsent)
        self.connected.set()
        self._writable.set()
        self._pump()
        self._emit(SignedIn(ok, resent, self._signed_in == 1))

    def _on_ack(self, seq: int, report: bool = True) -> None:
        box = self.outbox
        released = box.ack(seq)
        top = seq + box.offset
        if top > self.acked:
            self.acked = top
        waiters = self._ack_waiters
        while waiters and waiters[0][0] <= top:
            mid, fut = waiters.popleft()
            if not fut.done():
                fut.set_result(mid)
        if not len(box):
            self._all_acked.set()
        if released and not self._room.is_set() and self._has_room(box):
            self._room.set()
        if report:
            self._emit(Acked(top, seq, len(box)))

    # ---------------------------------------------------------------- the connection's life

    def _drop_connection(self) -> None:
        w = self._writer
        self.connected.clear()
        self._conn = None
        self._writer = None
        self._live = None
        self._unsent.clear()
        self._writable.set()  # between connections, send() fills the outbox (bounded)
        if self._resume is not None:  # it waited for the old socket; the next one starts afresh
            self._resume.cancel()
            self._resume = None
        if w is not None:
            w.transport.abort()

    async def _run(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                await self._session(reader, writer)
                raise AssertionError("a session ends by an exception")  # pragma: no cover
            except ConnectionClosed as e:
                why = e
            except OSError as e:
                why = ConnectionLost(e)
            self._drop_connection()
            self._fail_pings(why)
            again = self.reconnect and not self._closing and _worth_retrying(why)
            self._emit(Disconnected(why.reason, why, again, len(self._outbox or ())))
            if self._closing:
                return
            if not again:
                self._finish(why)
                return
            try:
                reader, writer = await self._reconnect()
            except ServerError as e:  # refused for good (a bad token, ...): no point in trying on
                self._finish(e)
                return

    async def _reconnect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        while True:
            delay = self.backoff.next()
            self._emit(Reconnecting(delay, self.backoff.attempt))
            await asyncio.sleep(delay)
            # Several servers: each attempt goes to the next (the one just lost, or just tried,
            # is likely the one that is down).
            self._next_server()
            try:
                return await self._connect_once()
            except ServerError as e:
                self._emit(ServerErrorReceived(e.code, e.text))
                if not is_retryable(err_code=e.code):
                    raise
                self._emit(RetryFailed(e))
            except ConnectError as e:
                self._emit(RetryFailed(e))

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        live = self._live
        assert live is not None
        evs = self._leftover
        self._leftover = []
        read_task: asyncio.Future[list[Event]] | None = None
        try:
            while True:
                if evs:
                    live.on_received(loop.time())
                    self._dispatch(evs)
                    evs = []
                if read_task is None:
                    read_task = asyncio.ensure_future(self._read_events(reader, writer))
                timeout = max(0.0, live.next_due() - loop.time())
                done, _ = await asyncio.wait({read_task}, timeout=timeout)
                if read_task in done:
                    evs = read_task.result()
                    read_task = None
                    continue
                act = live.poll(loop.time())
                if act is Action.HEARTBEAT:
                    self.heartbeats_sent += 1
                    self._write_now(Heartbeat())
                    self._emit(HeartbeatSent(self.heartbeats_sent))
                elif act is Action.PING:
                    ctx = "k" + secrets.token_hex(3)
                    self._pings[ctx] = (time.perf_counter(), None)
                    self._write_now(Ping(ctx=ctx))
                elif act is Action.DEAD:
                    raise ServerDead(live.timeout if isinstance(live, ClientLiveness) else 0.0)
        finally:
            if read_task is not None and not read_task.done():
                read_task.cancel()
                await asyncio.wait({read_task})
            if read_task is not None and read_task.done() and not read_task.cancelled():
                read_task.exception()  # retrieved: the session's own exception says what happened

    def _dispatch(self, evs: list[Event]) -> None:
        """Handle frames; raises the ConnectionClosed of an ERR or a BYE."""
        loop = asyncio.get_running_loop()
        for ev in evs:
            if isinstance(ev, Ack):
                self._on_ack(ev.seq)
            elif isinstance(ev, Msg):
                self._to_inbox(ev.payload)
                self._emit(MessageReceived(ev.payload))
            elif isinstance(ev, Pong):
                sent = self._pings.pop(ev.ctx or "", None)
                if sent is not None:
                    self.rtt = rtt = time.perf_counter() - sent[0]
                    self._emit(RttMeasured(rtt))
                    if sent[1] is not None and not sent[1].done():
                        sent[1].set_result(rtt)
            elif isinstance(ev, Ping):
                if self._live is not None:
                    self._live.on_sent(loop.time())  # our PONG went out
            elif isinstance(ev, Err):
                self._emit(ServerErrorReceived(ev.code, ev.text))
                if ev.code == 429:
                    # PROTOCOL.md, "Errors": the frame was dropped, the connection goes on (the
                    # server closes it if we keep on; then we reconnect as after any EOF).
                    continue
                raise ServerError(ev.code, ev.text)
            elif isinstance(ev, Bye):
                self._emit(ByeReceived(ev.reason))
                raise ServerClosed.bye(ev.reason)

    def _to_inbox(self, payload: bytes) -> None:
        if self.max_inbox == 0:
            return
        inbox = self._inbox
        if inbox and (len(inbox) >= self.max_inbox or self._inbox_bytes + len(payload) > self.max_inbox_bytes):
            self.inbox_dropped += 1
            if not self._overflowing:
                self._overflowing = True
                self._emit(InboxOverflow(self.inbox_dropped))
            return
        inbox.append(payload)
        self._inbox_bytes += len(payload)
        self._inbox_ready.set()


def _worth_retrying(why: ConnectionClosed) -> bool:
    if isinstance(why, ServerError):
        return is_retryable(err_code=why.code)
    return why.reason in _RETRY


def _worth_waiting(e: ConnectError | ServerError) -> bool:
    if isinstance(e, ServerError):
        return is_retryable(err_code=e.code)
    return e.kind in _WAITABLE


def connect(host: str = "127.0.0.1", port: int = 12345, **kwargs: Any) -> Client:
    """Make a `Client`: `async with connect(...) as client:`, or `client = await connect(...)`.
    The keyword arguments are `Client`'s (`servers=["10.0.0.1:12345", "10.0.0.2:12345"]` for
    several)."""
    return Client(host, port, **kwargs)
