"""The admin HTTP endpoint: JSON API, Prometheus metrics and the live dashboard.

    server = Server(ServerConfig(port=12345))
    admin = Admin(server, "127.0.0.1", 8222)      # subscribes to the server's events
    async with server, admin:                     # admin.start() after server.start()
        await server.serve_forever()

It runs in the server's own event loop (aiohttp), reads the server's views and event stream, and
never touches a client socket (STYLE.md, "The I/O layer only moves bytes").  Routes: `/api/clients`
(one page of clients, filtered and sorted here), `/api/server`, `/api/events` (recent events),
`/api/events/stream` (Server-Sent Events for the dashboard), `/metrics`, `/healthz` and `/` (the
dashboard, from `static/`).  docs/admin-api.md describes them.  Its connections are accepted by
`listener.AdminListener` (a cap, timeouts, TLS).

Needs the `admin` extra (`pip install 'tcpulse[admin]'`): importing this module without aiohttp
or prometheus_client raises ImportError.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ssl as ssl_module
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from tcpulse.admin.auth import STREAM_PATH, host_allowed
from tcpulse.admin.clients import SORTS, STATES, Directory, client_row
from tcpulse.admin.cluster import ClusterCollector, ClusterRoutes, cluster_summary
from tcpulse.admin.feed import RECENT, Feed
from tcpulse.admin.listener import STREAM_STALL, AdminListener
from tcpulse.admin.metrics import AdminStats, live_totals, state_counts
from tcpulse.i18n.display import iso_ts
from tcpulse.server.events import ServerEvent, Warning_
from tcpulse.server.server import Server
from tcpulse.server.view import format_addr
from tcpulse.version import __version__

__all__ = ["DEFAULT_ADMIN_PORT", "MAX_STREAMS", "Admin", "Authorize", "parse_admin_addr"]

DEFAULT_ADMIN_PORT = 8222
STATIC_DIR = Path(__file__).with_name("static")

#: The auth hook: called for every request but the public ones (`/healthz`, and the dashboard's
#: page, script and style, which hold no data); return True to let it through.  The dashboard
#: sends `Authorization: Bearer <token>` on its requests and `?token=<token>` on its event stream
#: (a browser's EventSource cannot set headers); `auth.admin_authorize` accepts the query token
#: there only.
Authorize = Callable[[web.Request], bool | Awaitable[bool]]

#: Dashboards (event streams) open at once; the next one is answered 503.  Each holds one of the
#: listener's connections for as long as it is open, so there is always room left for requests.
MAX_STREAMS = 6
DEFAULT_LIMIT = 1024
MAX_LIMIT = 100_000
MAX_SEARCH = 200
#: Seconds between keep-alive comments on an idle event stream.
KEEPALIVE = 15.0
#: Settings never shown by /api/server, whatever a later feature calls them.
_SECRET_WORDS = ("token", "secret", "password", "key")
#: Paths anyone who reaches the endpoint may read (no data in them).
_PUBLIC = ("/healthz", "/", "/index.html")
_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


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


def _error(status: int, text: str, **headers: str) -> web.Response:
    return web.json_response({"error": text}, status=status, headers=headers or None)


class Admin(ClusterRoutes):
    """The admin endpoint of one `Server`.  Create it before or after `server.start()` (events
    before it is created are not counted), then `await start()`; `await close()` when done.
    `ssl`: serve HTTPS with this context (docs/security.md: any address but loopback wants it)."""

    local_row = staticmethod(client_row)  # -- cluster: how this node's rows look (admin/cluster.py) --

    def __init__(self, server: Server, host: str = "127.0.0.1", port: int = DEFAULT_ADMIN_PORT, *,
                 authorize: Authorize | None = None, log_dropped: Callable[[], int] | None = None,
                 ssl: ssl_module.SSLContext | None = None) -> None:
        self.server = server
        self.host = host
        self.port = port
        self.authorize = authorize
        self.ssl = ssl
        self.directory = Directory(server)
        self.feed = Feed(server, self.directory)
        self._listener: AdminListener | None = None
        #: Lines the console log dropped because its output was not read (None: no console).
        self.stats = AdminStats(server, log_dropped=log_dropped, http=self._http_figures)
        self._unsubscribe = server.subscribe(self._on_event, messages=False, heartbeats=False)
        # -- cluster (admin/cluster.py): the other nodes' changes in the feed, tcpulse_cluster_* --
        self._unsubscribe_cluster = server.cluster.subscribe(self.feed.on_cluster_change)
        self.stats.registry.register(ClusterCollector(server))
        self._runner: web.AppRunner | None = None
        self.app = self._make_app()

    @property
    def url(self) -> str:
        """The base URL, e.g. `http://127.0.0.1:8222/` (the real port once started)."""
        scheme = "https" if self.ssl is not None else "http"
        return f"{scheme}://{format_addr((self.host, self.port))}/"

    @property
    def listener(self) -> AdminListener | None:
        """The admin port's connections (None before `start()`)."""
        return self._listener

    async def start(self) -> None:
        """Listen.  Raises OSError (port in use, ...) as is."""
        runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        assert runner.server is not None
        listener = AdminListener(self.host, self.port, runner.server, ssl=self.ssl)
        try:
            await listener.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner, self._listener = runner, listener
        self.port = listener.port
        self.feed.start()

    async def close(self) -> None:
        self._unsubscribe()
        self._unsubscribe_cluster()
        await self.feed.close()
        if self._listener is not None:
            self._listener.close()
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
        self.directory.on_event(ev)
        self.stats.on_event(ev)
        self.feed.on_event(ev)
        if isinstance(ev, Warning_) and "cluster" in ev.fields:  # -- cluster: stale or current again --
            self.feed.resend_snapshot()

    def _http_figures(self) -> dict[str, Any]:
        return {} if self._listener is None else self._listener.figures()

    # ---------------------------------------------------------------- app

    def _make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._guard])
        app.router.add_get("/", self._index)
        app.router.add_get("/api/clients", self._clients)
        app.router.add_get("/api/server", self._server)
        app.router.add_get("/api/events", self._events)
        app.router.add_get(STREAM_PATH, self._stream)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        # -- cluster (admin/cluster.py) --
        app.router.add_get("/api/nodes", self._nodes)
        app.router.add_post("/api/clients/{id}/send", self._send)
        app.router.add_static("/static/", STATIC_DIR, append_version=False)
        return app

    @web.middleware
    async def _guard(self, request: web.Request,
                     handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        # Every request passes here: the listener learns which connections are busy (no timeout
        # then), the Host and the token are checked, and errors become one JSON line.
        lst = self._listener
        conn = lst.busy(request) if lst is not None else None
        try:
            path = request.path
            if path != "/healthz":
                if self.authorize is None and not host_allowed(request.headers.get("Host"), self.host):
                    # DNS rebinding: a page of another site whose name resolves to this machine.
                    # Without a token, only requests that name this endpoint are served.
                    return _error(403, "the Host header does not name this endpoint: open it by its address "
                                       "or as localhost (or set an admin token)")
                if self.authorize is not None and path not in _PUBLIC and not path.startswith("/static/"):
                    ok = self.authorize(request)
                    if not isinstance(ok, bool):
                        ok = await ok
                    if not ok:
                        return _error(401, "unauthorized: send Authorization: Bearer <token>",
                                      **{"WWW-Authenticate": "Bearer"})
            try:
                return await handler(request)
            except web.HTTPException as e:
                if e.status < 400:
                    raise
                return _error(e.status, e.reason.lower())
        finally:
            if lst is not None:
                lst.done(conn)

    async def _index(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC_DIR / "index.html", headers={
            "Cache-Control": "no-cache",
            # Everything the page uses comes from this server: it works offline, and nothing
            # injected into it could load code from elsewhere.
            "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'",
            "Referrer-Policy": "no-referrer",
        })

    async def _healthz(self, request: web.Request) -> web.Response:
        if self.server.accepting:
            return web.json_response({"status": "ok"})
        return web.json_response({"status": "unavailable"}, status=503)

    async def _clients(self, request: web.Request) -> web.Response:
        q = request.query
        try:
            states = _parse_states(q.get("state"))
            sort, desc = _parse_sort(q.get("sort", "cid"), q.get("order"))
            limit = _parse_int(q, "limit", DEFAULT_LIMIT, 0, MAX_LIMIT)
            offset = _parse_int(q, "offset", 0, 0, 10**9)
            search = q.get("q", "").strip()
            if len(search) > MAX_SEARCH:
                raise ValueError(f"q must be at most {MAX_SEARCH} characters")
        except ValueError as e:
            return _error(400, str(e))
        srv = self.server
        if srv.cluster.enabled or q.get("node"):  # -- cluster: every node's clients (admin/cluster.py) --
            return self._cluster_clients(q.get("node") or None, states, q.get("sort", "cid"), desc, limit, offset)
        total, page = await self.directory.page(states=states, search=search, sort=sort, desc=desc, offset=offset,
                                          limit=limit)
        return web.json_response({
            "server_id": self.server.server_id,
            "now": iso_ts(),
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
            "alerts": None if self.stats.alerts is None else self.stats.alerts(),
            "timeout_lateness": self.stats.lateness_summary(),
            "dashboards": len(self.feed.subscribers),
            "admin": {**self._http_figures(), "max_streams": MAX_STREAMS},
            **({"cluster": cluster_summary(srv)} if srv.cluster.enabled else {}),
        })

    async def _metrics(self, request: web.Request) -> web.Response:
        # prometheus_client's CONTENT_TYPE_LATEST, spelt out: aiohttp wants the charset apart.
        return web.Response(body=self.stats.render(), content_type="text/plain", charset="utf-8",
                            headers={"X-Content-Type-Options": "nosniff"})

    async def _events(self, request: web.Request) -> web.Response:
        try:
            limit = _parse_int(request.query, "limit", 100, 0, RECENT)
            after = _parse_int(request.query, "after", 0, 0, None)
        except ValueError as e:
            return _error(400, str(e))
        events = self.feed.events(limit)
        if after:
            events = [e for e in events if e["seq"] > after]
        return web.json_response({"server_id": self.server.server_id, "now": iso_ts(), "seq": self.feed.seq,
                                  "num_events": len(events), "events": events})

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        if len(self.feed.subscribers) >= MAX_STREAMS:
            return _error(503, f"too many dashboards open ({MAX_STREAMS}): close one, or try again later",
                          **{"Retry-After": "5"})
        lst = self._listener
        conn = None
        resp = web.StreamResponse(headers=_SSE_HEADERS)
        # Subscribe (which takes the hello) before the headers go out: once the browser sees the
        # stream open, everything that happens reaches it.  A dashboard that cannot keep up is cut
        # off at once (on_drop), not when its handler next gets to run.
        sub = self.feed.subscribe(on_drop=lambda: lst.close_stalled(conn) if lst and conn else None)
        if lst is not None:
            conn = lst.stream(request, on_close=sub.close)
        try:
            await resp.prepare(request)
            # Tell the browser to come back soon if the stream ends (cut off or restarted).
            await resp.write(b"retry: 1000\n\n")
            while True:
                try:
                    msg = await sub.get(KEEPALIVE)
                except TimeoutError:
                    msg = b": keep-alive\n\n"
                if msg is None:
                    break
                # The write waits only when the socket does not take the bytes (a reader that
                # stopped): bounded, then the stream is closed.
                await asyncio.wait_for(resp.write(msg), STREAM_STALL)
        except TimeoutError:
            if lst is not None and conn is not None:
                lst.close_stalled(conn)
        except ConnectionError:
            pass
        finally:
            self.feed.unsubscribe(sub)
        return resp


def _parse_states(value: str | None) -> set[str] | None:
    if not value:
        return None
    states = {s.strip() for s in value.split(",") if s.strip()}
    bad = states - set(STATES)
    if bad:
        raise ValueError(f"state must be one or more of {', '.join(STATES)} (got {', '.join(sorted(bad))})")
    return states


def _parse_sort(value: str, order: str | None) -> tuple[str, bool]:
    if value not in SORTS:
        raise ValueError(f"sort must be one of {', '.join(SORTS)} (got {value!r})")
    desc = SORTS[value][1]
    if order is not None:
        if order not in ("asc", "desc"):
            raise ValueError(f"order must be asc or desc (got {order!r})")
        desc = order == "desc"
    return value, desc


def _parse_int(q: Any, name: str, default: int, lo: int, hi: int | None) -> int:
    raw = q.get(name)
    if raw is None or raw == "":
        return default
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 12:
        raise ValueError(f"{name} must be a whole number (got {raw[:20]!r})")
    n = int(raw)
    if n < lo or (hi is not None and n > hi):
        raise ValueError(f"{name} must be {lo}-{hi} (got {n})" if hi is not None else f"{name} must be >= {lo}")
    return n
