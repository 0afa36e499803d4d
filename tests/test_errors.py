"""The library speaks codes and English (tcpulse.errors); the command line speaks the user's language.

Library tier: whatever `set_language()` says, an error of `client`, `server`, `store` or `security`
has a stable `kind` and English text, and its template is in the zh catalog.  The command line's
`error_text()` is what turns it into Chinese (tests/cli/test_library_errors.py checks the lines
of real commands).
"""

from __future__ import annotations

import ast
import contextlib
import socket
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

import tcpulse.i18n as i18n
from tcpulse.cli.common import error_text, flag
from tcpulse.client.client import Client
from tcpulse.client.errors import ConnectError, ServerClosed, ServerDead, ServerError
from tcpulse.client.outbox import OutboxError, SQLiteOutbox
from tcpulse.errors import N_, ConfigError, TcpulseError
from tcpulse.policy.backoff import is_retryable
from tcpulse.security.tls import SecurityConfigError, client_ssl_context
from tcpulse.security.tokens import AuthFile, AuthFileError
from tcpulse.server.config import ServerConfig
from tcpulse.store.base import StoreOpenError
from tcpulse.store.sqlite import SQLiteStore, check_database

PKG = Path(i18n.__file__).resolve().parents[1]


@pytest.fixture
def zh() -> Iterator[None]:
    assert i18n.set_language("zh") == "zh"
    try:
        yield
    finally:
        i18n.set_language("en")


def _english_and_translated(e: TcpulseError) -> None:
    """`e` is English (its own text), and the zh catalog has its template."""
    assert str(e) == e.template.format(**e.params) == e.args[0]
    assert str(e).isascii(), str(e)
    assert i18n._(e.template) != e.template, f"no zh translation of {e.template!r}"


def test_config_error_names_fields_in_english(zh: None) -> None:
    with pytest.raises(ConfigError) as ei:
        ServerConfig(heartbeat_interval=5.0, heartbeat_timeout=4.0).validate()
    e = ei.value
    assert isinstance(e, ValueError)  # what ServerConfig.validate() always raised
    assert e.kind == "not-longer"
    assert str(e) == "heartbeat_timeout must be longer than heartbeat_interval (got 4.0 <= 5.0)"
    assert e.field == "heartbeat_timeout" and e.fields == ("heartbeat_timeout", "heartbeat_interval")
    _english_and_translated(e)
    # The edge: the fields become flags, in the language in force.
    assert error_text(e) == "--heartbeat-timeout 必须大于 --heartbeat-interval (实际为 4.0 <= 5.0)"
    i18n.set_language("en")
    assert error_text(e) == "--heartbeat-timeout must be longer than --heartbeat-interval (got 4.0 <= 5.0)"


@pytest.mark.parametrize("overrides, kind, field, text", [
    ({"port": 70000}, "out-of-range", "port", "port must be 0-65535 (got 70000)"),
    ({"max_line": 10}, "too-small", "max_line", "max_line must be at least 64 bytes (HELLO must fit)"),
    ({"detector": "magic"}, "bad-choice", "detector", "detector must be fixed or phi (got 'magic')"),
    ({"auth_timeout": 0}, "not-positive", "auth_timeout", "auth_timeout must be greater than 0 (got 0)"),
    ({"max_queued": -1}, "negative", "max_queued", "max_queued must be 0 (off) or more (got -1)"),
    ({"tls_key": "k.pem"}, "pair", "tls_cert", "tls_cert and tls_key go together: give both, or neither"),
    ({"tls_cert": "c.pem"}, "pair", "tls_key", "tls_cert and tls_key go together: give both, or neither"),
    ({"tls_client_ca": "ca.pem"}, "needs-tls", "tls_client_ca", "tls_client_ca needs TLS: add tls_cert and tls_key"),
    ({"max_write_buffer": 1000}, "too-small", "max_write_buffer",
     "max_write_buffer 1000 cannot hold one message: make it at least max_payload + max_line + 64 (1052736)"),
])
def test_every_config_error_names_the_field_to_change(zh: None, overrides: dict[str, object], kind: str, field: str,
                                                      text: str) -> None:
    with pytest.raises(ConfigError) as ei:
        ServerConfig(**overrides).validate()  # type: ignore[arg-type]
    assert (ei.value.kind, ei.value.field, str(ei.value)) == (kind, field, text)
    _english_and_translated(ei.value)
    assert flag(field) in error_text(ei.value)


async def test_connect_error_is_english_with_a_kind(zh: None) -> None:
    with socket.socket() as held:  # bound, not listening: refused, and nobody else gets the port
        held.bind(("127.0.0.1", 0))
        port = held.getsockname()[1]
        with pytest.raises(ConnectError) as ei:
            await Client("127.0.0.1", port, id="x", reconnect=False).start()
    e = ei.value
    assert e.kind == "refused" and e.params == {"host": "127.0.0.1", "port": port}
    assert str(e) == f"connection to 127.0.0.1:{port} refused: is the server running?"
    _english_and_translated(e)
    assert error_text(e) == f"到 127.0.0.1:{port} 的连接被拒绝: 服务器是否在运行?"


