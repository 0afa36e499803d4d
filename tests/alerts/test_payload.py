"""Tier 1: the payloads: tcpulse's JSON, Alertmanager's alerts, the signature."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime

from tcpulse.alerts.payload import FIRING_FOR, alertmanager_body, dumps, event_json, iso, signature
from tcpulse.alerts.rules import Alert, AlertKind
from tests.alerts.alertmanager import check_postable_alerts, is_firing

T0 = 1_800_000_000.0


def test_tcpulse_json_of_a_timeout_and_a_back() -> None:
    a = Alert(AlertKind.TIMEOUT, "s7", "s7", "[::1]:40000", T0, True, T0, {"silent_for": 10.0, "late_by": 0.002})
    d = event_json(a, instance="host:12345", server_id="ab12")
    assert d == {"source": "tcpulse", "version": 1, "event": "timeout", "status": "firing", "client": "s7",
                 "id": "s7", "addr": "[::1]:40000", "ts": iso(T0), "since": iso(T0), "server": "host:12345",
                 "server_id": "ab12", "silent_for": 10.0, "late_by": 0.002}
    assert iso(T0) == "2027-01-15T08:00:00.000Z"
    b = Alert(AlertKind.BACK, "s7", "s7", "[::1]:40001", T0 + 5, False, T0, {"after": "timeout", "down_for": 5.0},
              ((AlertKind.TIMEOUT, T0),))
    d = event_json(b, instance="host:12345", server_id="ab12")
    assert (d["event"], d["status"], d["after"], d["down_for"]) == ("back", "resolved", "timeout", 5.0)
    json.dumps(d)


def test_alertmanager_firing_then_resolved_with_the_same_labels() -> None:
    fire = Alert(AlertKind.TIMEOUT, "s7", "s7", "127.0.0.1:1", T0, True, T0, {"silent_for": 10.0})
    [f] = check_postable_alerts(alertmanager_body([fire], instance="h:1", now=T0, generator_url="http://h:8222/"))
    assert f["labels"] == {"alertname": "TcpulseClientTimedOut", "client": "s7", "job": "tcpulse",
                           "instance": "h:1", "severity": "critical"}
    assert is_firing(f, datetime.fromtimestamp(T0 + FIRING_FOR - 1, UTC))
    assert f["generatorURL"] == "http://h:8222/" and "10 s" in f["annotations"]["description"]
    back = Alert(AlertKind.BACK, "s7", "s7", "127.0.0.1:2", T0 + 30, False, T0, {"after": "timeout", "down_for": 30},
                 ((AlertKind.TIMEOUT, T0),))
    [r] = check_postable_alerts(alertmanager_body([back], instance="h:1", now=T0 + 30))
    assert r["labels"] == f["labels"] and r["startsAt"] == f["startsAt"]
    assert not is_firing(r, datetime.fromtimestamp(T0 + 31, UTC))
    # Suspect, then dead: one request resolves the one and fires the other.
    dead = Alert(AlertKind.TIMEOUT, "s8", "s8", "x:1", T0 + 3, True, T0 + 3, {}, ((AlertKind.SUSPECT, T0),))
    body = check_postable_alerts(alertmanager_body([dead], instance="h:1", now=T0 + 3))
    assert [a["labels"]["alertname"] for a in body] == ["TcpulseClientSuspect", "TcpulseClientTimedOut"]
    assert [is_firing(a, datetime.fromtimestamp(T0 + 4, UTC)) for a in body] == [False, True]
    # Sent again while firing: what it resolved is not said again.
    assert len(alertmanager_body([dead], instance="h:1", now=T0 + 60, resend=True)) == 1


def test_signature_is_hmac_sha256_of_the_body() -> None:
    body = dumps({"a": "é"})
    assert body == '{"a":"é"}'.encode()
    assert signature("k", body) == "sha256=" + hmac.new(b"k", body, hashlib.sha256).hexdigest()
