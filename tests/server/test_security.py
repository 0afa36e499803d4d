"""Security: per-client tokens, TLS and mutual TLS, the token command, the admin-bind check, and
the pure policies behind them (ratelimit.FrameRate, auth.FailureDelay).

TLS certificates are made in the test with trustme (a real CA, real certificates, real TLS over
loopback).  Nothing here sleeps for long: timeouts are in MS (conftest.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import os
import ssl
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import trustme

from tcpulse.admin.auth import admin_bind_error, admin_token_ok
from tcpulse.client.client import Client
from tcpulse.client.errors import ConnectError, ServerError
from tcpulse.policy.ratelimit import FailureDelay, FrameRate, TokenBucket
from tcpulse.security.tls import client_ssl_context
from tcpulse.security.tokens import AuthFile, AuthFileError, token_digest
from tcpulse.server.config import ServerConfig
from tcpulse.server.events import Warning_
from tcpulse.server.server import Server
from tests.conftest import MS, RawClient, tcpulse_cmd

# ------------------------------------------------------------------------------ pure policies


def test_token_bucket_refills_with_time_passed_in() -> None:
    b = TokenBucket(rate=10, burst=5, now=0.0)
    assert b.take(0.0, 7) == 5  # starts full, holds at most the burst
    assert b.take(0.0) == 0
    assert b.take(0.25, 3) == 2  # 0.25 s x 10/s
    assert b.take(100.0, 10) == 5  # never more than the burst


def test_frame_rate_strikes_then_close() -> None:
    fr = FrameRate(0.0, frames_per_sec=100, pings_per_sec=2, max_strikes=2)
    v = fr.admit(0.0, frames=3, pings=3)
    assert (v.pings_allowed, v.over, v.close) == (2, True, False)
    # Within the same second: the same offence, no new strike.
    v = fr.admit(0.1, frames=5, pings=5)
    assert (v.pings_allowed, v.over, fr.strikes) == (0, True, 1)
    v = fr.admit(1.2, frames=5, pings=5)
    assert (v.pings_allowed, v.over, v.close, fr.strikes) == (2, True, False, 2)
    v = fr.admit(2.3, frames=5, pings=5)
    assert v.close and fr.strikes == 3
    # An honest rate never strikes.
    honest = FrameRate(0.0, frames_per_sec=10, pings_per_sec=2)
    for i in range(100):
        v = honest.admit(i * 0.5, frames=2, pings=1)
        assert v.pings_allowed == 1 and not v.over


def test_frame_rate_forgives_after_quiet_time() -> None:
    fr = FrameRate(0.0, frames_per_sec=1, pings_per_sec=1, max_strikes=1, forgive=10)
    fr.admit(0.0, frames=5)
    assert fr.strikes == 1
    v = fr.admit(20.0, frames=5)  # long after: earlier strikes forgotten
    assert fr.strikes == 1 and not v.close


def test_failure_delay_grows_is_capped_and_forgets() -> None:
    fd = FailureDelay(base=0.1, cap=0.3, forget=60)
    delays = [fd.failure("10.0.0.1", float(i)) for i in range(5)]
    assert delays == [0.0, 0.1, 0.2, 0.3, 0.3]
    assert fd.failure("10.0.0.2", 5.0) == 0.0  # per address
    assert fd.failure("10.0.0.1", 200.0) == 0.0  # forgiven after `forget`
    small = FailureDelay(max_addrs=3)
    for i in range(10):
        small.failure(f"h{i}", 0.0)
    assert len(small._fails) == 3  # bounded memory whatever the scan


def test_auth_file_add_verify_revoke(tmp_path: Path) -> None:
    path = str(tmp_path / "tokens")
    af = AuthFile(path)
    tok = af.add("sensor-7")
    assert len(tok) >= 43  # 256 bits, URL-safe base64
    text = Path(path).read_text()
    assert tok not in text and token_digest(tok) in text  # only the digest is kept
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    assert af.verify("sensor-7", tok) is None
    assert af.verify("sensor-7", tok + "x") == "wrong token"
    assert af.verify("sensor-7", None) == "no token"
    assert af.verify("nobody", tok) == "unknown id"
    with pytest.raises(AuthFileError, match="already has a token"):
        af.add("sensor-7")
    tok2 = af.add("sensor-7", replace=True)
    assert af.verify("sensor-7", tok) == "wrong token" and af.verify("sensor-7", tok2) is None
    assert af.revoke("sensor-7") and not af.revoke("sensor-7")
    assert af.verify("sensor-7", tok2) == "unknown id"


def test_auth_file_bad_line_is_named(tmp_path: Path) -> None:
    p = tmp_path / "tokens"
    p.write_text("ok-id " + "a" * 64 + "\nbroken line here and more\n")
    with pytest.raises(AuthFileError, match="line 2"):
        AuthFile(str(p)).load()


def test_admin_bind_check_and_bearer_token() -> None:
    assert admin_bind_error("127.0.0.1", None) is None
    assert admin_bind_error("::1", None) is None
    assert admin_bind_error("localhost", None) is None
    assert "--admin-token" in (admin_bind_error("0.0.0.0", None) or "")
    assert admin_bind_error("0.0.0.0", "s3cret") is None
    assert admin_token_ok(None, None)
    assert admin_token_ok("Bearer s3cret", "s3cret")
    assert not admin_token_ok("Bearer wrong", "s3cret")
    assert not admin_token_ok(None, "s3cret")
    assert not admin_token_ok("s3cret", "s3cret")


# ------------------------------------------------------------------------------ tokens over sockets


@pytest.fixture
def tokens(tmp_path: Path) -> tuple[str, dict[str, str]]:
    path = str(tmp_path / "tokens")
    af = AuthFile(path)
    return path, {cid: af.add(cid) for cid in ("sensor-1", "sensor-2")}


async def _auth_server(start_server: Any, path: str, **kw: Any) -> tuple[Server, list[Any]]:
    srv = await start_server(auth_file=path, **kw)
    events: list[Any] = []
    srv.subscribe(events.append)
    return srv, events


def _audits(events: list[Any], kind: str = "auth-failed") -> list[Warning_]:
    return [e for e in events if isinstance(e, Warning_) and e.fields.get("audit") == kind]


async def test_good_token_is_accepted(start_server: Any, tokens: Any) -> None:
    path, toks = tokens
    srv, _ = await _auth_server(start_server, path)
    async with Client("127.0.0.1", srv.port, id="sensor-1", token=toks["sensor-1"], reconnect=False) as c:
        assert c.info is not None and c.info.auth_required
        seq = await c.send("hello")
        assert await c.drain(5)
        assert seq == 1
    assert srv.totals["connections"] >= 1


@pytest.mark.parametrize("who,token,why", [
    ("sensor-1", "Zq9-not-the-token", "wrong token"),
    ("sensor-1", None, "no token"),
    ("intruder", "Zq9-some-guess", "unknown id"),
    ("sensor-2", "TOKEN-OF-sensor-1", "wrong token"),  # a token belongs to one id only
])
async def test_bad_token_gets_401_audit_and_nothing_stored(start_server: Any, tokens: Any, who: str,
                                                          token: str | None, why: str) -> None:
    path, toks = tokens
    if token == "TOKEN-OF-sensor-1":
        token = toks["sensor-1"]
    srv, events = await _auth_server(start_server, path)
    rc = await RawClient.open(srv.port)
    info = await rc.info()
    assert info["auth_required"] is True
    hello: dict[str, Any] = {"id": who, "session": "s1"}
    if token is not None:
        hello["token"] = token
    # Messages right behind the HELLO must not be stored.
    await rc.send(b"HELLO " + json.dumps(hello).encode() + b"\nMSG 5 1\nsneak\n")
    assert await rc.lines_until_eof() == [b"ERR 401 authentication failed"]
    rc.close()
    audit = _audits(events)
    assert len(audit) == 1 and audit[0].fields["why"] == why and audit[0].fields["id"] == who
    if token is not None:
        assert token not in repr(audit[0]) and token not in audit[0].text  # never the token itself
    assert await srv.store.acked(who, "s1") == 0
    assert srv.client(who) is None


async def test_frame_before_hello_is_401(start_server: Any, tokens: Any) -> None:
    srv, _ = await _auth_server(start_server, tokens[0])
    rc = await RawClient.open(srv.port)
    await rc.info()
    await rc.send(b"MSG 5\nhello\n")
    lines = await rc.lines_until_eof()
    assert lines and lines[0].startswith(b"ERR 401")


async def test_no_hello_in_time_is_408(start_server: Any, tokens: Any) -> None:
    srv, _ = await _auth_server(start_server, tokens[0], auth_timeout=200 * MS)
    rc = await RawClient.open(srv.port)
    await rc.info()
    t0 = time.monotonic()
    await rc.send(b"HELLO {")  # a HELLO that never ends is no HELLO
    assert await rc.lines_until_eof() == [b"ERR 408 no HELLO within the auth timeout"]
    assert time.monotonic() - t0 >= 150 * MS


async def test_unauthenticated_timeout_stores_nothing(start_server: Any, tokens: Any, tmp_path: Path) -> None:
    """With auth, a connection that never authenticated leaves no trace in the store, also when
    the heartbeat timeout (here shorter than --auth-timeout) ends it rather than ERR 408."""
    import sqlite3

    from tcpulse.store.sqlite import SQLiteStore
    path, toks = tokens
    db = str(tmp_path / "auth.db")
    srv, _ = await _auth_server(start_server, path, store=SQLiteStore(db), heartbeat_interval=100 * MS,
                                heartbeat_timeout=200 * MS)
    rc = await RawClient.open(srv.port)
    await rc.info()
    assert await rc.lines_until_eof() == [b"BYE heartbeat-timeout"]  # silent, never said HELLO
    rc.close()
    async with Client("127.0.0.1", srv.port, id="sensor-1", token=toks["sensor-1"], reconnect=False) as c:
        assert c.ok is not None
    await srv.store.flush()
    with contextlib.closing(sqlite3.connect(db)) as con:
        assert con.execute("SELECT count(*) FROM timeouts").fetchone()[0] == 0
        assert [r[0] for r in con.execute("SELECT client_id FROM connections")] == ["sensor-1"]


async def test_repeated_failures_are_slowed_down(start_server: Any, tokens: Any) -> None:
    srv, events = await _auth_server(start_server, tokens[0])
    elapsed = []
    for _ in range(3):
        rc = await RawClient.open(srv.port)
        await rc.info()
        t0 = time.monotonic()
        await rc.send(b'HELLO {"id":"sensor-1","token":"nope"}\n')
        assert (await rc.line()).startswith(b"ERR 401")
        elapsed.append(time.monotonic() - t0)
        rc.close()
    delays = [a.fields["delay"] for a in _audits(events)]
    assert delays == [0.0, 0.1, 0.2]
    assert elapsed[2] >= 0.2  # the answer really waited


async def test_auth_file_change_is_picked_up_without_restart(start_server: Any, tokens: Any) -> None:
    path, toks = tokens
    srv, events = await _auth_server(start_server, path)
    new = AuthFile(path).add("sensor-3")  # written while the server runs
    async with Client("127.0.0.1", srv.port, id="sensor-3", token=new, reconnect=False) as c:
        assert c.ok is not None
    async with Client("127.0.0.1", srv.port, id="sensor-1", token=toks["sensor-1"], reconnect=False) as c1:
        assert c1.ok is not None
        AuthFile(path).revoke("sensor-1")
        # The next HELLO (anyone's) notices the change; the revoked client's connection ends.
        with pytest.raises(ServerError) as ei:
            async with Client("127.0.0.1", srv.port, id="sensor-1", token=toks["sensor-1"], reconnect=False):
                pass
        assert ei.value.code == 401
        for _ in range(200):
            if srv.client("sensor-1") is None:
                break
            await asyncio.sleep(0.01)
        assert srv.client("sensor-1") is None
    assert _audits(events, "auth-revoked")


async def test_revoked_token_ends_its_connection_without_another_hello(start_server: Any, tokens: Any) -> None:
    """The server watches the auth file: a revoked id's connection ends with ERR 401 although no
    other client says HELLO and nobody sends SIGHUP."""
    from tcpulse.server.guard import AUTH_WATCH_EVERY
    path, toks = tokens
    srv, events = await _auth_server(start_server, path)
    rc = await RawClient.open(srv.port)
    await rc.hello("sensor-2", token=toks["sensor-2"])
    AuthFile(path).revoke("sensor-2")
    t0 = time.monotonic()
    lines = await rc.lines_until_eof(AUTH_WATCH_EVERY + 3)
    assert lines[-1] == b"ERR 401 token revoked", lines
    assert time.monotonic() - t0 < AUTH_WATCH_EVERY + 1
    rc.close()
    assert [a.fields["id"] for a in _audits(events, "auth-revoked")] == ["sensor-2"]
    # A bad file is reported once, not at every look, and the tokens loaded before stay in force.
    Path(path).write_text("not an auth file\n")
    await asyncio.sleep(2.5 * AUTH_WATCH_EVERY)
    assert len(_audits(events, "auth-reload-failed")) == 1
    async with Client("127.0.0.1", srv.port, id="sensor-1", token=toks["sensor-1"], reconnect=False) as c:
        assert c.ok is not None
    assert len(_audits(events, "auth-reload-failed")) == 1


async def test_sighup_reload_in_a_real_server(tmp_path: Path, server_process: Any) -> None:
    path = str(tmp_path / "tokens")
    tok = AuthFile(path).add("a1")
    proc = server_process("--auth-file", path, "--db", "none")
    cap = proc.wait_event("capacity")
    assert cap["auth_required"] is True and cap["max_clients"] > 0
    AuthFile(path).add("a2")
    os.kill(proc.proc.pid, __import__("signal").SIGHUP)
    ev = proc.wait_event("warning", audit="auth-reloaded")
    assert ev["ids"] == 2
    async with Client("127.0.0.1", proc.port, id="a1", token=tok, reconnect=False) as c:
        assert c.ok is not None
    assert proc.terminate() == 0


def test_token_command(tmp_path: Path) -> None:
    path = str(tmp_path / "tokens")
    r = subprocess.run(tcpulse_cmd("token", "add", "dev-1", "--auth-file", path), capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    tok = r.stdout.strip()
    af = AuthFile(path)
    assert af.load() == 1 and af.verify("dev-1", tok) is None
    r = subprocess.run(tcpulse_cmd("token", "list", "--auth-file", path), capture_output=True, text=True,
                       timeout=60)
    assert "dev-1" in r.stdout and tok not in r.stdout
    r = subprocess.run(tcpulse_cmd("token", "revoke", "nobody", "--auth-file", path), capture_output=True,
                       text=True, timeout=60)
    assert r.returncode != 0 and r.stderr.count("\n") == 1 and "tcpulse token list" in r.stderr
    r = subprocess.run(tcpulse_cmd("token", "revoke", "dev-1", "--auth-file", path), capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0
    assert AuthFile(path).load() == 0


# ------------------------------------------------------------------------------ TLS


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    d = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    other_ca = trustme.CA()
    client_ca = trustme.CA()
    files: dict[str, Any] = {"ca": ca, "dir": d}

    def write(name: str, cert: trustme.LeafCert) -> None:
        cert.cert_chain_pems[0].write_to_path(str(d / f"{name}.crt"))
        cert.private_key_pem.write_to_path(str(d / f"{name}.key"))
        files[name] = (str(d / f"{name}.crt"), str(d / f"{name}.key"))

    write("good", ca.issue_cert("localhost", "127.0.0.1"))
    write("wrongname", ca.issue_cert("elsewhere.example"))
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=2)
    write("expired", ca.issue_cert("localhost", "127.0.0.1", not_before=past - datetime.timedelta(days=30),
                                   not_after=past))
    write("foreign", other_ca.issue_cert("localhost", "127.0.0.1"))
    write("client7", client_ca.issue_cert("sensor-7"))
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    client_ca.cert_pem.write_to_path(str(d / "client_ca.pem"))
    files["ca_pem"] = str(d / "ca.pem")
    files["client_ca_pem"] = str(d / "client_ca.pem")
    return files


async def _tls_server(start_server: Any, pki: dict[str, Any], cert: str = "good", **kw: Any) -> Server:
    crt, key = pki[cert]
    return await start_server(tls_cert=crt, tls_key=key, **kw)


async def test_tls_good_cert(start_server: Any, pki: dict[str, Any]) -> None:
    srv = await _tls_server(start_server, pki)
    ctx = client_ssl_context(pki["ca_pem"])
    async with Client("127.0.0.1", srv.port, id="t1", ssl_context=ctx, server_hostname="localhost",
                      reconnect=False) as c:
        await c.send("over tls")
        assert await c.drain(5)
        assert c._writer is not None
        assert c._writer.get_extra_info("ssl_object").version() in ("TLSv1.2", "TLSv1.3")


@pytest.mark.parametrize("cert,hostname,expect", [
    ("foreign", "localhost", "certificate verify failed"),   # signed by a CA we do not trust
    ("wrongname", "localhost", "Hostname mismatch"),         # right CA, wrong name
    ("expired", "localhost", "certificate has expired"),
])
async def test_tls_client_refuses_bad_server(start_server: Any, pki: dict[str, Any], cert: str, hostname: str,
                                             expect: str) -> None:
    srv = await _tls_server(start_server, pki, cert)
    ctx = client_ssl_context(pki["ca_pem"])
    with pytest.raises(ConnectError) as ei:
        await Client("127.0.0.1", srv.port, id="t1", ssl_context=ctx, server_hostname=hostname,
                     reconnect=False, connect_timeout=5).start()
    assert "TLS" in str(ei.value)
    assert expect.lower() in str(ei.value.__cause__).lower()
    assert not srv.clients


async def test_tls_insecure_skips_verification(start_server: Any, pki: dict[str, Any]) -> None:
    srv = await _tls_server(start_server, pki, "foreign")
    ctx = client_ssl_context(None, insecure=True)
    async with Client("127.0.0.1", srv.port, id="t1", ssl_context=ctx, reconnect=False) as c:
        assert c.ok is not None


async def test_plain_client_cannot_talk_to_tls_server(start_server: Any, pki: dict[str, Any]) -> None:
    srv = await _tls_server(start_server, pki, heartbeat_interval=0.2, heartbeat_timeout=0.4)
    with pytest.raises(ConnectError):
        await Client("127.0.0.1", srv.port, id="t1", reconnect=False, connect_timeout=2).start()


def _mtls_ctx(pki: dict[str, Any], with_cert: bool) -> ssl.SSLContext:
    crt, key = pki["client7"]
    return client_ssl_context(pki["ca_pem"], cert=crt if with_cert else None, key=key if with_cert else None)


async def test_mtls_with_matching_client_cert(start_server: Any, pki: dict[str, Any]) -> None:
    srv = await _tls_server(start_server, pki, tls_client_ca=pki["client_ca_pem"])
    async with Client("127.0.0.1", srv.port, id="sensor-7", ssl_context=_mtls_ctx(pki, True),
                      server_hostname="localhost", reconnect=False) as c:
        assert c.info is not None and c.info.auth_required
        assert c.ok is not None and c.ok.id == "sensor-7"
        ci = srv.client("sensor-7")
        assert ci is not None and ci.identities == {"sensor-7"}


async def test_mtls_without_client_cert_is_refused(start_server: Any, pki: dict[str, Any]) -> None:
    srv = await _tls_server(start_server, pki, tls_client_ca=pki["client_ca_pem"])
    with pytest.raises(ConnectError):
        await Client("127.0.0.1", srv.port, id="sensor-7", ssl_context=_mtls_ctx(pki, False),
                     server_hostname="localhost", reconnect=False, connect_timeout=5).start()
    assert srv.client("sensor-7") is None


async def test_mtls_cert_identity_must_match_hello_id(start_server: Any, pki: dict[str, Any]) -> None:
    srv = await _tls_server(start_server, pki, tls_client_ca=pki["client_ca_pem"])
    events: list[Any] = []
    srv.subscribe(events.append)
    with pytest.raises(ServerError) as ei:
        await Client("127.0.0.1", srv.port, id="sensor-8", ssl_context=_mtls_ctx(pki, True),
                     server_hostname="localhost", reconnect=False).start()
    assert ei.value.code == 401
    assert _audits(events)[0].fields["why"] == "client certificate is not for this id"


def test_tls_settings_are_checked_up_front(pki: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="go together"):
        Server(ServerConfig(port=0, tls_cert=pki["good"][0]))
    crt, _key = pki["good"]
    r = subprocess.run(tcpulse_cmd("serve", "--port", "0", "--tls-cert", crt, "--tls-key", str(tmp_path / "x")),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "no such file" in r.stderr
    assert "Traceback" not in r.stderr
    # A client key without its certificate is an error, also without --tls (it was ignored).
    r = subprocess.run(tcpulse_cmd("connect", "--port", "1", "--tls-key", str(tmp_path / "x")),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--tls-key needs --tls-cert" in r.stderr


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_openssl_s_client_talks_to_the_server(pki: dict[str, Any], server_process: Any, loop: str) -> None:
    """s_client sends its hello with the TCP handshake and its lines with the end of the TLS
    handshake.  Under uvloop the hello can be read before the server's TLS layer is in place
    (handshake.py): it must reach that layer, not be dropped (a quarter of these connections
    waited for it until the handshake timeout).  Twenty connections: with the hello dropped,
    all twenty succeed about once in three hundred runs."""
    if loop == "uvloop":
        pytest.importorskip("uvloop")
    crt, key = pki["good"]
    proc = server_process("--tls-cert", crt, "--tls-key", key, "--db", "none", "--loop", loop)
    for i in range(20):
        r = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{proc.port}", "-CAfile", pki["ca_pem"],
                            "-verify_hostname", "localhost", "-verify_return_error", "-quiet"],
                           input=b'HELLO {"id":"ossl%d"}\nPING x\nBYE done\n' % i, capture_output=True, timeout=30)
        out = r.stdout.decode()
        assert "INFO {" in out and f'OK {{"id":"ossl{i}"' in out and "PONG x" in out, (i, out, r.stderr[-500:])
    assert proc.terminate() == 0


def test_connect_refusals_name_the_fix(pki: dict[str, Any], tokens: Any, server_process: Any) -> None:
    """`tcpulse connect`: a wrong token, and a plain connection to a TLS server, each end in one
    line that says what to do."""
    env = {**os.environ, "LANG": "C"}
    env.pop("TCPULSE_TOKEN", None)
    auth = server_process("--auth-file", tokens[0])
    # The token from the environment (on the command line, --token warns that `ps` shows it).
    r = subprocess.run(tcpulse_cmd("connect", "--port", str(auth.port), "--id", "sensor-1", "--no-reconnect"),
                       capture_output=True, text=True, timeout=60, env={**env, "TCPULSE_TOKEN": "nope"},
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 1 and r.stderr.count("\n") == 1, r.stderr
    assert "ERR 401" in r.stderr and "--token" in r.stderr and "Traceback" not in r.stderr
    crt, key = pki["good"]
    tls = server_process("--tls-cert", crt, "--tls-key", key, "--heartbeat-interval", "0.2",
                         "--heartbeat-timeout", "0.5")
    r = subprocess.run(tcpulse_cmd("connect", "--port", str(tls.port), "--id", "plain", "--no-reconnect"),
                       capture_output=True, text=True, timeout=60, env=env, stdin=subprocess.DEVNULL)
    assert r.returncode == 1 and r.stderr.count("\n") == 1, r.stderr
    assert "add --tls" in r.stderr
    mtls = server_process("--tls-cert", crt, "--tls-key", key, "--tls-client-ca", pki["client_ca_pem"])
    r = subprocess.run(tcpulse_cmd("connect", "localhost", "--port", str(mtls.port), "--tls", "--ca", pki["ca_pem"],
                                   "--id", "sensor-7", "--no-reconnect"),
                       capture_output=True, text=True, timeout=60, env=env, stdin=subprocess.DEVNULL)
    assert r.returncode == 1 and r.stderr.count("\n") == 1, r.stderr
    assert "client certificate" in r.stderr and "--tls-cert" in r.stderr
    assert auth.terminate() == 0 and tls.terminate() == 0 and mtls.terminate() == 0


# ------------------------------------------------------------------------------ admin endpoint


def test_admin_refuses_non_loopback_binding_without_token() -> None:
    env = {k: v for k, v in os.environ.items() if k != "TCPULSE_ADMIN_TOKEN"}
    r = subprocess.run(tcpulse_cmd("serve", "--port", "0", "--db", "none", "--admin", "0.0.0.0:0"),
                       capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and "--admin-token" in r.stderr and "Traceback" not in r.stderr


def test_admin_token_guards_every_endpoint_but_healthz(server_process: Any) -> None:
    import urllib.error
    import urllib.request
    pytest.importorskip("aiohttp")
    proc = server_process("--db", "none", "--admin", "127.0.0.1:0", env={"TCPULSE_ADMIN_TOKEN": "s3cret-tok"})
    base = proc.wait_event("admin")["url"].rstrip("/")

    def get(path: str, token: str | None = None) -> int:
        req = urllib.request.Request(base + path)
        if token is not None:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as e:
            return int(e.code)

    assert get("/healthz") == 200
    for path in ("/api/clients", "/api/server", "/metrics", "/api/events", "/api/events/stream"):
        assert get(path) == 401, path
        assert get(path, "wrong") == 401, path
        assert get(path, "s3cret-tok") == 200, path
    assert get("/") == 200  # the page holds no data: it asks for the token
    assert get("/api/clients?token=s3cret-tok") == 401  # a token in a URL: only on the event stream
    assert get("/api/events/stream?token=s3cret-tok") == 200  # the dashboard's EventSource way
    assert proc.terminate() == 0


def test_limit_settings_are_checked() -> None:
    # The library names fields (ConfigError); `tcpulse serve` shows them as flags.
    with pytest.raises(ValueError, match="max_write_buffer"):
        Server(ServerConfig(port=0, max_write_buffer=1000))
    with pytest.raises(ValueError, match="max_clients"):
        Server(ServerConfig(port=0, max_clients=-1))
    with pytest.raises(ValueError, match="tls_client_ca needs TLS"):
        Server(ServerConfig(port=0, tls_client_ca="ca.pem"))
    from tcpulse.server.config import write_buffer_cap
    assert write_buffer_cap(ServerConfig()) == 2 * ((1 << 20) + 4096)
    assert write_buffer_cap(ServerConfig(max_write_buffer=0)) > 1 << 40  # off


async def test_half_done_tls_handshakes_are_bounded_and_counted(start_server: Any, pki: dict[str, Any]) -> None:
    # 70 sockets that connect to the TLS port and never say a word: at most MAX_LINGERING of them
    # hold a descriptor (the rest are closed at once), each for the handshake timeout only (not
    # the heartbeat timeout), and every one is counted; the log gets a few reports, not 70.
    from tcpulse.server.events import HandshakeFailed, ServerEvent
    from tcpulse.server.hub import HANDSHAKE_REPORTS_PER_SEC, MAX_LINGERING

    srv = await _tls_server(start_server, pki, tls_handshake_timeout=0.3, heartbeat_timeout=30.0,
                            heartbeat_interval=10.0)
    events: list[ServerEvent] = []
    srv.subscribe(events.append, messages=False)
    n = MAX_LINGERING + 20
    t0 = time.monotonic()
    socks = [await asyncio.open_connection("127.0.0.1", srv.port) for _ in range(n)]
    closed_at: list[float] = []

    async def wait_close(r: asyncio.StreamReader) -> None:
        with contextlib.suppress(ConnectionError):
            await asyncio.wait_for(r.read(), 5)
        closed_at.append(time.monotonic() - t0)
    await asyncio.gather(*(wait_close(r) for r, _w in socks))
    for _r, w in socks:
        w.close()
    assert len(closed_at) == n
    assert max(closed_at) < 3.0, "half-done handshakes were held far past their own timeout"
    assert srv.handshake_failures == n
    reports = [e for e in events if isinstance(e, HandshakeFailed)]
    refused = [e for e in reports if e.error.startswith("refused")]
    assert refused, "no socket was refused although more than MAX_LINGERING were handshaking"
    assert len(reports) + sum(e.suppressed for e in reports) <= n
    assert len(reports) <= HANDSHAKE_REPORTS_PER_SEC * (int(max(closed_at)) + 2)
    # The server is still there for a real TLS client.
    async with Client("127.0.0.1", srv.port, id="after-flood", ssl_context=client_ssl_context(pki["ca_pem"]),
                      server_hostname="localhost", reconnect=False) as c:
        assert c.ok is not None
