"""`tcpulse serve`: run the server, with its console log and the features its flags turn on."""

from __future__ import annotations

import asyncio
import errno
import json
import signal
import sys
from typing import Any

import click

from tcpulse.cli.alert import AlertsForServe, alert_options
from tcpulse.cli.common import DEFAULT_PORT, _positive, error_text, fail, lang_option, run_loop
from tcpulse.cli.console import ConsoleLog
from tcpulse.errors import ConfigError, TcpulseError
from tcpulse.i18n import _
from tcpulse.server.config import ServerConfig
from tcpulse.server.server import Server
from tcpulse.store.base import StoreOpenError

__all__ = ["serve"]


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=DEFAULT_PORT, show_default=True, type=click.IntRange(0, 65535),
              help="Port to listen on; 0 picks a free one.")
@click.option("--heartbeat-interval", default=5.0, show_default=True, type=float, callback=_positive,
              help="Seconds between a client's heartbeats.")
@click.option("--heartbeat-timeout", default=10.0, show_default=True, type=float, callback=_positive,
              help="Seconds of silence after which a client is dead.")
@click.option("--min-heartbeat-interval", default=0.1, show_default=True, type=float, callback=_positive,
              help="Lowest interval a client may ask for in HELLO.")
@click.option("--max-heartbeat-interval", default=60.0, show_default=True, type=float, callback=_positive,
              help="Highest interval a client may ask for in HELLO.")
@click.option("--status-every", default=3.0, show_default=True, type=click.FloatRange(min=0),
              help="Seconds between status tables (0 = off).")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--log-buffer", default=16 << 20, show_default=True, type=click.IntRange(min=4096),
              help="Bytes of log lines held for a reader of the output that does not keep up; beyond, lines "
                   "are dropped, counted and reported (the server never waits for its output).")
@click.option("--max-payload", default=1 << 20, show_default=True, type=click.IntRange(min=1),
              help="Largest message payload in bytes.")
@click.option("--max-line", default=4096, show_default=True, type=click.IntRange(min=64),
              help="Longest control line in bytes.")
@click.option("-v", "--verbose", is_flag=True, help="Also show every heartbeat.")
@click.option("-q", "--quiet", is_flag=True, help="Show only warnings and errors.")
@click.option("--loop", "loop_kind", type=click.Choice(["auto", "asyncio", "uvloop"]), default="auto",
              show_default=True, help="Event loop: uvloop when installed (auto), or force one.")
@click.option("--shutdown-grace", default=5.0, show_default=True, type=click.FloatRange(min=0),
              help="Seconds to wait for clients to leave on SIGTERM/SIGINT.")
# Feature options.  Each feature keeps its options in its own block below, so that the serve
# command reads as a list of what the server can do.
# -- store (delivery and history) --
@click.option("--db", default="tcpulse.db", show_default=True, metavar="PATH|none",
              help="SQLite file that keeps connections, timeouts and messages (created if missing); "
                   "'none' keeps nothing, and ACK then means handled, not stored.")
@click.option("--retain", default="7d", show_default=True, metavar="DURATION",
              help="Delete messages, connections and sessions older than this (30s, 10m, 2h, 7d, 1w); "
                   "'none' keeps everything.")
@click.option("--max-db-size", default="4G", show_default=True, metavar="SIZE",
              help="Largest size of the --db file (500M, 4G: powers of 1024); at the limit numbered messages get "
                   "ERR 503 until --retain frees space; 'none' for no limit.")
# -- cluster (several nodes or workers as one: docs/cluster.md) --
@click.option("--cluster", "cluster_url", default=None, metavar="redis://HOST:PORT/DB",
              help="Join the cluster on this Redis: presence shared with the other nodes, takeover and sends "
                   "across them (needs the cluster extra).")
@click.option("--node-id", default=None, metavar="NAME",
              help="This node's name in the cluster (letters, digits, . _ -) [default: HOSTNAME-PORT].")
