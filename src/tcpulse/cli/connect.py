"""`tcpulse connect`: an interactive (or piped) client that sends each line as a message.

On a terminal it reads lines with prompt_toolkit: line editing and history, what the server says
printed above the prompt (never into the line being typed), no limit on a line's length (the
terminal's canonical mode cuts at 4,095 bytes; prompt_toolkit reads raw keys), `exit` or Ctrl-D
to quit.  Piped input is read line by line as it comes, with backpressure: the reader waits while
the client's outbox is full.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import threading
import time
from collections.abc import AsyncGenerator, Coroutine
from typing import Any

import click

from tcpulse.cli.common import DEFAULT_PORT, _positive, error_text, fail, lang_option, run_loop
from tcpulse.client.client import Client, address, default_id
from tcpulse.client.errors import (
    ClientError,
    ConnectError,
    ConnectionClosed,
    OutboxError,
    OutboxOwnerError,
    ServerError,
)
from tcpulse.client.events import (
    Acked,
    ByeReceived,
    CallbackFailed,
    ClientEvent,
    Connected,
    Disconnected,
    HeartbeatSent,
    InboxOverflow,
    InfoReceived,
    MessageReceived,
    OutboxTrouble,
    Reconnecting,
    Renumbered,
    RetryFailed,
    RttMeasured,
    ServerErrorReceived,
    SignedIn,
    Waiting,
)
from tcpulse.client.outbox import SQLiteOutbox
from tcpulse.i18n import _
from tcpulse.i18n.display import escape
from tcpulse.policy.backoff import is_retryable

__all__ = ["ConnectOptions", "connect"]

#: Lines read from a pipe ahead of the client: the reader thread waits beyond this.
_PIPE_AHEAD = 1024


@click.command()
@click.argument("host", default="127.0.0.1", metavar="[HOST[:PORT]]")
@click.argument("servers", nargs=-1, metavar="[HOST[:PORT]]...")
@click.option("--port", default=DEFAULT_PORT, show_default=True, type=click.IntRange(1, 65535),
              help="Port of a HOST given without one.")
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
@click.option("--token-file", default=None, metavar="FILE",
              help="Read this id's token from FILE (its first line), for a server with --auth-file.")
@click.option("--token", default=None, envvar="TCPULSE_TOKEN", metavar="TOKEN",
              help="This id's token (env TCPULSE_TOKEN). On the command line other users can read it "
                   "(ps): prefer --token-file or the environment variable.")
@click.option("--tls", is_flag=True, help="Connect with TLS, verifying the server's certificate and name.")
@click.option("--ca", default=None, metavar="FILE", help="CA certificate(s) to verify the server with (implies --tls).")
@click.option("--insecure", is_flag=True, help="TLS without verifying the server: for testing only.")
@click.option("--tls-cert", "client_cert", default=None, metavar="FILE",
              help="Client certificate, for a server that requires one (mutual TLS).")
@click.option("--tls-key", "client_key", default=None, metavar="FILE", help="Private key of --tls-cert.")
@click.option("--server-name", default=None, metavar="NAME",
              help="Name to verify in the server's certificate (default: HOST).")
@lang_option
def connect(host: str, servers: tuple[str, ...], port: int, client_id: str | None, heartbeat_interval: float | None,
            seed_demo: bool, no_reconnect: bool, verbose: bool, loop_kind: str, lang: str | None,
            wait_for_server: bool = False, token: str | None = None, token_file: str | None = None,
            tls: bool = False, ca: str | None = None, insecure: bool = False,
            client_cert: str | None = None, client_key: str | None = None,
            server_name: str | None = None, outbox: str | None = None) -> None:
    """Connect to a server and send each line typed (or piped) as a message.

    Several servers (the nodes of a cluster): when one fails, the next is tried, and the session
    goes on there."""
    from tcpulse.client.client import parse_server
    from tcpulse.protocol.events import ID_RE
    try:
        addrs = [parse_server(x, port) for x in (host, *servers)]
    except ValueError as e:
        fail(_("bad server address {what}: give HOST, HOST:PORT or [IPv6]:PORT").format(what=e), 2)
    host, port = addrs[0]
    if client_id is not None and ID_RE.fullmatch(client_id) is None:
        fail(_("--id {id} is not valid: use 1-128 characters of A-Z a-z 0-9 . _ @ -").format(id=repr(client_id)), 2)
    token = _token(token, token_file)
    opts = ConnectOptions(host, port, client_id, heartbeat_interval, seed_demo,
                          reconnect=not (no_reconnect or seed_demo), verbose=verbose)
    from tcpulse.cli.token import connect_tls
    opts.ssl_context = connect_tls(tls, ca, insecure, client_cert, client_key)
    opts.token = token
    opts.server_hostname = server_name
    opts.outbox = outbox
    opts.wait_for_server = wait_for_server
    opts.servers = addrs
    sys.exit(run_loop(lambda: _connect(opts), loop_kind))


def _token(token: str | None, token_file: str | None) -> str | None:
    """The token to sign in with: from --token-file, TCPULSE_TOKEN or --token (which warns: the
    command line of a process is visible to every user of the machine)."""
    ctx = click.get_current_context()
    on_command_line = ctx.get_parameter_source("token") is click.core.ParameterSource.COMMANDLINE
    if token_file is not None:
        if on_command_line:
            fail(_("give the token with --token-file or --token, not both"), 2)
        try:
            with open(token_file, encoding="utf-8") as f:
                token = f.readline().strip()
        except OSError as e:
            fail(_("cannot read --token-file {path}: {error}").format(path=token_file, error=e.strerror or e), 2)
        if not token:
            fail(_("--token-file {path} is empty: its first line must be the token").format(path=token_file), 2)
        return token
    if on_command_line:
        click.echo(_("tcpulse: warning: --token is visible to other users of this machine (ps); use --token-file "
                     "FILE or TCPULSE_TOKEN instead"), err=True)
    return token


class ConnectOptions:
    # Security (set after construction by `connect`): TLS context, server name, token.
    ssl_context: Any = None
    server_hostname: str | None = None
    token: str | None = None
    outbox: str | None = None  # --outbox PATH (delivery)
    wait_for_server: bool = False  # --wait
    servers: list[tuple[str, int]] | None = None  # every HOST[:PORT] given, in order

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


class _Printer:
    """Turns the client's events into lines for the user (the `on_event` callback)."""

    def __init__(self, opts: ConnectOptions, made_up_id: str | None) -> None:
        self.opts = opts
        self.made_up_id = made_up_id  # said once signed in: "No --id given: this client is ..."
        self.why: str | None = None  # the ERR/BYE line kept for the reconnect line
        self.lost_at = 0.0
        #: Whether the end has been said (so that "Disconnected from the server" comes once).
        self.said_end = False
        #: Whether the line that explains the end (ERR or BYE) was printed already.
        self.said_cause = False
        self.quiet_rtt = False  # the start-up ping prints its own line

    def __call__(self, ev: ClientEvent) -> None:
        opts = self.opts
        if isinstance(ev, Connected):
            # With several servers, the one this connection went to.
            opts.host, opts.port = ev.host, ev.port
        elif isinstance(ev, InfoReceived):
            if not self.lost_at:
                info = ev.info
                _say(_("Connected to server {address} (tcpulse {version}, heartbeat every {interval:g} s, "
                       "timeout {timeout:g} s, durable: {durable})").format(
                    address=address(opts.host, opts.port), version=info.version or "?",
                    interval=info.heartbeat_interval, timeout=info.heartbeat_timeout,
                    durable=_("yes") if info.durable else _("no")))
        elif isinstance(ev, SignedIn):
            ok = ev.ok
            if ev.first:
                if self.made_up_id is not None:
                    _say(_("No --id given: this client is {id}").format(id=self.made_up_id))
                _say(_("Signed in as {id}: heartbeat every {interval:g} s, timeout {timeout:g} s").format(
                    id=ok.id, interval=ok.heartbeat_interval, timeout=ok.heartbeat_timeout))
                if ev.resent:
                    _say(_("Sent again {n} message(s) not acknowledged last time").format(n=ev.resent))
            else:
                # One line per reconnect (PROTOCOL.md, "Delivery": the server's acked, then resend).
                if opts.servers is not None and len(opts.servers) > 1:
                    _say(_("Reconnected to {address} after {secs:.1f} s: the server has up to #{acked}; sent "
                           "again: {n}").format(address=address(opts.host, opts.port),
                                                secs=time.monotonic() - self.lost_at, acked=ok.acked, n=ev.resent))
                else:
                    _say(_("Reconnected after {secs:.1f} s: the server has up to #{acked}; sent again: {n}").format(
                        secs=time.monotonic() - self.lost_at, acked=ok.acked, n=ev.resent))
        elif isinstance(ev, Renumbered):
            _say(_("The server lost its record of this session (it keeps no store and restarted): "
                   "{n} held message(s) numbered again from #{first}").format(n=ev.held, first=ev.acked + 1))
        elif isinstance(ev, HeartbeatSent):
            if opts.seed_demo or opts.verbose:
                _say(_("Sent heartbeat #{n}").format(n=ev.n))
        elif isinstance(ev, RttMeasured):
            if opts.verbose and not self.quiet_rtt:
                _say(_("RTT to the server: {ms:.2f} ms").format(ms=ev.rtt * 1000))
        elif isinstance(ev, Acked):
            if opts.verbose:
                _say(_("Server acknowledged up to #{seq}").format(seq=ev.id))
        elif isinstance(ev, MessageReceived):
            try:
                text = escape(ev.payload.decode("utf-8"))
            except UnicodeDecodeError:
                text = _("<{size} bytes, not UTF-8>").format(size=len(ev.payload))
            _say(_("Message from the server: {text}").format(text=text))
        elif isinstance(ev, ServerErrorReceived):
            text = _("Server error {code}: {text}").format(code=ev.code, text=ev.text)
            if opts.reconnect and is_retryable(err_code=ev.code):
                self.why = text  # said once, in the disconnect line
                if opts.verbose and self.lost_at:
                    _say(text)
            else:
                _say(text)
                self.said_cause = True
        elif isinstance(ev, ByeReceived):
            self._bye(ev.reason or "")
        elif isinstance(ev, Disconnected):
            self._disconnected(ev)
        elif isinstance(ev, Waiting):
            _say(_("Cannot connect to the server {address} ({why}): trying again until it answers "
                   "(Ctrl-C stops)").format(address=address(opts.host, opts.port), why=error_text(ev.error)))
        elif isinstance(ev, Reconnecting):
            if opts.verbose:
                _say(_("Reconnecting in {delay:.1f} s (attempt {n})").format(delay=ev.delay, n=ev.attempt))
        elif isinstance(ev, RetryFailed):
            if opts.verbose:
                _say(error_text(ev.error))
        elif isinstance(ev, InboxOverflow):  # pragma: no cover - the CLI reads messages as events only
            pass
        elif isinstance(ev, OutboxTrouble):
            if ev.error is not None:
                _say(_("Cannot write the outbox: {error}; trying again").format(error=error_text(ev.error)))
            else:
                _say(_("The outbox can be written again"))
        elif isinstance(ev, CallbackFailed):  # pragma: no cover - only for events() streams
            pass

    def _bye(self, reason: str) -> None:
        if reason == "heartbeat-timeout":
            text = _("The server closed the connection: heartbeat timeout (it heard nothing from us in time)")
        elif reason == "shutdown":
            text = _("The server is shutting down")
        elif reason == "replaced":
            text = _("Another connection with the same id replaced this one")
        else:
            text = _("The server closed the connection ({reason})").format(reason=reason)
        if self.opts.reconnect and reason in ("heartbeat-timeout", "shutdown"):
            self.why = text
        else:
            _say(text)
            self.said_cause = True

    def _disconnected(self, ev: Disconnected) -> None:
        why = self.why or error_text(ev.error)
        self.why = None
        if ev.reconnect:
            self.lost_at = time.monotonic()
            _say(_("Connection lost ({why}); keeping {n} unacknowledged message(s) and reconnecting").format(
                why=why, n=ev.unacked))
        elif not self.said_cause:
            _say(_("Disconnected from the server: {reason}").format(reason=why))
            self.said_end = True

    def end(self) -> None:
        """Say "Disconnected from the server" if nothing has said so yet."""
        if not self.said_end:
            self.said_end = True
            _say(_("Disconnected from the server"))


