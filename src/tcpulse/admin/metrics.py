"""What the admin endpoint counts: a per-server Prometheus registry and the figures behind it.

Nothing here runs per message or per heartbeat.  Counters of traffic are read at scrape time
from `Server.totals` (connections that ended) plus the open clients' own counters, so they cost
the server nothing until someone asks; only rare events (an RTT measured, a timeout, a protocol
error, the end of a connection) are observed as they happen, from the server's event stream.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections import deque
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from tcpulse.policy.liveness import percentile
from tcpulse.server.events import Disconnected, ProtocolErrorOccurred, RttMeasured, ServerEvent, TimedOut
from tcpulse.version import __version__

if TYPE_CHECKING:
    from tcpulse.server.server import Server

__all__ = ["AdminStats", "live_totals"]

#: Round trips on loopback are tens of microseconds; across a continent, a few hundred ms.
RTT_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
#: PROTOCOL.md, "Liveness": tcpulse aims for BYE within 50 ms of the deadline; the buckets
#: resolve that target finely and still show a badly overloaded loop.
LATENESS_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 3.0)
#: How many recent timeouts the p50/p99/max of `/api/server` are taken over.
LATENESS_WINDOW = 10_000


def live_totals(server: Server) -> dict[str, int]:
    """`Server.totals` plus what the open connections have counted so far.  O(open clients)."""
    t = dict(server.totals)
    msgs = hbs = bin_ = bout = 0
    for c in server.clients:
        msgs += c.messages
        hbs += c.heartbeats
        bin_ += c.bytes_in
        bout += c.bytes_out
    t["messages"] = t.get("messages", 0) + msgs
    t["heartbeats"] = t.get("heartbeats", 0) + hbs
    t["bytes_in"] = t.get("bytes_in", 0) + bin_
    t["bytes_out"] = t.get("bytes_out", 0) + bout
    return t


def state_counts(server: Server) -> dict[str, int]:
    """Open connections by liveness state (`dead`: closed, lingering until the socket goes)."""
    counts = {"alive": 0, "suspect": 0, "dead": 0}
    for c in server.clients:
        counts[c.state.value] += 1
    return counts


class AdminStats:
    """Subscribe `on_event` to the server (with `messages=False`); read `render()` for /metrics
    and `lateness()` / `errors` for /api/server."""

    def __init__(self, server: Server, *, log_dropped: Callable[[], int] | None = None,
                 http: Callable[[], dict[str, Any]] | None = None) -> None:
        self.server = server
        self._log_dropped = log_dropped
        #: `() -> dict` of the alerter's counters (`tcpulse.alerts.Alerter.stats`), when alerts are on.
        self.alerts: Callable[[], dict[str, Any]] | None = None
        #: The admin port's own figures (`AdminListener.figures()`), for its metrics.
        self.http = http or dict
        self.registry = CollectorRegistry(auto_describe=True)
        self.rtt = Histogram("tcpulse_rtt_seconds", "Round-trip time of the server's PING to a client",
                             buckets=RTT_BUCKETS, registry=self.registry)
        self.lateness = Histogram(
            "tcpulse_timeout_lateness_seconds",
            "How long after a client's deadline the server declared it dead (PROTOCOL.md: aim < 50 ms)",
            buckets=LATENESS_BUCKETS, registry=self.registry)
        self.errors: Tally[int] = Tally()
        #: Connections ended, by reason (`DisconnectReason` values).
        self.disconnects: Tally[str] = Tally()
        self._late: deque[float] = deque(maxlen=LATENESS_WINDOW)
        self.registry.register(_ServerCollector(self))

    def on_event(self, ev: ServerEvent) -> None:
        t = type(ev)
        if t is RttMeasured:
            assert isinstance(ev, RttMeasured)
            self.rtt.observe(ev.rtt)
        elif t is TimedOut:
            assert isinstance(ev, TimedOut)
            self.lateness.observe(ev.late_by)
            self._late.append(ev.late_by)
        elif t is ProtocolErrorOccurred:
            assert isinstance(ev, ProtocolErrorOccurred)
            self.errors[ev.code] += 1
        elif t is Disconnected:
            assert isinstance(ev, Disconnected)
            self.disconnects[ev.reason.value] += 1

    def log_dropped(self) -> int:
        """Lines of the console log dropped because its output was not read (0 without a console)."""
        return 0 if self._log_dropped is None else self._log_dropped()

    def memory(self) -> dict[str, int]:
        """Bytes the server holds for clients now, against their global budgets (0: off)."""
        g = self.server.guard
        return {"buffered_bytes": g.held_total, "max_buffered": g.max_buffered,
                "queued_bytes": g.recount_queued(), "max_queued": g.max_queued,
                "slow_consumers_shed": g.shed}

    def error_counts(self) -> dict[int, int]:
        """`ERR` frames sent, by code: those that ended or refused a connection (events) and the
        `429`s of dropped frames (counted by the server's guard, which sends them without an event)."""
        counts = dict(self.errors)
        dropped = self.server.guard.dropped_429
        if dropped:
            counts[429] = counts.get(429, 0) + dropped
        return dict(sorted(counts.items()))

    def lateness_summary(self) -> dict[str, Any]:
        """p50 / p99 / max of the last `LATENESS_WINDOW` timeouts' lateness, in milliseconds."""
        values = list(self._late)
        if not values:
            return {"count": 0, "p50_ms": None, "p99_ms": None, "max_ms": None}
        return {
            "count": len(values),
            "p50_ms": round(percentile(values, 50) * 1000, 3),
            "p99_ms": round(percentile(values, 99) * 1000, 3),
            "max_ms": round(max(values) * 1000, 3),
        }

    def render(self) -> bytes:
        """The Prometheus text exposition of this server's registry."""
        return generate_latest(self.registry)


class _ServerCollector(Collector):
    """Figures read from the server at scrape time (see the module docstring for why)."""

    def __init__(self, stats: AdminStats) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        srv = self.stats.server
        info = GaugeMetricFamily("tcpulse_server_info", "Version and id of this server",
                                 labels=["version", "server_id"])
        info.add_metric([__version__, srv.server_id], 1)
        yield info
        yield GaugeMetricFamily("tcpulse_start_time_seconds", "When the server started (Unix time)",
                                value=srv.started_at)
        yield GaugeMetricFamily("tcpulse_accepting", "1 while the server accepts connections",
                                value=1 if srv.accepting else 0)
        clients = GaugeMetricFamily("tcpulse_clients", "Open client connections by liveness state",
                                    labels=["state"])
        for state, n in state_counts(srv).items():
            clients.add_metric([state], n)
        yield clients
        t = live_totals(srv)
        for name, key, doc in (
            ("tcpulse_connections", "connections", "Client connections accepted"),
            ("tcpulse_messages_received", "messages", "MSG frames received from clients"),
            ("tcpulse_heartbeats_received", "heartbeats", "HEARTBEAT frames received from clients"),
            ("tcpulse_received_bytes", "bytes_in", "Bytes read from client connections"),
            ("tcpulse_sent_bytes", "bytes_out", "Bytes written to client connections"),
            ("tcpulse_timeouts", "timeouts", "Clients declared dead by the heartbeat timeout"),
        ):
            yield CounterMetricFamily(name, doc, value=t.get(key, 0))
        errors = CounterMetricFamily("tcpulse_protocol_errors", "ERR frames sent to clients, by code",
                                     labels=["code"])
        for code, n in self.stats.error_counts().items():
            errors.add_metric([str(code)], n)
        yield errors
        ends = CounterMetricFamily("tcpulse_disconnects", "Client connections ended, by reason",
                                   labels=["reason"])
        for reason, n in sorted(self.stats.disconnects.items()):
            ends.add_metric([reason], n)
        yield ends
        mem = self.stats.memory()
        yield GaugeMetricFamily("tcpulse_buffered_bytes",
                                "Bytes of partial frames held across all connections (budget: --max-buffered)",
                                value=mem["buffered_bytes"])
        if self.stats.alerts is not None:
            a = self.stats.alerts()
            for key, doc in (("sent", "Alerts delivered (webhook answered 2xx, command exited 0)"),
                             ("failed", "Alerts given up on after their retries"),
                             ("dropped", "Alerts dropped because their queue was full")):
                fam = CounterMetricFamily(f"tcpulse_alerts_{key}", doc, labels=["sink"])
                for sink in a["sinks"]:
                    fam.add_metric([sink["name"]], sink[key])
                yield fam
            queued = GaugeMetricFamily("tcpulse_alerts_queued", "Alerts waiting to be delivered", labels=["sink"])
            for sink in a["sinks"]:
                queued.add_metric([sink["name"]], sink["queued"])
            yield queued
        yield CounterMetricFamily("tcpulse_log_lines_dropped",
                                  "Console log lines dropped because the server's output was not read",
                                  value=self.stats.log_dropped())
        yield GaugeMetricFamily("tcpulse_queued_bytes",
                                "Bytes queued to clients, not yet taken by their sockets (budget: --max-queued)",
                                value=mem["queued_bytes"])
        http = self.stats.http()
        if http:
            yield GaugeMetricFamily("tcpulse_admin_connections",
                                    "Connections open to the admin endpoint (at most max_connections)",
                                    value=http["connections"])
            closed = CounterMetricFamily(
                "tcpulse_admin_connections_closed",
                "Admin connections the endpoint closed itself, by why: refused (at its cap), evicted (idle, "
                "to make room), timed_out (headers or idle), stalled (a dashboard that stopped reading)",
                labels=["why"])
            for why in ("refused", "evicted", "timed_out", "stalled"):
                closed.add_metric([why], http[why])
            yield closed
            yield CounterMetricFamily("tcpulse_admin_bad_requests",
                                      "Malformed or oversized requests to the admin endpoint (answered 400)",
                                      value=http["bad_requests"])