@click.option("--cluster-prefix", default="tcpulse", show_default=True, metavar="PREFIX",
              help="Prefix of the cluster's Redis keys and channels (several clusters on one Redis).")
@click.option("--lease-ttl", default=3.0, show_default=True, type=click.FloatRange(min=0.1),
              help="Seconds a node's lease lives without renewal (renewed every third of it): a dead node's "
                   "clients leave the view within about 4/3 of this.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 256),
              help="Server processes on one port (SO_REUSEPORT), nodes of one --cluster; with a --db that "
                   "several may write (postgresql://) or none.")
@click.option("--worker", "worker_index", default=None, type=int, hidden=True)
# -- admin (HTTP API, metrics, dashboard) --
@click.option("--admin", default=None, metavar="HOST:PORT",
              help="Serve the admin API, /metrics and the live dashboard here, e.g. 127.0.0.1:8222 (off by default).")
# -- security and limits --
@click.option("--admin-token", default=None, envvar="TCPULSE_ADMIN_TOKEN", metavar="TOKEN",
              help="Bearer token every admin endpoint but /healthz requires (env TCPULSE_ADMIN_TOKEN); "
                   "needed to serve --admin on an address other than loopback.")
@click.option("--admin-tls-cert", default=None, metavar="FILE",
              help="PEM certificate (chain): serve --admin over HTTPS (wanted beyond loopback; the server's "
                   "--tls-cert may be given again).")
@click.option("--admin-tls-key", default=None, metavar="FILE", help="PEM private key of --admin-tls-cert.")
@click.option("--tls-cert", default=None, metavar="FILE", help="PEM certificate (chain): serve TLS 1.2+ only.")
@click.option("--tls-key", default=None, metavar="FILE", help="PEM private key of --tls-cert.")
@click.option("--tls-client-ca", default=None, metavar="FILE",
              help="Require client certificates signed by this CA (mutual TLS); the certificate's CN or "
                   "a SAN must equal the client's HELLO id.")
@click.option("--auth-file", default=None, metavar="FILE",
              help="Require a per-client token (made with 'tcpulse token add'); re-read on change or SIGHUP.")
@click.option("--auth-timeout", default=2.0, show_default=True, type=float, callback=_positive,
              help="With auth: seconds a new connection has to send HELLO (else ERR 408).")
@click.option("--tls-handshake-timeout", default=5.0, show_default=True, type=float, callback=_positive,
              help="With TLS: seconds a new connection has to finish its handshake (half-done handshakes share "
                   "the small pool of sockets that are not clients yet).")
@click.option("--max-clients", default=None, type=click.IntRange(min=0),
              help="Connections beyond this get ERR 503 [default: what the open-file limit allows].")
@click.option("--max-per-addr", default=0, show_default=True, type=click.IntRange(min=0),
              help="Connections from one IP address (0 = no cap; clients behind NAT share one).")
@click.option("--max-frames-per-sec", default=10000.0, show_default=True, type=click.FloatRange(min=0),
              help="HEARTBEAT/PING/PONG frames per second per connection; beyond: ERR 429, frame dropped (0 = off).")
@click.option("--max-pings-per-sec", default=1000.0, show_default=True, type=click.FloatRange(min=0),
              help="PINGs answered per second per connection; beyond: ERR 429, no PONG (0 = off).")
@click.option("--max-strikes", default=3, show_default=True, type=click.IntRange(min=0),
              help="ERR 429s (at most one a second) a client may earn before it is closed.")
@click.option("--max-buffered", default=256 << 20, show_default=True, type=click.IntRange(min=0),
              help="Bytes of partial frames held across all connections; the client that would pass it gets "
                   "ERR 503 (0 = off).")
@click.option("--max-write-buffer", default=None, type=click.IntRange(min=0),
              help="Bytes queued for a client that does not read before it is closed as a slow consumer "
                   "[default: 2 x (max payload + max line), at least 1 MiB].")
