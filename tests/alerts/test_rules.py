"""Tier 1: which server events become alerts, and what stays firing (pure, a fake clock)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from tcpulse.alerts.rules import ALERT_KINDS, DEFAULT_ALERT_ON, AlertKind, Rules, parse_alert_on
from tcpulse.server.events import Disconnected, HelloReceived, Recovered, Suspect, TimedOut
from tcpulse.server.view import DisconnectReason


@dataclass
class C:
    """What the rules read of a ClientView."""

    id: str | None
    addr: str = "127.0.0.1:40000"

    @property
    def name(self) -> str:
        return self.id if self.id is not None else self.addr


ALL = frozenset(AlertKind)


def hello(c: C) -> HelloReceived:
    return HelloReceived(c, 1.0, 2.0, None, 0, False)  # type: ignore[arg-type]


def test_timeout_fires_and_the_same_id_back_resolves_it() -> None:
    r = Rules(DEFAULT_ALERT_ON)
    [a] = r.alerts_for(TimedOut(C("s7"), 10.0, 0.005), now=100.0)  # type: ignore[arg-type]
    assert (a.kind, a.firing, a.client, a.fields["silent_for"]) == (AlertKind.TIMEOUT, True, "s7", 10.0)
    assert [x.kind for x in r.firing()] == [AlertKind.TIMEOUT]
    assert r.alerts_for(hello(C("other")), now=101.0) == []
    [b] = r.alerts_for(hello(C("s7", "127.0.0.1:40001")), now=112.5)
    assert (b.kind, b.firing, b.resolves, b.fields) == (AlertKind.BACK, False, ((AlertKind.TIMEOUT, 100.0),),
                                                        {"after": "timeout", "down_for": 12.5})
    assert r.firing() == []
    assert r.alerts_for(hello(C("s7")), now=113.0) == []  # back once


def test_suspect_then_recovered_or_timed_out() -> None:
    r = Rules(ALL)
    c = C("s1")
    [s] = r.alerts_for(Suspect(c, 7.5), now=10.0)  # type: ignore[arg-type]
    assert (s.kind, s.firing) == (AlertKind.SUSPECT, True)
    [b] = r.alerts_for(Recovered(c, 8.0), now=11.0)  # type: ignore[arg-type]
    assert (b.kind, b.resolves, b.fields["after"]) == (AlertKind.BACK, ((AlertKind.SUSPECT, 10.0),), "suspect")
    # Suspect again, then dead: the timeout alert ends the suspect one.
    r.alerts_for(Suspect(c, 7.5), now=20.0)  # type: ignore[arg-type]
    [t] = r.alerts_for(TimedOut(c, 10.0, 0.001), now=22.5)  # type: ignore[arg-type]
    assert (t.kind, t.firing, t.resolves) == (AlertKind.TIMEOUT, True, ((AlertKind.SUSPECT, 20.0),))
    assert [x.kind for x in r.firing()] == [AlertKind.TIMEOUT]


def test_a_suspect_alert_ends_even_when_its_end_is_not_alerted() -> None:
    r = Rules(frozenset({AlertKind.SUSPECT}))
    c = C("s2")
    r.alerts_for(Suspect(c, 7.5), now=1.0)  # type: ignore[arg-type]
    [end] = r.alerts_for(TimedOut(c, 10.0, 0.0), now=3.0)  # type: ignore[arg-type]
    assert (end.kind, end.firing, end.resolves) == (AlertKind.SUSPECT, False, ((AlertKind.SUSPECT, 1.0),))
    assert r.firing() == []


def test_disconnects_alert_only_when_chosen_and_never_for_shutdown_or_replaced() -> None:
    r = Rules(DEFAULT_ALERT_ON)
    assert r.alerts_for(Disconnected(C("a"), DisconnectReason.EOF), now=1.0) == []  # type: ignore[arg-type]
    r = Rules(ALL)
    for reason in (DisconnectReason.SHUTDOWN, DisconnectReason.REPLACED, DisconnectReason.REFUSED,
                   DisconnectReason.TIMEOUT):
        assert r.alerts_for(Disconnected(C("a"), reason), now=1.0) == []  # type: ignore[arg-type]
    [d] = r.alerts_for(Disconnected(C("a"), DisconnectReason.RESET, "x"), now=2.0)  # type: ignore[arg-type]
    assert (d.kind, d.fields) == (AlertKind.DISCONNECT, {"reason": "reset", "detail": "x"})
    [b] = r.alerts_for(hello(C("a")), now=5.0)
    assert b.resolves == ((AlertKind.DISCONNECT, 2.0),) and b.fields["after"] == "disconnect"


def test_clients_without_an_id_fire_once_and_are_not_tracked() -> None:
    r = Rules(DEFAULT_ALERT_ON)
    [a] = r.alerts_for(TimedOut(C(None), 10.0, 0.0), now=1.0)  # type: ignore[arg-type]
    assert a.client == "127.0.0.1:40000" and a.id is None
    assert r.firing() == []


def test_what_is_tracked_is_bounded() -> None:
    r = Rules(DEFAULT_ALERT_ON, max_tracked=3)
    for i in range(5):
        r.alerts_for(TimedOut(C(f"c{i}"), 10.0, 0.0), now=float(i))  # type: ignore[arg-type]
    assert [a.client for a in r.firing()] == ["c2", "c3", "c4"] and r.forgotten == 2
    assert r.alerts_for(hello(C("c0")), now=9.0) == []  # forgotten: no back


def test_parse_alert_on() -> None:
    assert parse_alert_on(["timeout,back", " suspect "]) == {AlertKind.TIMEOUT, AlertKind.BACK, AlertKind.SUSPECT}
    assert parse_alert_on(["all"]) == frozenset(AlertKind)
    assert parse_alert_on([]) == frozenset()
    assert set(ALERT_KINDS) == {"timeout", "suspect", "disconnect", "back"}
    with pytest.raises(ValueError, match="nope"):
        parse_alert_on(["timeout,nope"])