# ---------------------------------------------------------------- reading lines


async def _piped_lines(loop: asyncio.AbstractEventLoop) -> AsyncGenerator[str | None, None]:
    """Lines of a pipe (or file), read by a thread (the only portable way) no further than
    `_PIPE_AHEAD` lines ahead of the client; None at end of input."""
    q: asyncio.Queue[str | None] = asyncio.Queue(_PIPE_AHEAD)
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            try:
                line: str | None = sys.stdin.readline()
            except (OSError, ValueError):
                line = None
            if line == "":
                line = None
            elif line is not None:
                line = line.rstrip("\n").rstrip("\r")
            try:
                asyncio.run_coroutine_threadsafe(q.put(line), loop).result()
            except (RuntimeError, asyncio.CancelledError):
                return  # the loop is gone
            if line is None:
                return
    threading.Thread(target=reader, daemon=True, name="tcpulse-stdin").start()
    try:
        while True:
            item = await q.get()
            yield item
            if item is None:
                return
    finally:
        stop.set()
        while not q.empty():  # let a reader blocked on a full queue finish its put
            q.get_nowait()


async def _typed_lines(prompt: str) -> AsyncGenerator[str | None, None]:
    """Lines typed at a terminal, through prompt_toolkit (editing, history); None for Ctrl-D
    or Ctrl-C.  The caller prints under `patch_stdout()`, so its lines go above the prompt."""
    from prompt_toolkit import PromptSession
    from prompt_toolkit.history import InMemoryHistory

    session: PromptSession[str] = PromptSession(history=InMemoryHistory())
    while True:
        try:
            line = await session.prompt_async(prompt)
        except (EOFError, KeyboardInterrupt):
            yield None
            return
        yield line


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
        await asyncio.wait({task})
        return False
    task.result()
    return True


