"""What Alertmanager's `POST /api/v2/alerts` accepts, checked as Alertmanager checks it
(api/v2/openapi.yaml `postableAlerts`; api/v2/api.go `postAlertsHandler`; types.Alert.Validate):
a JSON list of objects with `labels` (required, non-empty, names `[a-zA-Z_][a-zA-Z0-9_]*`,
string values; empty values are dropped), optional `annotations` (the same), optional
`startsAt`/`endsAt` (RFC 3339 date-times; the end not before the start) and `generatorURL` (a
URI).  An alert whose `endsAt` has passed is resolved; one whose `endsAt` is ahead fires."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
KNOWN = {"labels", "annotations", "startsAt", "endsAt", "generatorURL"}


def _time(s: Any) -> datetime:
    assert isinstance(s, str) and re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)", s), s
    return datetime.fromisoformat(s.replace("Z", "+00:00"))


def _labelset(ls: Any) -> None:
    assert isinstance(ls, dict)
    for k, v in ls.items():
        assert isinstance(k, str) and LABEL_NAME.fullmatch(k), k
        assert isinstance(v, str), (k, v)


def check_postable_alerts(body: Any) -> list[dict[str, Any]]:
    """Raise AssertionError unless Alertmanager would take `body`; return it."""
    assert isinstance(body, list) and body, body
    for a in body:
        assert isinstance(a, dict) and set(a) <= KNOWN, a
        _labelset(a["labels"])
        assert {k: v for k, v in a["labels"].items() if v}, "no labels"
        _labelset(a.get("annotations", {}))
        if "generatorURL" in a:
            assert urlsplit(a["generatorURL"]).scheme in ("http", "https"), a["generatorURL"]
        starts = _time(a["startsAt"]) if "startsAt" in a else None
        ends = _time(a["endsAt"]) if "endsAt" in a else None
        if starts and ends:
            assert ends >= starts, "end time must not be before start time"
    return body


def is_firing(alert: dict[str, Any], now: datetime) -> bool:
    return "endsAt" not in alert or _time(alert["endsAt"]) > now
