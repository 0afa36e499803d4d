"""`tcpulse history` and `tcpulse messages`: read what a server's store kept.

The rows come from `tcpulse.store.queries` (read-only, so these can run beside a live server);
this module holds the options, reads `--since`, and prints: tables by default, one JSON object
per line with `--json`.
"""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

import click

from tcpulse.cli.common import error_text, fail
from tcpulse.i18n import _
from tcpulse.i18n.display import escape, iso_ts
from tcpulse.store.base import StoreOpenError
from tcpulse.store.dsn import redact
from tcpulse.store.queries import read_connections, read_messages

__all__ = ["history", "messages", "parse_since"]

_Row = TypeVar("_Row")


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(text: str, now: float | None = None) -> float:
    """`30s`, `10m`, `2h`, `7d`, `1w` ago, or a local date/time such as `2025-04-10` or
    `2025-04-10T15:30` (or with a UTC offset).  Returns seconds since the epoch; raises ValueError
    with the line to show (the commands pass it to `fail`, not to click's usage output)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", text)
    if m:
        return (time.time() if now is None else now) - float(m.group(1)) * _UNITS[m.group(2)]
    try:
        return datetime.fromisoformat(text.strip().replace(" ", "T")).timestamp()
    except ValueError:
        raise ValueError(_("--since {value} is neither a duration (30s, 10m, 2h, 7d) nor a date "
                           "(2025-04-10 or 2025-04-10T15:30): give one of these").format(value=repr(text))) from None


def _rows(read: Callable[..., list[_Row]], db: str, client_id: str | None, since: str | None,
          limit: int) -> list[_Row]:
    """`read(db, ...)` with the filters; every problem is one line (a bad --since: before the db)."""
    at = None
    if since is not None:
        try:
            at = parse_since(since)
        except ValueError as e:
            fail(str(e), 2)
    try:
        return read(db, client_id=client_id, since=at, limit=limit)
    except StoreOpenError as e:  # not a tcpulse database, from a newer tcpulse, ...: one line
        fail(error_text(e))


def _when(t: float | None) -> str:
    return "-" if t is None else datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def _print_table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    from rich.console import Console
    from rich.table import Table
    table = Table(title=title)
    for col in columns:
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(*r)
    import sys
    # Piped into a file or another program: do not squeeze the table into 80 columns.
    Console(highlight=False, width=None if sys.stdout.isatty() else 200).print(table)


db_option = click.option("--db", default="tcpulse.db", show_default=True, metavar="PATH|URL",
                         help="The database `tcpulse serve --db` wrote (a file, or a postgresql:// URL).")
client_option = click.option("--client", "client_id", default=None, metavar="ID", help="Only this client id.")
since_option = click.option("--since", default=None, metavar="TIME",
                            help="Only since then: 30s, 10m, 2h, 7d ago, or a date like 2025-04-10T15:30.")
limit_option = click.option("--limit", default=50, show_default=True, type=click.IntRange(min=1),
                            help="Show at most this many (the most recent).")
json_option = click.option("--json", "as_json", is_flag=True, help="One JSON object per line instead of a table.")


def query_options(f: Callable[..., None]) -> Callable[..., None]:
    """The options `history` and `messages` share: which database, which rows, which format."""
    for option in (json_option, limit_option, since_option, client_option, db_option):
        f = option(f)
    return f


@click.command()
@query_options
def history(db: str, client_id: str | None, since: str | None, limit: int, as_json: bool) -> None:
    """List connections and how they ended (timeouts, reasons, durations)."""
    rows = _rows(read_connections, db, client_id, since, limit)
    if as_json:
        for r in rows:
            dur = r.duration
            obj: dict[str, Any] = {
                "id": r.id, "client": r.client_id, "addr": r.addr, "connected_at": iso_ts(r.connected_at),
                "ended_at": None if r.ended_at is None else iso_ts(r.ended_at),
                "duration": None if dur is None else round(dur, 3),
                "end_reason": r.end_reason, "detail": r.detail, "heartbeats": r.heartbeats,
                "messages": r.messages, "rtt": r.rtt, "timeout": None,
            }
            if r.timeout is not None:
                obj["timeout"] = {"silent_for": round(r.timeout.silent_for, 6), "late_by": round(r.timeout.late_by, 6)}
            click.echo(json.dumps(obj, ensure_ascii=False, separators=(",", ":")))
        return
    table: list[list[str]] = []
    for r in rows:
        end = r.end_reason or (_("open") if r.ended_at is None else "?")
        if r.timeout is not None:
            end += " " + _("(silent {silent:.2f} s, noticed {late:.1f} ms late)").format(
                silent=r.timeout.silent_for, late=r.timeout.late_by * 1000)
        elif r.detail:
            end += f" ({escape(r.detail)})"
        table.append([str(r.id), escape(r.client_id or "-"), r.addr, _when(r.connected_at), _when(r.ended_at),
                      _duration(r.duration), end, str(r.heartbeats), str(r.messages),
                      "-" if r.rtt is None else f"{r.rtt * 1000:.1f} ms"])
    _print_table(_("Connections in {db}: {n}").format(db=redact(db), n=len(rows)),
                 ["#", _("client"), _("address"), _("connected at"), _("ended at"), _("duration"),
                  _("end"), _("heartbeats"), _("messages"), _("RTT")], table)


@click.command()
@query_options
def messages(db: str, client_id: str | None, since: str | None, limit: int, as_json: bool) -> None:
    """List stored messages (client, session, seq, when, payload)."""
    rows = _rows(read_messages, db, client_id, since, limit)
    if as_json:
        for r in rows:
            obj: dict[str, Any] = {"id": r.id, "client": r.client_id, "session": r.session, "seq": r.seq,
                                   "received_at": iso_ts(r.received_at), "size": len(r.payload)}
            try:
                obj["text"] = r.payload.decode("utf-8")
            except UnicodeDecodeError:
                obj["base64"] = base64.b64encode(r.payload).decode("ascii")
            click.echo(json.dumps(obj, ensure_ascii=False, separators=(",", ":")))
        return
    table: list[list[str]] = []
    for r in rows:
        try:
            text = escape(r.payload.decode("utf-8"))
        except UnicodeDecodeError:
            text = _("<{size} bytes, not UTF-8>").format(size=len(r.payload))
        if len(text) > 80:
            text = text[:79] + "…"
        table.append([str(r.id), escape(r.client_id), r.session or "-", "-" if r.seq is None else str(r.seq),
                      _when(r.received_at), str(len(r.payload)), text])
    _print_table(_("Messages in {db}: {n}").format(db=redact(db), n=len(rows)),
                 ["#", _("client"), _("session"), _("seq"), _("received at"), _("bytes"), _("payload")], table)
