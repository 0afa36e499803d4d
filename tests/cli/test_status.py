"""`tcpulse serve --admin` and `tcpulse status` through real subprocesses, as a user runs them."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.conftest import tcpulse_cmd


def run(*args: str, timeout: float = 30, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(tcpulse_cmd(*args), capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})})


def hello(port: int, client_id: str, interval: float | None = None) -> socket.socket:
    """A client that signs in and then stays connected (and silent)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    f = s.makefile("rb")
    assert f.readline().startswith(b"INFO ")
    body: dict[str, Any] = {"id": client_id}
    if interval is not None:
        body["heartbeat_interval"] = interval
    s.sendall(b"HELLO " + json.dumps(body).encode() + b"\n")
    assert f.readline().startswith(b"OK ")
    return s


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_status_table_and_json(server_process: Any) -> None:
    srv = server_process("--admin", "127.0.0.1:0", "--heartbeat-interval", "0.2", "--heartbeat-timeout", "60")
    url = srv.wait_event("admin")["url"]
    assert url.startswith("http://127.0.0.1:")
    steady = hello(srv.port, "steady", interval=30)
    quiet = hello(srv.port, "quiet")  # 0.2 s interval and then silence: suspect after 0.3 s
    srv.wait_event("suspect", client="quiet")

    r = run("status", "--admin", url, "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    states = {c["id"]: c["state"] for c in data["clients"]}
    assert states == {"steady": "alive", "quiet": "suspect"}

    r = run("status", "--admin", url.removeprefix("http://").rstrip("/"), "--state", "suspect", "--json")
    assert [c["id"] for c in json.loads(r.stdout)["clients"]] == ["quiet"]

    r = run("status", "--admin", url)
    assert r.returncode == 0, r.stderr
    rows = [ln for ln in r.stdout.splitlines() if "steady" in ln or "quiet" in ln]
    assert len(rows) == 2
    assert "alive" in next(ln for ln in rows if "steady" in ln)
    assert "suspect" in next(ln for ln in rows if "quiet" in ln)
    assert "2 client(s), 1 alive, 1 suspect" in r.stdout

    r = run("status", "--admin", url, "--lang", "zh")
    assert "疑似超时" in r.stdout and "正常" in r.stdout

    # --watch redraws until Ctrl-C, then exits 0.
    p = subprocess.Popen(tcpulse_cmd("status", "--admin", url, "--watch", "--every", "0.2", "--json"),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    time.sleep(1.5)
    os.kill(p.pid, signal.SIGINT)
    out, err = p.communicate(timeout=10)
    assert p.returncode == 0, err
    snapshots = [json.loads(ln) for ln in out.splitlines() if ln.strip()]
    assert len(snapshots) >= 3
    assert all(s["total"] == 2 for s in snapshots)
    assert "Traceback" not in err
    steady.close()
    quiet.close()
    srv.terminate()


def test_status_when_admin_unreachable_says_so_in_one_line() -> None:
    port = free_port()
    r = run("status", "--admin", f"127.0.0.1:{port}")
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tcpulse: error: cannot reach the admin API"), r.stderr
    assert "--admin" in lines[0]
    r = run("status", "--admin", "ftp://x")
    assert r.returncode == 2 and r.stderr.count("\n") == 1


def test_serve_admin_errors_are_one_line(tmp_path: Path) -> None:
    r = run("serve", "--port", "0", "--admin", "127.0.0.1:http")
    assert r.returncode == 2
    assert r.stderr.startswith("tcpulse: error: --admin") and r.stderr.count("\n") == 1, r.stderr

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = run("serve", "--port", "0", "--admin", f"127.0.0.1:{port}", timeout=30)
    assert r.returncode == 1
    assert f"admin port {port} on 127.0.0.1 is already in use" in r.stderr and "Traceback" not in r.stderr

    # Without the admin extra installed: one line saying what to install.
    fake = tmp_path / "aiohttp"
    fake.mkdir()
    (fake / "__init__.py").write_text('raise ImportError("No module named \'aiohttp\'", name="aiohttp")\n')
    r = run("serve", "--port", "0", "--admin", "127.0.0.1:0", env={"PYTHONPATH": str(tmp_path)})
    assert r.returncode == 2
    assert "pip install 'tcpulse[admin]'" in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert "bash scripts/setup.sh" in r.stderr  # the README's set-up, in a checkout


def test_admin_stops_with_the_server(server_process: Any) -> None:
    srv = server_process("--admin", "127.0.0.1:0")
    url = srv.wait_event("admin")["url"]
    r = run("status", "--admin", url, "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["total"] == 0
    # A proxy in the environment (nothing listens on it) is not used for a loopback endpoint.
    proxy = f"http://127.0.0.1:{free_port()}"
    r = run("status", "--admin", url, "--json", env={"http_proxy": proxy, "HTTP_PROXY": proxy, "no_proxy": ""})
    assert r.returncode == 0 and json.loads(r.stdout)["total"] == 0, r.stderr
    assert srv.terminate() == 0
    r = run("status", "--admin", url)
    assert r.returncode == 1 and "cannot reach the admin API" in r.stderr


def test_loopback_means_this_machine_only() -> None:
    # The one predicate behind both `serve --admin` without a token (allowed on loopback only)
    # and `status` going around an http_proxy (which cannot reach this machine's loopback).
    from tcpulse.admin.auth import admin_bind_error, is_loopback_host
    for host in ("127.0.0.1", "127.5.6.7", "::1", "[::1]", "localhost", "LocalHost"):
        assert is_loopback_host(host), host
        assert admin_bind_error(host, None) is None, host
    for host in ("0.0.0.0", "::", "[::]", "10.0.0.1", "example.com", "localhost.example.com", ""):
        assert not is_loopback_host(host), host
        why = admin_bind_error(host, None)
        assert why is not None and f"--admin {host} is reachable from other machines" in why, host
        assert admin_bind_error(host, "s3cret") is None, host