async def _open_outbox(opts: ConnectOptions) -> tuple[SQLiteOutbox | None, str | None]:
    if opts.outbox is None:
        return None, opts.client_id
    try:
        box = await SQLiteOutbox.open(opts.outbox)
    except OutboxError as e:
        fail(error_text(e))
    try:
        box.check_owner(opts.client_id)
    except OutboxOwnerError as e:
        await box.aclose()
        fail(_("outbox {path} belongs to client id {id}: use --id {id} or another --outbox").format(
            path=opts.outbox, id=e.owner))
    if len(box):
        _say(_("Outbox {path}: {n} message(s) not acknowledged last time, sent again once connected").format(
            path=opts.outbox, n=len(box)))
    return box, opts.client_id or box.client_id


async def _connect(opts: ConnectOptions) -> int:
    box, client_id = await _open_outbox(opts)
    made_up = None
    if client_id is None:
        client_id = made_up = default_id()
    printer = _Printer(opts, made_up)
    # Messages from the server are shown as they come (the printer): no inbox to fill up.
    client = Client(opts.host, opts.port, id=client_id, heartbeat_interval=opts.interval, outbox=box,
                    reconnect=opts.reconnect, on_event=printer, seed_demo=opts.seed_demo,
                    token=opts.token, ssl_context=opts.ssl_context,
                    # Several servers: each is checked against its own name (asyncio's default).
                    server_hostname=opts.server_hostname or (
                        opts.host if opts.ssl_context and len(opts.servers or ()) <= 1 else None),
                    wait_for_server=opts.wait_for_server, max_inbox=0, servers=opts.servers)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        if not await _until_stopped(client.start(), stop):
            # Stopped while waiting for the server: nothing was sent, nothing is lost.
            await client.close()
            _unacked_note(opts, len(box or ()))
            _say(_("Stopped before the server answered"))
            return 1
    except ConnectError as e:
        if box is not None:
            await box.aclose()
        from tcpulse.cli.token import plain_hint, tls_hint
        hint = tls_hint(str(e), e.kind) if opts.ssl_context is not None else plain_hint(str(e), e.kind)
        fail(error_text(e) + hint)
    except ServerError as e:
        if box is not None:
            await box.aclose()
        hint = _(" (give this id's token with --token-file or TCPULSE_TOKEN; with mutual TLS, a client "
                 "certificate for this id with --tls-cert and --tls-key)") if e.code == 401 else ""
        fail(_("the server refused the connection: ERR {code} {text}").format(code=e.code, text=e.text) + hint)
    if not opts.seed_demo:
        printer.quiet_rtt = True
        try:
            rtt = await client.ping(timeout=5)
            _say(_("RTT to the server: {ms:.2f} ms").format(ms=rtt * 1000))
        except ClientError:
            pass  # the printer says what happened to the connection
        finally:
            printer.quiet_rtt = False
    if sys.stdin is not None and sys.stdin.isatty() and sys.stdout.isatty():
        from prompt_toolkit.patch_stdout import patch_stdout
        with patch_stdout(raw=True):
            return await _session(client, opts, printer, stop,
                                  _typed_lines(_("Enter a message to send ('exit' to quit): ")))
    return await _session(client, opts, printer, stop, _piped_lines(loop))


