"""The admin endpoint's view of a cluster (docs/cluster.md): rows of every node's clients for
`/api/clients` and the dashboard, `/api/nodes`, the `cluster` part of `/api/server`, the
`tcpulse_cluster_*` metrics, and the other nodes' changes as dashboard deltas.

Everything here reads `Server.cluster` (server/cluster.py), the public read model; nothing runs
unless the server is in a cluster (`server.cluster.enabled`).  Another node's client is known by
what its node published on its last change (never per heartbeat): its counters (heartbeats,
messages, bytes, RTT) and its exact idle time are that node's to tell, and show as null here.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from tcpulse.i18n.display import iso_ts
from tcpulse.server.cluster import ClusterChange

if TYPE_CHECKING:
    from tcpulse.server.server import Server
    from tcpulse.server.view import ClientView

#: `clients.client_row`: how this node's clients are shown (passed in by `Admin`).
LocalRow = Callable[["ClientView", float, float], dict[str, Any]]

__all__ = [
    "ClusterCollector",
    "ClusterRoutes",
    "all_rows",
    "change_record",
    "cluster_summary",
    "node_rows",
    "remote_row",
]

_STATES = ("alive", "suspect", "dead")


def remote_row(r: dict[str, Any], now_wall: float) -> dict[str, Any]:
    """Another node's client in the fields of `feed.client_row` (unknown ones null); its `cid`
    is `node/conn` (conn numbers are per node)."""
    connected = float(r.get("connected_at") or now_wall)
    return {
        "cid": f"{r.get('node')}/{r.get('cid')}",
        "id": r.get("id"),
        "name": r.get("name") or r.get("addr"),
        "addr": r.get("addr"),
        "session": r.get("session"),
        "connected_at": iso_ts(connected),
        "uptime": round(max(0.0, now_wall - connected), 3),
        "last_heard": iso_ts(float(r.get("last_heard") or connected)),
        "idle": None,
        "state": r.get("state", "alive"),
        "heartbeats": None,
        "messages": None,
        "bytes_in": None,
        "bytes_out": None,
        "rtt_ms": None,
        "heartbeat_interval": r.get("heartbeat_interval"),
        "heartbeat_timeout": r.get("heartbeat_timeout"),
        "node": r.get("node"),
    }


def all_rows(srv: Server, local_row: LocalRow, node: str | None = None) -> list[dict[str, Any]]:
    """Every client of the cluster (of `node` only, if given) as `/api/clients` rows: this
    node's live (made by `local_row`, i.e. `feed.client_row`), in connection order, then the
    others' by node."""
    view = srv.cluster
    now_mono, now_wall = srv.now(), time.time()
    out: list[dict[str, Any]] = []
    if node is None or node == view.node_id:
        for c in sorted(srv.clients, key=lambda c: c.conn_id):
            out.append({**local_row(c, now_mono, now_wall), "node": view.node_id})
    if node != view.node_id:
        rows = view.clients(node) if node is not None else [r for r in view.remote_rows()]
        out.extend(remote_row(r, now_wall) for r in rows if r.get("node") != view.node_id)
    return out


def node_rows(srv: Server) -> list[dict[str, Any]]:
    """`/api/nodes`: every live node, with its clients by state (as far as this view knows)."""
    view = srv.cluster
    counts: dict[str, dict[str, int]] = {}
    for name, by_state in view.state_counts().items():  # kept as the rows change: no walk over them
        counts[name] = {s: by_state.get(s, 0) for s in _STATES}
    mine = {s: 0 for s in _STATES}
    for c in srv.clients:
        mine[c.state.value] += 1
    counts[view.node_id] = mine
    out = []
    for n in view.nodes():
        by_state = counts.get(n.node, {s: 0 for s in _STATES})
        out.append({"node": n.node, "local": n.local, "host": n.host, "port": n.port, "pid": n.pid,
                    "started_at": iso_ts(n.started_at) if n.started_at else None, "admin": n.admin,
                    "clients": {"total": sum(by_state.values()), **by_state}})
    return out


def cluster_summary(srv: Server) -> dict[str, Any]:
    """The `cluster` part of `/api/server`."""
    view = srv.cluster
    nodes = node_rows(srv)
    totals = {s: sum(n["clients"][s] for n in nodes) for s in _STATES}
    return {"enabled": view.enabled, "node": view.node_id, "nodes": len(nodes), "stale": view.stale,
            "stale_since": iso_ts(view.stale_since) if view.stale_since else None,
            "clients": {"total": sum(totals.values()), **totals}}


