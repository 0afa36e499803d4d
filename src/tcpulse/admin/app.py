"""The admin HTTP endpoint: JSON API, Prometheus metrics and the live dashboard.

    server = Server(ServerConfig(port=12345))
    admin = Admin(server, "127.0.0.1", 8222)      # subscribes to the server's events
    async with server, admin:                     # admin.start() after server.start()
        await server.serve_forever()

It runs in the server's own event loop (aiohttp), reads the server's snapshots and event stream,
and never touches a client socket (STYLE.md, "The I/O layer only moves bytes").  Routes:
`/api/clients`, `/api/server`, `/metrics`, `/healthz`, `/api/events` (Server-Sent Events for the
dashboard) and `/` (the dashboard, from `static/`).  docs/admin-api.md describes them.

Needs the `admin` extra (`pip install 'tcpulse[admin]'`): importing this module without aiohttp
or prometheus_client raises ImportError.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from tcpulse.admin.cluster import ClusterCollector, ClusterRoutes, cluster_summary
from tcpulse.admin.feed import Feed, client_row
from tcpulse.admin.metrics import AdminStats, live_totals, state_counts
from tcpulse.i18n.display import iso_ts
from tcpulse.server.events import ServerEvent, Warning_
from tcpulse.server.server import Server
from tcpulse.server.view import ClientView, format_addr
from tcpulse.version import __version__

__all__ = ["DEFAULT_ADMIN_PORT", "Admin", "Authorize", "parse_admin_addr"]

DEFAULT_ADMIN_PORT = 8222
STATIC_DIR = Path(__file__).with_name("static")

#: The auth hook: called for every request except `/healthz` and `/static/*` (the dashboard's
#: script and style); return True to let it through.
#: The dashboard sends `Authorization: Bearer <token>` on its fetches and `?token=<token>` on its
#: EventSource URL (a browser's EventSource cannot set headers), when its own page was opened
#: with `?token=<token>`.
Authorize = Callable[[web.Request], bool | Awaitable[bool]]

_STATES = ("alive", "suspect", "dead")
#: Sort keys of /api/clients, read from the live connection (rows are built for one page only),
#: and whether they sort largest first by default (as NATS's /connz: counts and idle time
#: descending, names and ids ascending).
_SortKey = Callable[[ClientView, float], Any]
_SORTS: dict[str, tuple[_SortKey, bool]] = {
    "cid": (lambda c, now: c.conn_id, False),
    "id": (lambda c, now: c.name, False),
    "addr": (lambda c, now: c.addr, False),
    "connected": (lambda c, now: c.connected_at, False),
    "uptime": (lambda c, now: -c.connected_at, True),
    "idle": (lambda c, now: c.last_heard_ago(now), True),
    "last": (lambda c, now: c.last_heard_ago(now), False),
    "state": (lambda c, now: c.state.value, False),
    "heartbeats": (lambda c, now: c.heartbeats, True),
    "messages": (lambda c, now: c.messages, True),
    "bytes_in": (lambda c, now: c.bytes_in, True),
    "bytes_out": (lambda c, now: c.bytes_out, True),
    "rtt": (lambda c, now: c.rtt, True),
}
DEFAULT_LIMIT = 1024
MAX_LIMIT = 100_000
#: Settings never shown by /api/server, whatever a later feature calls them.
_SECRET_WORDS = ("token", "secret", "password", "key")


def parse_admin_addr(text: str) -> tuple[str, int]:
    """`HOST:PORT`, `[v6]:PORT`, `:PORT` or `PORT` (loopback) -> (host, port).  ValueError if bad."""
    text = text.strip()
    host, port_s = "127.0.0.1", text
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or text[end + 1:end + 2] != ":":
            raise ValueError(f"{text!r}: write an IPv6 address as [::1]:{DEFAULT_ADMIN_PORT}")
        host, port_s = text[1:end], text[end + 2:]
    elif ":" in text:
        h, _, port_s = text.rpartition(":")
        host = h or host
        if ":" in host:
            raise ValueError(f"{text!r}: write an IPv6 address in brackets, as [::1]:{DEFAULT_ADMIN_PORT}")
    if not port_s.isdigit() or not 0 <= int(port_s) <= 65535:
        raise ValueError(f"{text!r}: expected HOST:PORT with a port of 0-65535, e.g. 127.0.0.1:{DEFAULT_ADMIN_PORT}")
    return host, int(port_s)


class Admin(ClusterRoutes):
    """The admin endpoint of one `Server`.  Create it before or after `server.start()` (events
    before it is created are not counted), then `await start()`; `await close()` when done."""

    local_row = staticmethod(client_row)  # -- cluster: how this node's rows look (admin/cluster.py) --

    def __init__(self, server: Server, host: str = "127.0.0.1", port: int = DEFAULT_ADMIN_PORT, *,
                 authorize: Authorize | None = None, log_dropped: Callable[[], int] | None = None) -> None:
        self.server = server
        self.host = host
        self.port = port
        self.authorize = authorize
        #: Lines the console log dropped because its output was not read (None: no console).
        self.stats = AdminStats(server, log_dropped=log_dropped)
        self.feed = Feed(server, lambda: live_totals(server))
        self._unsubscribe = server.subscribe(self._on_event, messages=False, heartbeats=False)
        # -- cluster (admin/cluster.py): the other nodes' changes in the feed, tcpulse_cluster_* --
        self._unsubscribe_cluster = server.cluster.subscribe(self.feed.on_cluster_change)
        self.stats.registry.register(ClusterCollector(server))
        self._runner: web.AppRunner | None = None
        self.app = self._make_app()

    @property
    def url(self) -> str:
        """The base URL, e.g. `http://127.0.0.1:8222/` (the real port once started)."""
        return f"http://{format_addr((self.host, self.port))}/"

    async def start(self) -> None:
        """Listen.  Raises OSError (port in use, ...) as is."""
        runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, reuse_address=True)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        if runner.addresses:  # the real port, when port 0 asked for a free one
            self.port = runner.addresses[0][1]
        self.feed.start()

    async def close(self) -> None:
        self._unsubscribe()
        self._unsubscribe_cluster()
        await self.feed.close()
        if self._runner is not None:
            runner, self._runner = self._runner, None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(runner.cleanup(), 3.0)

    async def __aenter__(self) -> Admin:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ---------------------------------------------------------------- events

    def _on_event(self, ev: ServerEvent) -> None:
        self.stats.on_event(ev)
        self.feed.on_event(ev)
        if isinstance(ev, Warning_) and "cluster" in ev.fields:  # -- cluster: stale or current again --
            self.feed.resend_snapshot()

    # ---------------------------------------------------------------- app

    def _make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._auth_middleware])
        app.router.add_get("/", self._index)
        app.router.add_get("/api/clients", self._clients)
        app.router.add_get("/api/server", self._server)
        app.router.add_get("/api/events", self._events)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        # -- cluster (admin/cluster.py) --
        app.router.add_get("/api/nodes", self._nodes)
        app.router.add_post("/api/clients/{id}/send", self._send)
        app.router.add_static("/static/", STATIC_DIR, append_version=False)
        return app

    @web.middleware
    async def _auth_middleware(self, request: web.Request,
                               handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                               ) -> web.StreamResponse:
        # The hook for admin auth: /healthz stays open so that a load balancer needs no secret,
        # and so do the dashboard's script and style (no data in them; a browser fetches them
        # without the token, which only the page's own URL carries).
        path = request.path
        if self.authorize is not None and path != "/healthz" and not path.startswith("/static/"):
            ok = self.authorize(request)
            if not isinstance(ok, bool):
                ok = await ok
            if not ok:
                return web.json_response({"error": "unauthorized: send Authorization: Bearer <token>"},
                                         status=401, headers={"WWW-Authenticate": "Bearer"})
        resp = await handler(request)
        return resp

    async def _index(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC_DIR / "index.html", headers={
            "Cache-Control": "no-cache",
            # Everything the page uses comes from this server: it works offline, and nothing
            # injected into it could load code from elsewhere.
            "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'",
        })

    async def _healthz(self, request: web.Request) -> web.Response:
        if self.server.accepting:
            return web.json_response({"status": "ok"})
        return web.json_response({"status": "unavailable"}, status=503)

    async def _clients(self, request: web.Request) -> web.Response:
        q = request.query
        try:
            states = _parse_states(q.get("state"))
            key, desc = _parse_sort(q.get("sort", "cid"), q.get("order"))
            limit = _parse_int(q, "limit", DEFAULT_LIMIT, 0, MAX_LIMIT)
            offset = _parse_int(q, "offset", 0, 0, None)
        except ValueError as e:
            return web.json_response({"error": str(e)}, status=400)
        srv = self.server
        if srv.cluster.enabled or q.get("node"):
            return self._cluster_clients(q.get("node") or None, states, q.get("sort", "cid"), desc, limit, offset)
        now_mono, now_wall = srv.now(), time.time()
        conns = srv.clients
        if states is not None:
            conns = [c for c in conns if c.state.value in states]
        # None (no RTT yet) sorts after every number, in either order.
        keyed = [(key(c, now_mono), c.conn_id, c) for c in conns]
        present = [k for k in keyed if k[0] is not None]
        missing = [k for k in keyed if k[0] is None]
        present.sort(key=lambda k: (k[0], k[1]), reverse=desc)
        chosen = (present + missing)[offset:offset + limit]
        page = [client_row(c, now_mono, now_wall) for _k, _cid, c in chosen]
        total = len(keyed)
        return web.json_response({
            "server_id": srv.server_id,
            "now": iso_ts(now_wall),
            "total": total,
            "offset": offset,
            "limit": limit,
            "num_clients": len(page),
            "clients": page,
        })

    async def _server(self, request: web.Request) -> web.Response:
        srv = self.server
        now = time.time()
        settings = {k: v for k, v in dataclasses.asdict(srv.config).items()  # type: ignore[call-overload]
                    if not any(w in k for w in _SECRET_WORDS)}
        totals = live_totals(srv)
        return web.json_response({
            "server_id": srv.server_id,
            "version": __version__,
            "host": srv.host,
            "port": srv.port,
            "started_at": iso_ts(srv.started_at),
            "now": iso_ts(now),
            "uptime": round(now - srv.started_at, 3),
            "accepting": srv.accepting,
            "durable": srv.store.durable,
            "settings": settings,
            "clients": {"total": len(srv.clients), **state_counts(srv)},
            "totals": {
                "connections": totals["connections"],
                "messages": totals["messages"],
                "heartbeats": totals["heartbeats"],
                "bytes_in": totals["bytes_in"],
                "bytes_out": totals["bytes_out"],
                "timeouts": totals["timeouts"],
                "protocol_errors": {str(k): v for k, v in self.stats.error_counts().items()},
                "disconnects": dict(sorted(self.stats.disconnects.items())),
            },
            "memory": self.stats.memory(),
            "log": {"dropped_lines": self.stats.log_dropped()},
            "timeout_lateness": self.stats.lateness_summary(),
            "dashboards": len(self.feed.subscribers),
            **({"cluster": cluster_summary(srv)} if srv.cluster.enabled else {}),
        })

    async def _metrics(self, request: web.Request) -> web.Response:
        # prometheus_client's CONTENT_TYPE_LATEST, spelt out: aiohttp wants the charset apart.
        return web.Response(body=self.stats.render(), content_type="text/plain", charset="utf-8",
                            headers={"X-Content-Type-Options": "nosniff"})

    async def _events(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={
            "Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        # Subscribe (which takes the snapshot) before the headers go out: once the browser sees
        # the stream open, everything that happens reaches it as a delta.
        sub = self.feed.subscribe()
        try:
            await resp.prepare(request)
            # Tell the browser to come back soon if the stream ends (cut off or restarted).
            await resp.write(b"retry: 1000\n\n")
            while True:
                try:
                    msg = await sub.get(15.0)
                except TimeoutError:
                    msg = b": keep-alive\n\n"
                if msg is None:
                    break
                await resp.write(msg)
        except (ConnectionResetError, ConnectionError):
            pass
        finally:
            self.feed.unsubscribe(sub)
        return resp


def _parse_states(value: str | None) -> set[str] | None:
    if not value:
        return None
    states = {s.strip() for s in value.split(",") if s.strip()}
    bad = states - set(_STATES)
    if bad:
        raise ValueError(f"state must be one or more of {', '.join(_STATES)} (got {', '.join(sorted(bad))})")
    return states


def _parse_sort(value: str, order: str | None) -> tuple[_SortKey, bool]:
    if value not in _SORTS:
        raise ValueError(f"sort must be one of {', '.join(_SORTS)} (got {value!r})")
    key, desc = _SORTS[value]
    if order is not None:
        if order not in ("asc", "desc"):
            raise ValueError(f"order must be asc or desc (got {order!r})")
        desc = order == "desc"
    return key, desc


def _parse_int(q: Any, name: str, default: int, lo: int, hi: int | None) -> int:
    raw = q.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isdigit():
        raise ValueError(f"{name} must be a whole number (got {raw!r})")
    n = int(raw)
    if n < lo or (hi is not None and n > hi):
        raise ValueError(f"{name} must be {lo}-{hi} (got {n})" if hi is not None else f"{name} must be >= {lo}")
    return n
