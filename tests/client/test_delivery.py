"""Nothing lost: real `tcpulse serve --db` and `tcpulse connect` processes on loopback, killed -9.

Each test counts what ended up in the server's database: every line the client accepted is
stored exactly once, in order, none missing.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from tests.conftest import ServerProcess, tcpulse_cmd


def free_port() -> int:
    # The restarted server must come back on the same port, where the client looks for it.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stored(db: Path, client: str) -> list[tuple[int, bytes]]:
    con = sqlite3.connect(db)
    try:
        return con.execute("SELECT m.seq, m.payload FROM messages m JOIN sessions s ON s.id = m.session_id "
                           "WHERE s.client_id = ? ORDER BY m.id", (client,)).fetchall()
    finally:
        con.close()


def wait_until(pred: Any, timeout: float = 20.0, what: str = "condition") -> None:
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            raise AssertionError(f"{what}: not met within {timeout} s")
        time.sleep(0.02)


class ClientProcess:
    """`tcpulse connect` with a pipe for stdin; its output is collected by a thread."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(tcpulse_cmd("connect", *args), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.out: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.out.append(line.rstrip("\n"))

    @property
    def stdin(self) -> IO[str]:
        assert self.proc.stdin is not None
        return self.proc.stdin

    def send_lines(self, lines: list[str], pause_every: int = 0, pause: float = 0.0) -> None:
        for i, ln in enumerate(lines, 1):
            self.stdin.write(ln + "\n")
            if pause_every and i % pause_every == 0:
                self.stdin.flush()
                time.sleep(pause)
        self.stdin.flush()

    def finish(self, timeout: float = 30.0) -> int:
        with contextlib.suppress(BrokenPipeError):
            self.stdin.close()
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


@pytest.fixture
def clients() -> Iterator[Any]:
    procs: list[ClientProcess] = []

    def start(*args: str) -> ClientProcess:
        p = ClientProcess(*args)
        procs.append(p)
        return p
    yield start
    for p in procs:
        p.kill()


def lines(first: int, last: int) -> list[str]:
    return [f"line-{i:05d}" for i in range(first, last + 1)]


def expect_all(db: Path, client: str, n: int) -> None:
    got = stored(db, client)
    assert len(got) == n, f"{len(got)} stored, want {n}"
    assert [s for s, _ in got] == list(range(1, n + 1))  # once each, in order, none missing
    assert [p.decode() for _, p in got] == lines(1, n)


@pytest.mark.slow
def test_server_killed_mid_stream_client_reconnects_nothing_lost(
        server_process: Any, clients: Any, tmp_path: Path) -> None:
    db = tmp_path / "srv.db"
    port = free_port()
    srv = server_process("-q", "--db", str(db), "--port", str(port))
    c = clients("127.0.0.1", "--port", str(port), "--id", "streamer")
    total = 3000
    feeder = threading.Thread(target=c.send_lines, args=(lines(1, total), 20, 0.02), daemon=True)
    feeder.start()
    wait_until(lambda: len(stored(db, "streamer")) >= 300, what="first messages stored")
    srv.kill()  # kill -9 while the client streams
    killed_at = len(stored(db, "streamer"))
    time.sleep(0.3)
    srv2 = ServerProcess("-q", "--db", str(db), "--port", str(port))
    try:
        feeder.join(60)
        assert c.finish() == 0, "\n".join(c.out)
        expect_all(db, "streamer", total)
    finally:
        srv2.kill()
    # History: the connection the killed server had open ended with it.
    con = sqlite3.connect(db)
    ends = [r[0] for r in con.execute("SELECT end_reason FROM connections WHERE client_id = 'streamer' ORDER BY id")]
    con.close()
    assert ends[0] == "server-gone", ends
    assert killed_at < total  # the kill really happened mid-stream
    out = "\n".join(c.out)
    assert "Connection lost" in out and "Reconnected after" in out, out
    assert out.count("Connection lost") == 1, out  # one line for the drop, not one per attempt


