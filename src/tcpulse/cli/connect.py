"""`tcpulse connect`: an interactive (or piped) client that sends each line as a message."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any

import click

from tcpulse.cli.common import DEFAULT_PORT, _positive, error_text, fail, lang_option, run_loop
from tcpulse.client.client import Client, default_id
from tcpulse.client.errors import ConnectError, ServerError
from tcpulse.client.events import ClientEvent
from tcpulse.i18n import _
from tcpulse.i18n.display import escape
from tcpulse.policy.backoff import is_retryable

__all__ = ["ConnectOptions", "connect"]


@click.command()
@click.argument("host", default="127.0.0.1")
@click.option("--port", default=DEFAULT_PORT, show_default=True, type=click.IntRange(1, 65535))
@click.option("--id", "client_id", default=None, help="Client id (default: host name + random suffix).")
@click.option("--heartbeat-interval", default=None, type=float, callback=_positive,
              help="Heartbeat interval to ask the server for (default: the server's).")
@click.option("--seed-demo", is_flag=True,
              help="Behave like the original exercise's client: beat 3 times one interval apart, then "
                   "only every 20 intervals, no PINGs, no reconnect; the server times it out.")
@click.option("--no-reconnect", is_flag=True, help="Exit when the connection is lost instead of reconnecting.")
@click.option("--wait", "wait_for_server", is_flag=True,
              help="If the server cannot be reached at start, keep trying until it answers (with the "
                   "reconnect backoff) instead of exiting.")
@click.option("--outbox", default=None, metavar="PATH",
              help="Keep this client's id, session and unacknowledged messages in an SQLite file: "
                   "started again with it, the client sends what was not acknowledged, once.")
@click.option("-v", "--verbose", is_flag=True, help="Show every heartbeat, RTT and ACK.")
@click.option("--loop", "loop_kind", type=click.Choice(["auto", "asyncio", "uvloop"]), default="auto")
@click.option("--token", default=None, envvar="TCPULSE_TOKEN", metavar="TOKEN",
              help="This id's token, for a server with --auth-file (env TCPULSE_TOKEN).")
@click.option("--tls", is_flag=True, help="Connect with TLS, verifying the server's certificate and name.")
@click.option("--ca", default=None, metavar="FILE", help="CA certificate(s) to verify the server with (implies --tls).")
@click.option("--insecure", is_flag=True, help="TLS without verifying the server: for testing only.")
@click.option("--tls-cert", "client_cert", default=None, metavar="FILE",
              help="Client certificate, for a server that requires one (mutual TLS).")
@click.option("--tls-key", "client_key", default=None, metavar="FILE", help="Private key of --tls-cert.")
@click.option("--server-name", default=None, metavar="NAME",
              help="Name to verify in the server's certificate (default: HOST).")
@lang_option
def connect(host: str, port: int, client_id: str | None, heartbeat_interval: float | None,
            seed_demo: bool, no_reconnect: bool, verbose: bool, loop_kind: str, lang: str | None,
            wait_for_server: bool = False, token: str | None = None, tls: bool = False, ca: str | None = None,
            insecure: bool = False,
            client_cert: str | None = None, client_key: str | None = None,
            server_name: str | None = None, outbox: str | None = None) -> None:
    """Connect to a server and send each line typed (or piped) as a message."""
    from tcpulse.protocol.events import ID_RE
    if client_id is not None and ID_RE.fullmatch(client_id) is None:
        fail(_("--id {id} is not valid: use 1-128 characters of A-Z a-z 0-9 . _ @ -").format(id=repr(client_id)), 2)
    opts = ConnectOptions(host, port, client_id, heartbeat_interval, seed_demo,
                          reconnect=not (no_reconnect or seed_demo), verbose=verbose)
    from tcpulse.cli.token import connect_tls
    opts.ssl_context = connect_tls(tls, ca, insecure, client_cert, client_key)
    opts.token = token
    opts.server_hostname = server_name
    opts.outbox = outbox
    opts.wait_for_server = wait_for_server
    sys.exit(run_loop(lambda: _connect(opts), loop_kind))


class ConnectOptions:
    # Security (set after construction by `connect`): TLS context, server name, token.
    ssl_context: Any = None
    server_hostname: str | None = None
    token: str | None = None
    outbox: str | None = None  # --outbox PATH (delivery)
    wait_for_server: bool = False  # --wait

    def __init__(self, host: str, port: int, client_id: str | None, interval: float | None,
                 seed_demo: bool, reconnect: bool, verbose: bool) -> None:
        self.host = host
        self.port = port
        self.client_id = client_id
        self.interval = interval
        self.seed_demo = seed_demo
        self.reconnect = reconnect
        self.verbose = verbose


def _say(text: str) -> None:
    click.echo(text)


def _client_printer(opts: ConnectOptions) -> Callable[[ClientEvent], None]:
    state: dict[str, Any] = {"connections": 0, "why": None, "lost_at": 0.0}

    def on_event(ev: ClientEvent) -> None:
        d = ev.data
        k = ev.kind
        if k == "info" and state["connections"] == 0:
            info = d["info"]
            _say(_("Connected to server {host}:{port} (tcpulse {version}, heartbeat every {interval:g} s, "
                   "timeout {timeout:g} s, durable: {durable})").format(
                host=opts.host, port=opts.port, version=info.version or "?",
                interval=info.heartbeat_interval, timeout=info.heartbeat_timeout,
                durable=_("yes") if info.durable else _("no")))
        elif k == "ok":
            state["connections"] += 1
            ok = d["ok"]
            if state["connections"] == 1:
                _say(_("Signed in as {id}: heartbeat every {interval:g} s, timeout {timeout:g} s").format(
                    id=ok.id, interval=ok.heartbeat_interval, timeout=ok.heartbeat_timeout))
                if d.get("resent"):
                    _say(_("Sent again {n} message(s) not acknowledged last time").format(n=d["resent"]))
            else:
                # One line per reconnect (PROTOCOL.md, "Delivery": the server's acked, then resend).
                _say(_("Reconnected after {secs:.1f} s: the server has up to #{acked}; sent again: {n}").format(
                    secs=time.monotonic() - state["lost_at"], acked=ok.acked, n=d.get("resent", 0)))
        elif k == "renumbered":
            _say(_("The server lost its record of this session (it keeps no store and restarted): "
                   "{n} held message(s) numbered again from #{first}").format(n=d["held"], first=d["acked"] + 1))
        elif k == "beat":
            if opts.seed_demo or opts.verbose:
                _say(_("Sent heartbeat #{n}").format(n=d["n"]))
        elif k == "rtt":
            if opts.verbose:
                _say(_("RTT to the server: {ms:.2f} ms").format(ms=d["rtt"] * 1000))
        elif k == "ack":
            if opts.verbose:
                _say(_("Server acknowledged up to #{seq}").format(seq=d["seq"]))
        elif k == "message":
            payload: bytes = d["payload"]
            try:
                text = escape(payload.decode("utf-8"))
            except UnicodeDecodeError:
                text = _("<{size} bytes, not UTF-8>").format(size=len(payload))
            _say(_("Message from the server: {text}").format(text=text))
        elif k == "error":
            text = _("Server error {code}: {text}").format(code=d["code"], text=d["text"])
            if opts.reconnect and is_retryable(err_code=d["code"]):
                state["why"] = text  # said once, in the disconnect line
                if opts.verbose and state["lost_at"]:
                    _say(text)
            else:
                _say(text)
        elif k == "bye":
            reason = d.get("reason") or ""
            if reason == "heartbeat-timeout":
                text = _("The server closed the connection: heartbeat timeout (it heard nothing from us in time)")
            elif reason == "shutdown":
                text = _("The server is shutting down")
            elif reason == "replaced":
                text = _("Another connection with the same id replaced this one")
            else:
                text = _("The server closed the connection ({reason})").format(reason=reason)
            if opts.reconnect and reason in ("heartbeat-timeout", "shutdown"):
                state["why"] = text
            else:
                _say(text)
        elif k == "disconnected":
            why = state["why"] or error_text(d["error"])
            state["why"] = None
            if d.get("reconnect"):
                state["lost_at"] = time.monotonic()
                _say(_("Connection lost ({why}); keeping {n} unacknowledged message(s) and reconnecting").format(
                    why=why, n=d.get("unacked", 0)))
            else:
                _say(_("Disconnected from the server: {reason}").format(reason=why))
        elif k == "waiting":
            _say(_("Cannot connect to the server {host}:{port} ({why}): trying again until it answers "
                   "(Ctrl-C stops)").format(host=opts.host, port=opts.port, why=error_text(d["error"])))
        elif k == "reconnecting" and opts.verbose:
            _say(_("Reconnecting in {delay:.1f} s (attempt {n})").format(delay=d["delay"], n=d["attempt"]))
        elif k == "retry-failed" and opts.verbose:
            _say(error_text(d["error"]))
    return on_event


async def _stdin_lines(interactive: bool) -> asyncio.Queue[str | None]:
    """Read stdin in a thread (the only portable way for a terminal and a pipe alike)."""
    loop = asyncio.get_running_loop()
    q: asyncio.Queue[str | None] = asyncio.Queue()
    prompt = _("Enter a message to send ('exit' to quit): ")

    def reader() -> None:
        while True:
            try:
                line = input(prompt) if interactive else sys.stdin.readline()
            except (EOFError, KeyboardInterrupt):
                line = None
            except (OSError, ValueError):
                line = None
            if line is not None and not interactive:
                if line == "":
                    line = None
                else:
                    line = line.rstrip("\n").rstrip("\r")
            loop.call_soon_threadsafe(q.put_nowait, line)
            if line is None:
                return
    threading.Thread(target=reader, daemon=True, name="tcpulse-stdin").start()
    return q


def _unacked_note(opts: ConnectOptions, left: int) -> None:
    if not left:
        return
    if opts.outbox is not None:
        _say(_("{n} message(s) not acknowledged yet are kept in {path}: they are sent when you connect "
               "again with --outbox {path}").format(n=left, path=opts.outbox))
    else:
        _say(_("{n} message(s) were not acknowledged by the server and may be lost").format(n=left))


async def _until_stopped(coro: Coroutine[Any, Any, None], stop: asyncio.Event) -> bool:
    """Run `coro` until it ends (True; its exception raised) or `stop` is set first (False)."""
    task = asyncio.ensure_future(coro)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return False
    task.result()
    return True


async def _connect(opts: ConnectOptions) -> int:
    client_id = opts.client_id
    box = None
    if opts.outbox is not None:
        from tcpulse.client.outbox import OutboxError, OutboxOwnerError, SQLiteOutbox
        try:
            box = SQLiteOutbox(opts.outbox)
        except OutboxError as e:
            fail(error_text(e))
        try:
            box.check_owner(client_id)
        except OutboxOwnerError as e:
            fail(_("outbox {path} belongs to client id {id}: use --id {id} or another --outbox").format(
                path=opts.outbox, id=e.owner))
        client_id = client_id or box.client_id
        if box.pending():
            _say(_("Outbox {path}: {n} message(s) not acknowledged last time, sent again once connected").format(
                path=opts.outbox, n=len(box.pending())))
    if client_id is None:
        client_id = default_id()
        _say(_("No --id given: this client is {id}").format(id=client_id))
    client = Client(opts.host, opts.port, id=client_id, heartbeat_interval=opts.interval, outbox=box,
                    reconnect=opts.reconnect, on_event=_client_printer(opts), seed_demo=opts.seed_demo,
                    token=opts.token, ssl_context=opts.ssl_context,
                    server_hostname=opts.server_hostname or (opts.host if opts.ssl_context else None),
                    wait_for_server=opts.wait_for_server)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        if not await _until_stopped(client.start(), stop):
            # Stopped while waiting for the server: nothing was sent, nothing is lost.
            await client.close()
            _unacked_note(opts, len(client.unacked()))
            _say(_("Stopped before the server answered"))
            return 1
    except ConnectError as e:
        _say(_("Cannot connect to the server {host}:{port}").format(host=opts.host, port=opts.port))
        from tcpulse.cli.token import plain_hint, tls_hint
        hint = tls_hint(str(e), e.kind) if opts.ssl_context is not None else plain_hint(str(e), e.kind)
        fail(error_text(e) + hint)
    except ServerError as e:
        hint = _(" (give this id's token with --token or TCPULSE_TOKEN; with mutual TLS, a client certificate "
                 "for this id with --tls-cert and --tls-key)") if e.code == 401 else ""
        fail(_("the server refused the connection: ERR {code} {text}").format(code=e.code, text=e.text) + hint)
    if not opts.seed_demo:
        with contextlib.suppress(Exception):
            rtt = await asyncio.wait_for(client.ping(), 5)
            _say(_("RTT to the server: {ms:.2f} ms").format(ms=rtt * 1000))
    interactive = sys.stdin is not None and sys.stdin.isatty()
    lines = await _stdin_lines(interactive)
    done = asyncio.ensure_future(client.wait_closed())
    stopper = asyncio.ensure_future(stop.wait())
    eof = False
    try:
        while True:
            getter = asyncio.ensure_future(lines.get()) if not eof else None
            waiting: set[asyncio.Future[Any]] = {done, stopper}
            if getter is not None:
                waiting.add(getter)
            finished, _pending = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if done in finished or stopper in finished:
                if getter is not None:
                    getter.cancel()
                break
            assert getter is not None
            line = getter.result()
            if line is None:
                if opts.seed_demo:
                    eof = True  # the original client keeps its connection after end of input
                    continue
                break
            if line.strip().lower() == "exit":
                break
            try:
                await client.send(line)
            except (ValueError, RuntimeError) as e:
                _say(error_text(e))
    finally:
        stopper.cancel()
    if done.done():
        exc = done.exception()
        await client.close()
        _unacked_note(opts, len(client.unacked()))
        _say(_("Disconnected from the server"))
        if exc is not None:
            return 1
        return 0
    done.cancel()
    pending = len(client.unacked())
    if pending and not await client.drain(0.5):
        _say(_("Waiting for the server to acknowledge {n} message(s)...").format(n=len(client.unacked())))
    await client.close(drain_timeout=5.0)
    left = len(client.unacked())
    if left:
        _unacked_note(opts, left)
        _say(_("Disconnected from the server"))
        return 1
    if pending and opts.verbose:
        _say(_("All messages acknowledged"))
    _say(_("Disconnected from the server"))
    return 0
