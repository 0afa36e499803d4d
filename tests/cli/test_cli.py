"""Tier 4: the `tcpulse` command through real subprocesses, as a user runs it."""

from __future__ import annotations

import asyncio
import os
import queue
import re
import signal
import socket
import subprocess
import threading
import time
from typing import Any

from tests.conftest import MS, RawClient, tcpulse_cmd


def run(*args: str, input: bytes | None = None, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(tcpulse_cmd(*args), input=input.decode() if input is not None else None,
                          capture_output=True, text=True, timeout=timeout,
                          stdin=None if input is not None else subprocess.DEVNULL)


def test_python_m_and_version() -> None:
    r = run("--version")
    assert r.returncode == 0 and "tcpulse" in r.stdout


def test_piped_client_delivers_every_line_and_exits_0(server_process: Any) -> None:
    srv = server_process()
    r = run("connect", "--port", str(srv.port), "--id", "piped", input="a\nb\nHEARTBEAT\n你好\n".encode())
    assert r.returncode == 0, r.stderr
    assert "Connected to server" in r.stdout
    got = []
    while len(got) < 4:
        ev = srv.wait_event("message")
        got.append((ev["client"], ev["seq"], ev["text"]))
    assert got == [("piped", 1, "a"), ("piped", 2, "b"), ("piped", 3, "HEARTBEAT"), ("piped", 4, "你好")]
    d = srv.wait_event("disconnect", client="piped")
    assert d["reason"] == "bye"
    assert srv.terminate() == 0


def test_client_without_id_makes_one_and_says_so(server_process: Any) -> None:
    srv = server_process()
    r = run("connect", "--port", str(srv.port), input=b"x\n")
    assert r.returncode == 0, r.stderr
    m = re.search(r"No --id given: this client is (\S+)", r.stdout)
    assert m is not None
    assert srv.wait_event("hello")["client"] == m.group(1)
    srv.terminate()


def test_exit_quits_cleanly(server_process: Any) -> None:
    srv = server_process()
    r = run("connect", "--port", str(srv.port), "--id", "ex", input=b"one\nexit\nnever sent\n")
    assert r.returncode == 0
    assert srv.wait_event("message")["text"] == "one"
    assert srv.wait_event("disconnect")["reason"] == "bye"
    srv.terminate()
    assert not any(e.get("text") == "never sent" for e in srv.rest_of_stdout())


def test_seed_demo_is_timed_out_after_its_third_beat(server_process: Any) -> None:
    # The original demo, scaled: interval I, timeout 2I; the client beats at 0, I, 2I, then 20I.
    interval = 300 * MS
    srv = server_process("--heartbeat-interval", str(interval), "--heartbeat-timeout", str(2 * interval), "-v")
    t0 = time.monotonic()
    r = run("connect", "--port", str(srv.port), "--id", "seed", "--seed-demo", timeout=60)
    elapsed = time.monotonic() - t0
    assert r.returncode == 1
    assert [ln for ln in r.stdout.splitlines() if ln.startswith("Sent heartbeat")] == [
        "Sent heartbeat #1", "Sent heartbeat #2", "Sent heartbeat #3"]
    assert "heartbeat timeout" in r.stdout
    beats = [e for e in srv.events if e["event"] == "heartbeat"]
    to = srv.wait_event("timeout", client="seed")
    beats = [e for e in srv.events if e["event"] == "heartbeat"]
    assert len(beats) == 3
    assert to["silent_for"] >= 2 * interval
    assert elapsed < 20 * interval  # it never reached its 4th beat
    srv.terminate()


def test_sigterm_sends_bye_shutdown_and_exits_0(server_process: Any) -> None:
    srv = server_process()

    async def scenario() -> list[bytes]:
        c = await RawClient.open(srv.port)
        await c.hello("stay")
        os.kill(srv.proc.pid, signal.SIGTERM)
        return await c.lines_until_eof(timeout=10)
    lines = asyncio.run(scenario())
    assert b"BYE shutdown" in lines
    assert srv.proc.wait(10) == 0
    assert any(e["event"] == "disconnect" and e["reason"] == "shutdown" for e in srv.rest_of_stdout())


def test_port_zero_says_which_port_and_text_log(tmp_path: Any) -> None:
    p = subprocess.Popen(tcpulse_cmd("serve", "--port", "0", "--status-every", "0.2"), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        assert p.stdout is not None
        first = p.stdout.readline()
        stamp = r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\] "
        m = re.match(stamp + r"Server started, listening on 127\.0\.0\.1:(\d+)$", first.strip())
        assert m, first
        port = int(m.group(1))
        assert "Heartbeat threshold: 10 s" in p.stdout.readline()
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(b'HELLO {"id":"tbl"}\n')
            deadline = time.monotonic() + 10
            seen = ""
            while "Client tbl |" not in seen:
                assert time.monotonic() < deadline, seen
                seen += p.stdout.readline()
            row = next(ln for ln in seen.splitlines() if ln.startswith("Client tbl"))
            assert "state: alive" in row and "address 127.0.0.1:" in row
    finally:
        os.kill(p.pid, signal.SIGTERM)
        p.wait(10)


def test_quiet_shows_only_warnings(server_process: Any) -> None:
    srv = server_process("-q", "--heartbeat-interval", str(100 * MS), "--heartbeat-timeout", str(200 * MS))

    async def scenario() -> None:
        c = await RawClient.open(srv.port)
        await c.hello("q")
        await c.send(b"MSG 1\nx\n")
        await c.expect(b"BYE")
    asyncio.run(scenario())
    ev = srv.next_event()
    while ev["event"] == "capacity":  # a start-up line, like "listening"
        ev = srv.next_event()
    assert ev["event"] == "suspect"  # connect, hello and message were not shown
    assert srv.next_event()["event"] == "timeout"
    srv.terminate()


def test_port_in_use_is_one_clear_line() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = run("serve", "--port", str(port))
    assert r.returncode != 0
    assert r.stderr.strip().count("\n") == 0, r.stderr
    assert f"port {port}" in r.stderr and "already in use" in r.stderr and "--port" in r.stderr
    assert "Traceback" not in r.stderr


def test_connection_refused_is_one_clear_line() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: refused
        r = run("connect", "--port", str(port), "--no-reconnect", input=b"")
    assert r.returncode == 1
    assert "is the server running?" in r.stderr and "Traceback" not in r.stderr + r.stdout


def _unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _WaitingClient:
    """`tcpulse connect --wait` to a port where nothing listens yet, its stdout read line by line."""

    def __init__(self, port: int, client_id: str, stdin: int) -> None:
        self.p = subprocess.Popen(tcpulse_cmd("connect", "--wait", "--port", str(port), "--id", client_id),
                                  stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.seen: list[str] = []
        self._q: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.p.stdout is not None
        for line in self.p.stdout:
            self._q.put(line)
        self._q.put(None)

    def wait_line(self, needle: str, timeout: float = 10) -> str:
        end = time.monotonic() + timeout
        while True:
            line = self._q.get(timeout=max(0.01, end - time.monotonic()))
            assert line is not None, f"exited before {needle!r}: {self.seen}"
            self.seen.append(line)
            if needle in line:
                return line

    def __enter__(self) -> _WaitingClient:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait(10)


def test_connect_wait_keeps_trying_until_the_server_is_up(server_process: Any) -> None:
    port = _unused_port()
    with _WaitingClient(port, "early", subprocess.PIPE) as c:
        assert "is the server running?" in c.wait_line("trying again until it answers")
        srv = server_process("--port", str(port))
        assert c.p.stdin is not None
        c.p.stdin.write("first words\n")
        c.p.stdin.close()
        c.wait_line("Signed in as early")
        assert c.p.wait(30) == 0
        assert srv.wait_event("message")["text"] == "first words"
        srv.terminate()


def test_connect_wait_stops_cleanly_on_ctrl_c() -> None:
    with _WaitingClient(_unused_port(), "patient", subprocess.DEVNULL) as c:
        c.wait_line("trying again until it answers")
        os.kill(c.p.pid, signal.SIGINT)
        assert c.p.wait(10) == 1
        c.wait_line("Stopped before the server answered")
        assert c.p.stderr is not None
        assert "Traceback" not in c.p.stderr.read()


def test_bad_flag_values() -> None:
    for args, needle in [
        (["serve", "--heartbeat-interval", "0"], "greater than 0"),
        (["serve", "--heartbeat-interval", "5", "--heartbeat-timeout", "4"], "longer than --heartbeat-interval"),
        (["serve", "--port", "70000"], "--port"),
        (["serve", "--host", "203.0.113.1", "--port", "0"], "not an address of this machine"),
        (["connect", "--id", "bad id"], "not valid"),
        (["serve", "-v", "-q"], "choose one"),
    ]:
        r = run(*args)
        assert r.returncode != 0, args
        assert needle in r.stderr, (args, r.stderr)
        assert "Traceback" not in r.stderr


def test_client_reports_dead_server_with_no_reconnect(tmp_path: Any) -> None:
    # A "server" that sends INFO and OK and then stays silent: the client PINGs, hears nothing,
    # and gives up within its timeout.
    import threading
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen()
    port = ls.getsockname()[1]

    def mute() -> None:
        conn, _ = ls.accept()
        conn.sendall(b'INFO {"proto":1,"heartbeat_interval":0.3,"heartbeat_timeout":0.6}\n')
        conn.recv(4096)
        conn.sendall(b'OK {"id":"d","heartbeat_interval":0.3,"heartbeat_timeout":0.6,"acked":0}\n')
        time.sleep(8)
        conn.close()
    t = threading.Thread(target=mute, daemon=True)
    t.start()
    p = subprocess.Popen(tcpulse_cmd("connect", "--port", str(port), "--id", "d", "--no-reconnect"),
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t0 = time.monotonic()
    out, _err = p.communicate(timeout=20)
    assert p.returncode == 1
    assert "no answer from the server" in out
    assert time.monotonic() - t0 < 7
    ls.close()


def test_no_client_is_judged_before_its_deadline(server_process: Any) -> None:
    # `serve` runs on uvloop when installed, whose timers can fire up to a millisecond early; the
    # server waits out the rest, so no silence is ever reported shorter than the timeout.
    # (That the figures are finer than uvloop's clock: tests/server/test_event_loop.py.)
    timeout = 200 * MS
    srv = server_process("--heartbeat-interval", str(timeout / 2), "--heartbeat-timeout", str(timeout))

    async def scenario() -> None:
        cs = [await RawClient.open(srv.port) for _ in range(6)]
        for i, c in enumerate(cs):
            await c.hello(f"fine{i}")
            await asyncio.sleep(0.0037)
        for c in cs:
            await c.expect(b"BYE")
    asyncio.run(scenario())
    for _ in range(6):
        ev = srv.wait_event("timeout")
        assert ev["silent_for"] >= timeout
        assert 0 <= ev["late_by"] < 1.0
    srv.terminate()


def test_connect_refuses_an_outbox_of_another_id(tmp_path: Any) -> None:
    # The client package decides (Outbox.check_owner); the command line prints one line, before
    # it tries to connect (nothing listens on the port).
    from tcpulse.client.outbox import SQLiteOutbox
    path = str(tmp_path / "c.outbox")
    box = SQLiteOutbox(path)
    box.bind("boxed")
    box.close()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = subprocess.run(tcpulse_cmd("connect", "--port", str(port), "--id", "other", "--outbox", path),
                       capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert r.returncode == 1
    assert r.stderr == (f"tcpulse: error: outbox {path} belongs to client id boxed: use --id boxed or another "
                        "--outbox\n")
