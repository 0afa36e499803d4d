"""The alerts feature's command line: the options of `serve` (`alert_options`) and the glue that
starts the alerts beside the server (`AlertsForServe`), turning every bad flag into one line and
every problem the alerts report into a warning in the log (translated)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import click

from tcpulse.cli.common import error_text, fail
from tcpulse.i18n import _

if TYPE_CHECKING:
    from tcpulse.alerts import Alerter, AlertProblem
    from tcpulse.cli.console import ConsoleLog
    from tcpulse.server.server import Server

__all__ = ["ALERT_KEYS", "AlertsForServe", "alert_options"]

#: The serve options this module reads (popped from serve's options by `AlertsForServe.take`).
ALERT_KEYS = ("webhook", "webhook_secret", "webhook_format", "webhook_timeout", "webhook_retries", "alert_on",
              "on_event", "on_event_timeout", "on_event_concurrency", "alert_queue")

_OPTIONS = [
    click.option("--webhook", multiple=True, metavar="URL",
                 help="POST alerts as JSON to this URL (repeatable; env TCPULSE_WEBHOOK: URLs separated by spaces)."),
    click.option("--webhook-format", type=click.Choice(["tcpulse", "alertmanager"]), default="tcpulse",
                 show_default=True,
                 help="tcpulse: one JSON object per event. alertmanager: the body of Alertmanager's "
                      "POST /api/v2/alerts (firing, then resolved when the client is back)."),
    click.option("--webhook-secret", default=None, metavar="SECRET",
                 help="Sign every webhook body: X-Tcpulse-Signature: sha256=HMAC-SHA256(SECRET, body) "
                      "(env TCPULSE_WEBHOOK_SECRET)."),
    click.option("--webhook-timeout", default=5.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
                 help="Seconds a webhook request may take."),
    click.option("--webhook-retries", default=3, show_default=True, type=click.IntRange(0, 20),
                 help="Retries of a webhook request that failed on the network or got 408/429/5xx "
                      "(backoff with jitter, 0.5 s doubling up to 8 s)."),
    click.option("--on-event", default=None, metavar="CMD",
                 help="Run CMD (with the shell) for every alert, the event as JSON on its stdin and "
                      "TCPULSE_EVENT, TCPULSE_STATUS, TCPULSE_CLIENT in its environment."),
    click.option("--on-event-timeout", default=10.0, show_default=True,
                 type=click.FloatRange(min=0, min_open=True),
                 help="Seconds --on-event CMD may run before it is killed (with what it started)."),
    click.option("--on-event-concurrency", default=4, show_default=True, type=click.IntRange(1, 64),
                 help="Copies of --on-event CMD that may run at once."),
    click.option("--alert-on", multiple=True, metavar="KINDS",
                 help="What alerts: timeout, back (the client is heard from again), suspect, disconnect, or "
                      "all; comma-separated or repeated [default: timeout,back]."),
    click.option("--alert-queue", default=1000, show_default=True, type=click.IntRange(min=1),
                 help="Alerts each webhook or command holds while it does not keep up; beyond, the oldest "
                      "are dropped, counted and reported (serving never waits for an alert)."),
]


def alert_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Add the alert options to a command (serve)."""
    for option in reversed(_OPTIONS):
        f = option(f)
    return f


def _check_url(url: str) -> None:
    try:
        u = urlsplit(url)
        ok = u.scheme in ("http", "https") and bool(u.hostname)
        u.port  # noqa: B018  (raises ValueError on a bad port)
    except ValueError:
        ok = False
    if not ok:
        fail(_("--webhook {url}: expected an http:// or https:// URL").format(url=url), 2)


class AlertsForServe:
    """`serve --webhook/--on-event`: make it in the feature-setup step from serve's options
    (`take()` removes them), `await start()` once the server listens, `await close()` after it
    stopped.  Does nothing (`active` False) when no webhook and no command is given."""

    def __init__(self, server: Server, opts: dict[str, Any], log: ConsoleLog, admin_url: str | None = None) -> None:
        self.log = log
        self.alerter: Alerter | None = None
        webhooks: tuple[str, ...] = tuple(opts.get("webhook") or ())
        command: str | None = opts.get("on_event")
        if not webhooks and not command:
            return
        from tcpulse.alerts import DEFAULT_ALERT_ON, Alerter, CommandSink, Sink, WebhookSink
        from tcpulse.alerts.rules import ALERT_KINDS, parse_alert_on
        try:
            on = parse_alert_on(opts.get("alert_on") or ()) or DEFAULT_ALERT_ON
        except ValueError as e:
            fail(_("--alert-on {word}: unknown; choose from {kinds} or all").format(
                word=e, kinds=", ".join(ALERT_KINDS)), 2)
        sinks: list[Sink] = []
        for url in webhooks:
            _check_url(url)
            sinks.append(WebhookSink(url, fmt=opts["webhook_format"], secret=opts.get("webhook_secret"),
                                     timeout=opts["webhook_timeout"], retries=opts["webhook_retries"],
                                     queue_size=opts["alert_queue"]))
        if command:
            sinks.append(CommandSink(command, timeout=opts["on_event_timeout"],
                                     concurrency=opts["on_event_concurrency"], queue_size=opts["alert_queue"]))
        self.on = on
        self.alerter = Alerter(sinks, on=on, report=self._report, generator_url=admin_url)
        self.alerter.subscribe_to(server)

    @staticmethod
    def take(opts: dict[str, Any]) -> dict[str, Any]:
        """Remove the alert options from serve's `opts` and return them."""
        return {k: opts.pop(k) for k in ALERT_KEYS if k in opts}

    @property
    def active(self) -> bool:
        return self.alerter is not None

    async def start(self) -> None:
        a = self.alerter
        if a is None:
            return
        await a.start()
        from tcpulse.alerts import WebhookSink
        kinds = ",".join(sorted(k.value for k in self.on))
        # The command itself is not shown: it may hold a secret.
        targets = [f"{s.name} ({s.fmt})" if isinstance(s, WebhookSink) else "--on-event" for s in a.sinks]
        if self.log.json:
            from tcpulse.i18n.display import iso_ts
            self.log.write_line(json.dumps({"ts": iso_ts(), "event": "alerts", "on": sorted(k.value for k in self.on),
                                            "sinks": [s.name for s in a.sinks]}, separators=(",", ":")))
        elif self.log.level != "quiet":
            self.log.write_line(_("Alerts on {kinds} to: {targets}").format(kinds=kinds, targets=", ".join(targets)))

    async def close(self, timeout: float = 5.0) -> None:
        if self.alerter is not None:
            await self.alerter.close(timeout)

    def _report(self, problem: AlertProblem) -> None:
        if self.log.json:
            from tcpulse.i18n.display import iso_ts
            self.log.write_line(json.dumps({"ts": iso_ts(), "event": "warning", "text": str(problem),
                                            "alerts": problem.kind, **problem.fields},
                                           ensure_ascii=False, separators=(",", ":")))
        else:
            self.log.write_line(_("Warning: {text}").format(text=error_text(problem)))
