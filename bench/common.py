"""What the benchmark scripts share: a free loopback port, waiting for a server to listen,
reading a process's memory from /proc, percentiles, and reading a server's JSON log."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from typing import IO, Any


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes] | None = None, timeout: float = 20.0) -> None:
    """Return once something listens on 127.0.0.1:`port`; RuntimeError if `proc` exits first or
    nothing listens within `timeout` seconds."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {timeout:g} s")


def pct(values: list[float], q: float) -> float | None:
    """The `q`-th percentile of `values` (sorted), rounded to 0.01; None if there are none."""
    return round(values[min(len(values) - 1, int(len(values) * q / 100))], 2) if values else None


def timeout_lateness_ms(log_path: str) -> list[float]:
    """The `late_by` of every `timeout` event in a server's JSON log file, in ms, sorted: the
    server's own lateness (declared dead against the deadline, by its clock)."""
    out: list[float] = []
    with open(log_path, "rb") as f:
        for line in f:
            if b'"event":"timeout"' in line or b'"event": "timeout"' in line:
                try:
                    out.append(float(json.loads(line)["late_by"]) * 1000)
                except (ValueError, KeyError):
                    continue
    return sorted(out)


def proc_status(pid: int, key: str) -> int:
    """A `kB` figure of /proc/PID/status (VmRSS, VmHWM, ...) in bytes; 0 if unreadable."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


_TAP = r"""
import os, sys
# Whole chunks, not lines: a server printing every message writes hundreds of MB a second.
n = size = 0
rest = b""
out = sys.stdout.buffer
while True:
    chunk = os.read(0, 1 << 20)
    if not chunk:
        break
    n += chunk.count(b"\n")
    size += len(chunk)
    data = rest + chunk
    cut = data.rfind(b"\n") + 1
    rest = data[cut:]
    if b'"event":"timeout"' in data or b"lines were dropped" in data:
        for line in data[:cut].split(b"\n"):
            if b'"event":"timeout"' in line or b"lines were dropped" in line:
                out.write(line + b"\n")
        out.flush()
out.write(b"LINES %d %d\n" % (n, size))
"""


class LogTap:
    """Reads a server's log (`stdout`, a pipe) in a process of its own, so that a busy benchmark
    process never slows the server by not reading: passes on only the `timeout` events (JSON log)
    and the dropped-lines notices (either log), and counts every line and byte."""

    def __init__(self, stdout: IO[bytes]) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", _TAP], stdin=stdout, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL)
        stdout.close()
        self.timeouts: list[dict[str, Any]] = []
        self.dropped = 0
        self.lines = 0
        self.bytes = 0
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith(b"LINES "):
                self.lines, self.bytes = (int(x) for x in line.split()[1:3])
                continue
            if not line.startswith(b"{"):  # the text log's notice: "... N log lines were dropped: ..."
                words = line.split(b" log lines were dropped", 1)[0].split()
                self.dropped += int(words[-1]) if words and words[-1].isdigit() else 0
                continue
            ev = json.loads(line)
            if ev.get("event") == "timeout":
                self.timeouts.append(ev)
            elif ev.get("dropped_lines"):
                self.dropped += int(ev["dropped_lines"])

    def wait(self, timeout: float = 30.0) -> None:
        """After the server stopped: wait for the last lines."""
        self.proc.wait(timeout)
        time.sleep(0.1)