async def _session(client: Client, opts: ConnectOptions, printer: _Printer, stop: asyncio.Event,
                   lines: AsyncGenerator[str | None, None]) -> int:
    done = asyncio.ensure_future(client.wait_closed())
    stopper = asyncio.ensure_future(stop.wait())
    eof = False
    try:
        while True:
            getter = asyncio.ensure_future(anext(lines)) if not eof else None
            waiting: set[asyncio.Future[Any]] = {done, stopper}
            if getter is not None:
                waiting.add(getter)
            finished, _pending = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if done in finished or stopper in finished:
                if getter is not None:
                    getter.cancel()
                    await asyncio.wait({getter})
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
                await _until_stopped(_send(client, line), stop)
            except ConnectionClosed:
                break  # the client is gone for good: `done` says how
            except ValueError as e:
                _say(error_text(e))
    finally:
        stopper.cancel()
        await lines.aclose()
    if done.done():
        failed = done.exception() is not None
        await client.close()
        _unacked_note(opts, len(client.unacked()))
        printer.end()
        return 1 if failed else 0
    done.cancel()
    pending = len(client.unacked())
    if pending and not await client.drain(0.5):
        _say(_("Waiting for the server to acknowledge {n} message(s)...").format(n=len(client.unacked())))
    await client.close(drain_timeout=5.0)
    left = len(client.unacked())
    if left:
        _unacked_note(opts, left)
        printer.end()
        return 1
    if pending and opts.verbose:
        _say(_("All messages acknowledged"))
    printer.end()
    return 0


async def _send(client: Client, line: str) -> None:
    await client.send(line)

