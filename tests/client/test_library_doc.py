"""docs/library.md's examples run as written: the monitor (an embedded server) and the agent (a
client with an outbox file), as two processes on loopback, stopped by SIGTERM as systemd would;
and every other Python snippet of the guide at least compiles."""

from __future__ import annotations

import ast
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "library.md"
_BLOCK = re.compile(r"(?:<!-- example: (\w+) -->\n)?```python\n(.*?)```", re.S)


def blocks() -> list[tuple[str | None, str]]:
    return [(m.group(1), m.group(2)) for m in _BLOCK.finditer(DOC.read_text())]


class Program:
    """One example as a process; its stdout read line by line by a thread."""

    def __init__(self, code: str, cwd: Path, port: int) -> None:
        path = cwd / "example.py"
        path.write_text(code)
        self.proc = subprocess.Popen([sys.executable, str(path)], cwd=cwd, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                                     env={**os.environ, "TCPULSE_PORT": str(port)})
        self.lines: list[str] = []
        self._q: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._q.put(line.rstrip("\n"))
        self._q.put(None)

    def wait_line(self, pattern: str, timeout: float = 20) -> str:
        end = time.monotonic() + timeout
        while True:
            try:
                line = self._q.get(timeout=max(0.01, end - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no line matching {pattern!r} in {timeout} s: {self.lines}") from None
            assert line is not None, f"exited before {pattern!r}: {self.lines}, {self.stderr()}"
            self.lines.append(line)
            if re.search(pattern, line):
                return line

    def stop(self) -> int:
        """SIGTERM, wait for the exit, and take the rest of its output into `lines`."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
        code = self.proc.wait(20)
        while (line := self._q.get(timeout=10)) is not None:
            self.lines.append(line)
        return code

    def stderr(self) -> str:
        return "" if self.proc.poll() is None or self.proc.stderr is None else self.proc.stderr.read()

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_every_snippet_compiles() -> None:
    found = blocks()
    assert {name for name, _ in found} >= {"agent", "monitor"}
    for _name, code in found:
        compile(code, str(DOC), "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True)


def test_the_agent_and_the_monitor_run_as_written(tmp_path: Path) -> None:
    code = {name: text for name, text in blocks() if name}
    port = _free_port()
    (tmp_path / "monitor").mkdir()
    (tmp_path / "agent").mkdir()
    monitor = Program(code["monitor"], tmp_path / "monitor", port)
    agent: Program | None = None
    try:
        monitor.wait_line(rf"^listening on port {port}$")
        agent = Program(code["agent"], tmp_path / "agent", port)
        monitor.wait_line(r"^agent-1 signed in, session \S+$")
        for n in (1, 2, 3):
            assert re.fullmatch(r'reply: got \{"n": ' + str(n) + r', "at": [0-9.]+\}', agent.wait_line(r"^reply: "))
        assert agent.stop() == 0, agent.stderr()
        assert agent.lines[-1] == "stopped: every report acknowledged", agent.lines
        assert agent.stderr() == ""
        monitor.wait_line(r"^agent-1 left: bye$")
        said = [ln for ln in monitor.lines if ln.startswith("agent-1 says")]
        assert said[:3] == [ln.replace("reply: got ", "agent-1 says ") for ln in agent.lines[:3]]
        assert (tmp_path / "agent" / "agent-1.outbox").exists()  # its session and outbox, for next time
    finally:
        if agent is not None:
            agent.kill()
        code_ = monitor.stop()
    assert code_ == 0 and monitor.lines[-1] == "monitor stopped", (monitor.lines, monitor.stderr())
