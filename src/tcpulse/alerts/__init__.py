"""Alerts where operators already look: server events turned into alerts (`rules`), their
payloads (`payload`: tcpulse's own JSON, and Alertmanager's `POST /api/v2/alerts` body with an
HMAC-SHA256 signature when there is a secret), and their delivery (`sinks`: webhooks over aiohttp
with retries and backoff, a command run with the event on stdin), all behind one `Alerter` that
subscribes to a `Server` and never blocks it: every sink has a bounded queue whose overflow is
dropped, counted and reported.

May import `server` (its events), `policy`, `version` and `errors`; never `cli`, `admin`, `store`
or `i18n` (the command line translates what it reports).
"""

from tcpulse.alerts.alerter import Alerter
from tcpulse.alerts.errors import AlertProblem
from tcpulse.alerts.rules import ALERT_KINDS, DEFAULT_ALERT_ON, Alert, AlertKind, Rules
from tcpulse.alerts.sinks import CommandSink, Sink, WebhookSink

__all__ = [
    "ALERT_KINDS",
    "DEFAULT_ALERT_ON",
    "Alert",
    "AlertKind",
    "AlertProblem",
    "Alerter",
    "CommandSink",
    "Rules",
    "Sink",
    "WebhookSink",
]
