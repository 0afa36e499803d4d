"""Tier 4: `tcpulse serve --webhook/--on-event` as a user runs it: a real server process, a real HTTP
receiver (aiohttp on 127.0.0.1, in a thread) and a real command; settings also from a config file
and the environment; bad alert flags are one line."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.alerts.alertmanager import check_postable_alerts
from tests.alerts.conftest import ThreadedReceiver
from tests.conftest import MS, RawClient, tcpulse_cmd

FAST = ("--heartbeat-interval", str(100 * MS), "--heartbeat-timeout", str(200 * MS))


async def silent_then_back(port: int, id: str) -> None:
    c = await RawClient.open(port)
    await c.hello(id)
    await c.expect(b"BYE heartbeat-timeout")
    c.close()
    c = await RawClient.open(port)
    await c.hello(id)
    c.close()


def test_serve_posts_alertmanager_alerts_and_runs_a_command(server_process: Any, tmp_path: Path,
                                                           threaded_receiver: ThreadedReceiver) -> None:
    out = tmp_path / "events.jsonl"
    cfg = tmp_path / "tcpulse.toml"
    cfg.write_text(f'[serve]\nalert_on = ["timeout", "back"]\n'
                   f'on_event = "cat >> {out}"\n')
    srv = server_process(*FAST, "--config", str(cfg), "--webhook-format", "alertmanager",
                         env={"TCPULSE_WEBHOOK": threaded_receiver.url + "/api/v2/alerts"})
    started = srv.wait_event("alerts")
    assert started["on"] == ["back", "timeout"] and len(started["sinks"]) == 2
    asyncio.run(silent_then_back(srv.port, "sensor-9"))
    # Alerts queued together go in one request: count alerts, not requests.
    end = time.monotonic() + 20
    while sum(len(r.json()) for r in threaded_receiver.receiver.requests) < 2:
        assert time.monotonic() < end, threaded_receiver.receiver.requests
        time.sleep(0.02)
    fire, back = [a for r in threaded_receiver.receiver.requests for a in check_postable_alerts(r.json())][:2]
    assert fire["labels"]["alertname"] == "TcpulseClientTimedOut" and fire["labels"]["client"] == "sensor-9"
    assert back["labels"] == fire["labels"] and back["endsAt"] < fire["endsAt"]
    while len(out.read_text().splitlines() if out.exists() else []) < 2:
        assert time.monotonic() < end
        time.sleep(0.05)
    # Commands run side by side (--on-event-concurrency): their order is not the events' order.
    events = [json.loads(ln) for ln in out.read_text().splitlines()]
    assert sorted((e["event"], e["status"], e["client"]) for e in events) == [
        ("back", "resolved", "sensor-9"), ("timeout", "firing", "sensor-9")]
    assert srv.terminate() == 0


def test_alert_counters_are_metrics(server_process: Any, tmp_path: Path) -> None:
    import urllib.request
    out = tmp_path / "events.jsonl"
    srv = server_process(*FAST, "--on-event", f"cat >> {out}", "--alert-on", "timeout", "--admin", "127.0.0.1:0")
    base = srv.wait_event("admin")["url"].rstrip("/")
    asyncio.run(silent_then_back(srv.port, "sensor-4"))
    end = time.monotonic() + 20
    while not (out.exists() and out.read_text().strip()):
        assert time.monotonic() < end
        time.sleep(0.05)
    metrics = ""
    while 'tcpulse_alerts_sent_total{sink="command"} 1.0' not in metrics:
        assert time.monotonic() < end, metrics[-2000:]
        with urllib.request.urlopen(base + "/metrics", timeout=10) as r:
            metrics = r.read().decode()
        time.sleep(0.05)
    assert 'tcpulse_alerts_dropped_total{sink="command"} 0.0' in metrics
    with urllib.request.urlopen(base + "/api/server", timeout=10) as r:
        alerts = json.loads(r.read())["alerts"]
    assert alerts["sent"] == 1 and alerts["sinks"][0]["name"] == "command"
    assert srv.terminate() == 0


def test_a_failing_webhook_is_a_warning_in_the_log_and_serving_goes_on(
        server_process: Any, threaded_receiver: ThreadedReceiver) -> None:
    threaded_receiver.receiver.answers = [500] * 3
    srv = server_process(*FAST, "--webhook", threaded_receiver.url, "--webhook-retries", "2",
                         "--webhook-secret", "k")
    srv.wait_event("alerts")

    async def scenario() -> bytes:
        c = await RawClient.open(srv.port)
        await c.hello("w1")
        await c.expect(b"BYE heartbeat-timeout")
        c.close()
        c = await RawClient.open(srv.port)
        await c.hello("w2")
        await c.send(b"PING p\n")
        pong = await c.expect(b"PONG")
        c.close()
        return pong
    assert asyncio.run(scenario()) == b"PONG p"
    w = srv.wait_event("warning", timeout=20)
    assert w["alerts"] == "failed" and w["count"] == 1 and "HTTP 500 (3 attempts)" in w["text"]
    assert w["sink"] == threaded_receiver.url
    srv.terminate()


def test_bad_alert_flags_are_one_line() -> None:
    for args, needle in [
        (["--webhook", "ftp://example.com/x"], "--webhook ftp://example.com/x: expected an http:// or https:// URL"),
        (["--webhook", "http://127.0.0.1:99999/"], "expected an http:// or https:// URL"),
        (["--on-event", "true", "--alert-on", "timeout,later"], "--alert-on later: unknown; choose from timeout"),
    ]:
        r = subprocess.run(tcpulse_cmd("serve", "--port", "0", "--db", "none", *args), capture_output=True,
                           text=True, timeout=30, stdin=subprocess.DEVNULL)
        assert r.returncode == 2 and r.stderr.count("\n") == 1, (args, r.stderr)
        assert needle in r.stderr, r.stderr


def test_the_text_log_says_where_alerts_go_and_never_the_secret_in_a_url(tmp_path: Path) -> None:
    p = subprocess.Popen(tcpulse_cmd("serve", "--port", "0", "--db", "none", "--webhook",
                                     "https://user:pw@hooks.example.com/t?key=abc", "--on-event", "notify --key s"),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                         cwd=tmp_path)
    try:
        assert p.stdout is not None
        line = ""
        while "Alerts on" not in line:
            line = p.stdout.readline()
            assert line, p.stderr.read() if p.stderr else ""
        assert "Alerts on back,timeout to: https://hooks.example.com/t (tcpulse), --on-event" in line
        assert "pw" not in line and "abc" not in line and "--key" not in line
    finally:
        p.terminate()
        p.wait(20)