@pytest.mark.slow
@pytest.mark.parametrize("server_fate", ["resumed", "killed"])
def test_client_killed_with_unacked_messages_delivers_them_after_restart(
        server_process: Any, clients: Any, tmp_path: Path, server_fate: str) -> None:
    db = tmp_path / "srv.db"
    box = tmp_path / "client.outbox"
    port = str(free_port())
    srv = server_process("-q", "--db", str(db), "--port", port)
    c = clients("127.0.0.1", "--port", port, "--id", "boxed", "--outbox", str(box))
    c.send_lines(lines(1, 200))
    wait_until(lambda: len(stored(db, "boxed")) == 200, what="first 200 stored")
    # Freeze the server so that nothing more is acknowledged, then kill the client with 200
    # messages on its disk and (maybe) on the wire.
    os.kill(srv.proc.pid, signal.SIGSTOP)
    try:
        c.send_lines(lines(201, 400))

        def outbox_has(n: int) -> bool:
            con = sqlite3.connect(box)
            try:
                row = con.execute("SELECT count(*), max(seq) FROM pending").fetchone()
            finally:
                con.close()
            return bool(row[0] == 200 and row[1] == n)
        wait_until(lambda: outbox_has(400), what="client kept 201..400 in its outbox")
        c.kill()
        if server_fate == "killed":
            # What was on the wire dies with the server: 201..400 now exist only in the outbox,
            # so the restarted client must send them itself.
            srv.kill()
    finally:
        if srv.proc.poll() is None:
            os.kill(srv.proc.pid, signal.SIGCONT)
    if server_fate == "killed":
        assert len(stored(db, "boxed")) == 200
        server_process("-q", "--db", str(db), "--port", port)
    # "resumed": the server reads what the killed client had sent (201..400, maybe committed
    # before the restarted client signs in); the outbox's copies must then not be stored twice.
    # Started again with the same outbox and no --id, it continues the same id and session.
    c2 = clients("127.0.0.1", "--port", port, "--outbox", str(box))
    assert c2.finish() == 0, "\n".join(c2.out)
    expect_all(db, "boxed", 400)
    out = "\n".join(c2.out)
    assert "200 message(s) not acknowledged last time" in out, out
    con = sqlite3.connect(box)
    assert con.execute("SELECT count(*) FROM pending").fetchone()[0] == 0
    con.close()
    # A third run with a different id is refused in one line: the session belongs to "boxed".
    r = subprocess.run(tcpulse_cmd("connect", "--port", port, "--id", "other", "--outbox", str(box)),
                       capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert r.returncode != 0 and r.stderr.count("\n") == 1 and "belongs to client id boxed" in r.stderr


@pytest.mark.slow
def test_exit_with_unacknowledged_messages_says_so(server_process: Any, clients: Any, tmp_path: Path) -> None:
    # `exit` waits for the server's ACKs; when they do not come (a frozen server), it says what
    # is left and where it is kept, and exits non-zero instead of pretending all went well.
    srv = server_process("-q", "--db", str(tmp_path / "srv.db"))
    box = tmp_path / "left.outbox"
    c = clients("127.0.0.1", "--port", str(srv.port), "--id", "leaver", "--outbox", str(box))
    c.send_lines(["first"])
    wait_until(lambda: len(stored(tmp_path / "srv.db", "leaver")) == 1, what="first stored")
    os.kill(srv.proc.pid, signal.SIGSTOP)
    try:
        c.send_lines(["second", "third", "exit"])
        rc = c.proc.wait(30)
    finally:
        os.kill(srv.proc.pid, signal.SIGCONT)
    out = "\n".join(c.out)
    assert rc == 1, out
    assert f"2 message(s) not acknowledged yet are kept in {box}" in out, out
    con = sqlite3.connect(box)
    assert [r[0] for r in con.execute("SELECT payload FROM pending ORDER BY seq")] == [b"second", b"third"]
    con.close()
