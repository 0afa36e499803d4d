"""The console log prints a read's messages in one pass (MessagesReceived), on a fast path for
plain payloads: every line must be what the one-message path prints, in text and JSON, in every
language."""

from __future__ import annotations

import io
import json
import re
from typing import Any

import pytest

from tcpulse.cli.console import ConsoleLog
from tcpulse.i18n import set_language
from tcpulse.policy.liveness import Tracker
from tcpulse.protocol.events import Msg
from tcpulse.server.events import MessageReceived, MessagesReceived
from tcpulse.server.view import ClientView

PAYLOADS = [b"plain text", b"", b"with \\ backslash", b"tab\there", b"nl\nin", b"\x7fdel", b'quote " here',
            "ünïcödé 中文".encode(), b"\xff\xfe not utf-8", b"100% sure %s %d", "line\u2028sep".encode()]


class _Rec:
    conn_id, id, addr, session, connected_at = 1, "sensor-7", "127.0.0.1:5", "s1", 0.0
    heartbeats = messages = bytes_in = bytes_out = high = queued = 0
    rtt, reason, detail = None, None, None
    interval, timeout = 5.0, 10.0
    identities: frozenset[str] = frozenset()


def _view() -> ClientView:
    return ClientView(_Rec(), Tracker(), lambda: 0.0)  # type: ignore[arg-type]


def _lines(json_format: bool, events: list[Any]) -> list[str]:
    out = io.StringIO()
    log = ConsoleLog(out, json_format=json_format)
    for ev in events:
        log(ev)
    text = out.getvalue()
    # Timestamps differ between the two paths by the clock only: compare without them.
    # Lines end with LF only (a payload's U+2028 is not a line end here: split, not splitlines).
    return [re.sub(r'^\[[^]]*\] |"ts":"[^"]*",', "", ln) for ln in text.split("\n")[:-1]]


@pytest.mark.parametrize("lang", ["en", "zh"])
@pytest.mark.parametrize("json_format", [False, True])
def test_a_batch_prints_what_each_message_would(json_format: bool, lang: str) -> None:
    set_language(lang)
    try:
        view = _view()
        msgs = [Msg(payload=p, seq=None if i % 3 == 0 else i + 1) for i, p in enumerate(PAYLOADS)]
        dups = frozenset({4})
        each = [MessageReceived(view, m.payload, m.seq, i in dups) for i, m in enumerate(msgs)]
        batch = _lines(json_format, [MessagesReceived(view, msgs, dups)])
        assert batch == _lines(json_format, each)
        assert len(batch) == len(PAYLOADS)
        if json_format:
            for ln, m in zip(batch, msgs, strict=True):
                obj = json.loads(ln)
                assert obj["size"] == len(m.payload)
    finally:
        set_language("en")


def test_plain_payloads_come_out_as_they_are_and_the_rest_escaped() -> None:
    view = _view()
    lines = _lines(False, [MessagesReceived(view, [Msg(payload=b"ok 100%"), Msg(payload=b"a\\b\nc")])])
    assert lines == ["Message from sensor-7: ok 100%", "Message from sensor-7: a\\\\b\\nc"]
