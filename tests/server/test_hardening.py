"""Authentication that fails must fail the same way whatever the attacker sends (issue 15, rows 2
and 3): every failed `HELLO` is answered `ERR 401`, audited, and closed, however many failures
came before it from the same address and whatever shape its token has.  And a browser on the same
host, made to POST to the client port, stores nothing (docs/security.md, "Threat model").

Pure tier: `FailureDelay` with the clock handed in.  Socket tier: an in-process server with an auth
file on 127.0.0.1, spoken to byte by byte (`RawClient`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from tcpulse.policy.ratelimit import FailureDelay
from tcpulse.security.tokens import AuthFile
from tcpulse.server.events import Warning_
from tcpulse.store.sqlite import SQLiteStore
from tests.conftest import MS, RawClient

# ------------------------------------------------------------------------------ pure


def test_failure_delay_never_overflows_however_many_failures() -> None:
    # 0.1 * 2 ** (n - 2) is an int too large for a float from n = 1026 on: OverflowError.  The
    # delay is capped before it is computed, so any count gives the cap.
    fd = FailureDelay(base=0.1, cap=2.0, forget=60.0)
    delays = [fd.failure("10.0.0.9", i * 0.01) for i in range(5000)]  # 5,000 failures within 50 s
    assert delays[:4] == [0.0, 0.1, 0.2, 0.4]
    assert delays[4:6] == [0.8, 1.6] and all(d == 2.0 for d in delays[6:])
    assert fd.count("10.0.0.9") == 5000
    # A base so small that a thousand doublings do not reach the cap still grows, and a huge
    # base is the cap from the second failure on.
    tiny = FailureDelay(base=1e-300, cap=1.0)
    got = [tiny.failure("a", 0.0) for _ in range(2000)]
    assert got[-1] == 1.0 and got == sorted(got)
    huge = FailureDelay(base=1e300, cap=3.0)
    assert [huge.failure("a", 0.0) for _ in range(2000)][1:] == [3.0] * 1999


# ------------------------------------------------------------------------------ over sockets


@pytest.fixture
def auth_file(tmp_path: Path) -> tuple[str, str]:
    path = str(tmp_path / "tokens")
    return path, AuthFile(path).add("sensor-1")


def _audits(events: list[Any]) -> list[Warning_]:
    return [e for e in events if isinstance(e, Warning_) and e.fields.get("audit") == "auth-failed"]


async def _failed_hello(port: int, hello: bytes) -> list[bytes]:
    rc = await RawClient.open(port)
    try:
        await rc.info()
        await rc.send(hello + b"\n")
        return await rc.lines_until_eof()
    finally:
        rc.close()


async def test_the_thousandth_failure_from_one_address_still_gets_401(start_server: Any,
                                                                       auth_file: tuple[str, str]) -> None:
    path, token = auth_file
    srv = await start_server(auth_file=path)
    events: list[Any] = []
    srv.subscribe(events.append)
    # A short cap, so that the test does not wait 2 s per answer; the count is what matters.
    srv.guard.failures = FailureDelay(base=10 * MS, cap=20 * MS)
    # 1,030 failures from 127.0.0.1 within the last moments (the guard's own clock), as a
    # guessing client would have piled up: the next one is number 1,031.
    now = time.monotonic()
    for _ in range(1030):
        srv.guard.failures.failure("127.0.0.1", now)
    for _ in range(3):
        lines = await _failed_hello(srv.port, b'HELLO {"id":"sensor-1","token":"guess"}')
        assert lines == [b"ERR 401 authentication failed"]
    audits = _audits(events)
    assert [a.fields["why"] for a in audits] == ["wrong token"] * 3
    assert [a.fields["delay"] for a in audits] == [round(20 * MS, 3)] * 3
    assert srv.guard.failures.count("127.0.0.1") == 1033
    # The right token is still let in from the same address.
    rc = await RawClient.open(srv.port)
    ok = await rc.hello("sensor-1", token=token)
    assert ok["id"] == "sensor-1"
    rc.close()


#: Tokens no honest client sends.  JSON may carry any of them: a lone surrogate (valid JSON, not
#: encodable as UTF-8), NUL, a byte-order mark, text that is not ASCII, a token of 4,000 characters.
ODD_TOKENS = [
    "\\ud800",
    "\\udfff",
    "x\\udc80y",
    "\\ud800\\ud800",
    "\\u0000",
    "\\ufeff",
    "\u00e9\u00e8\u4e2d",
    "a" * 4000,
    "",
]


@pytest.mark.parametrize("token", ODD_TOKENS, ids=lambda t: t[:12])
async def test_a_token_of_any_shape_is_a_failed_token(start_server: Any, auth_file: tuple[str, str],
                                                      token: str) -> None:
    path, good = auth_file
    srv = await start_server(auth_file=path)
    events: list[Any] = []
    srv.subscribe(events.append)
    hello = b'HELLO {"id":"sensor-1","session":"s","token":"' + token.encode() + b'"}'
    json.loads(hello[6:])  # valid JSON: only the token is odd
    lines = await _failed_hello(srv.port, hello + b"\nMSG 5 1\nsneak")
    assert lines == [b"ERR 401 authentication failed"]
    audits = _audits(events)
    assert len(audits) == 1 and audits[0].fields["why"] == "wrong token"
    assert await srv.store.acked("sensor-1", "s") == 0
    assert srv.client("sensor-1") is None
    # One connection's bad input affects that connection only.
    rc = await RawClient.open(srv.port)
    assert (await rc.hello("sensor-1", token=good))["id"] == "sensor-1"
    rc.close()


def test_verify_takes_any_token(tmp_path: Path) -> None:
    af = AuthFile(str(tmp_path / "tokens"))
    tok = af.add("sensor-1")
    for odd in ("\ud800", "x\udc80", "\x00", tok + "\ud800", "\ufeff" + tok):
        assert af.verify("sensor-1", odd) == "wrong token"
        assert af.verify("nobody", odd) == "unknown id"
    assert af.verify("sensor-1", 7) == "wrong token"  # type: ignore[arg-type]
    assert af.verify("sensor-1", tok) is None


async def test_a_browsers_request_to_the_client_port_stores_nothing(start_server: Any, tmp_path: Path) -> None:
    # A web page can make a browser POST to a loopback port, with a body of protocol lines.  Its
    # first line is no verb: ERR 400 and a close, before the body is parsed.
    srv = await start_server(store=SQLiteStore(str(tmp_path / "b.db")))
    body = b'HELLO {"id":"victim","session":"s"}\nMSG 5 1\nforgd\n'
    rc = await RawClient.open(srv.port)
    await rc.send(b"POST / HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: text/plain\r\n"
                  b"Content-Length: %d\r\n\r\n" % (srv.port, len(body)) + body)
    lines = await rc.lines_until_eof()
    rc.close()
    assert lines[0].startswith(b"INFO ") and lines[1:] == [b"ERR 400 unknown verb"]
    await srv.store.flush()
    assert await srv.store.acked("victim", "s") == 0 and srv.client("victim") is None
