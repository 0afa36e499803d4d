"""Real Redis and PostgreSQL servers for the cluster tests and benchmarks: each started on a free
loopback port in a temporary directory, and stopped by its own PID.

PostgreSQL refuses to run as root: it runs as `nobody` (setpriv), from a directory `nobody` owns.
The binaries are looked up on PATH and under /usr/lib/postgresql/*/bin (Debian keeps them there).
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

__all__ = ["Postgres", "Redis", "free_port", "have_postgres", "have_redis"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        p = os.path.join(d, name)
        if os.access(p, os.X_OK):
            return p
    return None


def have_redis() -> bool:
    return shutil.which("redis-server") is not None


def have_postgres() -> bool:
    return _pg_bin("initdb") is not None and _pg_bin("postgres") is not None


def _wait_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {port} within {timeout} s")


def _stop(proc: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    os.kill(proc.pid, sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(5)


class Redis:
    """`redis-server` on 127.0.0.1 with nothing persisted: a restart starts empty, as after a
    crash of a cache-only Redis (the harder case for the cluster: every key is gone)."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.dir = tempfile.mkdtemp(prefix="tcpulse-redis-")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> Redis:
        exe = shutil.which("redis-server")
        assert exe, "redis-server is not installed (bash scripts/setup.sh)"
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", self.dir, "--protected-mode", "yes", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        _wait_port(self.port, self.proc, "redis-server")
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        _stop(self.proc, sig)
        self.proc = None

    def close(self) -> None:
        self.stop(signal.SIGKILL)
        shutil.rmtree(self.dir, ignore_errors=True)


class Postgres:
    """A PostgreSQL cluster of its own (initdb) on 127.0.0.1, run as `nobody`, trust auth, fsync
    off (the tests test tcpulse, not the disk; `durable=True` keeps PostgreSQL's defaults, for
    benchmarks, and `synchronous_commit` sets that).  `url` names its `tcpulse` database."""

    def __init__(self, port: int | None = None, *, durable: bool = False,
                 synchronous_commit: str | None = None) -> None:
        self.port = port or free_port()
        self.durable = durable
        self.synchronous_commit = synchronous_commit if synchronous_commit is not None else (
            "on" if durable else "off")
        self.dir = tempfile.mkdtemp(prefix="tcpulse-pg-")
        os.chmod(self.dir, 0o755)
        self.data = os.path.join(self.dir, "data")
        self.proc: subprocess.Popen[bytes] | None = None
        self._as_nobody = os.geteuid() == 0

    @property
    def url(self) -> str:
        return f"postgresql://tcpulse@127.0.0.1:{self.port}/tcpulse"

    def _cmd(self, *args: str) -> list[str]:
        if not self._as_nobody:
            return list(args)
        return ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *args]

    def start(self) -> Postgres:
        initdb, postgres = _pg_bin("initdb"), _pg_bin("postgres")
        assert initdb and postgres, "PostgreSQL is not installed (bash scripts/setup.sh)"
        if not os.path.exists(self.data):
            if self._as_nobody:
                os.chown(self.dir, 65534, 65534)
            subprocess.run(self._cmd(initdb, "-D", self.data, "-U", "tcpulse", "--auth=trust", "-E", "UTF8",
                                     "--no-sync"), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           cwd=self.dir)
            created = True
        else:
            created = False
        log = open(os.path.join(self.dir, "log"), "ab")
        fast = [] if self.durable else ["-c", "fsync=off", "-c", "full_page_writes=off"]
        self.proc = subprocess.Popen(
            self._cmd(postgres, "-D", self.data, "-p", str(self.port), "-k", self.dir, "-c",
                      "listen_addresses=127.0.0.1", "-c", f"synchronous_commit={self.synchronous_commit}",
                      "-c", "max_connections=200", *fast),
            stdout=log, stderr=log, stdin=subprocess.DEVNULL, cwd=self.dir)
        log.close()
        _wait_port(self.port, self.proc, "postgres")
        if created:
            self._wait_ready()
            subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "tcpulse", "-d", "postgres",
                            "-q", "-c", "CREATE DATABASE tcpulse"], check=True, stdout=subprocess.DEVNULL)
        else:
            self._wait_ready("tcpulse")
        return self

    def _wait_ready(self, db: str = "postgres") -> None:
        end = time.monotonic() + 30
        while True:
            r = subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "tcpulse", "-d", db, "-qAt",
                                "-c", "SELECT 1"], capture_output=True)
            if r.returncode == 0:
                return
            if time.monotonic() > end:
                raise RuntimeError(f"postgres not ready: {r.stderr.decode()}")
            time.sleep(0.1)

    def psql(self, sql: str) -> str:
        r = subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "tcpulse", "-d", "tcpulse",
                            "-qAt", "-c", sql], check=True, capture_output=True)
        return r.stdout.decode().strip()

    def reset(self) -> None:
        """Drop every tcpulse table (each test starts from an empty database)."""
        self.psql("DROP TABLE IF EXISTS messages, sessions, timeouts, connections, runs, tcpulse_schema CASCADE")

    def stop(self, sig: int = signal.SIGINT) -> None:
        """SIGINT: PostgreSQL's fast shutdown (clients are cut off, nothing committed is lost)."""
        _stop(self.proc, sig)
        self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Postgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def repo_root() -> Path:
    return Path(__file__).resolve().parents[2]
