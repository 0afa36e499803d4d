"""Who may use the admin endpoint, and what it never says (issue 15, row 10), over real sockets.

- An `Authorization` header (or a `?token=`) that is not UTF-8 is a wrong token: 401, never 500.
- A malformed or oversized request that carries the token is answered 400 in one JSON line, and
  the token appears in no log and in no answer (aiohttp logged and echoed a bad request's first
  bytes).
- `?token=` is accepted on the event stream only (a browser's EventSource cannot send a header).
- Without a token, a request whose `Host` does not name the endpoint is refused (DNS rebinding).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from tcpulse.admin.auth import admin_authorize, admin_token_ok, host_allowed

TOKEN = "s3cret-Tok3n-0123456789abcdef"


async def raw_request(port: int, data: bytes, timeout: float = 10.0) -> tuple[int, bytes]:
    """Send `data` as is; the status and the whole answer (the server closes after it)."""
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(data)
    await w.drain()
    answer = b""
    try:
        while True:
            chunk = await asyncio.wait_for(r.read(65536), timeout)
            if not chunk:
                break
            answer += chunk
            if b"\r\n\r\n" in answer:
                head, _, body = answer.partition(b"\r\n\r\n")
                length = next((int(ln.split(b":")[1]) for ln in head.split(b"\r\n")
                               if ln.lower().startswith(b"content-length:")), None)
                if length is not None and len(body) >= length:
                    break
    except ConnectionError:
        pass
    w.close()
    status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.") else 0
    return status, answer


def body_json(answer: bytes) -> Any:
    return json.loads(answer.partition(b"\r\n\r\n")[2])


def test_token_check_takes_any_shape() -> None:
    assert admin_token_ok(f"Bearer {TOKEN}", TOKEN)
    for bad in ("Bearer \udcff\udcfe", "\udcc3(", "Bearer " + TOKEN + "\udc80", "Bearer", "", None,
                "bearer " + TOKEN, "Bearer  " + TOKEN):
        assert not admin_token_ok(bad, TOKEN), bad


@pytest.mark.parametrize(("header", "want"), [
    (None, True), ("127.0.0.1", True), ("127.0.0.1:8222", True), ("localhost:8222", True), ("LOCALHOST", True),
    ("[::1]:8222", True), ("127.0.0.2:1", True), ("evil.example", False), ("evil.example:8222", False),
    ("127.0.0.1.nip.io:8222", False), ("localhost.evil.example", False), ("[::1", False), ("", False),
    ("10.0.0.1:8222", False),
])
def test_host_allowed(header: str | None, want: bool) -> None:
    assert host_allowed(header, "127.0.0.1") is want


def test_host_allowed_names_the_bound_address() -> None:
    assert host_allowed("admin.internal:8222", "admin.internal")
    assert host_allowed("[fd00::5]:8222", "fd00::5")
    assert not host_allowed("other.internal:8222", "admin.internal")


async def test_non_utf8_authorization_is_401_not_500(start_server: Any, admin_for: Any) -> None:
    srv = await start_server()
    admin = await admin_for(srv, authorize=admin_authorize(TOKEN))
    for header in (b"Bearer \xff\xfe\x80", b"\xc3\x28", b"Bearer " + TOKEN.encode() + b"\xff",
                   "Bearer ключ".encode("cp1251")):
        status, answer = await raw_request(admin.port, b"GET /api/server HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                           b"Authorization: " + header + b"\r\nConnection: close\r\n\r\n")
        assert status == 401, answer
        assert "unauthorized" in body_json(answer)["error"]
    # Not UTF-8 in the stream's ?token= either.
    status, answer = await raw_request(admin.port, b"GET /api/events/stream?token=%ff%fe HTTP/1.1\r\n"
                                       b"Host: 127.0.0.1\r\nConnection: close\r\n\r\n")
    assert status == 401, answer
    lst = admin.listener
    assert lst is not None and lst.counts["internal_errors"] == 0


async def test_query_token_only_on_the_event_stream(start_server: Any, admin_for: Any) -> None:
    srv = await start_server()
    admin = await admin_for(srv, authorize=admin_authorize(TOKEN))
    for path in ("/api/clients", "/api/server", "/api/events", "/metrics"):
        status, _ = await raw_request(admin.port, f"GET {path}?token={TOKEN} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                                  f"Connection: close\r\n\r\n".encode())
        assert status == 401, path
        with_header = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
        status, _ = await raw_request(admin.port, (with_header + "Connection: close\r\n\r\n").encode())
        assert status == 200, path
    r, w = await asyncio.open_connection("127.0.0.1", admin.port)
    w.write(f"GET /api/events/stream?token={TOKEN} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    assert (await asyncio.wait_for(r.readline(), 10)).startswith(b"HTTP/1.1 200")
    w.close()


async def test_host_must_name_the_endpoint_without_a_token(start_server: Any, admin_for: Any) -> None:
    srv = await start_server()
    admin = await admin_for(srv)

    async def get(path: str, host: str | None, extra: str = "") -> int:
        head = f"GET {path} HTTP/1.1\r\n" + (f"Host: {host}\r\n" if host is not None else "")
        status, _ = await raw_request(admin.port, (head + extra + "Connection: close\r\n\r\n").encode())
        return status

    for path in ("/api/server", "/api/clients", "/", "/static/dashboard.js", "/metrics", "/api/events/stream"):
        assert await get(path, "rebind.evil.example:8222") == 403, path
    for host in (f"127.0.0.1:{admin.port}", f"localhost:{admin.port}", "localhost"):
        assert await get("/api/server", host) == 200, host
    # HTTP/1.0 without a Host (no browser sends that): served.
    status, _ = await raw_request(admin.port, b"GET /api/server HTTP/1.0\r\n\r\n")
    assert status == 200
    # A load balancer's health check, whatever it calls the machine.
    assert await get("/healthz", "lb-target.example") == 200
    status, answer = await raw_request(admin.port, b"GET /api/server HTTP/1.1\r\nHost: evil.example\r\n"
                                       b"Connection: close\r\n\r\n")
    assert "Host" in body_json(answer)["error"]

    # With a token, the token guards the endpoint, whatever name it is reached by.
    tokened = await admin_for(srv, authorize=admin_authorize(TOKEN))
    status, _ = await raw_request(tokened.port, f"GET /api/server HTTP/1.1\r\nHost: admin.example\r\n"
                                                f"Authorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n".encode())
    assert status == 200


def test_no_token_in_any_log_or_answer(server_process: Any) -> None:
    # aiohttp answered and logged (on stderr) the first bytes of a request it could not parse:
    # an oversized request carrying the admin token put the token in the server's log.
    import socket
    pytest.importorskip("aiohttp")
    proc = server_process("--admin", "127.0.0.1:0", env={"TCPULSE_ADMIN_TOKEN": TOKEN})
    port = int(proc.wait_event("admin")["url"].rstrip("/").rsplit(":", 1)[1])
    bad_requests = [
        # a header line longer than allowed, after the token
        f"GET /api/server HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\nX-Pad: {'a' * 10000}\r\n\r\n",
        # the token's own header longer than allowed (aiohttp quoted its first 100 bytes)
        f"GET /api/server HTTP/1.1\r\nAuthorization: Bearer {TOKEN}{'c' * 10000}\r\n\r\n",
        # a request line longer than allowed, the token in it
        f"GET /api/events/stream?token={TOKEN}&pad={'b' * 10000} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        # not HTTP at all
        f"\x16\x03\x01 Bearer {TOKEN}\r\n\r\n",
        # too many headers
        f"GET / HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\n" + "X-A: 1\r\n" * 200 + "\r\n",
        # a bad header name
        f"GET / HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\nBad Header: x\r\n\r\n",
    ]
    for req in bad_requests:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(req.encode())
            answer = b""
            try:
                while chunk := s.recv(65536):
                    answer += chunk
            except ConnectionError:
                pass
        assert answer.split(b" ", 2)[1:2] == [b"400"], (req[:40], answer[:200])
        assert TOKEN.encode() not in answer
        assert b'{"error": "bad request' in answer
    assert proc.terminate() == 0
    out = json.dumps(proc.events) + json.dumps(proc.rest_of_stdout())
    err = proc.stderr_now()
    assert TOKEN not in out and TOKEN not in err, err[-2000:]
    assert "Traceback" not in err
