"""`tcpulse bench hold` and `tcpulse bench ingest`: the load generator as a command.

Progress goes to stderr while it runs; the result is a table on stdout, or one JSON object with
`--json`.  `--spawn` starts a `tcpulse serve --db none -q` of its own (and stops it by its PID);
`--server-pid` measures a server you started.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from typing import Any

import click

from tcpulse.bench.load import HoldResult, IngestResult, Kind, SpawnedServer, hold, ingest
from tcpulse.cli.common import DEFAULT_PORT, fail, loop_runner
from tcpulse.i18n import _

__all__ = ["bench"]


@click.group()
def bench() -> None:
    """Load generator: hold many clients, or push messages, and measure the server."""


def _common(f: Callable[..., Any]) -> Callable[..., Any]:
    opts = [
        click.option("--host", default="127.0.0.1", show_default=True, help="Server address."),
        click.option("--port", default=DEFAULT_PORT, show_default=True, type=click.IntRange(1, 65535)),
        click.option("--spawn", is_flag=True,
                     help="Start a `tcpulse serve --db none -q` of its own on a free port, measure it, stop it."),
        click.option("--server-arg", "server_args", multiple=True, metavar="ARG",
                     help="With --spawn: one more argument for `tcpulse serve` (repeat it), "
                          "e.g. --server-arg=--detector=phi."),
        click.option("--server-loop", type=click.Choice(["auto", "asyncio", "uvloop"]), default="auto",
                     show_default=True, help="With --spawn: the server's event loop."),
        click.option("--server-pid", type=int, default=None,
                     help="PID of a local server to measure (CPU, memory); implied by --spawn."),
        click.option("--kind", type=click.Choice([k.value for k in Kind]), default="tcpulse", show_default=True,
                     help="What the server speaks: tcpulse, or a comparison server (bench/side_by_side.py)."),
        click.option("--loop", "loop_kind", type=click.Choice(["auto", "asyncio", "uvloop"]), default="auto",
                     show_default=True, help="This load generator's event loop."),
        click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


@contextmanager
def _progress(enabled: bool) -> Iterator[Callable[[str, int, int], None]]:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    bar = Progress(TextColumn("{task.description:<22}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   console=console, transient=True, disable=not (enabled and console.is_terminal))
    tasks: dict[str, Any] = {}

    def update(phase: str, done: int, total: int) -> None:
        if phase not in tasks:
            for t in tasks.values():
                bar.update(t, visible=False)
            tasks[phase] = bar.add_task(phase, total=max(1, total))
        bar.update(tasks[phase], completed=done, total=max(1, total))
    with bar:
        yield update


def _run(coro: Callable[[], Coroutine[Any, Any, Any]], loop_kind: str) -> tuple[Any, str]:
    runner, name = loop_runner(loop_kind)
    return runner(coro()), name


def _start(spawn: bool, server_args: tuple[str, ...], server_loop: str, host: str, port: int,
           server_pid: int | None, base_args: list[str]) -> tuple[SpawnedServer | None, int, int | None]:
    if not spawn:
        return None, port, server_pid
    srv = SpawnedServer([*base_args, "--loop", server_loop, *server_args], host=host)
    try:
        port = srv.wait_listening()
    except RuntimeError as e:
        srv.stop()
        fail(_("--spawn: {error} (check the --server-arg values)").format(error=e))
    return srv, port, srv.pid


def _fmt_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    return f"{n / (1 << 20):.1f} MiB" if abs(n) >= 1 << 20 else f"{n / 1024:.2f} KiB"


def _table(title: str, rows: list[tuple[str, str]]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title, show_header=False)
    t.add_column("figure")
    t.add_column("value", justify="right")
    for k, v in rows:
        t.add_row(k, v)
    Console().print(t)


def _connect_hint(e: BaseException, host: str, port: int) -> str:
    return _("cannot reach a server at {host}:{port} ({error}): start one (tcpulse serve --db none -q) "
             "or use --spawn").format(host=host, port=port, error=e)


@bench.command("hold")
@click.option("--clients", "-n", default=1000, show_default=True, type=click.IntRange(1, 1_000_000),
              help="Clients to hold open (above ~5,000 they are spread over 127.0.0.x source addresses).")
@click.option("--interval", default=1.0, show_default=True, type=click.FloatRange(min=0.01),
              help="Seconds between each client's heartbeats (asked for in HELLO).")
@click.option("--silent", default=0, show_default=True, type=click.IntRange(min=0),
              help="How many clients fall silent at the same moment, to be timed out.")
@click.option("--server-timeout", type=click.FloatRange(min=0.01), default=None,
              help="Timeout of a server that does not announce one (--kind seed), in seconds.")
@click.option("--settle", type=click.FloatRange(min=0), default=None,
              help="Seconds of beating before measuring (default: 2 intervals, at least 2 s).")
@click.option("--measure", default=5.0, show_default=True, type=click.FloatRange(min=0.5),
              help="Seconds over which the server's CPU is measured.")
@_common
def hold_cmd(clients: int, interval: float, silent: int, server_timeout: float | None, settle: float | None,
             measure: float, host: str, port: int, spawn: bool, server_args: tuple[str, ...], server_loop: str,
             server_pid: int | None, kind: str, loop_kind: str, as_json: bool) -> None:
    """Hold N clients beating; silence M at once; report timeout lateness, false timeouts,
    and the server's CPU and memory."""
    if silent > clients:
        fail(_("--silent cannot exceed --clients"), 2)
    k = Kind(kind)
    if k is Kind.SEED and server_timeout is None and silent:
        fail(_("--kind seed: give the server's threshold with --server-timeout (it does not announce one)"), 2)
    if spawn and k is not Kind.TCPULSE:
        fail(_("--spawn starts a tcpulse server; start the other server yourself and pass --port/--server-pid"), 2)
    base = ["--heartbeat-interval", repr(interval), "--heartbeat-timeout", repr(2 * interval),
            "--min-heartbeat-interval", repr(min(0.1, interval)), "--status-every", "0"]
    srv, port, pid = _start(spawn, server_args, server_loop, host, port, server_pid, base)
    try:
        with _progress(not as_json) as progress:
            loop_name = _loop_name(loop_kind)

            def go() -> Coroutine[Any, Any, HoldResult]:
                return hold(host, port, clients, interval, silent, kind=k, server_pid=pid,
                            server_timeout=server_timeout, settle=settle, measure=measure, progress=progress,
                            loop_name=loop_name)
            res, _loop = _run(go, loop_kind)
    except (OSError, ConnectionError) as e:
        fail(_connect_hint(e, host, port))
    finally:
        if srv is not None:
            srv.stop()
    if res.connected == 0:
        fail(_connect_hint(ConnectionError(res.connect_errors[0] if res.connect_errors else "?"), host, port))
    if as_json:
        click.echo(json.dumps(res.as_dict()))
        return
    lat = res.lateness_ms
    rows = [
        ("server", f"{res.kind} on {host}:{port}" + (f" (PID {pid})" if pid else "")),
        ("clients connected", f"{res.connected:,} of {res.clients:,} over {res.source_addresses} source address(es)"),
        ("interval / timeout", f"{res.interval:g} s / {res.timeout:g} s"),
        ("silenced at once", f"{res.silent:,}"),
        ("  timed out", f"{res.timed_out:,}"),
        ("  not timed out by the end", f"{res.missed:,}"),
        ("  lateness p50 / p99 / max",
         "-" if not lat else f"{lat['p50']:.1f} / {lat['p99']:.1f} / {lat['max']:.1f} ms"),
        ("  early (before the deadline)", f"{res.early:,}"),
        ("false timeouts (beating clients)", f"{res.false_timeouts:,}"),
        ("other closes", f"{res.other_closes:,}"),
        ("server CPU while beating", "-" if res.server_cpu is None else f"{res.server_cpu:.1%} of a core"),
        ("server memory", "-" if res.server_rss is None else
         f"{_fmt_bytes(res.server_rss)} ({_fmt_bytes(res.rss_per_client)} per client)"),
        ("generator CPU / worst beat delay", f"{res.generator_cpu:.1%} / {res.ticker_late_ms:.1f} ms"),
    ]
    if res.connect_errors:
        rows.append(("connect errors", "; ".join(res.connect_errors)))
    _table(f"tcpulse bench hold ({res.loop} generator, {res.duration:g} s)", rows)


