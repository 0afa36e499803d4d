"""The admin feature's command line: `tcpulse status`, and the glue behind `serve --admin`.

`tcpulse status` reads `/api/server` and `/api/clients` of a running server's admin endpoint with
the standard library's HTTP client (so it needs no extra), and prints the client table with rich;
`--watch` redraws it in place.  `AdminForServe` starts the endpoint beside `serve`, turning every
failure into one line (the admin extra missing, a port in use, a bad address).
"""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime
from typing import TYPE_CHECKING, Any

import click

from tcpulse.admin.auth import is_loopback_host
from tcpulse.cli.common import fail, lang_option
from tcpulse.i18n import _

if TYPE_CHECKING:
    from tcpulse.admin.app import Admin, Authorize
    from tcpulse.cli.console import ConsoleLog
    from tcpulse.server.server import Server

__all__ = ["AdminForServe", "status"]

DEFAULT_ADMIN = "127.0.0.1:8222"


# --------------------------------------------------------------------------- serve --admin

class AdminForServe:
    """`serve --admin HOST:PORT`: make it in the feature-setup step (this checks the address and
    that the admin extra is installed), `await start()` once the server listens, `await close()`
    when it stops."""

    def __init__(self, server: Server, spec: str, log: ConsoleLog, authorize: Authorize | None = None,
                 token: str | None = None, tls_cert: str | None = None, tls_key: str | None = None) -> None:
        try:
            from tcpulse.admin.app import Admin, parse_admin_addr
        except ImportError as e:
            # In a checkout, the README's set-up installs the extra; from a package, pip does.
            fail(_("--admin needs the admin extra ({missing} is not installed): in a checkout run "
                   "bash scripts/setup.sh (or .venv/bin/pip install -e '.[admin]'); otherwise "
                   "pip install 'tcpulse[admin]'").format(missing=e.name or e), 2)
        self.token_required = bool(token)
        try:
            host, port = parse_admin_addr(spec)
        except ValueError as e:
            fail(_("--admin {spec}").format(spec=e), 2)
        from tcpulse.admin.tls import admin_ssl_context
        try:
            ssl_ctx = admin_ssl_context(tls_cert, tls_key)  # --admin-tls-cert/--admin-tls-key: HTTPS
        except ValueError as e:
            from tcpulse.cli.common import error_text
            fail(error_text(e), 2)
        self.log = log
        self.admin: Admin = Admin(server, host, port, authorize=authorize, log_dropped=lambda: log.dropped,
                                  ssl=ssl_ctx)

    async def start(self) -> None:
        import errno
        a = self.admin
        try:
            await a.start()
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                fail(_("admin port {port} on {host} is already in use: choose another --admin HOST:PORT "
                       "(port 0 picks a free one)").format(port=a.port, host=a.host))
            fail(_("cannot serve the admin endpoint on {host}:{port}: {error} (check --admin)").format(
                host=a.host, port=a.port, error=e.strerror or e))
        from tcpulse.i18n.display import iso_ts
        if self.log.json:
            self.log.write_line(json.dumps({"ts": iso_ts(), "event": "admin", "url": a.url}, separators=(",", ":")))
        elif self.log.level != "quiet":
            line = _("Admin API and dashboard: {url}").format(url=a.url)
            if self.token_required:
                # The token itself is never printed: the operator has it (--admin-token, TCPULSE_ADMIN_TOKEN).
                line += " " + _("(admin token required: open {url}#token=TOKEN)").format(url=a.url)
            self.log.write_line(line)
        if a.ssl is None and not is_loopback_host(a.host):
            # Beyond loopback the token and every client's state would cross the network in clear.
            warn = _("the admin endpoint on {host} is plain HTTP: its token and data cross the network in "
                     "clear text; serve it over HTTPS with --admin-tls-cert and --admin-tls-key").format(host=a.host)
            self.log.write_line(json.dumps({"ts": iso_ts(), "event": "warning", "text": warn}, ensure_ascii=False,
                                           separators=(",", ":")) if self.log.json else warn)

    async def close(self) -> None:
        await self.admin.close()


# --------------------------------------------------------------------------- status

class AdminError(Exception):
    """One line saying what went wrong with the admin API and what to do."""


def base_url(spec: str) -> str:
    """`127.0.0.1:8222` or `http://host:8222/...` -> `http://host:8222` (no trailing slash)."""
    spec = spec.strip()
    if "://" not in spec:
        spec = "http://" + spec
    u = urllib.parse.urlsplit(spec)
    if u.scheme not in ("http", "https") or not u.netloc:
        raise AdminError(_("--admin {spec}: expected HOST:PORT or an http:// URL").format(spec=spec))
    return f"{u.scheme}://{u.netloc}{u.path.rstrip('/')}"


