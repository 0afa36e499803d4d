"""HTTPS for the admin endpoint (issue 15, row 12), with certificates made in the test (trustme).

The API, the event stream and `tcpulse status` over TLS; plain HTTP to the TLS port gets nothing;
a connection that never finishes its handshake holds a place of the cap and is closed by the
header timeout; `serve --admin-tls-cert/--admin-tls-key` mistakes are one line.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme

from tcpulse.admin import listener as admin_listener
from tcpulse.admin.app import Admin
from tcpulse.admin.auth import admin_authorize
from tcpulse.admin.tls import admin_ssl_context
from tests.conftest import tcpulse_cmd


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def pem(ca: trustme.CA, tmp_path: Path) -> dict[str, str]:
    cert = ca.issue_cert("127.0.0.1", "localhost")
    paths = {"cert": tmp_path / "admin.crt", "key": tmp_path / "admin.key", "ca": tmp_path / "ca.pem"}
    paths["cert"].write_bytes(b"".join(p.bytes() for p in cert.cert_chain_pems))
    cert.private_key_pem.write_to_path(str(paths["key"]))
    ca.cert_pem.write_to_path(str(paths["ca"]))
    return {k: str(v) for k, v in paths.items()}


def client_ctx(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx


async def test_api_and_stream_over_https(start_server: Any, ca: trustme.CA, pem: dict[str, str]) -> None:
    srv = await start_server()
    admin = Admin(srv, "127.0.0.1", 0, ssl=admin_ssl_context(pem["cert"], pem["key"]),
                  authorize=admin_authorize("tls-tok"))
    await admin.start()
    try:
        assert admin.url.startswith("https://127.0.0.1:")
        auth = {"Authorization": "Bearer tls-tok"}
        async with aiohttp.ClientSession() as s:
            async with s.get(admin.url + "api/server", ssl=client_ctx(ca), headers=auth) as r:
                assert r.status == 200 and (await r.json())["admin"]["tls"] is True
            async with s.get(admin.url + "api/server", ssl=client_ctx(ca)) as r:
                assert r.status == 401  # TLS is not a token
            async with s.get(admin.url + "api/events/stream?token=tls-tok", ssl=client_ctx(ca)) as r:
                assert r.status == 200
                while not (line := await asyncio.wait_for(r.content.readline(), 10)).startswith(b"data: "):
                    pass
                assert json.loads(line[6:])["type"] == "hello"
            # An unknown CA is refused by the client, as it should be.
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                async with s.get(admin.url + "healthz", ssl=ssl.create_default_context()):
                    pass
        # Plain HTTP to the TLS port: no answer at all (nothing is served in clear text).
        r, w = await asyncio.open_connection("127.0.0.1", admin.port)
        w.write(b"GET /api/server HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        try:
            data = await asyncio.wait_for(r.read(), 10)
        except ConnectionError:
            data = b""
        assert b"HTTP/1" not in data and b"server_id" not in data
        w.close()
    finally:
        await admin.close()


async def test_a_handshake_never_started_holds_a_place_until_the_header_timeout(
        start_server: Any, pem: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(admin_listener, "HEADER_TIMEOUT", 0.5)
    monkeypatch.setattr(admin_listener, "SWEEP_EVERY", 0.1)
    srv = await start_server()
    admin = Admin(srv, "127.0.0.1", 0, ssl=admin_ssl_context(pem["cert"], pem["key"]))
    await admin.start()
    try:
        lst = admin.listener
        assert lst is not None
        loop = asyncio.get_running_loop()
        r, w = await asyncio.open_connection("127.0.0.1", admin.port)  # TCP only: no ClientHello
        end = loop.time() + 5
        while not lst.conns:
            assert loop.time() < end
            await asyncio.sleep(0.01)
        assert lst.figures()["connections"] == 1  # counted before any TLS
        t0 = loop.time()
        try:
            assert await asyncio.wait_for(r.read(), 10) == b""
        except ConnectionError:
            pass
        assert loop.time() - t0 < 5 and not lst.conns
        assert lst.counts["timed_out"] == 1
        w.close()
    finally:
        await admin.close()


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(tcpulse_cmd(*args), capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
                          env={**os.environ, **(env or {})})


def test_serve_admin_over_https_and_status_reads_it(server_process: Any, pem: dict[str, str]) -> None:
    proc = server_process("--admin", "127.0.0.1:0", "--admin-tls-cert", pem["cert"], "--admin-tls-key", pem["key"])
    url = proc.wait_event("admin")["url"]
    assert url.startswith("https://127.0.0.1:")
    # `tcpulse status` verifies the certificate with the CAs it is given (here SSL_CERT_FILE).
    r = run("status", "--admin", url, "--json", env={"SSL_CERT_FILE": pem["ca"]})
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["total"] == 0
    r = run("status", "--admin", url, "--json", env={"SSL_CERT_FILE": os.devnull})
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "CERTIFICATE_VERIFY_FAILED" in r.stderr, r.stderr
    # Or with --ca, as `connect --ca` (the system's CAs left out of it).
    r = run("status", "--admin", url, "--json", "--ca", pem["ca"], env={"SSL_CERT_FILE": os.devnull})
    assert r.returncode == 0 and json.loads(r.stdout)["total"] == 0, r.stderr
    r = run("status", "--admin", url, "--ca", os.devnull)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "--ca" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert proc.terminate() == 0


def test_serve_admin_tls_mistakes_are_one_line(pem: dict[str, str], tmp_path: Path) -> None:
    base = ["serve", "--port", "0", "--db", "none", "--admin", "127.0.0.1:0"]
    r = run(*base, "--admin-tls-cert", pem["cert"])
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--admin-tls-key" in r.stderr, r.stderr
    r = run(*base, "--admin-tls-cert", str(tmp_path / "nope.crt"), "--admin-tls-key", pem["key"])
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--admin-tls-cert" in r.stderr, r.stderr
    r = run(*base, "--admin-tls-cert", pem["key"], "--admin-tls-key", pem["cert"])  # swapped
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--admin-tls-cert" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    r = run(*base, "--admin-tls-cert", pem["cert"], "--lang", "zh")
    assert r.returncode == 2 and "--admin-tls-key" in r.stderr and "成对使用" in r.stderr, r.stderr
    # Without --admin there is no endpoint to serve over TLS: said, not ignored.
    r = run("serve", "--port", "0", "--db", "none", "--admin-tls-cert", pem["cert"], "--admin-tls-key", pem["key"])
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "needs --admin" in r.stderr, r.stderr