@bench.command("ingest")
@click.option("--clients", "-n", default=50, show_default=True, type=click.IntRange(1, 100_000))
@click.option("--messages", "-m", default=20000, show_default=True, type=click.IntRange(min=1),
              help="Messages per client.")
@click.option("--size", default=64, show_default=True, type=click.IntRange(0, 1 << 20), help="Payload bytes.")
@click.option("--seq", is_flag=True, help="Number the messages (HELLO with a session) and wait for the last ACK.")
@_common
def ingest_cmd(clients: int, messages: int, size: int, seq: bool, host: str, port: int, spawn: bool,
               server_args: tuple[str, ...], server_loop: str, server_pid: int | None, kind: str, loop_kind: str,
               as_json: bool) -> None:
    """Push messages from K clients as fast as the server takes them; report messages per second
    to a PING barrier (or to the last ACK with --seq)."""
    k = Kind(kind)
    if seq and k is not Kind.TCPULSE:
        fail(_("--seq needs a tcpulse server (numbered messages are acknowledged)"), 2)
    if spawn and k is not Kind.TCPULSE:
        fail(_("--spawn starts a tcpulse server; start the other server yourself and pass --port/--server-pid"), 2)
    srv, port, pid = _start(spawn, server_args, server_loop, host, port, server_pid, ["--status-every", "0"])
    try:
        with _progress(not as_json) as progress:
            loop_name = _loop_name(loop_kind)

            def go() -> Coroutine[Any, Any, IngestResult]:
                return ingest(host, port, clients, messages, size, seq=seq, kind=k, server_pid=pid,
                              progress=progress, loop_name=loop_name)
            res, _loop = _run(go, loop_kind)
    except (OSError, ConnectionError) as e:
        fail(_connect_hint(e, host, port))
    except TimeoutError:
        fail(_("the server stopped answering before the barrier (120 s): is it overloaded or stuck?"))
    finally:
        if srv is not None:
            srv.stop()
    if as_json:
        click.echo(json.dumps(res.as_dict()))
        return
    rows = [
        ("server", f"{res.kind} on {host}:{port}" + (f" (PID {pid})" if pid else "")),
        ("clients", f"{res.connected} of {res.clients}"),
        ("messages", f"{res.messages:,} x {res.size} B per client" + (", numbered" if seq else "")),
        ("barrier", "last ACK" if seq else "PING/PONG"),
        ("elapsed", f"{res.elapsed:.3f} s"),
        ("rate", f"{res.rate:,.0f} msg/s ({res.mib_per_s:.1f} MiB/s)"),
        ("server CPU", "-" if res.server_cpu is None or math.isnan(res.server_cpu)
         else f"{res.server_cpu:.0%} of a core"),
        ("generator CPU", f"{res.generator_cpu:.0%} of a core"),
    ]
    _table(f"tcpulse bench ingest ({res.loop} generator)", rows)


def _loop_name(loop_kind: str) -> str:
    if loop_kind == "asyncio":
        return "asyncio"
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"