def change_record(seq: int, ch: ClusterChange) -> dict[str, Any]:
    """Another node's change as an event of the dashboard's log and `/api/events` (the records
    of feed.event_record, with the node)."""
    row = remote_row(ch.row, time.time())
    kind = "timeout" if ch.op == "timeout" or ch.reason == "timeout" else ch.op
    e: dict[str, Any] = {"seq": seq, "t": round(time.time(), 3), "kind": kind, "cid": row["cid"],
                         "name": row["name"], "addr": row["addr"], "node": ch.node}
    if kind == "timeout":
        e["silent_for"] = ch.silent_for if ch.silent_for is not None else 0.0
        e["late_ms"] = ch.late_ms if ch.late_ms is not None else 0.0
    elif kind == "suspect":
        e["silent_for"] = 0.0
    elif kind == "close":
        e["reason"] = ch.reason or "gone"
    elif kind == "hello":  # as the dashboard's log says of ours: the client's interval and timeout
        e["heartbeat_interval"] = row["heartbeat_interval"]
        e["heartbeat_timeout"] = row["heartbeat_timeout"]
    return e


class ClusterCollector(Collector):
    """`tcpulse_cluster_nodes`, `tcpulse_cluster_stale` and `tcpulse_cluster_clients{node,state}`,
    read at scrape time (nothing is collected for a single server)."""

    def __init__(self, server: Server) -> None:
        self.server = server

    def collect(self) -> Iterator[Metric]:
        srv = self.server
        if not srv.cluster.enabled:
            return
        nodes = node_rows(srv)
        yield GaugeMetricFamily("tcpulse_cluster_nodes", "Live nodes of the cluster, as this node sees it",
                                value=len(nodes))
        yield GaugeMetricFamily("tcpulse_cluster_stale", "1 while this node cannot reach the cluster (its view of "
                                "the other nodes is the last known)", value=1 if srv.cluster.stale else 0)
        g = GaugeMetricFamily("tcpulse_cluster_clients", "Clients of each node of the cluster by liveness state",
                              labels=["node", "state"])
        for n in nodes:
            for st in _STATES:
                g.add_metric([n["node"], st], n["clients"][st])
        yield g


class ClusterRoutes:
    """The cluster's routes (admin/cluster.py): `/api/clients` across nodes, `/api/nodes`, and
    `POST /api/clients/{id}/send`, which reaches a client on whichever node holds it."""

    server: Server
    #: `feed.client_row` (set by `Admin`: the feed imports this module, not the other way).
    local_row: LocalRow

    def _cluster_clients(self, node: str | None, states: set[str] | None, sort: str, desc: bool, limit: int,
                         offset: int) -> web.Response:
        srv = self.server
        rows = all_rows(srv, self.local_row, node)
        if states is not None:
            rows = [r for r in rows if r["state"] in states]
        field = _ROW_SORTS.get(sort, "cid")

        def key(r: dict[str, Any]) -> Any:
            if field == "cid":
                cid = r["cid"]
                return (r["node"] != srv.cluster.node_id, r["node"], int(str(cid).rsplit("/", 1)[-1]))
            return r[field]
        present = [r for r in rows if key(r) is not None]
        missing = [r for r in rows if key(r) is None]
        present.sort(key=key, reverse=desc)
        page = (present + missing)[offset:offset + limit]
        return web.json_response({
            "server_id": srv.server_id, "node": srv.cluster.node_id, "stale": srv.cluster.stale,
            "now": iso_ts(time.time()), "total": len(rows), "offset": offset, "limit": limit,
            "num_clients": len(page), "clients": page,
        })

    async def _nodes(self, request: web.Request) -> web.Response:
        srv = self.server
        return web.json_response({"node": srv.cluster.node_id, "stale": srv.cluster.stale,
                                  "nodes": node_rows(srv)})

    async def _send(self, request: web.Request) -> web.Response:
        client_id = request.match_info["id"]
        if request.content_type != "application/octet-stream":
            # Not a type a web page may send to another origin without asking first (CORS): a
            # page in a browser on this host cannot make the admin endpoint send anything.
            return web.json_response({"error": "send the payload as Content-Type: application/octet-stream"},
                                     status=415)
        body = await request.read()
        if len(body) > self.server.config.max_payload:
            return web.json_response({"error": f"payload over {self.server.config.max_payload} bytes"}, status=413)
        if not self.server.send(client_id, body):
            return web.json_response({"error": f"no client {client_id} on any node"}, status=404)
        here = self.server.client(client_id) is not None
        return web.json_response({"sent": True, "id": client_id,
                                  "node": self.server.cluster.node_id if here else
                                  self.server.cluster.node_of(client_id)})


#: `/api/clients?sort=` in a cluster: the row field each sort key reads.
_ROW_SORTS = {"cid": "cid", "id": "name", "addr": "addr", "connected": "connected_at", "uptime": "uptime",
              "idle": "idle", "last": "idle", "state": "state", "heartbeats": "heartbeats", "messages": "messages",
              "bytes_in": "bytes_in", "bytes_out": "bytes_out", "rtt": "rtt_ms"}