def _opener(base: str, ca: str | None = None) -> urllib.request.OpenerDirector:
    """An HTTP client that goes straight to a loopback admin endpoint (the default), whatever
    `http_proxy` says: a proxy cannot reach this machine's 127.0.0.1.  With `ca`, HTTPS trusts
    the certificates of that PEM file (a private CA, as for `connect --ca`)."""
    handlers: list[urllib.request.BaseHandler] = []
    if is_loopback_host(urllib.parse.urlsplit(base).hostname or ""):
        handlers.append(urllib.request.ProxyHandler({}))
    if ca is not None:
        import ssl
        try:
            ctx = ssl.create_default_context(cafile=ca)
        except (OSError, ssl.SSLError) as e:
            raise AdminError(_("--ca {path}: cannot read it as PEM certificates ({reason})").format(
                path=ca, reason=getattr(e, "strerror", None) or e)) from None
        handlers.append(urllib.request.HTTPSHandler(context=ctx))
    return urllib.request.build_opener(*handlers)


def fetch(base: str, path: str, token: str | None, timeout: float = 5.0, ca: str | None = None) -> dict[str, Any]:
    """GET `base + path` as JSON (HTTPS verified with `ca` if given, else the system's CAs).
    Raises AdminError with a line fit for the user."""
    req = urllib.request.Request(base + path, headers={"Accept": "application/json"})
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with _opener(base, ca).open(req, timeout=timeout) as resp:
            body = resp.read()
    except urllib.error.HTTPError as e:
        if e.code == 401:
            raise AdminError(_("the admin API at {url} wants a token: pass --token or set "
                               "TCPULSE_ADMIN_TOKEN").format(url=base)) from None
        detail = ""
        try:
            detail = json.loads(e.read()).get("error", "")
        except (ValueError, AttributeError, OSError):
            pass
        raise AdminError(_("the admin API at {url} answered {code}: {detail}").format(
            url=base, code=e.code, detail=detail or e.reason)) from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", None) or e
        raise AdminError(_("cannot reach the admin API at {url} ({reason}): is the server running with "
                           "--admin? Pass its address with --admin HOST:PORT").format(
                               url=base, reason=reason)) from None
    try:
        data = json.loads(body)
    except ValueError:
        raise AdminError(_("{url} did not answer with JSON: is it a tcpulse admin endpoint?").format(
            url=base + path)) from None
    if not isinstance(data, dict):
        raise AdminError(_("{url} did not answer with JSON: is it a tcpulse admin endpoint?").format(url=base + path))
    return data


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def _when(iso: str) -> str:
    try:
        return datetime.fromisoformat(iso.replace("Z", "+00:00")).astimezone().strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return iso


def render_table(server: dict[str, Any], clients: dict[str, Any]) -> Any:
    """A rich Table of the client list (the status table the server's log prints, from afar)."""
    from rich.table import Table
    counts = server.get("clients", {})
    title = _("{server_id}: {n} client(s), {alive} alive, {suspect} suspect, up {uptime:.0f} s").format(
        server_id=server.get("server_id", "?"), n=counts.get("total", 0), alive=counts.get("alive", 0),
        suspect=counts.get("suspect", 0), uptime=server.get("uptime", 0))
    cluster = server.get("cluster")
    if cluster:  # a cluster: the whole cluster's counts, and a node column
        title = _("{node} of a cluster of {nodes} node(s): {n} client(s), {alive} alive, {suspect} suspect").format(
            node=cluster.get("node", "?"), nodes=cluster.get("nodes", 1), n=cluster["clients"].get("total", 0),
            alive=cluster["clients"].get("alive", 0), suspect=cluster["clients"].get("suspect", 0))
        if cluster.get("stale"):
            title += " " + _("(the cluster cannot be reached: other nodes' rows are the last known)")
    table = Table(title=title, title_justify="left")
    if cluster:
        table.add_column(_("node"), no_wrap=True)
    for col, right in ((_("client"), False), (_("address"), False), (_("state"), False), (_("idle"), True),
                       (_("connected at"), False), (_("HEARTBEAT frames"), True), (_("messages"), True),
                       (_("in"), True), (_("out"), True), (_("RTT"), True), (_("interval/timeout"), True)):
        table.add_column(col, justify="right" if right else "left", no_wrap=True)
    names = {"alive": _("alive"), "suspect": _("suspect"), "dead": _("closing")}
    colors = {"alive": "green", "suspect": "yellow", "dead": "red"}
    for r in clients.get("clients", []):
        st = r["state"]
        # Another node's client: its counters are its node's (null in the API): shown as "-".
        cells = [
            r["name"], r["addr"], f"[{colors.get(st, 'white')}]{names.get(st, st)}[/]",
            "-" if r["idle"] is None else f"{r['idle']:.1f} s", _when(r["connected_at"]),
            "-" if r["heartbeats"] is None else str(r["heartbeats"]),
            "-" if r["messages"] is None else str(r["messages"]),
            "-" if r["bytes_in"] is None else _fmt_bytes(r["bytes_in"]),
            "-" if r["bytes_out"] is None else _fmt_bytes(r["bytes_out"]),
            "-" if r["rtt_ms"] is None else f"{r['rtt_ms']:.2f} ms",
            f"{r['heartbeat_interval']:g}/{r['heartbeat_timeout']:g} s"]
        table.add_row(*([str(r.get("node", ""))] if cluster else []), *cells)
    shown, total = clients.get("num_clients", 0), clients.get("total", 0)
    if shown < total:
        table.caption = _("showing {shown} of {total}: use --limit and --offset").format(shown=shown, total=total)
    return table