def test_a_nested_library_error_is_translated_too(zh: None) -> None:
    # connection lost during the handshake: <why>, where why is itself a library error.
    e = ConnectError("handshake-lost", N_("connection lost during the handshake: {error}"), error=ServerClosed.eof())
    assert str(e) == "connection lost during the handshake: server closed the connection"
    assert error_text(e) == "握手期间连接中断: 服务器关闭了连接"
    # ... or any other exception, shown as it is.
    e = ConnectError("handshake-lost", N_("connection lost during the handshake: {error}"),
                     error=ConnectionResetError(104, "Connection reset by peer"))
    assert error_text(e) == "握手期间连接中断: [Errno 104] Connection reset by peer"
    assert error_text(ValueError("plain")) == "plain"


def test_client_failures_keep_their_bases(zh: None) -> None:
    dead = ServerDead(0.6)
    assert dead.kind == "dead" and str(dead) == "no answer from the server within 0.6 s"
    assert isinstance(dead, TimeoutError) and is_retryable(dead)
    closed = ServerClosed.bye("shutdown")
    # kind is the CloseReason's value (BYE shutdown: "shutdown"; another reason: "bye").
    assert closed.kind == "shutdown" and str(closed) == "server said BYE shutdown"
    assert ServerClosed.bye("maintenance").kind == "bye"
    assert isinstance(closed, EOFError) and is_retryable(closed)
    assert str(ServerClosed.bye(None)) == "server said BYE"
    err = ServerError(401, "authentication failed")
    assert (err.kind, err.code, err.text, str(err)) == ("server-error", 401, "authentication failed",
                                                         "ERR 401 authentication failed")
    for e in (dead, closed, ServerClosed.bye(None), ServerClosed.eof()):
        _english_and_translated(e)
    assert error_text(dead) == "服务器在 0.6秒内没有应答"


async def test_store_open_error_is_english_with_a_kind(zh: None, tmp_path: Path) -> None:
    with pytest.raises(StoreOpenError) as ei:
        check_database(str(tmp_path / "none.db"))
    assert ei.value.kind == "missing"
    assert str(ei.value).startswith(f"database {tmp_path / 'none.db'} does not exist")
    _english_and_translated(ei.value)
    foreign = tmp_path / "other.db"
    with contextlib.closing(sqlite3.connect(foreign)) as con:
        con.execute("CREATE TABLE notes (t TEXT)")
    store = SQLiteStore(str(foreign))
    with pytest.raises(StoreOpenError) as ei:
        await store.open()
    await store.close()
    assert ei.value.kind == "foreign" and ei.value.params == {"path": str(foreign)}
    _english_and_translated(ei.value)
    assert error_text(ei.value) == f"{foreign} 不是 tcpulse 数据库: 请选择其他 --db (或用 --db none 不保存任何内容)"


def test_auth_and_tls_errors_are_english_with_a_kind(zh: None, tmp_path: Path) -> None:
    missing = str(tmp_path / "none.tokens")
    with pytest.raises(AuthFileError) as ei:
        AuthFile(missing).load()
    assert isinstance(ei.value, ValueError) and ei.value.kind == "missing"
    assert str(ei.value) == (f"auth file {missing} does not exist: create it with "
                             f"'tcpulse token add ID --auth-file {missing}'")
    _english_and_translated(ei.value)
    bad = tmp_path / "bad.tokens"
    bad.write_text("ok-id " + "a" * 64 + "\nbroken line\n")
    with pytest.raises(AuthFileError) as ei:
        AuthFile(str(bad)).load()
    assert ei.value.kind == "bad-line" and ei.value.params["n"] == 2
    with pytest.raises(AuthFileError) as ei:
        AuthFile(str(bad)).add("not an id")
    assert ei.value.kind == "bad-id"
    with pytest.raises(SecurityConfigError) as se:
        client_ssl_context(str(tmp_path / "none.pem"))
    assert isinstance(se.value, ValueError) and se.value.kind == "no-ca"
    _english_and_translated(se.value)


def test_outbox_error_is_english_with_a_kind(zh: None, tmp_path: Path) -> None:
    foreign = tmp_path / "other.db"
    with contextlib.closing(sqlite3.connect(foreign)) as con:
        con.execute("CREATE TABLE notes (t TEXT)")
    with pytest.raises(OutboxError) as ei:
        SQLiteOutbox(str(foreign))
    assert ei.value.kind == "foreign"
    assert str(ei.value) == f"{foreign} is not a tcpulse outbox: choose another --outbox"
    _english_and_translated(ei.value)
    held = SQLiteOutbox(str(tmp_path / "mine.outbox"))
    try:
        with pytest.raises(OutboxError) as ei:
            SQLiteOutbox(str(tmp_path / "mine.outbox"))
        assert ei.value.kind == "in-use"
    finally:
        held.close()


#: Constructors whose second argument is the English template (`TcpulseError(kind, template, ...)`).
_TEMPLATED = {"ConnectError", "OutboxError", "SecurityConfigError", "AuthFileError", "StoreOpenError",
              "ConfigError", "ServerClosed", "TcpulseError"}


def test_every_library_template_is_marked_for_the_catalog() -> None:
    # An unmarked template would never reach the catalog: the command line would show it in English.
    seen = 0
    for path in sorted(PKG.rglob("*.py")):
        if path.relative_to(PKG).parts[0] in ("cli", "admin", "bench", "i18n"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                    and node.func.id in _TEMPLATED | {"cls"} and len(node.args) >= 2):
                continue
            t = node.args[1]
            where = f"{path.relative_to(PKG)}:{node.lineno}"
            assert isinstance(t, ast.Call) and isinstance(t.func, ast.Name) and t.func.id == "N_", \
                f"{where}: mark the template with N_()"
            seen += 1
    assert seen > 30
