"""Which server events become alerts, and which alerts are still firing.  Pure: no I/O, handed the
wall clock by its caller (`Rules.alerts_for(event, now)`).

An alert fires when a client times out, is suspect, or disconnects (each one only if chosen with
`--alert-on`), and is resolved by a `back` alert when that client is heard from again: a suspect
one that recovers, a timed-out or disconnected one that says HELLO again with the same id.  A
suspect client that then times out or goes resolves its suspect alert in the same breath.  A
client without an id (no HELLO) is known by its address only and cannot come back: its alerts fire
once and are not tracked.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from tcpulse.server.events import Disconnected, HelloReceived, Recovered, ServerEvent, Suspect, TimedOut
from tcpulse.server.view import DisconnectReason

__all__ = ["ALERT_KINDS", "DEFAULT_ALERT_ON", "MAX_TRACKED", "Alert", "AlertKind", "Rules", "parse_alert_on"]


class AlertKind(enum.StrEnum):
    """What happened (the `event` of tcpulse's JSON, `TCPULSE_EVENT` for a command)."""

    TIMEOUT = "timeout"
    SUSPECT = "suspect"
    DISCONNECT = "disconnect"
    BACK = "back"


ALERT_KINDS = tuple(k.value for k in AlertKind)
#: What alerts by default: a client that times out, and the same client back.
DEFAULT_ALERT_ON = frozenset({AlertKind.TIMEOUT, AlertKind.BACK})
#: Clients with a firing alert that are remembered (to resolve it when they come back, and to send
#: it again to Alertmanager); past it the oldest is forgotten (its alert then resolves by itself
#: at Alertmanager, after the endsAt it was last sent with).
MAX_TRACKED = 10_000
#: Disconnects that say nothing about the client: the server's own shutdown, a replaced connection
#: (the same id is back already), a refused one (it never got in), and timeouts (TimedOut says it).
_QUIET_REASONS = frozenset({DisconnectReason.SHUTDOWN, DisconnectReason.REPLACED, DisconnectReason.REFUSED,
                            DisconnectReason.TIMEOUT})


@dataclass(frozen=True, slots=True)
class Alert:
    """One alert for the sinks.  `firing`: True for timeout, suspect and disconnect, False for
    `back` and for a resolution on its own (a suspect client that went away).  `started_at`: when
    the condition began (wall clock; for `back`, when the client went down).  `resolves`: the
    firing alerts this one ends, as (kind, started_at).  `fields`: figures of the event
    (`silent_for`, `late_by`, `reason`, `detail`, `after`, `down_for`)."""

    kind: AlertKind
    client: str
    id: str | None
    addr: str
    at: float
    firing: bool
    started_at: float
    fields: dict[str, Any] = field(default_factory=dict)
    resolves: tuple[tuple[AlertKind, float], ...] = ()


def parse_alert_on(values: list[str] | tuple[str, ...]) -> frozenset[AlertKind]:
    """`["timeout,back", "suspect"]` -> the kinds; `all` means every one.  Raises ValueError
    naming the first unknown word."""
    out: set[AlertKind] = set()
    for v in values:
        for word in (w.strip().lower() for w in v.split(",")):
            if not word:
                continue
            if word == "all":
                out.update(AlertKind)
                continue
            try:
                out.add(AlertKind(word))
            except ValueError:
                raise ValueError(word) from None
    return frozenset(out)


class Rules:
    """Turn server events into alerts (call `alerts_for(event, now)` for every event) and keep
    what is firing (`firing()`).  `on`: the kinds wanted."""

    def __init__(self, on: frozenset[AlertKind] = DEFAULT_ALERT_ON, *, max_tracked: int = MAX_TRACKED) -> None:
        self.on = on
        self.max_tracked = max_tracked
        #: Client name -> the alerts firing for it (kind -> the alert that fired).
        self._firing: OrderedDict[str, dict[AlertKind, Alert]] = OrderedDict()
        #: Clients forgotten because more than `max_tracked` had an alert firing.
        self.forgotten = 0

    def firing(self) -> list[Alert]:
        """Every alert still firing (oldest client first)."""
        return [a for kinds in self._firing.values() for a in kinds.values()]

    def _track(self, alert: Alert, *, same_connection: bool = False) -> None:
        """Remember a firing alert until its client is back.  One that can end only on another
        connection needs an id: a client known by its address never comes back with it."""
        if alert.id is None and not same_connection:
            return
        kinds = self._firing.setdefault(alert.client, {})
        kinds[alert.kind] = alert
        self._firing.move_to_end(alert.client)
        while len(self._firing) > self.max_tracked:
            self._firing.popitem(last=False)
            self.forgotten += 1

    def _end(self, name: str, *kinds: AlertKind) -> tuple[tuple[AlertKind, float], ...]:
        """Stop tracking `kinds` for `name`; return the ones that were firing."""
        held = self._firing.get(name)
        if not held:
            return ()
        ended = tuple((k, held.pop(k).started_at) for k in kinds if k in held)
        if not held:
            del self._firing[name]
        return ended

    def alerts_for(self, ev: ServerEvent, now: float) -> list[Alert]:
        """The alerts `ev` raises (often none).  `now`: the wall clock (`time.time()`)."""
        on = self.on
        t = type(ev)
        if t is TimedOut:
            assert isinstance(ev, TimedOut)
            c = ev.client
            ended = self._end(c.name, AlertKind.SUSPECT)
            fields: dict[str, Any] = {"silent_for": round(ev.silent_for, 3), "late_by": round(ev.late_by, 6)}
            if ev.phi is not None:
                fields["phi"] = round(ev.phi, 3)
            if AlertKind.TIMEOUT not in on:
                return self._resolved_alone(c.name, c.id, c.addr, now, ended, "timeout")
            a = Alert(AlertKind.TIMEOUT, c.name, c.id, c.addr, now, True, now, fields, ended)
            self._track(a)
            return [a]
        if t is Suspect:
            assert isinstance(ev, Suspect)
            if AlertKind.SUSPECT not in on:
                return []
            c = ev.client
            a = Alert(AlertKind.SUSPECT, c.name, c.id, c.addr, now, True, now, {"silent_for": round(ev.silent_for, 3)})
            self._track(a, same_connection=True)  # it recovers on this connection, id or not
            return [a]
        if t is Recovered:
            assert isinstance(ev, Recovered)
            c = ev.client
            return self._back(c.name, c.id, c.addr, now, self._end(c.name, AlertKind.SUSPECT), "suspect")
        if t is HelloReceived:
            assert isinstance(ev, HelloReceived)
            c = ev.client
            if c.id is None or c.id not in self._firing:
                return []
            ended = self._end(c.id, AlertKind.TIMEOUT, AlertKind.DISCONNECT, AlertKind.SUSPECT)
            after = ended[0][0].value if ended else ""
            return self._back(c.id, c.id, c.addr, now, ended, after)
        if t is Disconnected:
            assert isinstance(ev, Disconnected)
            if ev.reason in _QUIET_REASONS:
                if ev.reason is not DisconnectReason.TIMEOUT:
                    # Gone without a verdict (shutdown, replaced): a suspect alert ends with it.
                    c = ev.client
                    return self._resolved_alone(c.name, c.id, c.addr, now, self._end(c.name, AlertKind.SUSPECT),
                                                ev.reason.value)
                return []
            c = ev.client
            ended = self._end(c.name, AlertKind.SUSPECT)
            if AlertKind.DISCONNECT not in on:
                return self._resolved_alone(c.name, c.id, c.addr, now, ended, ev.reason.value)
            fields = {"reason": ev.reason.value}
            if ev.detail:
                fields["detail"] = ev.detail
            a = Alert(AlertKind.DISCONNECT, c.name, c.id, c.addr, now, True, now, fields, ended)
            self._track(a)
            return [a]
        return []

    def _back(self, name: str, id: str | None, addr: str, now: float,
              ended: tuple[tuple[AlertKind, float], ...], after: str) -> list[Alert]:
        if not ended or AlertKind.BACK not in self.on:
            return []
        since = min(s for _k, s in ended)
        return [Alert(AlertKind.BACK, name, id, addr, now, False, since,
                      {"after": after, "down_for": round(now - since, 3)}, ended)]

    def _resolved_alone(self, name: str, id: str | None, addr: str, now: float,
                        ended: tuple[tuple[AlertKind, float], ...], reason: str) -> list[Alert]:
        """A firing suspect alert that ends without an alert of its own to carry it: a resolution."""
        if not ended:
            return []
        kind, since = ended[0]
        return [Alert(kind, name, id, addr, now, False, since, {"reason": reason}, ended)]
