"""Library errors on the command line: the library raises them in English with a kind
(tests/test_errors.py); `tcpulse` prints each in the language asked for, settings as flags, a nested
error translated too.  Real subprocesses, one line on stderr each."""

from __future__ import annotations

import contextlib
import socket
import sqlite3
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

from tests.cli.test_i18n import _error_line
from tests.conftest import tcpulse_cmd


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(tcpulse_cmd(*args), capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


def test_config_errors_show_flags_in_both_languages() -> None:
    args = ("serve", "--port", "0", "--db", "none", "--max-write-buffer", "1000")
    assert _error_line(_run(*args, "--lang", "zh")) == (
        "tcpulse: error: --max-write-buffer 1000 容纳不下一条消息: "
        "请至少设为 --max-payload + --max-line + 64 (1052736)")
    assert _error_line(_run(*args, "--lang", "en")) == (
        "tcpulse: error: --max-write-buffer 1000 cannot hold one message: make it at least "
        "--max-payload + --max-line + 64 (1052736)")
    r = _run("serve", "--lang", "zh", "--port", "0", "--db", "none", "--tls-key", "k.pem")
    assert r.returncode == 2
    assert _error_line(r) == "tcpulse: error: --tls-cert 与 --tls-key 必须成对使用: 请同时给出, 或都不给"


def test_store_auth_outbox_and_tls_errors_in_chinese(tmp_path: Path) -> None:
    db = tmp_path / "none.db"
    assert _error_line(_run("--lang", "zh", "history", "--db", str(db))) == (
        f"tcpulse: error: 数据库 {db} 不存在: 请给出启动服务器时所用的 --db")
    tokens = tmp_path / "none.tokens"
    assert _error_line(_run("--lang", "zh", "token", "list", "--auth-file", str(tokens))) == (
        f"tcpulse: error: 认证文件 {tokens} 不存在: 请用 'tcpulse token add ID --auth-file {tokens}' 创建")
    foreign = tmp_path / "other.db"
    with contextlib.closing(sqlite3.connect(foreign)) as con:
        con.execute("CREATE TABLE notes (t TEXT)")
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        port = str(held.getsockname()[1])
        r = _run("connect", "--lang", "zh", "--port", port, "--id", "x", "--outbox", str(foreign))
        assert _error_line(r) == f"tcpulse: error: {foreign} 不是 tcpulse 发件箱: 请选择其他 --outbox"
        r = _run("connect", "--lang", "zh", "--port", port, "--id", "x", "--ca", str(tmp_path / "ca.pem"))
        assert r.returncode == 2
        assert _error_line(r) == (f"tcpulse: error: --ca {tmp_path / 'ca.pem'} 不存在: "
                                  "请给出签发服务器证书的 CA 的 PEM 文件")


@contextlib.contextmanager
def _hang_up_server() -> Iterator[int]:
    """A "server" on 127.0.0.1 that closes every connection at once, before INFO."""
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen()
    ls.settimeout(0.1)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                conn, _addr = ls.accept()
                conn.close()
    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield ls.getsockname()[1]
    finally:
        stop.set()
        t.join(5)
        ls.close()


def test_a_nested_library_error_is_translated_on_the_command_line() -> None:
    # ConnectError("connection lost during the handshake: {error}") around the client's own
    # "server closed the connection": both halves in Chinese, then the hint.
    with _hang_up_server() as port:
        args = ("connect", "--port", str(port), "--id", "x", "--no-reconnect")
        zh = _run(*args, "--lang", "zh")
        en = _run(*args, "--lang", "en")
    assert _error_line(zh) == "tcpulse: error: 握手期间连接中断: 服务器关闭了连接 (如果服务器使用 TLS, 请加上 --tls)"
    assert zh.stdout == "" and en.stdout == ""  # one line on one stream (issue 13)
    assert _error_line(en) == ("tcpulse: error: connection lost during the handshake: server closed the connection "
                               "(if the server uses TLS, add --tls)")