@click.option("--max-queued", default=256 << 20, show_default=True, type=click.IntRange(min=0),
              help="Bytes queued for all clients together; past it the clients with the most unread are "
                   "closed as slow consumers (0 = off).")
@click.option("--max-store-backlog", default=32 << 20, show_default=True, type=click.IntRange(min=1),
              help="Bytes of messages taken and not yet stored; past it the server stops reading from the senders "
                   "until the store is down to a quarter of it (TCP pushes back on them).")
# -- scale and detection --
@click.option("--detector", type=click.Choice(["fixed", "phi"]), default="fixed", show_default=True,
              help="fixed: dead at the timeout. phi: phi accrual from each client's own beat history, dead when "
                   "phi passes --phi-threshold or at the timeout, whichever is first (docs/detection.md).")
@click.option("--phi-threshold", default=8.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="phi at which a client is dead (8: a live one would be that late once in 10^8).")
@click.option("--phi-min-std", default=0.1, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Least standard deviation of a client's beat gaps, as a fraction of its interval.")
@click.option("--phi-acceptable-pause", default=1.0, show_default=True, type=click.FloatRange(min=0),
              help="Pause a client may take beyond its usual gaps, as a fraction of its interval.")
@click.option("--phi-window", default=100, show_default=True, type=click.IntRange(2, 10000),
              help="How many recent beat gaps of each client phi learns from.")
# -- alerts (webhooks, a command) --
@alert_options
@lang_option
def serve(**opts: Any) -> None:
    """Run the server."""
    opts.pop("lang")  # in force already (_lang_callback)
    alert_opts = AlertsForServe.take(opts)
    if opts["verbose"] and opts["quiet"]:
        fail(_("-v and -q contradict each other: choose one"))
    quiet, verbose = opts.pop("quiet"), opts["verbose"]
    grace = opts.pop("shutdown_grace")
    loop_kind = opts.pop("loop_kind")
    log_format = opts.pop("log_format")
    log_buffer = opts.pop("log_buffer")
    if quiet:
        opts["status_every"] = 0
    _cluster_settings(opts)
    known = set(ServerConfig.__dataclass_fields__)
    cfg = ServerConfig(**{k: v for k, v in opts.items() if k in known})
    extra = {k: v for k, v in opts.items() if k not in known}
    try:
        cfg.validate()
    except ValueError as e:
        fail(error_text(e) + _sources(e), 2)
    level = "quiet" if quiet else "verbose" if verbose else "normal"
    log = ConsoleLog(json_format=log_format == "json", level=level, max_buffered=log_buffer)
    try:
        code = run_loop(lambda: _serve(cfg, log, grace, extra, alert_opts), loop_kind)
    finally:
        log.close()  # what the log still holds goes out (a reader that does not read gets 2 s)
    sys.exit(code)


def _cluster_settings(opts: dict[str, Any]) -> None:
    """Check --cluster, --node-id, --workers and --db together; run the workers' supervisor
    for --workers N (it exits when they do); name this node."""
    from tcpulse.store.dsn import is_postgres_url
    from tcpulse.store.factory import NO_STORE
    url, workers, worker = opts["cluster_url"], opts.pop("workers"), opts.pop("worker_index")
    node_id = opts.pop("node_id")
    db = opts.get("db") or NO_STORE
    if workers > 1 and not url:
        fail(_("--workers {n} needs --cluster redis://HOST:PORT/DB: the workers share their clients through "
               "it").format(n=workers), 2)
    if workers > 1 and db.lower() != NO_STORE and not is_postgres_url(db):
        fail(_("--workers {n} with --db {db} could store a message twice (each worker would keep its own file): "
               "use --db postgresql://... or --db none").format(n=workers, db=db), 2)
    if node_id is not None and not url:
        fail(_("--node-id names a node of a cluster: add --cluster redis://HOST:PORT/DB"), 2)
    if url and not url.startswith(("redis://", "rediss://", "unix://")):
        fail(_("--cluster {url}: expected redis://HOST:PORT/DB").format(url=url), 2)
    if url:
        try:
            from tcpulse.cluster.redis import valid_node_id
            from tcpulse.cluster.workers import default_node_id
        except ImportError as e:
            fail(_("--cluster needs the cluster extra ({missing} is not installed): in a checkout run "
                   "bash scripts/setup.sh; otherwise pip install 'tcpulse[cluster]'").format(missing=e.name or e), 2)
        name = node_id or default_node_id(opts["port"])
        if not valid_node_id(name):
            fail(_("--node-id {name}: use 1-64 letters, digits, '.', '_' or '-'").format(name=repr(name)), 2)
        if workers > 1 and worker is None:
            from tcpulse.cluster.workers import run_workers
            sys.exit(run_workers(sys.argv[sys.argv.index("serve") + 1:] if "serve" in sys.argv else [], workers,
                                 opts["host"], opts["port"], name, opts.get("admin")))
        opts["server_id"] = name
        if worker is not None:
            opts["reuse_port"] = True


def _sources(e: ValueError) -> str:
    """` (tcpulse.toml: heartbeat_timeout = 4)`: where the settings a ConfigError names came from,
    when that was a config file or the environment (the flag names them otherwise)."""
    if not isinstance(e, ConfigError):
        return ""
    from tcpulse.cli.config import where
    ctx = click.get_current_context()
    params = {p.name: p for p in ctx.command.params}
    places = [w for f in e.fields if f in params and (w := where(ctx, params[f])) is not None]
    return f" ({'; '.join(places)})" if places else ""


async def _listen(server: Server) -> None:
    """Start `server`; a failure is one line naming what to change (the database, the port, ...)."""
    cfg = server.config
    try:
        await server.start()
    except (StoreOpenError, TcpulseError) as e:  # the store, the cluster: one line each
        fail(error_text(e))
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            fail(_("port {port} on {host} is already in use: stop the other server or "
                   "choose another --port (0 picks a free one)").format(port=cfg.port, host=cfg.host))
        if e.errno in (errno.EADDRNOTAVAIL, errno.EINVAL):
            fail(_("cannot listen on {host}: it is not an address of this machine (check --host)").format(
                host=cfg.host))
        if e.errno == errno.EACCES:
            fail(_("not allowed to listen on port {port}: use a port above 1023").format(port=cfg.port))
        fail(_("cannot listen on {host}:{port}: {error}").format(host=cfg.host, port=cfg.port,
                                                                  error=e.strerror or e))


async def _serve(cfg: ServerConfig, log: ConsoleLog, grace: float, extra: dict[str, Any],
                 alert_opts: dict[str, Any]) -> int:
    server = Server(cfg)
    log.subscribe_to(server)
    # -- feature setup: each feature attaches itself to `server` here, from `extra` --
    from tcpulse.cli.token import serve_security_setup, serve_security_start
    serve_security_setup(server)  # TLS certificates, auth file, open-file limit
    from tcpulse.store.factory import open_store
    try:
        store = open_store(extra.get("db"), server_id=server.server_id, retain=extra.get("retain"),
                           max_db_size=extra.get("max_db_size"))
    except ValueError as e:  # a --retain or --max-db-size that cannot work
        fail(error_text(e), 2)
    except StoreOpenError as e:  # a postgresql:// URL without its driver
        fail(error_text(e), 2)
    server.use_store(store)  # --db none: MemoryStore
    if extra.get("cluster_url"):
        from tcpulse.cluster.redis import RedisCluster
        server.use_cluster(RedisCluster(extra["cluster_url"], prefix=extra.get("cluster_prefix") or "tcpulse",
                                        lease_ttl=extra.get("lease_ttl") or 3.0))
    admin = None
    if not extra.get("admin"):  # admin settings with no admin endpoint were silently ignored
        given = [f for f, k in (("--admin-tls-cert", "admin_tls_cert"), ("--admin-tls-key", "admin_tls_key"))
                 if extra.get(k)]
        if given:
            fail(_("{flag} needs --admin HOST:PORT (the admin endpoint is off without it)").format(flag=given[0]), 2)
    if extra.get("admin"):
        from tcpulse.admin.auth import admin_authorize, admin_bind_error
        from tcpulse.cli.status import AdminForServe
        token = extra.get("admin_token")
        admin = AdminForServe(server, extra["admin"], log, authorize=admin_authorize(token), token=token,
                              tls_cert=extra.get("admin_tls_cert"), tls_key=extra.get("admin_tls_key"))
        why = admin_bind_error(admin.admin.host, token)  # no open admin port without a token
        if why is not None:
            fail(why, 2)
    alerts = AlertsForServe(server, alert_opts, log)
    if admin is not None and alerts.alerter is not None:
        admin.admin.stats.alerts = alerts.alerter.stats  # tcpulse_alerts_* in /metrics, "alerts" in /api/server
    try:
        await _listen(server)
        # -- feature start: what runs beside the listening server (admin endpoint, alerts, ...) --
        serve_security_start(server, log)  # capacity line; SIGHUP re-reads the auth file
        if extra.get("cluster_url"):
            _say_cluster(log, server, extra["cluster_url"])
        if admin is not None:
            await admin.start()
            if alerts.alerter is not None:
                alerts.alerter.origin.generator_url = admin.admin.url
        await alerts.start()
    except SystemExit:
        # A start that failed leaves nothing behind: the store is closed (and its lock file gone).
        await server.close(0)
        await alerts.close(0)
        if admin is not None:
            await admin.close()
        raise
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = 0

    def on_signal(sig: signal.Signals) -> None:
        nonlocal signals
        signals += 1
        if signals > 1:
            import os
            os._exit(130)  # a second signal: out at once
        _say_stopping(log, sig, len(server.clients))
        stop.set()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    await stop.wait()
    await server.close(grace)
    # -- feature stop --
    await alerts.close(min(grace, 5.0))
    if admin is not None:
        await admin.close()
    _say_stopped(log)
    return 0


def _say_cluster(log: ConsoleLog, server: Server, url: str) -> None:
    """One line: this node's name in the cluster, and the nodes it sees."""
    from tcpulse.store.dsn import redact
    nodes = server.cluster.node_ids()
    if log.json:
        from tcpulse.i18n.display import iso_ts
        log.write_line(json.dumps({"ts": iso_ts(), "event": "cluster", "node": server.node_id, "url": redact(url),
                                   "nodes": nodes}, separators=(",", ":")))
    elif log.level != "quiet":
        log.write_line(_("Cluster: this is node {node} of {n} on {url} ({nodes})").format(
            node=server.node_id, n=len(nodes), url=redact(url), nodes=", ".join(nodes)))


def _say_stopping(log: ConsoleLog, sig: signal.Signals, clients: int) -> None:
    name = "Ctrl-C" if sig is signal.SIGINT else sig.name
    if log.json:
        from tcpulse.i18n.display import iso_ts
        log.write_line(json.dumps({"ts": iso_ts(), "event": "stopping", "signal": sig.name, "clients": clients},
                                  separators=(",", ":")))
    else:
        log.write_line(_("Stopping ({signal})").format(signal=name) if clients == 0 else
                       _("Stopping ({signal}): telling {n} client(s) that the server is shutting down; "
                         "{signal} again quits at once").format(signal=name, n=clients))


def _say_stopped(log: ConsoleLog) -> None:
    if log.json:
        from tcpulse.i18n.display import iso_ts
        log.write_line(json.dumps({"ts": iso_ts(), "event": "stopped"}, separators=(",", ":")))
    else:
        log.write_line(_("Server stopped"))
