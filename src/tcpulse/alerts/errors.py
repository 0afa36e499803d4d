"""What the alerts report to the operator: deliveries that failed, alerts dropped because a sink's
queue was full.  English with a stable kind (tcpulse.errors); the command line translates them."""

from __future__ import annotations

from typing import Any

from tcpulse.errors import N_, TcpulseError

__all__ = ["AlertProblem"]


class AlertProblem(TcpulseError):
    """A problem of one sink, reported (at most every so often) through the Alerter's `report`.

    `kind`: "failed" (`count` alerts not delivered after their retries, `error` the last reason),
    "dropped" (`count` alerts dropped: the sink's queue was full).  `sink`: the sink's name (a
    webhook's URL without credentials or query, or `command`).  `fields`: the figures, for a JSON log.
    """

    def __init__(self, kind: str, template: str, /, **params: Any) -> None:
        super().__init__(kind, template, **params)

    @property
    def fields(self) -> dict[str, Any]:
        return {k: v for k, v in self.params.items() if isinstance(v, (int, float, str))}

    @classmethod
    def failed(cls, sink: str, count: int, error: str) -> AlertProblem:
        return cls("failed", N_("alerts: {count} not delivered to {sink} ({error})"), sink=sink, count=count,
                   error=error)

    @classmethod
    def dropped(cls, sink: str, count: int) -> AlertProblem:
        return cls("dropped", N_("alerts: {count} dropped: the queue for {sink} was full (it does not keep up)"),
                   sink=sink, count=count)
