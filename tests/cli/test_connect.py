"""Tier 4: `tcpulse connect` as a user runs it: at a real terminal (a pseudo-terminal, with
prompt_toolkit), and the rough edges of issue 13 (one line for a refused connection, IPv6 in
brackets, one "Disconnected" on a revoke, one RTT line at start) and issue 15 (the token)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pty
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tcpulse.security.tokens import AuthFile
from tcpulse.server.events import MessageReceived
from tests.conftest import tcpulse_cmd


class Terminal:
    """`tcpulse connect` on a pseudo-terminal: what it shows is collected by a thread."""

    def __init__(self, *args: str) -> None:
        master, slave = pty.openpty()
        env = {**os.environ, "TERM": "xterm", "PROMPT_TOOLKIT_NO_CPR": "1", "LANG": "C.UTF-8", "COLUMNS": "80",
               "LINES": "24"}
        self.proc = subprocess.Popen(tcpulse_cmd("connect", *args), stdin=slave, stdout=slave, stderr=slave,
                                     close_fds=True, env=env, start_new_session=True)
        os.close(slave)
        self.master = master
        self.out = bytearray()
        self._lock = threading.Lock()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        while True:
            try:
                chunk = os.read(self.master, 65536)
            except OSError:
                return
            if not chunk:
                return
            with self._lock:
                self.out += chunk

    def text(self) -> str:
        with self._lock:
            return self.out.decode(errors="replace")

    async def wait_for(self, needle: str, timeout: float = 20) -> None:
        end = time.monotonic() + timeout
        while needle not in self.text():
            assert time.monotonic() < end, f"{needle!r} not shown; screen so far:\n{self.text()[-3000:]}"
            await asyncio.sleep(0.02)

    async def wait_for_count(self, needle: str, n: int, timeout: float = 20) -> None:
        end = time.monotonic() + timeout
        while self.text().count(needle) < n:
            assert time.monotonic() < end, f"{needle!r} not shown {n} times"
            await asyncio.sleep(0.02)

    async def type(self, keys: str) -> None:
        data = keys.encode()
        for i in range(0, len(data), 512):  # as a person (or a paste) would, not all at once
            os.write(self.master, data[i:i + 512])
            await asyncio.sleep(0.005)

    def close(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        with contextlib.suppress(OSError):
            os.close(self.master)


async def _received(got: list[MessageReceived], n: int, timeout: float = 20) -> None:
    end = time.monotonic() + timeout
    while len(got) < n:
        assert time.monotonic() < end, [m.payload[:40] for m in got]
        await asyncio.sleep(0.02)


async def test_at_a_terminal_long_lines_arrive_whole_and_notices_do_not_break_the_line(start_server: Any) -> None:
    srv = await start_server()
    got: list[MessageReceived] = []
    srv.subscribe(lambda e: got.append(e) if isinstance(e, MessageReceived) else None)
    term = Terminal("--port", str(srv.port), "--id", "tty-1")
    try:
        await term.wait_for("Enter a message to send ('exit' to quit):")
        # 1. A line longer than the terminal's canonical-mode limit (4,095 bytes) arrives whole.
        long_line = "".join(chr(ord("a") + i % 26) for i in range(5003))
        await term.type(long_line + "\r")
        await _received(got, 1)
        assert got[0].payload == long_line.encode() and got[0].seq == 1
        # 2. A notice from the server while a line is half typed goes above the prompt; the line
        #    being typed is kept as it was and sent whole.
        await term.type("partial")
        await term.wait_for("partial")
        assert srv.send("tty-1", "NOTICE-from-server")
        await term.wait_for("Message from the server: NOTICE-from-server")
        await term.type(" and the rest\r")
        await _received(got, 2)
        assert got[1].payload == b"partial and the rest"
        screen = term.text()
        notice = screen.index("Message from the server: NOTICE-from-server")
        # The notice is a line of its own: not glued to the typed text before or after it.
        assert "partialMessage" not in screen and "NOTICE-from-serverpartial" not in screen
        assert screen.rfind("partial") > notice  # the prompt and its line were drawn again below
        # 3. History: the up arrow brings the last line back.  prompt_toolkit loads the history
        #    of each new prompt in the background: press again until the line is drawn.
        await term.type("hist-1\r")
        await _received(got, 3)
        await asyncio.sleep(0.2)  # the accepted line's last redraw is done
        shown = term.text().count("hist-1")
        for _ in range(20):
            await term.type("\x1b[A")
            try:
                await term.wait_for_count("hist-1", shown + 1, timeout=1)
                break
            except AssertionError:
                continue
        await term.type("\r")
        await _received(got, 4)
        assert got[3].payload == b"hist-1"
        # 4. Ctrl-D quits cleanly.
        await term.type("\x04")
        for _ in range(1000):
            if term.proc.poll() is not None:
                break
            await asyncio.sleep(0.01)
        assert term.proc.returncode == 0, term.text()[-2000:]
        await term.wait_for("Disconnected from the server")
        assert term.text().count("Disconnected from the server") == 1
    finally:
        term.close()


def _closed_port(host: str = "127.0.0.1") -> socket.socket:
    """A socket bound and not listening: connections to its port are refused, and no other
    process gets the port meanwhile."""
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    s.bind((host, 0))
    return s


def _run(*args: str, env: dict[str, str] | None = None, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(tcpulse_cmd("connect", *args), capture_output=True, text=True, timeout=60,
                          input=input, stdin=None if input is not None else subprocess.DEVNULL,
                          env={**os.environ, "LANG": "C", **(env or {})})


def test_a_refused_connection_is_one_line_on_one_stream() -> None:
    with _closed_port() as held:
        port = held.getsockname()[1]
        r = _run("--port", str(port))  # no --id either: the made-up id is said only once signed in
    assert r.returncode == 1
    assert r.stdout == ""
    assert r.stderr == f"tcpulse: error: connection to 127.0.0.1:{port} refused: is the server running?\n"


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback here")
async def test_ipv6_addresses_are_written_in_brackets(start_server: Any) -> None:
    srv = await start_server(host="::1")
    r = await asyncio.to_thread(_run, "::1", "--port", str(srv.port), "--id", "six", input="hi\n")
    assert r.returncode == 0, r.stderr
    assert f"Connected to server [::1]:{srv.port} (" in r.stdout
    with _closed_port("::1") as held:
        port = held.getsockname()[1]
        r = await asyncio.to_thread(_run, "::1", "--port", str(port))
    assert r.stderr == f"tcpulse: error: connection to [::1]:{port} refused: is the server running?\n"


def test_rtt_is_said_once_at_start(server_process: Any) -> None:
    srv = server_process()
    r = _run("--port", str(srv.port), "--id", "rtt-1", "-v", input="one\n")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert sum(ln.startswith("RTT to the server") for ln in lines) == 1, lines
    i = next(i for i, ln in enumerate(lines) if ln.startswith("Signed in as rtt-1"))
    assert lines[i + 1].startswith("RTT to the server: ")
    assert lines[-1] == "Disconnected from the server" and r.stdout.count("Disconnected from the server") == 1


def _auth_server(server_process: Any, tmp_path: Path) -> tuple[Any, str, str]:
    path = str(tmp_path / "auth.tokens")
    token = AuthFile(path).add("sensor-1")
    return server_process("--auth-file", path), path, token


def test_a_revoked_client_says_disconnected_once(server_process: Any, tmp_path: Path) -> None:
    srv, path, token = _auth_server(server_process, tmp_path)
    p = subprocess.Popen(tcpulse_cmd("connect", "--port", str(srv.port), "--id", "sensor-1"),
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "LANG": "C", "TCPULSE_TOKEN": token})
    try:
        srv.wait_event("hello", client="sensor-1")
        AuthFile(path).revoke("sensor-1")
        p.wait(30)  # stdin stays open: the client ends because the server ended it
        assert p.stdout is not None and p.stderr is not None
        out, err = p.stdout.read(), p.stderr.read()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(10)
    assert p.returncode == 1, (out, err)
    assert "Server error 401: token revoked" in out
    assert out.count("Disconnected from the server") == 1, out
    assert err == ""  # the token came from the environment: no warning


def test_token_on_the_command_line_warns_and_token_file_is_the_way(server_process: Any, tmp_path: Path) -> None:
    srv, _path, token = _auth_server(server_process, tmp_path)
    r = _run("--port", str(srv.port), "--id", "sensor-1", "--token", token, input="by flag\n")
    assert r.returncode == 0, r.stderr
    assert r.stderr == ("tcpulse: warning: --token is visible to other users of this machine (ps); use "
                        "--token-file FILE or TCPULSE_TOKEN instead\n")
    tf = tmp_path / "sensor-1.token"
    tf.write_text(token + "\n")
    tf.chmod(0o600)
    r = _run("--port", str(srv.port), "--id", "sensor-1", "--token-file", str(tf), input="by file\n")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    texts = [srv.wait_event("message")["text"] for _ in range(2)]
    assert texts == ["by flag", "by file"]
    # A missing or empty file, or both ways at once: one line, exit 2, nothing sent.
    r = _run("--port", str(srv.port), "--id", "sensor-1", "--token-file", str(tmp_path / "none"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "cannot read --token-file" in r.stderr
    (tmp_path / "empty").write_text("\n")
    r = _run("--port", str(srv.port), "--id", "sensor-1", "--token-file", str(tmp_path / "empty"))
    assert r.returncode == 2 and "is empty" in r.stderr
    r = _run("--port", str(srv.port), "--id", "sensor-1", "--token-file", str(tf), "--token", token)
    assert r.returncode == 2 and r.stderr == "tcpulse: error: give the token with --token-file or --token, not both\n"