@click.command()
@click.option("--admin", "admin", default=DEFAULT_ADMIN, show_default=True, envvar="TCPULSE_ADMIN",
              metavar="HOST:PORT|URL", help="The server's admin endpoint (serve --admin).")
@click.option("--json", "as_json", is_flag=True, help="Print the /api/clients JSON instead of a table.")
@click.option("--watch", is_flag=True, help="Keep refreshing the table in place (Ctrl-C stops).")
@click.option("--every", default=1.0, show_default=True, type=click.FloatRange(min=0.1),
              help="Seconds between refreshes with --watch.")
@click.option("--state", default=None, metavar="alive|suspect[,...]", help="Only clients in these states.")
@click.option("--sort", default="cid", show_default=True,
              help="cid, id, addr, connected, uptime, idle, last, state, heartbeats, messages, bytes_in, "
                   "bytes_out, rtt.")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(0, 100_000))
@click.option("--offset", default=0, show_default=True, type=click.IntRange(min=0))
@click.option("--token", default=None, envvar="TCPULSE_ADMIN_TOKEN", help="Bearer token of the admin API.")
@click.option("--node", default=None, metavar="NAME", help="In a cluster: only the clients of this node.")
@click.option("--ca", default=None, metavar="FILE",
              help="PEM CA certificate(s) to verify an https:// admin endpoint with (serve --admin-tls-cert), "
                   "instead of the system's.")
@lang_option
def status(admin: str, as_json: bool, watch: bool, every: float, state: str | None, sort: str, limit: int,
           offset: int, token: str | None, lang: str | None, node: str | None = None, ca: str | None = None) -> None:
    """Show the clients of a running server (from its admin endpoint)."""
    try:
        base = base_url(admin)
    except AdminError as e:
        fail(str(e), 2)
    params = {"sort": sort, "limit": str(limit), "offset": str(offset)}
    if state:
        params["state"] = state
    if node:
        params["node"] = node
    path = "/api/clients?" + urllib.parse.urlencode(params)

    def once() -> tuple[dict[str, Any], dict[str, Any]]:
        return fetch(base, "/api/server", token, ca=ca), fetch(base, path, token, ca=ca)

    try:
        srv, clients = once()
    except AdminError as e:
        fail(str(e))
    if as_json:
        _print_json(clients)
        while watch:
            try:
                time.sleep(every)
                _print_json(once()[1])
            except AdminError as e:
                fail(str(e))
            except KeyboardInterrupt:
                return
        return
    from rich.console import Console
    console = Console(width=None if sys.stdout.isatty() else 160)
    if not watch:
        console.print(render_table(srv, clients))
        return
    from rich.live import Live
    try:
        with Live(render_table(srv, clients), console=console, auto_refresh=False) as live:
            while True:
                time.sleep(every)
                try:
                    srv, clients = once()
                    live.update(render_table(srv, clients), refresh=True)
                except AdminError as e:
                    # Keep watching: the server may be restarting.  Say so in place of the table.
                    live.update(f"[red]{e}[/]", refresh=True)
    except KeyboardInterrupt:
        return


def _print_json(obj: dict[str, Any]) -> None:
    click.echo(json.dumps(obj, ensure_ascii=False))
