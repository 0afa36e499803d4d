"""The asyncio server: the public face of `server/`.

    server = Server(ServerConfig(port=12345))
    server.subscribe(print)              # or: async for ev in server.events(): ...
    async with server:
        await server.serve_forever()

`Server` listens, starts and stops, and offers what a program may do: subscribe to events, look
at clients (as read-only `ClientView`s), send to one client or to all.  The protocol lives in
`protocol/`, liveness in `policy/liveness`; the work shared by every connection in the hub
(hub.py), the work of one connection in `connection.ServerConnection`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from tcpulse.errors import N_, ConfigError, TcpulseError
from tcpulse.protocol.events import Info
from tcpulse.server.cluster import ClusterBackend, ClusterView, NodeRow
from tcpulse.server.config import ServerConfig
from tcpulse.server.connection import ServerConnection
from tcpulse.server.events import EventsDropped, Listening, ServerEvent, Status, Warning_
from tcpulse.server.guard import Guard
from tcpulse.server.handshake import Handshake
from tcpulse.server.hub import Hub
from tcpulse.server.view import ClientView, DisconnectReason
from tcpulse.store.base import Store
from tcpulse.store.memory import MemoryStore
from tcpulse.version import __version__

__all__ = ["ACCEPT_BATCH", "EventsOverflow", "Server", "default_server_id"]

#: On asyncio's own loops the listen backlog is also how many connections one wake of the loop
#: accepts at once, each holding a descriptor until its turn comes; under a flood that batch alone
#: (4096) would spend every descriptor kept back.  Those loops accept this many per wake, and the
#: kernel keeps its full backlog (`ServerConfig.backlog`) for reconnect storms.
ACCEPT_BATCH = 8


class Server:
    """A tcpulse server.  Use `async with server:` (or `start()` / `close()`)."""

    def __init__(self, config: ServerConfig | None = None, *, store: Store | None = None) -> None:
        self.config = config or ServerConfig()
        self.config.validate()
        self.server_id = self.config.server_id or secrets.token_hex(4)
        self._hub = Hub(self.config, store or MemoryStore(), self.server_id)
        self._server: asyncio.base_events.Server | None = None
        self._status_task: asyncio.Task[None] | None = None
        self.started_at = time.time()
        #: Where the server listens, once started: `port` is the one the system chose when the
        #: config asked for port 0 (tests, embedding); `sockets` are the listening sockets.
        self.port = 0
        self.host = self.config.host
        self.sockets: list[socket.socket] = []
        self._cluster = ClusterView(self.server_id, self._hub.local_rows, self._local_node)

    # ---------------------------------------------------------------- what there is to see

    @property
    def store(self) -> Store:
        return self._hub.store

    def use_store(self, store: Store) -> None:
        """Keep messages and history in `store` (call before `start()`)."""
        self._hub.use_store(store)

    @property
    def guard(self) -> Guard:
        """TLS, authentication and limits, and the figures of the global budgets (guard.py)."""
        return self._hub.guard

    @property
    def totals(self) -> dict[str, int]:
        """Counts of connections that have ended (and `connections`, `timeouts`: all so far); add
        the open clients' own counters for live figures."""
        return self._hub.totals

    @property
    def clients(self) -> list[ClientView]:
        """The clients served now (read-only views)."""
        return [c.view for c in self._hub.registry]

    def client(self, client_id: str) -> ClientView | None:
        """The client connected with this HELLO id now, if any."""
        c = self._hub.registry.owner(client_id)
        return None if c is None else c.view

    @property
    def accepting(self) -> bool:
        """True while the server listens and takes new connections (the admin's /healthz)."""
        return self._server is not None and self._server.is_serving() and not self._hub.closing

    @property
    def handshake_failures(self) -> int:
        """TLS handshakes that failed so far (bad certificates, plain TCP, too slow, refused)."""
        return self._hub.handshake_failures

    @property
    def lingering(self) -> int:
        """Sockets lingering now after their last frame (ERR or BYE), at most hub.MAX_LINGERING."""
        return self._hub.lingering

    @staticmethod
    def now() -> float:
        """The server's clock (monotonic seconds): what `ClientView.last_heard_ago(now)` and the
        deadlines are measured on."""
        return Hub.now()

    def status_rows(self) -> list[dict[str, Any]]:
        now = self.now()
        return [c.view.snapshot(now) for c in sorted(self._hub.registry, key=lambda c: c.conn_id)]

    # ---------------------------------------------------------------- the cluster

    def use_cluster(self, backend: ClusterBackend) -> None:
        """Join a cluster through `backend` (call before `start()`): presence shared with the
        other nodes, takeover and `send` across them (server/cluster.py, docs/cluster.md).
        `server_id` is this node's name in the cluster."""
        self._hub.cluster = backend
        backend.view = self._cluster
        self._cluster.enabled = True

    @property
    def cluster(self) -> ClusterView:
        """The whole cluster as this node sees it: `nodes()`, `clients(node=None)` as rows,
        `subscribe()` for the other nodes' changes, `stale`.  Without a cluster, a view of this
        server alone (`enabled` False)."""
        return self._cluster

    @property
    def node_id(self) -> str:
        """This server's name in its cluster (its `server_id`)."""
        return self.server_id

    def _local_node(self) -> NodeRow:
        return NodeRow(self.server_id, self.host, self.port, os.getpid(), self.started_at, local=True)

    # ---------------------------------------------------------------- events

    def subscribe(self, callback: Callable[[ServerEvent], None], *, messages: bool = True,
                  heartbeats: bool = False, batch_messages: bool = False,
                  after_store: bool = False) -> Callable[[], None]:
        """Call `callback(event)` in the event loop for every event; returns an unsubscribe.

        `messages` / `heartbeats`: whether this subscriber wants those (frequent) events:
        `MessageReceived` / `HeartbeatReceived`; when no subscriber does, the server does not
        build them at all.  With `batch_messages`, it gets one `MessagesReceived` per read
        (every message of that read, in order) instead of a `MessageReceived` each.

        When messages are handed over: by default as they arrive, before the store has kept
        them; a duplicate (a numbered message sent again after a reconnect) comes again, with
        `duplicate=True`.  With `after_store=True`, a numbered message comes once the store has
        committed it (with `--db none`, at once) and never again: a program that acts on every
        event then acts on every stored message exactly once, and on nothing that is not stored
        (unless the server is killed between the commit and the event: then the event is lost,
        the message is not).  `(event.client.id, event.client.session, event.seq)` names a
        numbered message uniquely.  Unnumbered messages are not kept waiting.
        """
        return self._hub.subscribe(callback, messages=messages, batch_messages=batch_messages,
                                   heartbeats=heartbeats or self.config.verbose, after_store=after_store)

    async def events(self, maxsize: int = 10000, *, overflow: str = "drop", messages: bool = True,
                     heartbeats: bool = False, after_store: bool = False) -> AsyncIterator[ServerEvent]:
        """Iterate over server events (what `subscribe()` gives, through a queue of `maxsize`).

        A consumer that falls `maxsize` events behind must not grow the server's memory.
        `overflow="drop"`: the oldest events are dropped, and the next event you get is an
        `EventsDropped(count)` saying how many; `overflow="raise"`: the iteration raises
        `EventsOverflow` instead, and ends.  `messages`, `heartbeats`, `after_store`: as for
        `subscribe()`.
        """
        if overflow not in ("drop", "raise"):
            raise ConfigError("bad-choice", N_("{field} must be drop or raise (got {value})"),
                              names={"field": "overflow"}, value=overflow)
        q: asyncio.Queue[ServerEvent] = asyncio.Queue(maxsize)
        dropped = 0
        over = False

        def put(ev: ServerEvent) -> None:
            nonlocal dropped, over
            if q.full():
                if overflow == "raise":
                    over = True
                    return
                q.get_nowait()
                dropped += 1
            q.put_nowait(ev)
        unsubscribe = self.subscribe(put, messages=messages, heartbeats=heartbeats, after_store=after_store)
        try:
            while True:
                if over:
                    raise EventsOverflow(maxsize)
                ev = await q.get()
                if dropped:
                    n, dropped = dropped, 0
                    yield EventsDropped(n)
                yield ev
        finally:
            unsubscribe()

    # ---------------------------------------------------------------- acting on clients

    def send(self, client_id: str, payload: bytes | str) -> bool:
        """Send a message to one client (by HELLO id or address).  False if not connected.

        In a cluster, a client of another node is reached through it (by HELLO id): True then
        means handed to the cluster for the node the view says holds it (best effort, as any
        server `MSG`)."""
        data = _to_bytes(payload)
        if self._hub.deliver(client_id, data):
            return True
        cluster = self._hub.cluster
        return cluster is not None and cluster.route(client_id, data)

    def broadcast(self, payload: bytes | str) -> int:
        """Send a message to every connected client; returns how many it went to (in a
        cluster: this node's clients plus those the view knows on the others)."""
        data = _to_bytes(payload)
        n = self._hub.deliver_all(data)
        cluster = self._hub.cluster
        if cluster is not None:
            n += cluster.broadcast(data)
        return n

    def reload_auth(self) -> None:
        """Re-read the auth file now (what SIGHUP does)."""
        self._hub.guard.reload_auth()

    # ---------------------------------------------------------------- life cycle

    async def start(self) -> None:
        """Open the store, start listening, and join the cluster if there is one.  Raises OSError
        (port in use, ...) as is, and the backend's TcpulseError if it cannot join."""
        loop = asyncio.get_running_loop()
        cfg = self.config
        hub = self._hub
        hub.guard.prepare()  # TLS, auth file, open-file limit; raises ValueError
        await hub.store.open()
        hub.info = Info(
            server_id=self.server_id, version=__version__, heartbeat_interval=cfg.heartbeat_interval,
            heartbeat_timeout=cfg.heartbeat_timeout, auth_required=hub.guard.auth_required,
            durable=hub.store.durable, max_line=cfg.max_line, max_payload=cfg.max_payload,
        )
        plain_asyncio = isinstance(loop, asyncio.BaseEventLoop)
        ssl_ctx = hub.guard.ssl
        factory: Callable[[], asyncio.Protocol]
        if ssl_ctx is None:
            def factory() -> asyncio.Protocol:
                return ServerConnection(hub)
        else:
            # TLS: accepted as plain TCP and upgraded by the server itself, so that half-done
            # handshakes are bounded and counted (handshake.py).
            ctx, wait = ssl_ctx, cfg.tls_handshake_timeout

            def factory() -> asyncio.Protocol:
                return Handshake(hub, ctx, wait)
        self._server = await loop.create_server(
            factory, cfg.host, cfg.port, reuse_address=True, reuse_port=cfg.reuse_port or None,
            backlog=min(ACCEPT_BATCH, cfg.backlog) if plain_asyncio else cfg.backlog)
        if plain_asyncio:
            for ts in self._server.sockets:
                with socket.socket(fileno=os.dup(ts.fileno())) as dup:
                    dup.listen(cfg.backlog)  # the same listening socket: only its kernel backlog grows
        self.sockets = list(self._server.sockets)
        sockname = self.sockets[0].getsockname()
        self.host, self.port = sockname[0], sockname[1]
        self.started_at = time.time()
        if hub.cluster is not None:
            try:
                await hub.cluster.start(hub)
            except BaseException:
                self._server.close()
                await hub.store.close()
                raise
        hub.emit(Listening(cfg.host, self.port, cfg.heartbeat_interval, cfg.heartbeat_timeout, hub.store.durable))
        for w in hub.store.warnings:  # the store's files: a directory others can write to, ...
            hub.emit(Warning_(str(w), {"store_warning": w.kind}, error=w))
        if cfg.status_every > 0:
            self._status_task = asyncio.create_task(self._status_loop(cfg.status_every))

    async def serve_forever(self) -> None:
        assert self._server is not None, "call start() first"
        with contextlib.suppress(asyncio.CancelledError):
            await self._server.serve_forever()

    async def close(self, grace: float = 5.0) -> None:
        """Stop accepting, send `BYE shutdown` to every client, flush the store, and wait up to
        `grace` seconds for the clients to go before closing what is left."""
        hub = self._hub
        if hub.closing:
            return
        hub.closing = True
        loop = asyncio.get_running_loop()
        if self._server is not None:
            self._server.close()
        if self._status_task is not None:
            self._status_task.cancel()
        hub.stop_timer()
        # One grace period for the flush and the goodbyes together: shutdown is bounded by it.
        deadline = loop.time() + grace
        for c in list(hub.registry):
            c.say_bye("shutdown", DisconnectReason.SHUTDOWN)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(hub.store.flush(), grace)
        if hub.cluster is not None:
            # Leave the cluster: this node's clients leave the other nodes' views at once.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(hub.cluster.close(), max(1.0, deadline - loop.time()))
        while (hub.registry or hub.lingerers) and loop.time() < deadline:
            await asyncio.sleep(0.01)
        for c in [*hub.registry, *hub.lingerers]:
            if c.transport is not None:
                c.transport.abort()
        await asyncio.sleep(0)
        hub.cancel_tasks()
        await hub.store.close()

    async def __aenter__(self) -> Server:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _status_loop(self, every: float) -> None:
        while True:
            await asyncio.sleep(every)
            self._hub.emit(Status(self.status_rows()))


class EventsOverflow(TcpulseError):
    """`Server.events(overflow="raise")`: the consumer fell `maxsize` events behind."""

    def __init__(self, maxsize: int) -> None:
        super().__init__("overflow", N_("the event consumer fell {maxsize} events behind"), maxsize=maxsize)


def _to_bytes(payload: bytes | str) -> bytes:
    return payload.encode("utf-8") if isinstance(payload, str) else bytes(payload)


def default_server_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"
