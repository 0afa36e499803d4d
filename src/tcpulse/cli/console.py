"""The server's console output: a subscriber that turns server events into log lines.

Text lines are timestamped like the original exercise (`[2025-04-10 15:32:44] ...`); with
`json=True` every event is one JSON object per line (README, "The JSON log", lists the events).

Lines go out through a `LineSink` (output.py): never a blocking write on the event loop, one
write per loop iteration, and a bounded buffer whose overflow is dropped, counted and reported.

The status table: piped or redirected, every `--status-every` seconds in the original exercise's
style (a log that a program reads keeps its rhythm).  On a terminal, a person reads the events as
they scroll, so the table is printed only when it changed: a client came, went, or changed state
(the seconds since each was last heard do not count), with at most `TERMINAL_ROWS` rows (suspect
ones first); an idle server prints nothing.  A table pinned below the scrolling events (rich's
Live) was the other choice; it is not taken because it redraws with cursor moves written beside
the log, and the log may drop lines when the terminal does not keep up (output.py), which would
leave the screen garbled; printing only what changed stays correct whatever is dropped.
Messages come one batch per read (`MessagesReceived`) and are formatted in one tight loop with
the timestamp and the translated templates made once: printing every message costs little.
"""

from __future__ import annotations

import io
import json
import sys
import time
from datetime import UTC, datetime
from json.encoder import encode_basestring  # type: ignore[attr-defined]
from typing import IO, Any

from tcpulse.cli.common import error_text
from tcpulse.cli.output import LineSink
from tcpulse.i18n import _
from tcpulse.i18n.display import escape
from tcpulse.server.events import (
    Connected,
    Disconnected,
    DisconnectReason,
    HandshakeFailed,
    HeartbeatReceived,
    HelloReceived,
    Listening,
    MessageReceived,
    MessagesReceived,
    ProtocolErrorOccurred,
    Recovered,
    ServerEvent,
    Status,
    Suspect,
    TimedOut,
    Warning_,
)

__all__ = ["TERMINAL_ROWS", "ConsoleLog"]

#: Rows of the status table on a terminal at most (`tcpulse status` and the dashboard show all).
TERMINAL_ROWS = 30


def _fmt_time(t: float) -> str:
    return datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S")


def _reason_text(reason: DisconnectReason, detail: str | None) -> str:
    if reason is DisconnectReason.BYE:
        return _("BYE ({reason})").format(reason=escape(detail)) if detail else _("BYE")
    return {
        DisconnectReason.EOF: _("EOF without BYE"),
        DisconnectReason.RESET: _("connection reset"),
        DisconnectReason.TIMEOUT: _("heartbeat timeout"),
        DisconnectReason.REPLACED: _("replaced by a newer connection with the same id"),
        DisconnectReason.ERROR: _("protocol error {detail}").format(detail=detail or ""),
        DisconnectReason.SHUTDOWN: _("server shutdown"),
        DisconnectReason.SLOW_CONSUMER: _("slow consumer (it does not read what the server sends)"),
        DisconnectReason.REFUSED: _("refused: {detail}").format(detail=detail or ""),
    }.get(reason, reason.value)


#: What one message line takes, roughly (for deciding that a batch would not fit the sink).
_LINE_ESTIMATE = 100
#: Bytes a payload must not hold to be shown as it is: control characters, DEL, and the
#: backslash (escape() shows each as an escape); and for JSON, what a JSON string escapes.
_TEXT_UNSAFE = bytes(range(0x20)) + b"\x7f\\"
_JSON_UNSAFE = bytes(range(0x20)) + b'"\\'


#: Pieces of a JSON message line around a plain payload (_json_batch).
_SIZES = [b"%d" % n for n in range(4096)]
_TEXT_KEY = b',"text":"'
_LINE_END = b'"}\n'


def _bytes_format(template: str, field: str) -> bytes:
    # A str.format template with one field, as a bytes %-format (the field a %s).
    return template.replace("%", "%%").replace("{" + field + "}", "%s").encode()


def _bytes_format_seq(template: str) -> tuple[bytes, bool]:
    # A template with {seq} and {text}, as a bytes %-format; True when {seq} comes first (a
    # translation may put them in either order).
    seq_first = template.index("{seq}") < template.index("{text}")
    return template.replace("%", "%%").replace("{seq}", "%d").replace("{text}", "%s").encode(), seq_first


