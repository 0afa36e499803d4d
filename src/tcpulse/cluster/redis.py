"""The cluster backend on Redis (`serve --cluster redis://HOST:PORT/DB`), as Centrifugo's Redis
engine does it: presence in keys, changes on pub/sub, a channel per node.

    server = Server(ServerConfig(server_id="node-a"))
    server.use_cluster(RedisCluster("redis://127.0.0.1:6379/0"))

Keys (`<p>` is the prefix, `tcpulse` by default; docs/cluster.md has the whole design):

- `<p>:lease:<node>`: the node's lease, its description as JSON, with a TTL (`lease_ttl`, 3 s)
  renewed every `renew_every` (1 s).  `<p>:nodes`: the set of node names.  Every renewal also
  looks at the others' leases: a node whose lease is gone is declared gone (scripts.GONE): its
  clients leave every view within `lease_ttl + renew_every` of its last renewal, without it.
- `<p>:clients:<node>`: the node's clients, one JSON row per connection, written on a change
  (connect, hello, suspect, alive) and removed on the end: never per heartbeat.
- `<p>:owner:<id>`: the ownership token of an id (`epoch node run conn`, scripts.py), the epoch
  from `INCR <p>:epoch`.  Every change of a client with an id is written only while its token
  owns the id (fencing); a node that finds itself fenced out says `BYE replaced`.
- `<p>:inbox:<node>`: takeover requests and their answers for a node (a list, so that none is
  lost with a pub/sub message); a message on the node's channel says "look".

Channels: `<p>:events` (every node's changes, to every node), `<p>:node:<node>` (inbox nudges,
messages for one client), `<p>:all` (broadcasts).

When Redis cannot be reached, the node goes on serving and judging its own clients, marks the
view stale (one warning), tries again with backoff, and once back republishes everything it holds
(each id taken back unless a live node took it meanwhile) and reads the others' state again.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from tcpulse.cluster import scripts
from tcpulse.errors import N_, TcpulseError
from tcpulse.policy.backoff import Backoff
from tcpulse.server.cluster import ClusterHost, ClusterView, NodeRow, cluster_row
from tcpulse.server.events import Connected, Disconnected, HelloReceived, Recovered, Suspect, TimedOut

__all__ = ["ClusterError", "RedisCluster", "valid_node_id"]

#: Changes waiting to be published, at most; beyond, they are dropped and the node republishes
#: everything it holds instead (as after a reconnect), which is bounded by its clients.
MAX_PENDING = 100_000
#: Bytes of messages for other nodes' clients waiting to go out; beyond, `send` says False and
#: the message is counted as dropped.
MAX_OUTGOING = 64 << 20
#: Requests taken from the inbox at once.
INBOX_BATCH = 1000
#: Rows per pipeline when republishing or reading a snapshot, and claims per pipeline.
CHUNK = 1000
#: Connections to Redis besides the lease's own (one of them held by the subscription).
POOL_SIZE = 8


class ClusterError(TcpulseError):
    """The cluster cannot do what was asked.  `kind`: "unreachable" (Redis cannot be reached at
    start), "not-released" (the node holding an id did not give it up in time: ERR 503),
    "bad-node-id"."""


def valid_node_id(name: str) -> bool:
    """A node name: 1-64 of `[A-Za-z0-9._-]` (it is part of keys and tokens)."""
    return 0 < len(name) <= 64 and all((ch.isalnum() and ch.isascii()) or ch in "._-" for ch in name)


class RedisCluster:
    """The Redis backend (see the module docstring).  `Server.use_cluster()` hands it the view
    before `start()`; the server starts and closes it."""

    def __init__(self, url: str, *, prefix: str = "tcpulse", lease_ttl: float = 3.0,
                 renew_every: float | None = None, takeover_wait: float | None = None,
                 op_timeout: float = 2.0, info: dict[str, Any] | None = None) -> None:
        self.url = url
        self.prefix = prefix
        self.lease_ttl = lease_ttl
        self.renew_every = renew_every if renew_every is not None else lease_ttl / 3
        #: How long a HELLO waits for the node holding its id to release it (ERR 503 after).
        self.takeover_wait = takeover_wait if takeover_wait is not None else 2 * lease_ttl + self.renew_every
        self.op_timeout = op_timeout
        #: Extra fields of this node's lease (`admin`: the admin endpoint's URL, ...).
        self.info: dict[str, Any] = dict(info or {})
        self.view: ClusterView = ClusterView("", list, lambda: NodeRow(""))
        self.node = ""
        self.run = secrets.token_hex(4)
        self.up = False
        #: Figures: changes published, messages routed to / received from other nodes, and
        #: dropped; reconnects; clients fenced out.
        self.published = 0
        self.routed = 0
        self.received = 0
        self.dropped_sends = 0
        self.reconnects = 0
        self.fenced = 0
        self._host: ClusterHost | None = None
        self._r: aioredis.Redis | None = None
        self._lease_r: aioredis.Redis | None = None
        self._claims: list[tuple[str, int, asyncio.Future[tuple[int, str, str | None]]]] = []
        self._claiming = False
        # Inbox messages for other nodes waiting to go out; nodes known to be gone (takeovers
        # waiting on them give up waiting).
        self._requests: list[tuple[str, str]] = []
        self._requesting = False
        self._gone: dict[str, asyncio.Event] = {}
        self._pubsub: Any = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loops: list[asyncio.Task[Any]] = []
        self._recovering: asyncio.Task[Any] | None = None
        self._unsubscribe: Callable[[], None] | None = None
        # conn -> (id, token) of this node's claimed connections; conns accepted while Redis
        # was away (claimed at the next resync).
        self._tokens: dict[int, tuple[str, str]] = {}
        self._unclaimed: set[int] = set()
        self._max_epoch = 0
        # conn -> the change to publish; conns whose row is in Redis.
        self._pending: dict[int, tuple[str, dict[str, Any] | None, dict[str, Any]]] = {}
        self._in_redis: set[int] = set()
        self._resync_needed = False
        self._flushing = False
        self._outgoing: list[tuple[str, str]] = []
        self._outgoing_bytes = 0
        self._waiting: dict[str, asyncio.Future[None]] = {}
        self._closing = False
        self._scripts: dict[str, Any] = {}

    # ---------------------------------------------------------------- keys

    def _k(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    @property
    def _events(self) -> str:
        return self._k("events")

    # ---------------------------------------------------------------- life cycle

    async def start(self, host: ClusterHost) -> None:
        self._host = host
        self.node = host.node_id
        if not valid_node_id(self.node):
            raise ClusterError("bad-node-id", N_("node id {node} must be 1-64 letters, digits, '.', '_' or '-': "
                                                 "choose another --node-id"), node=repr(self.node))
        self.view.enabled = True
        # A bounded pool: a storm of HELLOs waits for a connection instead of opening thousands
        # (each one a descriptor the clients need); the lease has a connection of its own, so that
        # its renewal never queues behind bulk work.
        opts: dict[str, Any] = {"socket_timeout": self.op_timeout, "socket_connect_timeout": self.op_timeout,
                                "health_check_interval": 0}
        pool = aioredis.BlockingConnectionPool.from_url(self.url, max_connections=POOL_SIZE, timeout=self.op_timeout,
                                                        **opts)
        self._r = aioredis.Redis(connection_pool=pool, retry=Retry(NoBackoff(), 0))
        lease_pool = aioredis.BlockingConnectionPool.from_url(self.url, max_connections=2, timeout=self.op_timeout,
                                                              **opts)
        self._lease_r = aioredis.Redis(connection_pool=lease_pool, retry=Retry(NoBackoff(), 0))
        for name in ("CLAIM", "UPDATE", "REMOVE", "RECLAIM", "GONE", "BUMP_EPOCH"):
            self._scripts[name] = self._r.register_script(getattr(scripts, name))
        try:
            await self._r.ping()
            await self._join(first=True)
        except (RedisError, OSError) as e:
            await self._r.aclose()
            await self._lease_r.aclose()
            raise ClusterError("unreachable", N_("cannot reach the cluster at {url}: {error} (is Redis running? "
                                                 "check --cluster)"), url=_redact(self.url), error=_one_line(e)) from e
        self._unsubscribe = host.subscribe_rare(self._on_event)
        self.up = True
        self._start_loops()

    async def close(self) -> None:
        self._closing = True
        if self._unsubscribe is not None:
            self._unsubscribe()
        for t in [*self._loops, *self._tasks, *([self._recovering] if self._recovering else [])]:
            t.cancel()
        for f in self._waiting.values():
            if not f.done():
                f.cancel()
        r = self._r
        if r is None:
            return
        if self.up:
            with contextlib.suppress(RedisError, OSError, asyncio.TimeoutError):
                await self._flush_changes()
                p = r.pipeline(transaction=False)
                for conn, (cid, token) in self._tokens.items():
                    await self._scripts["REMOVE"](keys=[self._k("clients", self.node), self._k("owner", cid)],
                                            args=[str(conn), token, "", self._k("void")], client=p)
                p.delete(self._k("lease", self.node), self._k("clients", self.node), self._k("inbox", self.node))
                p.srem(self._k("nodes"), self.node)
                p.publish(self._events, json.dumps({"n": self.node, "op": "down"}))
                await p.execute()
        with contextlib.suppress(Exception):
            if self._pubsub is not None:
                await self._pubsub.aclose()
        with contextlib.suppress(Exception):
            await r.aclose()
        with contextlib.suppress(Exception):
            if self._lease_r is not None:
                await self._lease_r.aclose()

    def _start_loops(self) -> None:
        self._loops = [asyncio.ensure_future(self._lease_loop()), asyncio.ensure_future(self._maintain_loop()),
                       asyncio.ensure_future(self._listen())]

    def _spawn(self, coro: Awaitable[Any]) -> None:
        t = asyncio.ensure_future(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    async def _join(self, first: bool) -> None:
        """Subscribe, take the lease, publish everything this node holds, read the others."""
        r = self._r
        assert r is not None and self._host is not None
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                await self._pubsub.aclose()
        self._pubsub = r.pubsub(ignore_subscribe_messages=True)
        await self._pubsub.subscribe(self._events, self._k("node", self.node), self._k("all"))
        await self._scripts["BUMP_EPOCH"](keys=[self._k("epoch")], args=[self._max_epoch])
        await self._renew()
        await self._republish(reset=not first)
        await self._read_others()

    # ---------------------------------------------------------------- the lease

    def _lease_value(self) -> str:
        assert self._host is not None
        local = self.view.nodes()[0]
        return json.dumps({"node": self.node, "host": local.host, "port": local.port, "pid": os.getpid(),
                           "started_at": local.started_at, "run": self.run, **self.info})

    async def _renew(self) -> bool:
        """Renew the lease; False if it had run out (others may have declared this node gone)."""
        r = self._lease_r
        assert r is not None
        p = r.pipeline(transaction=False)
        p.set(self._k("lease", self.node), self._lease_value(), px=int(self.lease_ttl * 1000), get=True)
        p.sadd(self._k("nodes"), self.node)
        old, _ = await p.execute()
        return old is not None

    async def _lease_loop(self) -> None:
        """Renew the lease on the dot, and nothing else: the lease must never wait behind bulk
        work (a republish of 20,000 rows, a snapshot of another node), or a busy node would be
        declared gone and republish again, and again."""
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            next_at += self.renew_every
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            next_at = max(next_at, loop.time() - self.renew_every)  # after a stall, no burst of renewals
            try:
                if not await self._renew():
                    # The lease ran out (this process was stopped, or too slow): the others may
                    # have freed this node's ids.  The maintenance loop takes back what is ours.
                    assert self._host is not None
                    self._host.warn(f"cluster lease of {self.node} had run out: publishing this node's clients "
                                    "again", {"cluster": "lease-lost"})
                    self._resync_needed = True
            except (RedisError, OSError) as e:
                self._down(e)
                return
            except asyncio.CancelledError:
                raise
            except Exception as e:  # a bug must not end presence silently: reported, and started again
                self._down(e)
                return

    async def _maintain_loop(self) -> None:
        """Every renewal period: republish if needed, look at the other nodes' leases, read the
        inbox (in case a nudge was lost)."""
        while True:
            await asyncio.sleep(self.renew_every)
            try:
                if self._resync_needed:
                    await self._republish(reset=True)
                await self._check_nodes()
                await self._drain_inbox()
            except (RedisError, OSError) as e:
                self._down(e)
                return
            except asyncio.CancelledError:
                raise
            except Exception as e:  # as in _lease_loop
                self._down(e)
                return

    async def _check_nodes(self) -> None:
        """Declare gone every node whose lease ran out; read the state of nodes new to the view."""
        r = self._r
        assert r is not None
        members = sorted(m.decode() if isinstance(m, bytes) else m for m in await r.smembers(self._k("nodes")))
        others = [m for m in members if m != self.node]
        if not others:
            self.view.forget_nodes_but({self.node})
            return
        leases = await r.mget([self._k("lease", m) for m in others])
        live = {self.node}
        for node, lease in zip(others, leases, strict=True):
            if lease is None:
                await self._declare_gone(node)
                continue
            live.add(node)
            known = node in self.view.node_ids()
            self.view.node_up(_node_row(node, lease))
            self._gone.pop(node, None)
            if not known:
                await self._read_node(node)
        self.view.forget_nodes_but(live)

    async def _declare_gone(self, node: str) -> None:
        r = self._r
        assert r is not None
        ev = json.dumps({"n": node, "op": "gone", "by": self.node})
        gone = await self._scripts["GONE"](keys=[self._k("lease", node), self._k("clients", node),
                                                 self._k("nodes")], args=[node, self._k("owner", ""), ev, self._events])
        if gone:  # 0: its lease came back meanwhile (it renewed late): still a node
            self.view.node_gone(node)
            self._gone_event(node).set()

    async def _read_others(self) -> None:
        r = self._r
        assert r is not None
        members = [m.decode() if isinstance(m, bytes) else m for m in await r.smembers(self._k("nodes"))]
        live = {self.node}
        for node in sorted(members):
            if node == self.node:
                continue
            lease = await r.get(self._k("lease", node))
            if lease is None:
                await self._declare_gone(node)
                continue
            live.add(node)
            self.view.node_up(_node_row(node, lease))
            await self._read_node(node)
        self.view.forget_nodes_but(live)

    async def _read_node(self, node: str) -> None:
        r = self._r
        assert r is not None
        raw = await r.hgetall(self._k("clients", node))
        rows: dict[str, dict[str, Any]] = {}
        for k, v in raw.items():
            with contextlib.suppress(ValueError):
                rows[k.decode() if isinstance(k, bytes) else k] = json.loads(v)
        self.view.replace_node(node, rows)

    # ---------------------------------------------------------------- going away and back

    def _down(self, e: BaseException) -> None:
        if not self.up or self._closing:
            return
        self.up = False
        self.view.set_stale(True)
        self._pending.clear()
        self._outgoing.clear()
        self._outgoing_bytes = 0
        assert self._host is not None
        self._host.warn(f"cluster unreachable ({_redact(self.url)}: {_one_line(e)}): serving this node's clients "
                        "alone, the other nodes' rows are the last known (stale); trying again",
                        {"cluster": "stale"})
        current = asyncio.current_task()
        for t in self._loops:
            if t is not current:
                t.cancel()
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(ClusterError("not-released", N_("the cluster became unreachable during a takeover")))
        if self._recovering is None or self._recovering.done():
            self._recovering = asyncio.ensure_future(self._recover())

    async def _recover(self) -> None:
        backoff = Backoff(base=min(0.2, self.renew_every), cap=max(1.0, self.lease_ttl))
        since = time.monotonic()
        while not self._closing:
            await asyncio.sleep(backoff.next())
            try:
                assert self._r is not None
                # Connections in the pool went with the old server: a command on one fails once.
                await self._r.connection_pool.disconnect()
                assert self._lease_r is not None
                await self._lease_r.connection_pool.disconnect()
                await self._r.ping()
                await self._join(first=False)
            except (RedisError, OSError):
                continue
            self.up = True
            self.reconnects += 1
            self.view.set_stale(False)
            assert self._host is not None
            self._host.warn(f"cluster reachable again after {time.monotonic() - since:.1f} s: this node's clients "
                            "published again, the view is current", {"cluster": "ok"})
            self._start_loops()
            return

    async def _republish(self, reset: bool) -> None:
        """Publish every client of this node again (each id taken back unless a live node took it
        meanwhile: those connections are replaced)."""
        r = self._r
        assert r is not None and self._host is not None
        self._resync_needed = False
        self._pending.clear()
        rows = self._host.local_rows()
        clients = self._k("clients", self.node)
        p = r.pipeline(transaction=False)
        p.delete(clients)
        p.publish(self._events, json.dumps({"n": self.node, "op": "reset"}))
        await p.execute()
        self._in_redis.clear()
        for i in range(0, len(rows), CHUNK):
            chunk = rows[i:i + CHUNK]
            p = r.pipeline(transaction=False)
            sent: list[tuple[dict[str, Any], bool]] = []
            for row in chunk:
                conn, cid = row["cid"], row["id"]
                ev = json.dumps({"n": self.node, "op": "hello" if cid else "connect", "k": str(conn), "row": row})
                if cid is None:
                    p.hset(clients, str(conn), json.dumps(row))
                    p.publish(self._events, ev)
                    sent.append((row, False))
                    continue
                held = self._tokens.get(conn)
                token = held[1] if held is not None and held[0] == cid else ""
                await self._scripts["RECLAIM"](
                    keys=[self._k("owner", cid), clients, self._k("epoch")],
                    args=[token, self.node, self.run, conn, str(conn), json.dumps(row), self._k("lease", ""), ev,
                          self._events], client=p)
                sent.append((row, True))
            results = await p.execute()
            j = 0
            for row, fenced in sent:
                conn = row["cid"]
                if not fenced:
                    j += 2
                    self._in_redis.add(conn)
                    continue
                ok, token = results[j]
                j += 1
                token = token.decode() if isinstance(token, bytes) else str(token)
                self._tokens[conn] = (row["id"], token)
                self._unclaimed.discard(conn)
                self._note_epoch(token)
                if ok:
                    self._in_redis.add(conn)
                else:
                    self.fenced += 1
                    self._host.fenced_out(conn)
        del reset

    # ---------------------------------------------------------------- claims (takeover)

    async def claim(self, client_id: str, conn_id: int) -> bool:
        if not self.up:
            # Redis is away: the node serves on; the id is claimed when it is back (resync).
            self._unclaimed.add(conn_id)
            return True
        assert self._host is not None
        fut: asyncio.Future[tuple[int, str, str | None]] = asyncio.get_running_loop().create_future()
        self._claims.append((client_id, conn_id, fut))
        if not self._claiming:
            self._claiming = True
            self._spawn(self._claim_batches())
        try:
            won, token, prev = await fut
        except (RedisError, OSError):
            self._unclaimed.add(conn_id)  # Redis went away meanwhile: claimed when it is back
            return True
        self._note_epoch(token)
        if not won:
            return False
        self._tokens[conn_id] = (client_id, token)
        if prev is None:
            return True
        parts = prev.split(" ")
        if len(parts) != 4:
            return True
        _pe, pnode, prun, pconn = parts
        if pnode == self.node:
            if prun == self.run and int(pconn) != conn_id:
                await self._host.release(int(pconn))
            return True
        return await self._wait_release(client_id, pnode, prun, int(pconn), token)

    async def _claim_batches(self) -> None:
        """The claims of this loop iteration (a storm of HELLOs after a restart: thousands) go to
        Redis in pipelines of CHUNK, not one round trip each."""
        await asyncio.sleep(0)
        try:
            while self._claims:
                batch, self._claims = self._claims[:CHUNK], self._claims[CHUNK:]
                r = self._r
                assert r is not None
                try:
                    p = r.pipeline(transaction=False)
                    for client_id, conn_id, _fut in batch:
                        await self._scripts["CLAIM"](keys=[self._k("owner", client_id), self._k("epoch")],
                                                     args=[self.node, self.run, conn_id], client=p)
                    results = await p.execute()
                except (RedisError, OSError) as e:
                    for _c, _n, fut in [*batch, *self._claims]:
                        if not fut.done():
                            fut.set_exception(e)
                    self._claims = []
                    self._down(e)
                    return
                for (_c, _n, fut), (won, token, prev) in zip(batch, results, strict=True):
                    if not fut.done():
                        fut.set_result((int(won), _text(token), None if prev is None else _text(prev)))
        finally:
            self._claiming = False

    def _note_epoch(self, token: str) -> None:
        head = token.split(" ", 1)[0]
        if head.isdigit():
            self._max_epoch = max(self._max_epoch, int(head))

    async def _wait_release(self, client_id: str, node: str, run: str, conn: int, token: str) -> bool:
        """Ask `node` to release `conn` and wait for its answer, or for it to be declared gone
        (its lease ran out: the maintenance loop or another node finds it, within a renewal)."""
        r = self._r
        assert r is not None
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._waiting[token] = fut
        req = json.dumps({"t": "takeover", "id": client_id, "run": run, "conn": conn, "token": token,
                          "from": self.node})
        gone = self._gone_event(node)
        try:
            self._queue_request(node, req)
            end = loop.time() + self.takeover_wait
            while not fut.done() and not gone.is_set():
                left = end - loop.time()
                if left <= 0:
                    if not await r.exists(self._k("lease", node)):
                        break  # gone, though nobody said so yet
                    raise ClusterError("not-released", N_("node {node} holds {id} and did not release it within "
                                                          "{seconds:g} s"), node=node, id=client_id,
                                       seconds=self.takeover_wait)
                # In memory, not a Redis round trip per waiting HELLO: thousands wait at once
                # when a node with thousands of clients dies.
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(asyncio.shield(fut), min(left, 0.05))
            if fut.done() and not fut.cancelled():
                fut.result()
            return True
        except (RedisError, OSError) as e:
            self._down(e)
            raise ClusterError("not-released", N_("the cluster became unreachable during a takeover")) from e
        finally:
            self._waiting.pop(token, None)

    def _gone_event(self, node: str) -> asyncio.Event:
        """Set once `node` is known to be gone; cleared when it has a lease again."""
        ev = self._gone.get(node)
        if ev is None:
            ev = self._gone[node] = asyncio.Event()
        return ev

    def _queue_request(self, node: str, req: str) -> None:
        """An inbox message for `node`; those of one loop iteration go in one pipeline."""
        self._requests.append((node, req))
        if not self._requesting:
            self._requesting = True
            self._spawn(self._send_requests())

    async def _send_requests(self) -> None:
        await asyncio.sleep(0)
        try:
            while self._requests:
                batch, self._requests = self._requests[:CHUNK], self._requests[CHUNK:]
                r = self._r
                assert r is not None
                p = r.pipeline(transaction=False)
                ttl = int(max(60.0, 10 * self.lease_ttl) * 1000)
                for node in sorted({n for n, _ in batch}):
                    p.rpush(self._k("inbox", node), *[q for n, q in batch if n == node])
                    p.pexpire(self._k("inbox", node), ttl)
                    p.publish(self._k("node", node), '{"t":"inbox"}')
                try:
                    await p.execute()
                except (RedisError, OSError) as e:
                    self._down(e)
                    return
        finally:
            self._requesting = False

    async def _drain_inbox(self) -> None:
        r = self._r
        assert r is not None
        while True:
            items = await r.lpop(self._k("inbox", self.node), INBOX_BATCH)
            if not items:
                return
            for raw in items:
                try:
                    req = json.loads(raw if isinstance(raw, (str, bytes)) else str(raw))
                except ValueError:
                    continue
                if req.get("t") == "takeover":
                    self._spawn(self._release(req))
                elif req.get("t") == "released":
                    fut = self._waiting.get(str(req.get("token")))
                    if fut is not None and not fut.done():
                        fut.set_result(None)
            if len(items) < INBOX_BATCH:
                return

    async def _release(self, req: dict[str, Any]) -> None:
        assert self._host is not None and self._r is not None
        conn = int(req.get("conn", 0))
        if req.get("run") == self.run:
            await self._host.release(conn)
        if self.up:
            self._queue_request(str(req.get("from")), json.dumps({"t": "released", "token": req.get("token")}))

    # ---------------------------------------------------------------- pub/sub

    async def _listen(self) -> None:
        ps = self._pubsub
        try:
            while True:
                msg = await ps.get_message(timeout=max(1.0, self.lease_ttl))
                if msg is None:
                    continue
                self._on_message(msg)
        except (RedisError, OSError) as e:
            self._down(e)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # as in _lease_loop
            self._down(e)

    def _on_message(self, msg: dict[str, Any]) -> None:
        ch = msg.get("channel")
        ch = ch.decode() if isinstance(ch, bytes) else str(ch)
        try:
            data = json.loads(msg["data"])
        except (ValueError, TypeError):
            return
        host = self._host
        assert host is not None
        if ch == self._events:
            node = str(data.get("n"))
            if node == self.node:
                return
            op = data.get("op")
            if op in ("gone", "down"):
                self.view.node_gone(node, "node-gone" if op == "gone" else "node-left")
                self._gone_event(node).set()
            elif op == "reset":
                self.view.replace_node(node, {})
            else:
                if node not in self.view.node_ids():
                    self._spawn(self._learn_node(node))
                self.view.client_changed(node, str(data.get("k")), str(op), data.get("row"), data.get("reason"),
                                         data.get("sf"), data.get("late"))
        elif ch == self._k("all"):
            if data.get("from") != self.node:
                self.received += 1
                host.deliver_all(base64.b64decode(data["p"]))
        else:  # this node's channel
            t = data.get("t")
            if t == "inbox":
                self._spawn(self._drain_inbox_safely())
            elif t == "send":
                self.received += 1
                if not host.deliver(str(data.get("id")), base64.b64decode(data["p"])):
                    self.dropped_sends += 1

    async def _learn_node(self, node: str) -> None:
        with contextlib.suppress(RedisError, OSError):
            assert self._r is not None
            lease = await self._r.get(self._k("lease", node))
            if lease is not None:
                self.view.node_up(_node_row(node, lease))

    async def _drain_inbox_safely(self) -> None:
        try:
            await self._drain_inbox()
        except (RedisError, OSError) as e:
            self._down(e)

    # ---------------------------------------------------------------- publishing changes

    def _on_event(self, ev: Any) -> None:
        t = type(ev)
        if t is Connected:
            op = "connect"
        elif t is HelloReceived:
            op = "hello"
        elif t is Suspect:
            op = "suspect"
        elif t is Recovered:
            op = "alive"
        elif t is TimedOut:
            op = "timeout"
        elif t is Disconnected:
            op = "close"
        else:
            return
        c = ev.client
        conn = c.conn_id
        if not self.up:
            if op == "close":
                self._forget(conn)
            return
        if op in ("timeout", "close"):
            prior = self._pending.get(conn)
            if prior is not None and prior[0] == "timeout":
                return  # the close after a timeout: the timeout says it
            extra: dict[str, Any] = {}
            if t is TimedOut:
                extra = {"reason": "timeout", "sf": round(ev.silent_for, 3), "late": round(ev.late_by * 1000, 3)}
            else:
                extra = {"reason": ev.reason.value}
            if conn not in self._in_redis and conn not in self._tokens and prior is not None and prior[1] is not None:
                # Never published: nothing to take back.
                del self._pending[conn]
                self._forget(conn)
                return
            self._pending[conn] = (op, None, extra)
        else:
            assert self._host is not None
            self._pending[conn] = (op, cluster_row(c, self.node, self._host_now(), time.time()), {})
        if len(self._pending) > MAX_PENDING:
            self._pending.clear()
            self._resync_needed = True
            return
        if not self._flushing:
            self._flushing = True
            self._spawn(self._flush_soon())

    def _host_now(self) -> float:
        return time.monotonic()

    def _forget(self, conn: int) -> None:
        self._tokens.pop(conn, None)
        self._unclaimed.discard(conn)
        self._in_redis.discard(conn)

    async def _flush_soon(self) -> None:
        await asyncio.sleep(0)  # let the events of this loop iteration gather
        try:
            await self._flush_changes()
        except (RedisError, OSError) as e:
            self._down(e)
        finally:
            self._flushing = False
        if self._pending and self.up and not self._flushing:
            self._flushing = True
            self._spawn(self._flush_soon())

    async def _flush_changes(self) -> None:
        r = self._r
        assert r is not None and self._host is not None
        while self._pending or self._outgoing:
            # At most CHUNK changes per pipeline: Redis serves the other nodes (and their lease
            # renewals) between two, and this loop runs its timers between two.
            if len(self._pending) > CHUNK:
                keys = list(self._pending)[:CHUNK]
                pending = {k: self._pending.pop(k) for k in keys}
            else:
                pending, self._pending = self._pending, {}
            outgoing, self._outgoing = self._outgoing[:CHUNK], self._outgoing[CHUNK:]
            self._outgoing_bytes = sum(len(d) for _c, d in self._outgoing)
            p = r.pipeline(transaction=False)
            order: list[tuple[int, str, dict[str, Any] | None]] = []
            clients = self._k("clients", self.node)
            for conn, (op, row, extra) in pending.items():
                held = self._tokens.get(conn)
                token = "" if held is None else held[1]
                cid = "" if held is None else held[0]
                ev = json.dumps({"n": self.node, "op": op, "k": str(conn), "row": row, **extra})
                if row is None:
                    await self._scripts["REMOVE"](keys=[clients, self._k("owner", cid or "-")],
                                                  args=[str(conn), token, ev, self._events], client=p)
                    self._forget(conn)
                    kind = "remove"
                elif row.get("id") is not None and (held is None or held[0] != row["id"]):
                    # Signed in while Redis was away (its claim waited for this): claimed now,
                    # unless a live node took the id meanwhile (RECLAIM, as after a reconnect).
                    await self._scripts["RECLAIM"](
                        keys=[self._k("owner", row["id"]), clients, self._k("epoch")],
                        args=["", self.node, self.run, conn, str(conn), json.dumps(row), self._k("lease", ""), ev,
                              self._events], client=p)
                    kind = "reclaim"
                else:
                    await self._scripts["UPDATE"](keys=[clients, self._k("owner", cid or "-")],
                                                  args=[str(conn), json.dumps(row), token, ev, self._events],
                                                  client=p)
                    kind = "update"
                order.append((conn, kind, row))
            for channel, data in outgoing:
                p.publish(channel, data)
            results = await p.execute()
            for (conn, kind, row), res in zip(order, results, strict=False):
                self.published += 1
                if kind == "remove":
                    continue
                ok = res
                if kind == "reclaim":
                    ok, token = res
                    token = _text(token)
                    assert row is not None
                    self._tokens[conn] = (row["id"], token)
                    self._unclaimed.discard(conn)
                    self._note_epoch(token)
                if ok:
                    self._in_redis.add(conn)
                else:
                    self.fenced += 1
                    self._host.fenced_out(conn)

    # ---------------------------------------------------------------- sending across nodes

    def route(self, client_id: str, payload: bytes) -> bool:
        node = self.view.node_of(client_id)
        if node is None or not self.up:
            return False
        data = json.dumps({"t": "send", "id": client_id, "p": base64.b64encode(payload).decode()})
        return self._queue_out(self._k("node", node), data)

    def broadcast(self, payload: bytes) -> int:
        if not self.up:
            return 0
        data = json.dumps({"t": "bcast", "from": self.node, "p": base64.b64encode(payload).decode()})
        if not self._queue_out(self._k("all"), data):
            return 0
        return self.view.remote_count()

    def _queue_out(self, channel: str, data: str) -> bool:
        if self._outgoing_bytes + len(data) > MAX_OUTGOING:
            self.dropped_sends += 1
            return False
        self._outgoing.append((channel, data))
        self._outgoing_bytes += len(data)
        self.routed += 1
        if not self._flushing:
            self._flushing = True
            self._spawn(self._flush_soon())
        return True


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _node_row(node: str, lease: Any) -> NodeRow:
    try:
        d = json.loads(lease if isinstance(lease, (str, bytes)) else str(lease))
    except (ValueError, TypeError):
        d = {}
    return NodeRow(node, str(d.get("host", "")), int(d.get("port", 0) or 0), int(d.get("pid", 0) or 0),
                   float(d.get("started_at", 0) or 0), d.get("admin"))


def _redact(url: str) -> str:
    head, sep, rest = url.partition("://")
    if sep and "@" in rest.split("/", 1)[0]:
        return f"{head}://***@{rest.split('@', 1)[1]}"
    return url


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__
