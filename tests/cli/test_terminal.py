"""Tier 4: the server's terminal, in a real pseudo-terminal (os.openpty): the status table only when
something changed, Ctrl-C (the byte, through the terminal's line discipline) says the server
stopped; and piped output keeps the original exercise's table every --status-every."""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import select
import signal
import socket
import struct
import subprocess
import termios
import time

from tests.conftest import tcpulse_cmd

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
TABLE = "Current client connections:"


class Terminal:
    """`tcpulse ARGS` with a pseudo-terminal as its controlling terminal (stdin, stdout, stderr)."""

    def __init__(self, *args: str) -> None:
        self.master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))
        # The terminal's own size, as in a real session (not COLUMNS/LINES a test runner may have set).
        env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
        self.proc = subprocess.Popen(
            tcpulse_cmd(*args), stdin=slave, stdout=slave, stderr=slave, close_fds=True, env=env,
            start_new_session=True, preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0))
        os.close(slave)
        self.raw = b""

    @property
    def text(self) -> str:
        return ANSI.sub("", self.raw.decode(errors="replace")).replace("\r", "")

    def read_for(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            if select.select([self.master], [], [], min(left, 0.1))[0]:
                try:
                    chunk = os.read(self.master, 65536)
                except OSError:  # the other side is gone
                    return
                if not chunk:
                    return
                self.raw += chunk

    def wait_for(self, needle: str, timeout: float = 20.0, count: int = 1) -> str:
        end = time.monotonic() + timeout
        while self.text.count(needle) < count:
            assert time.monotonic() < end, f"{needle!r} x{count} not seen: {self.text[-3000:]}"
            self.read_for(0.1)
        return self.text

    def close(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        os.close(self.master)


def hello(port: int, id: str) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b'HELLO {"id":"' + id.encode() + b'"}\n')
    return s


def test_terminal_table_only_when_it_changed_and_ctrl_c_says_stopped() -> None:
    t = Terminal("serve", "--port", "0", "--db", "none", "--status-every", "0.1")
    try:
        m = re.search(r"listening on 127\.0\.0\.1:(\d+)", t.wait_for("Capacity:"))
        assert m, t.text
        port = int(m.group(1))
        t.read_for(1.0)  # ten status ticks with no client: nothing to show
        assert TABLE not in t.text
        a = hello(port, "tty-a")
        t.wait_for(TABLE)
        t.read_for(1.0)  # ten more ticks, nothing changed: the table is not repeated
        assert t.text.count(TABLE) == 1 and "tty-a" in t.text.split(TABLE)[1]
        head = t.text.split(TABLE)[1].split("\n")[:8]
        assert any("HEARTBEAT frames" in ln for ln in head) and any("any frame" in ln for ln in head), head
        b = hello(port, "tty-b")
        t.wait_for(TABLE, count=2)
        assert "tty-b" in t.text.split(TABLE)[2]
        a.close()
        t.wait_for(TABLE, count=3)  # one left
        os.write(t.master, b"\x03")  # Ctrl-C, as typed
        t.wait_for("Server stopped")
        assert t.proc.wait(20) == 0
        assert "Stopping (Ctrl-C): telling 1 client(s)" in t.text
        b.close()
    finally:
        t.close()


def test_piped_output_keeps_the_seed_style_table_every_tick() -> None:
    p = subprocess.Popen(tcpulse_cmd("serve", "--port", "0", "--db", "none", "--status-every", "0.1"),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    try:
        assert p.stdout is not None
        seen = ""
        end = time.monotonic() + 20
        while seen.count(f"{TABLE} 0") < 3:
            assert time.monotonic() < end, seen
            seen += p.stdout.readline()
        assert "=" * 50 in seen
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p.pid, signal.SIGINT)
        assert p.wait(20) == 0
        assert p.stdout is not None
        rest = p.stdout.read()
        assert "Stopping (Ctrl-C)" in rest and "Server stopped" in rest
