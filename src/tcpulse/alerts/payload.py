"""What the sinks send: tcpulse's own JSON (one object per event, for webhooks and for the
command's stdin), Alertmanager's alerts, and the signature of a body.

tcpulse's JSON (`event_json`):

    {"source": "tcpulse", "version": 1, "event": "timeout", "status": "firing",
     "client": "sensor-7", "id": "sensor-7", "addr": "127.0.0.1:40088",
     "ts": "2026-11-25T13:28:04.135Z", "since": "2026-11-25T13:28:04.135Z",
     "server": "host-a:12345", "server_id": "a1b2c3d4", "silent_for": 10.005, "late_by": 0.005}

`event`: timeout, suspect, disconnect (`reason`, `detail`) or back (`after`: what it was,
`down_for`: seconds); `status`: firing or resolved.  Receivers must ignore fields they do not know.

Alertmanager (`alertmanager_body`): the body of its `POST /api/v2/alerts`, a list of alerts with
`labels` (`alertname` TcpulseClientTimedOut / TcpulseClientSuspect / TcpulseClientDisconnected,
`client`, `job`="tcpulse", `instance`, `severity`), `annotations`, `startsAt` and `endsAt`.  A
firing alert carries an `endsAt` of `FIRING_FOR` seconds ahead and is sent again every
`RESEND_EVERY` seconds while it fires (as Prometheus does), so that it stays firing exactly as long
as tcpulse says so; a resolved one has `endsAt` = when it ended.  The labels of a client's alert
are the same when it fires and when it resolves (the address, which changes on every connection,
is an annotation).

`signature(secret, body)`: `sha256=<hex HMAC-SHA256 of the body>`, sent as `X-Tcpulse-Signature`
(verify it over the raw body, before parsing it, with a constant-time comparison).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime
from typing import Any

from tcpulse.alerts.rules import Alert, AlertKind

__all__ = [
    "ALERTNAMES",
    "FIRING_FOR",
    "RESEND_EVERY",
    "SIGNATURE_HEADER",
    "alertmanager_body",
    "dumps",
    "event_json",
    "iso",
    "signature",
]

#: Seconds between two sendings of an alert that still fires (Alertmanager format).
RESEND_EVERY = 60.0
#: How far ahead a firing alert's `endsAt` is: if tcpulse stops sending it (stopped, or the client
#: forgotten), Alertmanager resolves it by itself after this long.
FIRING_FOR = 4 * RESEND_EVERY
SIGNATURE_HEADER = "X-Tcpulse-Signature"

ALERTNAMES = {
    AlertKind.TIMEOUT: "TcpulseClientTimedOut",
    AlertKind.SUSPECT: "TcpulseClientSuspect",
    AlertKind.DISCONNECT: "TcpulseClientDisconnected",
}
_SEVERITY = {AlertKind.TIMEOUT: "critical", AlertKind.SUSPECT: "warning", AlertKind.DISCONNECT: "warning"}


def iso(t: float) -> str:
    """ISO 8601, UTC, milliseconds: `2026-11-25T13:28:04.135Z`."""
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def event_json(alert: Alert, *, instance: str, server_id: str) -> dict[str, Any]:
    """tcpulse's JSON of one alert (module docstring)."""
    d: dict[str, Any] = {"source": "tcpulse", "version": 1, "event": alert.kind.value,
                         "status": "firing" if alert.firing else "resolved", "client": alert.client}
    if alert.id is not None:
        d["id"] = alert.id
    d.update(addr=alert.addr, ts=iso(alert.at), since=iso(alert.started_at), server=instance, server_id=server_id)
    d.update(alert.fields)
    return d


def _summary(kind: AlertKind, client: str) -> str:
    return {AlertKind.TIMEOUT: f"tcpulse client {client} timed out",
            AlertKind.SUSPECT: f"tcpulse client {client} is suspect",
            AlertKind.DISCONNECT: f"tcpulse client {client} disconnected"}.get(kind, f"tcpulse client {client}")


def _description(alert: Alert) -> str:
    f = alert.fields
    if alert.kind is AlertKind.TIMEOUT:
        return f"silent for {f.get('silent_for', 0):g} s: no frame within its heartbeat timeout"
    if alert.kind is AlertKind.SUSPECT:
        return f"silent for {f.get('silent_for', 0):g} s (1.5 heartbeat intervals)"
    if alert.kind is AlertKind.DISCONNECT:
        detail = f": {f['detail']}" if f.get("detail") else ""
        return f"connection ended ({f.get('reason', '?')}{detail})"
    return ""


def _am_alert(kind: AlertKind, alert: Alert, *, instance: str, starts: float, ends: float,
              description: str, generator_url: str | None) -> dict[str, Any]:
    d: dict[str, Any] = {
        "labels": {"alertname": ALERTNAMES[kind], "client": alert.client, "job": "tcpulse", "instance": instance,
                   "severity": _SEVERITY[kind]},
        "annotations": {"summary": _summary(kind, alert.client), "description": description, "addr": alert.addr},
        "startsAt": iso(starts),
        "endsAt": iso(max(ends, starts)),  # Alertmanager refuses an end before the start
    }
    if generator_url:
        d["generatorURL"] = generator_url
    return d


def alertmanager_body(alerts: list[Alert], *, instance: str, now: float, generator_url: str | None = None,
                      resend: bool = False) -> list[dict[str, Any]]:
    """The body of Alertmanager's `POST /api/v2/alerts` for these alerts (module docstring):
    each alert it resolves as resolved (endsAt its time), then itself if it fires (endsAt ahead).
    `resend`: the alerts are sent again because they still fire; what they resolved was said."""
    out: list[dict[str, Any]] = []
    for a in alerts:
        for kind, since in () if resend else a.resolves:
            if kind in ALERTNAMES:
                desc = (f"back after {a.fields.get('down_for', 0):g} s" if a.kind is AlertKind.BACK
                        else f"ended ({a.fields.get('reason', a.kind.value)})")
                out.append(_am_alert(kind, a, instance=instance, starts=since, ends=a.at, description=desc,
                                     generator_url=generator_url))
        if a.firing and a.kind in ALERTNAMES:
            out.append(_am_alert(a.kind, a, instance=instance, starts=a.started_at, ends=now + FIRING_FOR,
                                 description=_description(a), generator_url=generator_url))
    return out


def dumps(obj: Any) -> bytes:
    """Compact UTF-8 JSON: the bytes that are sent and signed."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


def signature(secret: str, body: bytes) -> str:
    """`sha256=<hex>`: HMAC-SHA256 of `body` with `secret` (the `X-Tcpulse-Signature` header)."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