class _Stamps:
    """Timestamps made once per second, not once per line (strftime costs more than the line)."""

    __slots__ = ("_iso", "_local", "_sec")

    def __init__(self) -> None:
        self._sec = -1
        self._local = ""
        self._iso = ""

    def _at(self, t: float) -> int:
        sec = int(t)
        if sec != self._sec:
            self._sec = sec
            self._local = datetime.fromtimestamp(sec).strftime("%Y-%m-%d %H:%M:%S")
            self._iso = datetime.fromtimestamp(sec, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        return sec

    def local(self) -> str:
        """Local time to the second, as the original exercise printed it."""
        self._at(time.time())
        return self._local

    def iso(self) -> str:
        """ISO 8601, UTC, milliseconds: `2025-04-10T07:32:44.123Z`."""
        t = time.time()
        sec = self._at(t)
        return f"{self._iso}.{min(999, int((t - sec) * 1000)):03d}Z"


class ConsoleLog:
    """Print server events.  `level`: "quiet" (warnings and errors), "normal", "verbose"
    (also every heartbeat).  Subscribe it with `log.subscribe_to(server)`.

    `out` with a file descriptor (stdout) is written through a `LineSink`, so a reader that does
    not keep up never blocks the server; call `close()` before exiting.  `dropped` counts the
    lines lost to such a reader.
    """

    def __init__(self, out: IO[str] | None = None, *, json_format: bool = False,
                 level: str = "normal", rich_tables: bool | None = None, changes_only: bool | None = None,
                 max_buffered: int | None = None) -> None:
        self.out = out or sys.stdout
        self.json = json_format
        self.level = level
        self.wants_messages = level != "quiet"
        self.wants_heartbeats = level == "verbose"
        terminal = not json_format and self.out.isatty()
        self.rich_tables = terminal if rich_tables is None else rich_tables
        #: Print the status table only when it changed (on a terminal: see the module docstring).
        self.changes_only = terminal if changes_only is None else changes_only
        self._shown: tuple[tuple[str, str, str], ...] = ()  # what the last table printed showed
        self._stamps = _Stamps()
        kw = {} if max_buffered is None else {"max_bytes": max_buffered}
        self.sink = LineSink(self.out, notice=self._drop_notice, **kw)
        # The language is chosen before the log is made: translate the message lines once.
        self._t_msg = _("Message from {client}: {text}")
        self._t_msg_seq = _("Message #{seq} from {client}: {text}")
        self._t_dup = _("Duplicate message #{seq} from {client} (already stored, acknowledged again)")
        self._t_binary = _("<{size} bytes, not UTF-8>")

    @property
    def dropped(self) -> int:
        """Lines dropped so far because the output was not read fast enough."""
        return self.sink.dropped

    def subscribe_to(self, server: Any) -> None:
        """Subscribe to `server`'s events, with what this log shows (messages in batches)."""
        server.subscribe(self, messages=self.wants_messages, heartbeats=self.wants_heartbeats, batch_messages=True)

    def write_line(self, text: str) -> None:
        """One line of the server's own (not an event), e.g. the capacity line: timestamped in
        text mode, as is in JSON mode (the caller gives a JSON object then)."""
        self.sink.write(text + "\n" if self.json else f"[{self._stamps.local()}] {text}\n")

    def close(self, timeout: float = 2.0) -> None:
        """Write what is queued (waiting up to `timeout` s for a slow reader)."""
        self.sink.close(timeout)

    def _drop_notice(self, lines: int, seconds: float) -> str:
        text = _("{n} log lines were dropped: the output was not read for {seconds:.1f} s").format(
            n=lines, seconds=seconds)
        if self.json:
            return json.dumps({"ts": self._stamps.iso(), "event": "warning", "text": text, "dropped_lines": lines},
                              ensure_ascii=False, separators=(",", ":")) + "\n"
        return f"[{self._stamps.local()}] " + _("Warning: {text}").format(text=text) + "\n"

    def __call__(self, ev: ServerEvent) -> None:
        if type(ev) is MessagesReceived:
            if self.json:
                self._json_batch(ev)
            else:
                self._text_batch(ev)
            return
        if self.json:
            obj = self._json(ev)
            if obj is not None:
                self.sink.write(json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n")
            return
        if isinstance(ev, Status):
            self._status(ev)
            return
        line = self._text(ev)
        if line is not None:
            self.sink.write(f"[{self._stamps.local()}] {line}\n")

    # ---------------------------------------------------------------- messages, the hot path

    def _body(self, payload: bytes) -> str:
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError:
            return self._t_binary.format(size=len(payload))
        # Most payloads need no escaping: two C-speed checks instead of a translate().
        if text.isprintable() and "\\" not in text:
            return text
        return escape(text)

    def _text_batch(self, ev: MessagesReceived) -> None:
        msgs = ev.messages
        if self.sink.would_drop(len(msgs) * _LINE_ESTIMATE):
            self.sink.drop(len(msgs))  # the reader is behind: do not even make the lines
            return
        name = ev.client.name
        prefix = f"[{self._stamps.local()}] "
        dups = ev.duplicates
        # The client's name and the timestamp are the same for the whole batch: each line is one
        # bytes %-format of the translated template, and a payload of plain printable ASCII (the
        # usual case) goes in as it is, never decoded; anything else takes the str path.
        t_msg = prefix + self._t_msg.replace("{client}", name) + "\n"
        payloads = [m.payload for m in msgs]
        joined = b"".join(payloads)
        plain = joined.isascii() and len(joined.translate(None, _TEXT_UNSAFE)) == len(joined)
        if plain and not dups and all(m.seq is None for m in msgs):
            # The usual batch: unnumbered, plain ASCII. Every line is the same text around its
            # payload: one join makes them all.
            head, tail = (x.encode() for x in t_msg.split("{text}", 1))
            self.sink.write(head + (tail + head).join(payloads) + tail, len(msgs))
            return
        f_msg = _bytes_format(t_msg, "text")
        f_seq, seq_first = _bytes_format_seq(prefix + self._t_msg_seq.replace("{client}", name) + "\n")
        out: list[bytes] = []
        append = out.append
        for i, m in enumerate(msgs):
            p = m.payload
            seq = m.seq
            if dups and i in dups:
                append((prefix + self._t_dup.format(seq=seq, client=name) + "\n").encode())
                continue
            if not plain and not (p.isascii() and len(p.translate(None, _TEXT_UNSAFE)) == len(p)):
                p = self._body(p).encode()
            if seq is None:
                append(f_msg % p)
            else:
                append(f_seq % ((seq, p) if seq_first else (p, seq)))
        self.sink.write(b"".join(out), len(msgs))

    def _json_batch(self, ev: MessagesReceived) -> None:
        msgs = ev.messages
        if self.sink.would_drop(len(msgs) * _LINE_ESTIMATE):
            self.sink.drop(len(msgs))
            return
        c = ev.client
        head = (f'{{"ts":"{self._stamps.iso()}","event":"message","client":{encode_basestring(c.name)},'
                f'"addr":{encode_basestring(c.addr)},"size":').encode().replace(b"%", b"%%")
        plain_seq = head + b'%d,"seq":%d,"text":"%s"}\n'
        head = head.replace(b"%%", b"%")
        dups = ev.duplicates
        joined = b"".join([m.payload for m in msgs])
        all_plain = joined.isascii() and len(joined.translate(None, _JSON_UNSAFE)) == len(joined)
        out: list[bytes] = []
        append, extend = out.append, out.extend
        for i, m in enumerate(msgs):
            p = m.payload
            seq = m.seq
            if not (dups and i in dups) and (all_plain or (p.isascii()
                                                           and len(p.translate(None, _JSON_UNSAFE)) == len(p))):
                # Plain ASCII with nothing JSON escapes: the payload is its own JSON string.
                if seq is None:
                    n = len(p)
                    extend((head, _SIZES[n] if n < 4096 else b"%d" % n, _TEXT_KEY, p, _LINE_END))
                else:
                    append(plain_seq % (len(p), seq, p))
                continue
            line = head.decode() + str(len(p))
            if seq is not None:
                line += f',"seq":{seq}'
                if dups and i in dups:
                    line += ',"duplicate":true'
            try:
                line += ',"text":' + encode_basestring(p.decode("utf-8"))
            except UnicodeDecodeError:
                pass
            append((line + "}\n").encode())
        self.sink.write(b"".join(out), len(msgs))

    # ---------------------------------------------------------------- text

    def _text(self, ev: ServerEvent) -> str | None:
        quiet = self.level == "quiet"
        if isinstance(ev, TimedOut):
            line = _("Disconnected from {client} (heartbeat timeout): silent for {silent:.2f} s, "
                     "noticed {late:.1f} ms after the deadline").format(
                client=ev.client.name, silent=ev.silent_for, late=ev.late_by * 1000)
            # phi is a symbol, not a word: the same in every language (--detector phi).
            return line if ev.phi is None else f"{line} (phi {ev.phi:.1f})"
        if isinstance(ev, Suspect):
            return _("Client {client} is suspect: silent for {silent:.1f} s").format(
                client=ev.client.name, silent=ev.silent_for)
        if isinstance(ev, ProtocolErrorOccurred):
            return _("Protocol error from {client} ({addr}): ERR {code} {text}").format(
                client=ev.client.name, addr=ev.client.addr, code=ev.code, text=escape(ev.text))
        if isinstance(ev, HandshakeFailed):
            line = _("TLS handshake from {addr} failed: {error}").format(addr=ev.addr, error=escape(ev.error))
            if ev.suppressed:
                line += " " + _("({n} more failed handshakes not shown)").format(n=ev.suppressed)
            return line
        if isinstance(ev, Warning_):
            text = ev.text if ev.error is None else ev.text.replace(str(ev.error), error_text(ev.error), 1)
            return _("Warning: {text}").format(text=text)
        if isinstance(ev, Listening):
            return (_("Server started, listening on {host}:{port}").format(host=ev.host, port=ev.port)
                    + "\n" + f"[{self._stamps.local()}] "
                    + _("Heartbeat threshold: {timeout:g} s (interval {interval:g} s)").format(
                        timeout=ev.heartbeat_timeout, interval=ev.heartbeat_interval)
                    + ("" if ev.durable else " " + _("(no store: nothing is kept)")))
        if quiet:
            return None
        if isinstance(ev, Connected):
            return _("New client connection: {addr}").format(addr=ev.client.addr)
        if isinstance(ev, HelloReceived):
            s = _("HELLO from {id} ({addr}): interval {interval:g} s, timeout {timeout:g} s").format(
                id=ev.client.id, addr=ev.client.addr, interval=ev.heartbeat_interval,
                timeout=ev.heartbeat_timeout)
            if ev.session is not None:
                s += ", " + _("session {session}, acked {acked}").format(session=ev.session, acked=ev.acked)
            if ev.replaced:
                s += ", " + _("replacing its older connection")
            return s
        if isinstance(ev, MessageReceived):
            return self._message(ev)
        if isinstance(ev, HeartbeatReceived):
            return _("Heartbeat from {client}").format(client=ev.client.name) if self.wants_heartbeats else None
        if isinstance(ev, Recovered):
            return _("Client {client} is alive again").format(client=ev.client.name)
        if isinstance(ev, Disconnected):
            if ev.reason is DisconnectReason.TIMEOUT:
                return None  # the TimedOut line said it already
            if ev.reason in (DisconnectReason.EOF, DisconnectReason.RESET):
                # Gone without BYE: the original exercise's "客户端 … 异常断开" line.
                return _("Client {client} ({addr}) disconnected abnormally: {reason}").format(
                    client=ev.client.name, addr=ev.client.addr, reason=_reason_text(ev.reason, ev.detail))
            return _("Connection closed: {client} ({addr}): {reason}").format(
                client=ev.client.name, addr=ev.client.addr, reason=_reason_text(ev.reason, ev.detail))
        return None

    def _message(self, ev: MessageReceived) -> str:
        who = ev.client.name
        if ev.duplicate:
            return self._t_dup.format(seq=ev.seq, client=who)
        body = self._body(ev.payload)
        if ev.seq is not None:
            return self._t_msg_seq.format(seq=ev.seq, client=who, text=body)
        return self._t_msg.format(client=who, text=body)

    def _status(self, ev: Status) -> None:
        if self.level == "quiet":
            return
        rows = ev.rows
        hidden = 0
        if self.changes_only:
            shown = tuple((r["client"], r["addr"], r["state"]) for r in rows)
            if shown == self._shown:
                return  # nothing came, went or changed state: the last table still holds
            self._shown = shown
            if len(rows) > TERMINAL_ROWS:
                rows = sorted(rows, key=lambda r: r["state"] == "alive")[:TERMINAL_ROWS]
                hidden = len(ev.rows) - TERMINAL_ROWS
        title = _("Current client connections:")
        alive, suspect = _("alive"), _("suspect")
        more = _("{n} more not shown: see 'tcpulse status' or the dashboard (serve --admin)").format(n=hidden)
        # --detector phi: each client's suspicion level (phi is a symbol: not translated).
        with_phi = any(r.get("phi") is not None for r in rows)
        if self.rich_tables:
            from rich.console import Console
            from rich.table import Table
            table = Table(title=f"[{self._stamps.local()}] {title} {len(ev.rows)}",
                          caption=more if hidden else None)
            # "last heard" is what proves life: any frame (a PING, a message, a HEARTBEAT);
            # HEARTBEAT frames are only what a client sends when it has nothing else to say.
            for col in (_("client"), _("address"), _("connected at"), _("last heard (any frame)"),
                        _("HEARTBEAT frames"), _("messages"), _("state"), _("RTT")):
                table.add_column(col)
            if with_phi:
                table.add_column("phi", justify="right")
            for r in rows:
                st = alive if r["state"] == "alive" else suspect
                cells = [r["client"], r["addr"], _fmt_time(r["connected_at"]),
                         f"{r['last_heard_ago']:.1f}s", str(r["heartbeats"]), str(r["messages"]),
                         f"[green]{st}[/]" if r["state"] == "alive" else f"[yellow]{st}[/]",
                         "-" if r["rtt"] is None else f"{r['rtt'] * 1000:.2f} ms"]
                if with_phi:
                    cells.append("-" if r.get("phi") is None else f"{r['phi']:.1f}")
                table.add_row(*cells)
            buf = io.StringIO()
            Console(file=buf, force_terminal=True, width=Console(file=self.out).width).print(table)
            self.sink.write(buf.getvalue())
            return
        lines = ["=" * 50, f"[{self._stamps.local()}] {title} {len(ev.rows)}"]
        for r in rows:
            st = alive if r["state"] == "alive" else suspect
            rtt = "-" if r["rtt"] is None else f"{r['rtt'] * 1000:.2f} ms"
            lines.append(_("Client {client} | address {addr} | connected at {at} | last heard {ago:.1f} s ago"
                           " | HEARTBEAT frames {hb} | messages {msgs} | state: {state} | RTT {rtt}").format(
                client=r["client"], addr=r["addr"], at=_fmt_time(r["connected_at"]), ago=r["last_heard_ago"],
                hb=r["heartbeats"], msgs=r["messages"], state=st, rtt=rtt)
                + ("" if r.get("phi") is None else f" | phi {r['phi']:.1f}"))
        if hidden:
            lines.append(more)
        self.sink.write("\n".join(lines) + "\n")

    # ---------------------------------------------------------------- json

    def _json(self, ev: ServerEvent) -> dict[str, Any] | None:
        quiet = self.level == "quiet"
        d: dict[str, Any] = {"ts": self._stamps.iso()}
        client = getattr(ev, "client", None)

        def who() -> None:
            if client is not None:
                d["client"] = client.name
                d["addr"] = client.addr
        if isinstance(ev, Listening):
            d.update(event="listening", host=ev.host, port=ev.port, heartbeat_interval=ev.heartbeat_interval,
                     heartbeat_timeout=ev.heartbeat_timeout, durable=ev.durable)
        elif isinstance(ev, TimedOut):
            d["event"] = "timeout"
            who()
            d.update(silent_for=round(ev.silent_for, 6), late_by=round(ev.late_by, 6))
            if ev.phi is not None:
                d["phi"] = round(ev.phi, 3)
        elif isinstance(ev, Suspect):
            d["event"] = "suspect"
            who()
            d["silent_for"] = round(ev.silent_for, 6)
        elif isinstance(ev, ProtocolErrorOccurred):
            d["event"] = "error"
            who()
            d.update(code=ev.code, text=ev.text)
        elif isinstance(ev, Warning_):
            d.update(event="warning", text=ev.text, **ev.fields)
        elif isinstance(ev, HandshakeFailed):
            d.update(event="tls-failed", addr=ev.addr, error=ev.error)
            if ev.suppressed:
                d["suppressed"] = ev.suppressed
        elif quiet:
            return None
        elif isinstance(ev, Connected):
            d["event"] = "connect"
            who()
        elif isinstance(ev, HelloReceived):
            d["event"] = "hello"
            who()
            d.update(id=ev.client.id, heartbeat_interval=ev.heartbeat_interval,
                     heartbeat_timeout=ev.heartbeat_timeout, replaced=ev.replaced)
            if ev.session is not None:
                d.update(session=ev.session, acked=ev.acked)
        elif isinstance(ev, MessageReceived):
            d["event"] = "message"
            who()
            d["size"] = len(ev.payload)
            if ev.seq is not None:
                d["seq"] = ev.seq
            if ev.duplicate:
                d["duplicate"] = True
            try:
                d["text"] = ev.payload.decode("utf-8")
            except UnicodeDecodeError:
                pass
        elif isinstance(ev, HeartbeatReceived):
            if not self.wants_heartbeats:
                return None
            d["event"] = "heartbeat"
            who()
        elif isinstance(ev, Recovered):
            d["event"] = "alive"
            who()
        elif isinstance(ev, Disconnected):
            d["event"] = "disconnect"
            who()
            d["reason"] = ev.reason.value
            if ev.detail:
                d["detail"] = ev.detail
        elif isinstance(ev, Status):
            d.update(event="status", clients=ev.rows)
        else:
            return None
        return d
