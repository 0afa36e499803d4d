"""The `Alerter`: subscribes to a server, turns its events into alerts (`Rules`) and hands each to
every sink.  What it does in the server's event loop per event is a few dict operations and one
append per sink: nothing waits, nothing is written there.

    alerter = Alerter([WebhookSink(url, fmt="alertmanager")], on=DEFAULT_ALERT_ON, report=print)
    alerter.subscribe_to(server)
    await alerter.start()          # in the loop, once the server listens
    ...
    await alerter.close(timeout=5) # what is queued gets up to 5 s

Problems (failed deliveries, drops) go to `report(problem)`: the first of a kind at once, then at
most one every `report_every` seconds per sink and kind, counting what happened meanwhile.
Counters for metrics: `sent`, `failed`, `dropped` (sums over the sinks; each sink has its own).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Callable
from typing import Any

from tcpulse.alerts.errors import AlertProblem
from tcpulse.alerts.payload import RESEND_EVERY
from tcpulse.alerts.rules import DEFAULT_ALERT_ON, AlertKind, Rules
from tcpulse.alerts.sinks import Origin, Sink
from tcpulse.server.events import Listening, ServerEvent

__all__ = ["REPORT_EVERY", "Alerter"]

#: Seconds between two reports of the same problem of the same sink.
REPORT_EVERY = 30.0


class Alerter:
    """Alerts of one server to `sinks` (module docstring).  `on`: the alert kinds wanted.
    `instance`: how payloads name this server (default: host name and listening port, from the
    server's `Listening` event).  `clock`: the wall clock of alert times."""

    def __init__(self, sinks: list[Sink], *, on: frozenset[AlertKind] = DEFAULT_ALERT_ON,
                 report: Callable[[AlertProblem], None] | None = None, instance: str | None = None,
                 server_id: str = "", generator_url: str | None = None, report_every: float = REPORT_EVERY,
                 resend_every: float = RESEND_EVERY, clock: Callable[[], float] = time.time) -> None:
        self.sinks = list(sinks)
        self.rules = Rules(on)
        self.report = report
        self.report_every = report_every
        self.resend_every = resend_every
        self._clock = clock
        self._fixed_instance = instance is not None
        self.origin = Origin(instance or socket.gethostname(), server_id, generator_url)
        for s in self.sinks:
            s.origin = self.origin
            s.on_problem = self._on_problem
        self._resender: asyncio.Task[None] | None = None
        # Throttled reports: (sink, kind) -> when last reported, and what came since.
        self._last: dict[tuple[str, str], float] = {}
        self._held: dict[tuple[str, str], AlertProblem] = {}
        self._flush: dict[tuple[str, str], asyncio.TimerHandle] = {}

    # ---------------------------------------------------------------- counters

    @property
    def sent(self) -> int:
        """Alerts delivered, over all sinks."""
        return sum(s.sent for s in self.sinks)

    @property
    def failed(self) -> int:
        """Alerts not delivered after their retries, over all sinks."""
        return sum(s.failed for s in self.sinks)

    @property
    def dropped(self) -> int:
        """Alerts dropped (a full queue, or still queued at the end), over all sinks."""
        return sum(s.dropped for s in self.sinks)

    def stats(self) -> dict[str, Any]:
        """Every counter, for an admin endpoint or a log line."""
        return {"sent": self.sent, "failed": self.failed, "dropped": self.dropped,
                "firing": len(self.rules.firing()),
                "sinks": [{"name": s.name, "sent": s.sent, "failed": s.failed, "dropped": s.dropped,
                           "queued": s.queued} for s in self.sinks]}

    # ---------------------------------------------------------------- events in

    def subscribe_to(self, server: Any) -> Callable[[], None]:
        """Subscribe to `server`'s events (none of the frequent ones: messages, heartbeats)."""
        if not self.origin.server_id:
            self.origin.server_id = str(getattr(server, "server_id", ""))
        unsubscribe: Callable[[], None] = server.subscribe(self, messages=False, heartbeats=False)
        return unsubscribe

    def __call__(self, ev: ServerEvent) -> None:
        if type(ev) is Listening:
            assert isinstance(ev, Listening)
            if not self._fixed_instance:
                self.origin.instance = f"{socket.gethostname()}:{ev.port}"
            return
        for alert in self.rules.alerts_for(ev, self._clock()):
            for s in self.sinks:
                s.offer([alert])

    # ---------------------------------------------------------------- life cycle

    async def start(self) -> None:
        for s in self.sinks:
            await s.start()
        if any(s.wants_resend for s in self.sinks):
            self._resender = asyncio.create_task(self._resend_loop(), name="tcpulse-alerts-resend")

    async def close(self, timeout: float = 5.0) -> None:
        """Stop; what is queued gets up to `timeout` seconds; then report what is left unsaid."""
        if self._resender is not None:
            self._resender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._resender
            self._resender = None
        await asyncio.gather(*(s.close(timeout) for s in self.sinks))
        for h in self._flush.values():
            h.cancel()
        self._flush.clear()
        held, self._held = self._held, {}
        for p in held.values():
            self._emit(p)

    async def _resend_loop(self) -> None:
        # Alertmanager resolves a firing alert by itself at its endsAt: say again that it fires.
        while True:
            await asyncio.sleep(self.resend_every)
            firing = [a for a in self.rules.firing() if a.firing]
            if firing:
                for s in self.sinks:
                    if s.wants_resend:
                        s.offer(firing, resend=True)

    # ---------------------------------------------------------------- reports

    def _emit(self, p: AlertProblem) -> None:
        if self.report is not None:
            self.report(p)

    def _on_problem(self, p: AlertProblem) -> None:
        key = (str(p.params.get("sink", "")), p.kind)
        now = time.monotonic()
        last = self._last.get(key)
        if last is None or now - last >= self.report_every:
            self._last[key] = now
            self._emit(p)
            return
        held = self._held.get(key)
        if held is not None:
            # Add up what happened since the last report; the newest error says why.
            count = int(held.params.get("count", 0)) + int(p.params.get("count", 0))
            p = (AlertProblem.failed(key[0], count, str(p.params.get("error", ""))) if p.kind == "failed"
                 else AlertProblem.dropped(key[0], count))
        self._held[key] = p
        if key not in self._flush:
            with contextlib.suppress(RuntimeError):  # no loop: said at close()
                self._flush[key] = asyncio.get_running_loop().call_later(
                    max(0.0, last + self.report_every - now), self._flush_one, key)

    def _flush_one(self, key: tuple[str, str]) -> None:
        self._flush.pop(key, None)
        p = self._held.pop(key, None)
        if p is not None:
            self._last[key] = time.monotonic()
            self._emit(p)
