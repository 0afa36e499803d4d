"""What the client reports to `on_event`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["ClientEvent"]


@dataclass(frozen=True, slots=True)
class ClientEvent:
    """What the client reports to `on_event` (for a console, a UI or a log)."""

    # connected | info | ok | beat | rtt | ack | message | error | bye | disconnected | reconnecting |
    # retry-failed | renumbered | waiting | dead
    kind: str
    data: dict[str, Any] = field(default_factory=dict)
