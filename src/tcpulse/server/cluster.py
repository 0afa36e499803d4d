"""The cluster seam of the server: what a cluster backend does for the hub (`ClusterBackend`),
what the server does for it (`ClusterHost`), and the one read model of the whole cluster that
observers get (`ClusterView`: `Server.cluster`).

A single server has no backend: `Server.cluster` is then a view of one node, this one, and
everything behaves as before.  With a backend (`tcpulse.cluster.redis.RedisCluster`, `serve
--cluster redis://...`), the hub asks it for ownership of an id before it answers a `HELLO`
(PROTOCOL.md, "Identity and takeover", across nodes), the backend publishes this node's state
changes and keeps the view of the other nodes' clients, and `Server.send` reaches a client on
another node through it.  docs/cluster.md has the design.

The view is written only by the backend (the `node_*`, `client_*` and `set_stale` methods), in
the event loop; everything else reads it.  Its rows are plain dicts, copies: reading one never
reaches into a connection.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from tcpulse.server.view import ClientView

__all__ = ["ClusterBackend", "ClusterChange", "ClusterHost", "ClusterView", "NodeRow", "cluster_row"]


def cluster_row(c: ClientView, node: str, now: float, wall: float) -> dict[str, Any]:
    """One client as the cluster shows it: what its node publishes on a change (never per beat:
    `since` is when the state last changed, `last_heard` when this row was made)."""
    idle = c.last_heard_ago(now)
    return {
        "node": node,
        "cid": c.conn_id,
        "id": c.id,
        "name": c.name,
        "addr": c.addr,
        "session": c.session,
        "connected_at": c.connected_at,
        "state": c.state.value,
        "last_heard": round(wall - idle, 3),
        "heartbeat_interval": c.interval,
        "heartbeat_timeout": c.timeout,
    }


@dataclass(frozen=True, slots=True)
class NodeRow:
    """One node of the cluster as its lease describes it."""

    node: str
    host: str = ""
    port: int = 0
    pid: int = 0
    started_at: float = 0.0
    admin: str | None = None
    #: True for the node that answers (this process).
    local: bool = False


@dataclass(frozen=True, slots=True)
class ClusterChange:
    """A change of another node's client, as that node published it: `op` is connect, hello,
    suspect, alive, timeout or close (`reason` says why: the client's own, or `node-gone` when
    its node's lease ran out); `row` is the client's row after the change."""

    node: str
    op: str
    row: dict[str, Any]
    reason: str | None = None
    silent_for: float | None = None
    late_ms: float | None = None


class ClusterHost(Protocol):
    """What the server does for its cluster backend (the hub implements it)."""

    @property
    def node_id(self) -> str: ...

    def local_rows(self) -> list[dict[str, Any]]:
        """Every client connection of this node as a cluster row (`conn`, `id`, `state`, ...)."""

    def release(self, conn_id: int) -> Awaitable[None]:
        """Another HELLO took this connection's id: send `BYE replaced`, close, and return once
        what it sent is stored (the takeover's order: PROTOCOL.md, "Identity and takeover")."""

    def fenced_out(self, conn_id: int) -> None:
        """The cluster says this connection no longer owns its id: `BYE replaced`, close."""

    def deliver(self, client_id: str, payload: bytes) -> bool:
        """Send a message to a client of this node (False: not here)."""

    def deliver_all(self, payload: bytes) -> int:
        """Send a message to every client of this node; how many it went to."""

    def warn(self, text: str, fields: dict[str, Any]) -> None:
        """Tell the operator (a `Warning_` event)."""

    def subscribe_rare(self, callback: Callable[[Any], None]) -> Callable[[], None]:
        """Server events (no messages, no heartbeats) to `callback`; returns the unsubscribe."""


class ClusterBackend(Protocol):
    """What the hub and `Server` ask of a cluster backend."""

    view: ClusterView

    async def start(self, host: ClusterHost) -> None:
        """Join the cluster (raise a TcpulseError naming the problem if it cannot start at all;
        once started, losing the backend makes the view stale, never stops the server)."""

    async def close(self) -> None:
        """Leave the cluster: this node's clients leave the view of the others at once."""

    async def claim(self, client_id: str, conn_id: int) -> bool:
        """Make `conn_id` the owner of `client_id` across the cluster: returns once an owner on
        another node (or another connection here) has released it, True; False when a newer
        HELLO for the id claimed it meanwhile (this one is then replaced).  Raises
        `ClusterUnavailable`-like TcpulseErrors for ERR 503."""

    def route(self, client_id: str, payload: bytes) -> bool:
        """Send to a client of another node; False if no node is known to hold it."""

    def broadcast(self, payload: bytes) -> int:
        """Send to every other node's clients; how many clients the view knows there."""


class ClusterView:
    """The whole cluster as this node sees it (read-only for everyone but the backend).

    `nodes()`: every live node; `clients(node=None)`: every client as a row, this node's read
    live from its connections (`local_rows`), the others' as their nodes last published them;
    `subscribe(callback)`: `ClusterChange`s of the other nodes' clients as they arrive;
    `stale`: True while the backend cannot reach the cluster (the other nodes' rows are then
    the last ones known, and this node's own rows are still live)."""

    def __init__(self, node_id: str, local_rows: Callable[[], list[dict[str, Any]]],
                 local_node: Callable[[], NodeRow]) -> None:
        self.node_id = node_id
        #: False for a single server (no backend): the view is this node alone.
        self.enabled = False
        self._local_rows = local_rows
        self._local_node = local_node
        self._nodes: dict[str, NodeRow] = {}
        self._clients: dict[str, dict[str, dict[str, Any]]] = {}
        # Clients by state of each other node, kept as the rows change: read once a second by
        # the dashboard's chart and by every /metrics scrape, which must not walk 50,000 rows.
        self._counts: dict[str, dict[str, int]] = {}
        self._by_id: dict[str, str] = {}
        self._subscribers: list[Callable[[ClusterChange], None]] = []
        #: True while the cluster cannot be reached; since when (wall clock), and how often so far.
        self.stale = False
        self.stale_since: float | None = None
        self.stale_count = 0

    # ---------------------------------------------------------------- reading

    def nodes(self) -> list[NodeRow]:
        """This node first, then the others by name."""
        return [self._local_node(), *(self._nodes[n] for n in sorted(self._nodes))]

    def node_ids(self) -> list[str]:
        return [self.node_id, *sorted(self._nodes)]

    def clients(self, node: str | None = None) -> list[dict[str, Any]]:
        """Every client (of `node` only, if given) as a row with its `node`."""
        out: list[dict[str, Any]] = []
        if node is None or node == self.node_id:
            out.extend(self._local_rows())
        for n in sorted(self._clients) if node is None else [node]:
            if n != self.node_id:
                out.extend(dict(r) for r in self._clients.get(n, {}).values())
        return out

    def remote_count(self, node: str | None = None) -> int:
        """How many clients of other nodes the view holds (of `node` only, if given)."""
        if node is not None:
            return len(self._clients.get(node, {}))
        return sum(len(rows) for rows in self._clients.values())

    def remote_rows(self) -> Iterable[dict[str, Any]]:
        """The other nodes' rows as they are held (do not change them)."""
        for rows in self._clients.values():
            yield from rows.values()

    def state_counts(self) -> dict[str, dict[str, int]]:
        """Each other node's clients by state (`alive`, `suspect`, ...), O(nodes)."""
        return {n: dict(c) for n, c in self._counts.items() if any(c.values())}

    def node_of(self, client_id: str) -> str | None:
        """The other node that holds `client_id`, as far as this view knows."""
        return self._by_id.get(client_id)

    def subscribe(self, callback: Callable[[ClusterChange], None]) -> Callable[[], None]:
        """`callback(change)` for every change of another node's client (in the loop)."""
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            if callback in self._subscribers:
                self._subscribers.remove(callback)
        return unsubscribe

    # ---------------------------------------------------------------- written by the backend

    def node_up(self, row: NodeRow) -> None:
        if row.node != self.node_id:
            self._nodes[row.node] = row

    def node_gone(self, node: str, reason: str = "node-gone") -> int:
        """`node` left (or its lease ran out): its clients are lost; returns how many."""
        self._nodes.pop(node, None)
        rows = self._clients.pop(node, {})
        self._counts.pop(node, None)
        for r in rows.values():
            cid = r.get("id")
            if cid is not None and self._by_id.get(cid) == node:
                del self._by_id[cid]
            self._tell(ClusterChange(node, "close", {**r, "state": "dead"}, reason=reason))
        return len(rows)

    def client_changed(self, node: str, key: str, op: str, row: dict[str, Any] | None,
                       reason: str | None = None, silent_for: float | None = None,
                       late_ms: float | None = None) -> None:
        """A client of another node changed (`row` None: it is gone)."""
        if node == self.node_id:
            return
        rows = self._clients.setdefault(node, {})
        counts = self._counts.setdefault(node, {})
        old = rows.get(key)
        if old is not None:
            st = str(old.get("state"))
            counts[st] = counts.get(st, 1) - 1
            if old.get("id") is not None and self._by_id.get(old["id"]) == node:
                del self._by_id[old["id"]]
        if row is None:
            rows.pop(key, None)
            if not rows:
                self._clients.pop(node, None)
                self._counts.pop(node, None)
            if old is None:
                return
            row = {**old, "state": "dead"}
        else:
            rows[key] = row
            st = str(row.get("state"))
            counts[st] = counts.get(st, 0) + 1
            if row.get("id") is not None:
                self._by_id[row["id"]] = node
        self._tell(ClusterChange(node, op, row, reason=reason, silent_for=silent_for, late_ms=late_ms))

    def replace_node(self, node: str, rows: dict[str, dict[str, Any]]) -> None:
        """Everything `node` holds now (a snapshot read at join or after a reconnect)."""
        if node == self.node_id:
            return
        old = self._clients.get(node, {})
        for key in [k for k in old if k not in rows]:
            self.client_changed(node, key, "close", None, reason="gone")
        for key, row in rows.items():
            if old.get(key) != row:
                self.client_changed(node, key, "hello" if row.get("id") else "connect", row)

    def forget_nodes_but(self, live: set[str]) -> None:
        """Drop every node not in `live` (after a fresh snapshot)."""
        for n in [n for n in set(self._nodes) | set(self._clients) if n not in live]:
            self.node_gone(n)

    def set_stale(self, stale: bool) -> None:
        if stale and not self.stale:
            self.stale_since = time.time()
            self.stale_count += 1
        elif not stale:
            self.stale_since = None
        self.stale = stale

    def _tell(self, ch: ClusterChange) -> None:
        for cb in list(self._subscribers):
            try:
                cb(ch)
            except Exception as e:  # a subscriber's bug must not stop the view
                print(f"tcpulse: cluster subscriber failed: {e!r}", file=sys.stderr)

