"""The asyncio client: a liveness-aware connection that numbers, keeps and resends messages.

    async with tcpulse.connect("127.0.0.1", 12345, id="sensor-7") as client:
        await client.send("hello")
        async for payload in client:      # messages from the server's program
            print(payload)

`send()` numbers the message within this client's session and keeps it until the server's `ACK`
covers it; if the connection fails (server gone, frozen, timed out) the client reconnects with
backoff and sends again what the server's `acked` does not cover (PROTOCOL.md, "Delivery").
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
import ssl
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from tcpulse.client.errors import ConnectError, ServerClosed, ServerDead, ServerError
from tcpulse.client.events import ClientEvent
from tcpulse.client.outbox import MemoryOutbox, Outbox
from tcpulse.errors import N_
from tcpulse.policy.backoff import Backoff, is_retryable
from tcpulse.policy.liveness import Action, ClientLiveness, ScheduledBeats
from tcpulse.protocol.connection import Connection, Role
from tcpulse.protocol.events import Ack, Bye, Err, Heartbeat, Hello, Info, Msg, Ok, Ping, Pong

__all__ = ["Client", "connect", "default_id"]


def default_id() -> str:
    """A client id made from the host name and a short random suffix (one per process)."""
    host = "".join(ch for ch in socket.gethostname() if ch.isalnum() or ch in "._-")[:100] or "client"
    return f"{host}-{secrets.token_hex(3)}"


class Client:
    """A tcpulse client connection.  Use `async with` (or `start()` / `close()`)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 12345, *, id: str | None = None,
                 heartbeat_interval: float | None = None, reconnect: bool = True,
                 numbered: bool = True, outbox: Outbox | None = None, token: str | None = None,
                 ssl_context: ssl.SSLContext | None = None, server_hostname: str | None = None,
                 on_event: Callable[[ClientEvent], None] | None = None,
                 backoff: Backoff | None = None, seed_demo: bool = False,
                 connect_timeout: float = 10.0, source_address: tuple[str, int] | None = None,
                 wait_for_server: bool = False) -> None:
        self.host = host
        self.port = port
        self.outbox = outbox or MemoryOutbox()
        self.outbox.check_owner(id)  # OutboxOwnerError (a ValueError) if it is another id's
        self.id = id or self.outbox.client_id or default_id()
        self.outbox.bind(self.id)
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
        self.info: Info | None = None
        self.ok: Ok | None = None
        self.rtt: float | None = None
        self.acked = 0
        self.heartbeats_sent = 0
        self.connected = asyncio.Event()
        self.error: BaseException | None = None
        self._inbox: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._conn: Connection | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._all_acked = asyncio.Event()
        if not self.outbox.pending():  # an outbox from disk may hold messages from last time
            self._all_acked.set()
        self._ping_sent: dict[str, float] = {}
        self._wake = asyncio.Event()
        self._leftover: list[Any] = []
        self._live: ClientLiveness | ScheduledBeats | None = None

    # ---------------------------------------------------------------- public API

    async def start(self) -> None:
        """Connect once (raising ConnectError / ServerError if that fails), then keep the
        connection up in the background.  With `wait_for_server`, a server that is not up yet
        (refused, no answer, unreachable, not resolvable yet, shutting down, full) is tried again
        with the reconnect backoff until it answers; a failure that waiting cannot mend (TLS, a
        bad token, something that is not a tcpulse server) still raises at once."""
        try:
            reader, writer = await self._open()
            await self._handshake(reader, writer)
        except (ConnectError, ServerError) as e:
            if not (self.wait_for_server and _worth_waiting(e)):
                raise
            self._emit("waiting", reason=str(e), error=e)
            reader, writer = await self._reconnect()
        self._task = asyncio.create_task(self._run(reader, writer))

    async def send(self, payload: bytes | str) -> int | None:
        """Send a message.  Numbered (the default): kept until acknowledged, resent after a
        reconnect, and its seq returned.  Unnumbered: sent now if connected, else dropped."""
        data = payload.encode("utf-8") if isinstance(payload, str) else bytes(payload)
        if self.info is not None and len(data) > self.info.max_payload:
            raise ValueError(f"message of {len(data)} bytes exceeds the server's max_payload "
                             f"of {self.info.max_payload}")
        if self._closing:
            raise RuntimeError("client is closed")
        if not self.numbered:
            self._write(Msg(payload=data))
            return None
        seq = self.outbox.last_seq + 1
        self.outbox.add(seq, data)
        self._all_acked.clear()
        if self.connected.is_set():
            self._write(Msg(payload=data, seq=seq))
        return seq

    def unacked(self) -> list[tuple[int, bytes]]:
        """Messages sent but not yet acknowledged by the server."""
        return self.outbox.pending()

    async def drain(self, timeout: float | None = None) -> bool:
        """Wait until every numbered message is acknowledged; False if `timeout` ran out."""
        loop = asyncio.get_running_loop()
        end = None if timeout is None else loop.time() + timeout
        try:
            while self.outbox.pending():
                self._all_acked.clear()
                await asyncio.wait_for(self._all_acked.wait(), None if end is None else end - loop.time())
            return True
        except TimeoutError:
            return False

    async def ping(self) -> float:
        """Send a PING and return the round-trip time in seconds."""
        ctx = "c" + secrets.token_hex(4)
        # RTTs on time.perf_counter(), not the loop's clock: uvloop's has millisecond resolution.
        self._ping_sent[ctx] = time.perf_counter()
        self._write(Ping(ctx=ctx))
        while ctx in self._ping_sent:
            self._wake.clear()
            await self._wake.wait()
        assert self.rtt is not None
        return self.rtt

    async def close(self, reason: str = "done", drain_timeout: float | None = 5.0) -> None:
        """Wait (up to `drain_timeout`) for outstanding acknowledgements, send `BYE`, close."""
        if self._closing:
            return
        if drain_timeout and self.outbox.pending() and self._task is not None and not self._task.done():
            await self.drain(drain_timeout)
        self._closing = True
        if self._conn is not None and self._writer is not None and self.connected.is_set():
            self._conn.send(Bye(reason=reason))
            with contextlib.suppress(Exception):
                self._writer.write(self._conn.data_to_send())
                await asyncio.wait_for(self._writer.drain(), 2)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        await self._close_writer()
        self.outbox.close()
        self._inbox.put_nowait(None)

    async def wait_closed(self) -> None:
        """Wait until the connection is gone for good (no reconnect), then raise its error if
        it ended by one."""
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                # shield: cancelling the waiter must not cancel the connection itself.
                await asyncio.shield(self._task)
        if self.error is not None:
            raise self.error

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._messages()

    async def _messages(self) -> AsyncIterator[bytes]:
        while True:
            m = await self._inbox.get()
            if m is None:
                return
            yield m

    async def __aenter__(self) -> Client:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ---------------------------------------------------------------- internals

    def _emit(self, kind: str, **data: Any) -> None:
        if self.on_event is not None:
            self.on_event(ClientEvent(kind, data))

    def _write(self, ev: Any) -> None:
        conn, w = self._conn, self._writer
        if conn is None or w is None or w.is_closing():
            return
        conn.send(ev)
        out = conn.data_to_send()
        if out:
            w.write(out)
            if self._live is not None:
                self._live.on_sent(asyncio.get_running_loop().time())

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            return await asyncio.wait_for(asyncio.open_connection(
                self.host, self.port, ssl=self.ssl_context,
                server_hostname=self.server_hostname if self.ssl_context else None,
                local_addr=self.source_address, limit=1 << 21), self.connect_timeout)
        except ConnectionRefusedError as e:
            raise ConnectError("refused", N_("connection to {host}:{port} refused: is the server running?"),
                               host=self.host, port=self.port) from e
        except ssl.SSLError as e:
            why = e.reason or str(e)
            if getattr(e, "verify_message", None):  # which check failed: CA, name, expiry
                why = f"{why}: {e.verify_message}"  # type: ignore[attr-defined]
            raise ConnectError("tls", N_("TLS handshake with {host}:{port} failed: {why}"),
                               host=self.host, port=self.port, why=why) from e
        except TimeoutError as e:
            raise ConnectError("timeout", N_("no answer from {host}:{port} within {seconds:g} s"),
                               host=self.host, port=self.port, seconds=self.connect_timeout) from e
        except socket.gaierror as e:
            raise ConnectError("resolve", N_("cannot resolve host {host}: {error}"),
                               host=repr(self.host), error=e.strerror) from e
        except OSError as e:
            raise ConnectError("os", N_("cannot connect to {host}:{port}: {error}"),
                               host=self.host, port=self.port, error=e.strerror or e) from e

    async def _read_events(self, reader: asyncio.StreamReader) -> list[Any]:
        conn = self._conn
        assert conn is not None
        data = await reader.read(65536)
        if not data:
            conn.receive_eof()
            raise ServerClosed.eof()
        evs = conn.receive_data(data)
        out = conn.data_to_send()  # PONGs to the server's PINGs
        if out and self._writer is not None:
            self._writer.write(out)
        if conn.error is not None:
            raise ConnectError("bad-frame", N_("server sent a bad frame: {text}"), text=conn.error.text)
        return evs

    async def _handshake(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._conn = conn = Connection(Role.CLIENT)
        self._writer = writer
        self._emit("connected", host=self.host, port=self.port)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.connect_timeout
        got_info = False
        pending: list[Any] = []
        try:
            while True:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise ConnectError("handshake-timeout", N_("the server did not complete the handshake in time"))
                evs = pending or await asyncio.wait_for(self._read_events(reader), remaining)
                pending = []
                for i, ev in enumerate(evs):
                    if isinstance(ev, Err):
                        raise ServerError(ev.code, ev.text)
                    if isinstance(ev, Info) and not got_info:
                        got_info = True
                        self.info = ev
                        self._emit("info", info=ev)
                        hello = Hello(id=self.id, session=self.outbox.session if self.numbered else None,
                                      token=self.token, heartbeat_interval=self.requested_interval)
                        conn.send(hello)
                        writer.write(conn.data_to_send())
                    elif isinstance(ev, Ok):
                        self.ok = ev
                        self._after_ok(ev)
                        self._leftover = evs[i + 1:]
                        return
                    elif isinstance(ev, Bye):
                        if ev.reason:
                            raise ConnectError("bye", N_("server said BYE {reason}"), reason=ev.reason)
                        raise ConnectError("bye", N_("server said BYE"))
        except TimeoutError as e:
            raise ConnectError("handshake-timeout", N_("the server did not complete the handshake in time")) from e
        except (EOFError, ConnectionError, OSError) as e:
            raise ConnectError("handshake-lost", N_("connection lost during the handshake: {error}"), error=e) from e

    def _after_ok(self, ok: Ok) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self.seed_demo:
            iv = ok.heartbeat_interval
            self._live = ScheduledBeats(now, [iv, iv], 20 * iv)
        else:
            self._live = ClientLiveness(now, ok.heartbeat_interval, ok.heartbeat_timeout)
        self.backoff.reset()
        resent = 0
        if self.numbered:
            # PROTOCOL.md, "Delivery": acked says where the server stands; resend the rest, in
            # order, and number new messages after the highest of both.
            self._on_ack(ok.acked)
            pending = self.outbox.pending()
            if ok.acked < self.outbox.last_seq and (not pending or pending[0][0] > ok.acked + 1):
                # The server has forgotten part of this session: one without a store restarted
                # (PROTOCOL.md, "Delivery": then `acked` does not survive its restart).  Sending
                # our numbers would skip ahead; number what we hold on from its `acked` instead.
                self.outbox.renumber(ok.acked + 1)
                self.acked = ok.acked
                self._emit("renumbered", acked=ok.acked, held=len(pending))
            if ok.acked > self.outbox.last_seq:
                self.outbox.last_seq = ok.acked
            for seq, payload in self.outbox.pending():
                self._write(Msg(payload=payload, seq=seq))
                resent += 1
        self._emit("ok", ok=ok, resent=resent)
        self.connected.set()

    def _on_ack(self, seq: int) -> None:
        if seq > self.acked:
            self.acked = seq
        self.outbox.ack(seq)
        if not self.outbox.pending():
            self._all_acked.set()

    async def _close_writer(self) -> None:
        w = self._writer
        if w is not None:
            w.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(w.wait_closed(), 1)

    async def _run(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            err_code: int | None = None
            why: BaseException | None = None
            try:
                await self._session(reader, writer)
                return  # the server said BYE with no reason to come back, or we closed
            except ServerError as e:
                why, err_code = e, e.code
            except (ServerDead, EOFError, ConnectError, OSError) as e:
                why = e
            self.connected.clear()
            await self._close_writer()
            again = self.reconnect and not self._closing and is_retryable(why, err_code)
            self._emit("disconnected", reason=str(why), error=why, unacked=len(self.outbox.pending()),
                       reconnect=again)
            if self._closing:
                return
            if not again:
                self.error = why
                self._inbox.put_nowait(None)
                return
            try:
                reader, writer = await self._reconnect()
            except ServerError as e:  # refused for good (a bad token, ...): no point in trying on
                self.error = e
                self._inbox.put_nowait(None)
                return

    async def _reconnect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        while True:
            delay = self.backoff.next()
            self._emit("reconnecting", delay=delay, attempt=self.backoff.attempt)
            await asyncio.sleep(delay)
            try:
                reader, writer = await self._open()
                await self._handshake(reader, writer)
                return reader, writer
            except ServerError as e:
                self._emit("error", code=e.code, text=e.text)
                if not is_retryable(err_code=e.code):
                    raise
            except ConnectError as e:
                self._emit("retry-failed", reason=str(e), error=e)

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        live = self._live
        assert live is not None
        evs = self._leftover
        self._leftover = []
        read_task: asyncio.Task[list[Any]] | None = None
        try:
            while True:
                if evs:
                    live.on_received(loop.time())
                    if self._dispatch(evs):
                        return
                    evs = []
                if read_task is None:
                    read_task = asyncio.ensure_future(self._read_events(reader))
                timeout = max(0.0, live.next_due() - loop.time())
                done, _ = await asyncio.wait({read_task}, timeout=timeout)
                if read_task in done:
                    evs = read_task.result()
                    read_task = None
                    continue
                act = live.poll(loop.time())
                if act is Action.HEARTBEAT:
                    self.heartbeats_sent += 1
                    self._write(Heartbeat())
                    self._emit("beat", n=self.heartbeats_sent)
                elif act is Action.PING:
                    ctx = "k" + secrets.token_hex(3)
                    self._ping_sent[ctx] = time.perf_counter()
                    self._write(Ping(ctx=ctx))
                elif act is Action.DEAD:
                    timeout = live.timeout if isinstance(live, ClientLiveness) else 0.0
                    raise ServerDead(timeout)
        finally:
            if read_task is not None:
                if not read_task.done():
                    read_task.cancel()
                with contextlib.suppress(BaseException):
                    await read_task

    def _dispatch(self, evs: list[Any]) -> bool:
        """Handle frames; True when the server ended the connection for good."""
        loop = asyncio.get_running_loop()
        for ev in evs:
            if isinstance(ev, Ack):
                self._on_ack(ev.seq)
                self._emit("ack", seq=ev.seq)
            elif isinstance(ev, Msg):
                self._inbox.put_nowait(ev.payload)
                self._emit("message", payload=ev.payload)
            elif isinstance(ev, Pong):
                sent = self._ping_sent.pop(ev.ctx or "", None)
                if sent is not None:
                    self.rtt = time.perf_counter() - sent
                    self._emit("rtt", rtt=self.rtt)
                    self._wake.set()
            elif isinstance(ev, Ping):
                if self._live is not None:
                    self._live.on_sent(loop.time())  # our PONG went out
            elif isinstance(ev, Err):
                self._emit("error", code=ev.code, text=ev.text)
                if ev.code == 429:
                    # PROTOCOL.md, "Errors": the frame was dropped, the connection goes on (the
                    # server closes it if we keep on; then we reconnect as after any EOF).
                    continue
                raise ServerError(ev.code, ev.text)
            elif isinstance(ev, Bye):
                self._emit("bye", reason=ev.reason)
                if ev.reason in ("shutdown", "heartbeat-timeout") and self.reconnect and not self._closing:
                    raise ServerClosed.bye(ev.reason)
                if ev.reason == "replaced":
                    self.error = ConnectError("replaced", N_("replaced by another connection with the same id"))
                else:
                    self.error = ServerClosed.bye(ev.reason)
                self.connected.clear()
                self._inbox.put_nowait(None)
                return True
        return False


#: `ConnectError.kind`s that a server which is not up yet gives; the others (TLS, a bad frame)
#: come back on every attempt.
_WAITABLE = frozenset({"refused", "timeout", "os", "resolve", "handshake-timeout", "bye"})


def _worth_waiting(e: ConnectError | ServerError) -> bool:
    if isinstance(e, ServerError):
        return is_retryable(err_code=e.code)
    return e.kind in _WAITABLE


def connect(host: str = "127.0.0.1", port: int = 12345, **kwargs: Any) -> Client:
    """Make a `Client`; use it as `async with connect(...) as client:`."""
    return Client(host, port, **kwargs)

