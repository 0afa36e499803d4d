"""What the client reports to `on_event`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["ClientEvent"]


@dataclass(frozen=True, slots=True)
class ClientEvent:
    """What the client reports to `on_event` (for a console, a UI or a log).

    "waiting", "retry-failed" and "disconnected" carry the failure twice: `error`, the exception
    (a `TcpulseError` has a `kind`, and what an edge needs to show it in its own language), and
    `reason`, its English text."""

    # connected | info | ok | beat | rtt | ack | message | error | bye | disconnected | reconnecting |
    # retry-failed | renumbered | waiting | dead
    kind: str
    data: dict[str, Any] = field(default_factory=dict)
