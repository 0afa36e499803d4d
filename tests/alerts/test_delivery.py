"""Tier 3: alerts from a real server over loopback to a real HTTP receiver (aiohttp on 127.0.0.1)
and to a real command; retries, backoff, bounded queues, and a server that keeps serving."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import sys
from pathlib import Path
from typing import Any

from tcpulse.alerts import Alerter, AlertKind, AlertProblem, CommandSink, WebhookSink
from tests.alerts.alertmanager import check_postable_alerts
from tests.alerts.conftest import Receiver
from tests.conftest import MS, RawClient

FAST = {"heartbeat_interval": 100 * MS, "heartbeat_timeout": 200 * MS}


async def until(cond: Any, timeout: float = 10.0) -> None:
    end = asyncio.get_running_loop().time() + timeout
    while not cond():
        assert asyncio.get_running_loop().time() < end, "condition not met in time"
        await asyncio.sleep(0.01)


async def started(start_server: Any, sinks: list[Any], **kw: Any) -> tuple[Any, Alerter, list[AlertProblem]]:
    """A server (port 0) with an Alerter on `sinks`, both started; and the problems it reports."""
    problems: list[AlertProblem] = []
    srv = await start_server(**FAST)
    alerter = Alerter(sinks, report=problems.append, **kw)
    alerter.subscribe_to(srv)
    await alerter.start()
    return srv, alerter, problems


async def time_out(port: int, id: str) -> None:
    """A client that says HELLO and then nothing, until the server gives up on it."""
    c = await RawClient.open(port)
    await c.hello(id)
    await c.expect(b"BYE heartbeat-timeout")
    c.close()


async def test_a_timeout_and_the_client_back_are_posted_signed(start_server: Any, receiver: Receiver) -> None:
    sink = WebhookSink(receiver.url + "/hook", secret="s3cret")
    srv, alerter, problems = await started(start_server, [sink])
    await time_out(srv.port, "sensor-7")
    back = await RawClient.open(srv.port)
    await back.hello("sensor-7")
    reqs = await receiver.wait_for(2)
    events = [r.json() for r in reqs]
    assert [(e["event"], e["status"], e["client"]) for e in events] == [
        ("timeout", "firing", "sensor-7"), ("back", "resolved", "sensor-7")]
    assert events[0]["silent_for"] >= 200 * MS and events[0]["server_id"] == srv.server_id
    assert events[1]["after"] == "timeout" and events[1]["down_for"] >= 0
    for r in reqs:
        assert r.path == "/hook" and r.headers["Content-Type"] == "application/json"
        want = "sha256=" + hmac.new(b"s3cret", r.body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(r.headers["X-Tcpulse-Signature"], want)
        assert r.headers["User-Agent"].startswith("tcpulse/")
    assert reqs[0].headers["X-Tcpulse-Event"] == "timeout"
    assert (alerter.sent, alerter.failed, alerter.dropped, problems) == (2, 0, 0, [])
    back.close()
    await alerter.close()


async def test_retries_with_backoff_then_gives_up_and_says_so(start_server: Any, receiver: Receiver) -> None:
    sink = WebhookSink(receiver.url, retries=2, backoff_base=0.01, backoff_cap=0.05)
    srv, alerter, problems = await started(start_server, [sink])
    receiver.answers = [503, 500]  # then 200: delivered on the third attempt
    await time_out(srv.port, "r1")
    await receiver.wait_for(1)
    assert receiver.attempts == 3 and sink.sent == 1 and sink.failed == 0
    receiver.answers = [503, 503, 503]  # three attempts, all refused: failed
    await time_out(srv.port, "r2")
    await until(lambda: sink.failed == 1)
    assert receiver.attempts == 6
    receiver.answers = [400]  # a client error is not tried again
    await time_out(srv.port, "r3")
    await until(lambda: sink.failed == 2)
    assert receiver.attempts == 7
    assert [(p.kind, p.params["count"]) for p in problems] == [("failed", 1)]
    assert "HTTP 503 (3 attempts)" in str(problems[0]) and receiver.url in str(problems[0])
    await alerter.close(0.5)
    # The second failure came within the report interval: it is said at close, added up.
    assert [p.kind for p in problems] == ["failed", "failed"] and "HTTP 400" in str(problems[1])


async def test_alertmanager_gets_firing_then_resolved_and_firing_again_while_it_lasts(
        start_server: Any, receiver: Receiver) -> None:
    sink = WebhookSink(receiver.url + "/api/v2/alerts", fmt="alertmanager")
    srv, alerter, _p = await started(start_server, [sink], resend_every=0.2,
                                     generator_url="http://127.0.0.1:8222/")
    await time_out(srv.port, "am-1")
    [fire] = check_postable_alerts((await receiver.wait_for(1))[0].json())
    assert fire["labels"]["alertname"] == "TcpulseClientTimedOut" and fire["labels"]["client"] == "am-1"
    # Still firing: sent again (Prometheus' way), so Alertmanager does not resolve it by itself.
    [again] = check_postable_alerts((await receiver.wait_for(2))[1].json())
    assert again["labels"] == fire["labels"] and again["startsAt"] == fire["startsAt"]
    assert again["endsAt"] >= fire["endsAt"]
    c = await RawClient.open(srv.port)
    await c.hello("am-1")
    await until(lambda: any(a["annotations"]["description"].startswith("back")
                            for r in receiver.requests for a in r.json()))
    resolved = [a for r in receiver.requests for a in check_postable_alerts(r.json())
                if a["annotations"]["description"].startswith("back")]
    assert resolved and resolved[0]["labels"] == fire["labels"]
    c.close()
    await alerter.close()


async def test_a_stalled_receiver_never_stalls_the_server(start_server: Any, receiver: Receiver) -> None:
    receiver.hold = asyncio.Event()  # the receiver takes requests and never answers
    sink = WebhookSink(receiver.url, queue_size=2, timeout=30)
    srv, alerter, problems = await started(start_server, [sink], on=frozenset({AlertKind.DISCONNECT}))
    for i in range(6):
        c = await RawClient.open(srv.port)
        await c.hello(f"d{i}")
        c.close()  # gone without BYE: a disconnect alert each
    await until(lambda: sink.dropped >= 3)
    # 1 in flight, 2 queued, the rest dropped (oldest first), counted and reported; the server
    # meanwhile answers as ever.
    assert sink.queued == 2 and problems and problems[0].kind == "dropped"
    c = await RawClient.open(srv.port)
    await c.hello("alive")
    await c.send(b"PING x\n")
    assert await c.expect(b"PONG") == b"PONG x"
    c.close()  # its disconnect pushes out d4
    await until(lambda: sink.dropped == 4)
    receiver.hold.set()
    await until(lambda: sink.sent == 3)
    assert [r.json()["client"] for r in receiver.requests] == ["d0", "d5", "alive"]
    await alerter.close()


async def test_a_command_gets_the_event_on_stdin(start_server: Any, tmp_path: Path) -> None:
    out = tmp_path / "events"
    script = (f"{sys.executable} -c \"import os,sys; open({str(out)!r},'a').write(os.environ['TCPULSE_EVENT'] + "
              f"' ' + os.environ['TCPULSE_STATUS'] + ' ' + sys.stdin.read())\"")
    sink = CommandSink(script, concurrency=1)
    srv, alerter, problems = await started(start_server, [sink])
    await time_out(srv.port, "cmd-1")
    c = await RawClient.open(srv.port)
    await c.hello("cmd-1")
    await until(lambda: sink.sent == 2)
    lines = out.read_text().splitlines()
    assert [ln.split(" ", 2)[:2] for ln in lines] == [["timeout", "firing"], ["back", "resolved"]]
    assert json.loads(lines[0].split(" ", 2)[2])["client"] == "cmd-1"
    assert problems == []
    c.close()
    await alerter.close()


async def test_a_command_is_bounded_in_number_and_time(start_server: Any, tmp_path: Path) -> None:
    log = tmp_path / "log"
    # Each run writes when it starts and ends; one of them hangs and is killed at the timeout.
    script = (f"echo start >> {log}; if [ \"$TCPULSE_CLIENT\" = slow ]; then sleep 60; fi; "
              f"echo end >> {log}; echo oops >&2; exit 3")
    sink = CommandSink(script, concurrency=2, timeout=1.0)
    srv, alerter, problems = await started(start_server, [sink], on=frozenset({AlertKind.DISCONNECT}))
    for name in ("slow", "a", "b", "c"):
        c = await RawClient.open(srv.port)
        await c.hello(name)
        c.close()
    await until(lambda: sink.failed == 4)
    running = peak = 0
    for line in log.read_text().split():
        running += 1 if line == "start" else -1
        peak = max(peak, running)
    assert peak <= 2 and log.read_text().split().count("start") == 4
    errors = " ".join(str(p) for p in problems)
    assert "killed after 1 s" in errors or "exit status 3: oops" in errors
    await alerter.close()
    errors = " ".join(str(p) for p in problems)
    assert "killed after 1 s" in errors and "exit status 3: oops" in errors
