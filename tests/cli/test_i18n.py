"""Chinese output: the catalog is complete for the server's and client's text, and `--lang zh` (or a
`zh_*` locale) prints the original exercise's lines, checked through real subprocesses."""

from __future__ import annotations

import contextlib
import os
import pty
import queue
import re
import select
import signal
import socket
import sqlite3
import subprocess
import threading
import time
from pathlib import Path
from typing import IO, Any

import pytest
from babel.messages.extract import extract_from_file
from babel.messages.pofile import read_po

import tcpulse
import tcpulse.i18n as _i18n
from tests.conftest import MS, tcpulse_cmd

PKG = Path(tcpulse.__file__).parent
PO = PKG / "i18n" / "locale" / "zh" / "LC_MESSAGES" / "tcpulse.po"
#: Modules whose every shown string must be in the zh catalog: all of them.  The edges (cli, admin,
#: bench) translate with `_()`; the library marks its error templates with `N_()` and the command
#: line translates them when it shows them (tcpulse.errors).
TRANSLATED = sorted(str(p.relative_to(PKG)) for p in PKG.rglob("*.py"))
#: The gettext keywords of scripts/i18n_pot.py.
KEYWORDS: dict[str, Any] = {"_": None, "N_": None, "ngettext": (1, 2)}


def catalog() -> dict[str, str]:
    with PO.open("rb") as f:
        return {m.id: m.string for m in read_po(f) if m.id}


def test_catalog_covers_server_and_status_text() -> None:
    zh = catalog()
    marked = 0
    for name in TRANSLATED:
        for _lineno, msgid, _comments, _ctx in extract_from_file("python", str(PKG / name), keywords=KEYWORDS):
            assert zh.get(msgid), f"{name}: no zh translation for {msgid!r} (scripts/i18n.sh update)"
            marked += name.startswith(("client", "security", "store", "server"))
    assert marked > 40  # the library's error templates are seen (N_), not only the edges' _()


def _fields(text: str) -> list[str]:
    return sorted(re.findall(r"\{[^}]*\}|%\([a-z]+\)s", text))


def test_translations_keep_every_placeholder() -> None:
    for msgid, msgstr in catalog().items():
        assert msgstr, f"empty translation of {msgid!r}"
        if isinstance(msgid, tuple):
            # Plural forms (click's): Chinese has one form, used for every count; it may use the
            # fields of either English form, and nothing else.
            assert len(msgstr) == 1 and msgstr[0], msgid
            assert set(_fields(msgstr[0])) <= set(_fields(msgid[0]) + _fields(msgid[1])), msgid
        else:
            assert _fields(msgid) == _fields(msgstr), msgid


def test_compiled_catalog_is_installed_and_chosen_by_locale(monkeypatch: pytest.MonkeyPatch) -> None:
    # The build hook (setup.py) compiled it: no manual step.
    assert (PO.with_suffix(".mo")).exists()
    try:
        for var in ("LC_ALL", "LC_MESSAGES", "LANGUAGE"):
            monkeypatch.delenv(var, raising=False)
        monkeypatch.setenv("LANG", "zh_CN.UTF-8")
        assert _i18n.set_language(None) == "zh"
        assert _i18n._("Sent heartbeat #{n}").format(n=2) == "发送第 2 次心跳包"
        assert _i18n._("Enter a message to send ('exit' to quit): ") == "请输入要发送的消息(输入'exit'退出): "
        assert _i18n.set_language("en") == "en"
        assert _i18n._("Sent heartbeat #{n}") == "Sent heartbeat #{n}"
        monkeypatch.setenv("LANG", "fr_FR.UTF-8")
        assert _i18n.set_language(None) == "en"
    finally:
        _i18n.set_language("en")


class Lines:
    """A subprocess's output, line by line, read by a thread (bounded waits, no deadlock)."""

    def __init__(self, stream: IO[str]) -> None:
        self.q: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self.q.put(line.rstrip("\n"))
        self.q.put(None)

    def wait_for(self, pattern: str, timeout: float = 10.0) -> re.Match[str]:
        end = time.monotonic() + timeout
        rx = re.compile(pattern)
        for line in self.seen:
            m = rx.search(line)
            if m:
                return m
        while True:
            try:
                line = self.q.get(timeout=max(0.01, end - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no line matching {pattern!r}; seen: {self.seen}") from None
            if line is None:
                raise AssertionError(f"output ended before {pattern!r}; seen: {self.seen}")
            self.seen.append(line)
            m = rx.search(line)
            if m:
                return m


@contextlib.contextmanager
def zh_server(*args: str, env: dict[str, str] | None = None) -> Any:
    p = subprocess.Popen(tcpulse_cmd("serve", "--port", "0", *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         stdin=subprocess.DEVNULL, text=True, env={**os.environ, **(env or {})})
    assert p.stdout is not None
    try:
        out = Lines(p.stdout)
        m = out.wait_for(r"服务器启动,监听 127\.0\.0\.1:(\d+)", timeout=20)
        yield p, out, int(m.group(1))
    finally:
        if p.poll() is None:
            os.kill(p.pid, signal.SIGKILL)
        p.wait(10)


def test_original_demo_lines_in_chinese() -> None:
    interval = 300 * MS
    with zh_server("--lang", "zh", "-v", "--heartbeat-interval", str(interval),
                   "--heartbeat-timeout", str(2 * interval), "--status-every", str(interval)) as (srv, out, port):
        stamp = r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\] "
        out.wait_for(stamp + r"心跳检测阈值: " + re.escape(f"{2 * interval:g}") + "秒")
        # Every start-up line is in Chinese, the capacity line too.
        out.wait_for(stamp + r"容量: 本服务器最多可容纳 \d+ 个客户端")
        client = subprocess.run(
            tcpulse_cmd("connect", "--port", str(port), "--id", "demo-1", "--seed-demo", "--lang", "zh"),
            input="你好\n", capture_output=True, text=True, timeout=60)
        lines = client.stdout.splitlines()
        assert lines[0].startswith(f"已连接到服务器 127.0.0.1:{port}"), lines
        beats = [ln for ln in lines if ln.startswith("发送第")]
        assert beats == ["发送第 1 次心跳包", "发送第 2 次心跳包", "发送第 3 次心跳包"]
        assert any(ln.startswith("服务器断开连接") for ln in lines), lines
        assert lines[-1] == "已断开与服务器的连接", lines
        assert client.returncode == 1

        out.wait_for(stamp + r"新的客户端连接: 127\.0\.0\.1:\d+")
        out.wait_for(stamp + r"收到来自 demo-1 的心跳包")
        out.wait_for(stamp + r"来自 demo-1 的消息(?: #\d+)?: 你好")
        out.wait_for(r"当前客户端连接状态:")
        out.wait_for(r"客户端 demo-1 \| .*\| 状态: 正常")
        out.wait_for(stamp + r"已断开与 demo-1 的连接\(心跳超时\)")

        # A client that vanishes with a reset: the original's "客户端 … 异常断开".
        s = socket.create_connection(("127.0.0.1", port))
        s.recv(4096)  # INFO
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.close()
        out.wait_for(stamp + r"客户端 127\.0\.0\.1:\d+ \(127\.0\.0\.1:\d+\) 异常断开")
        os.kill(srv.pid, signal.SIGTERM)
        assert srv.wait(10) == 0


def test_zh_locale_without_flag_and_cannot_connect() -> None:
    env = {"LANG": "zh_CN.UTF-8", "LC_ALL": "", "LC_MESSAGES": "", "LANGUAGE": ""}
    with zh_server("--status-every", "0", env=env) as (srv, out, port):
        out.wait_for(r"心跳检测阈值: 10秒")
        os.kill(srv.pid, signal.SIGTERM)
        srv.wait(10)
    # The port is closed now: nothing listens there.
    r = subprocess.run(tcpulse_cmd("connect", "--port", str(port), "--id", "x", "--lang", "zh"),
                       capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert r.returncode != 0
    # One line on one stream (issue 13): the error, in Chinese, on stderr; nothing on stdout.
    assert r.stdout == "" and _error_line(r) == f"tcpulse: error: 到 127.0.0.1:{port} 的连接被拒绝: 服务器是否在运行?"


def test_interactive_prompt_in_chinese() -> None:
    with zh_server("--status-every", "0", "--lang", "zh") as (srv, _out, port):
        master, slave = pty.openpty()
        p = subprocess.Popen(tcpulse_cmd("connect", "--port", str(port), "--id", "tty-1", "--lang", "zh"),
                             stdin=slave, stdout=slave, stderr=slave, close_fds=True)
        os.close(slave)
        buf = b""
        try:
            end = time.monotonic() + 20
            while "请输入要发送的消息(输入'exit'退出)".encode() not in buf:
                assert time.monotonic() < end, buf.decode(errors="replace")
                if select.select([master], [], [], 0.2)[0]:
                    try:
                        buf += os.read(master, 4096)
                    except OSError:
                        break
            os.write(master, b"exit\n")
            assert p.wait(20) == 0
            with contextlib.suppress(OSError):
                while select.select([master], [], [], 0.5)[0]:
                    chunk = os.read(master, 4096)
                    if not chunk:
                        break
                    buf += chunk
        finally:
            if p.poll() is None:
                os.kill(p.pid, signal.SIGKILL)
                p.wait(10)
            os.close(master)
        text = buf.decode(errors="replace")
        assert f"已连接到服务器 127.0.0.1:{port}" in text
        assert "已断开与服务器的连接" in text
        os.kill(srv.pid, signal.SIGTERM)


def _error_line(r: subprocess.CompletedProcess[str]) -> str:
    """The one `tcpulse: error:` line of a failed command (and nothing else on stderr)."""
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("tcpulse: error: "), r.stderr
    return r.stderr.strip()


def test_cli_errors_in_chinese(tmp_path: Path) -> None:
    with socket.socket() as held:
        # Bound but not listening: nothing else gets the port, and a connection to it is refused.
        held.bind(("127.0.0.1", 0))
        closed = held.getsockname()[1]
        r = subprocess.run(tcpulse_cmd("connect", "--lang", "zh", "--port", str(closed), "--id", "x",
                                       "--no-reconnect"),
                           capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
        assert _error_line(r) == f"tcpulse: error: 到 127.0.0.1:{closed} 的连接被拒绝: 服务器是否在运行?"
        assert r.stdout == ""  # one line on one stream

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = subprocess.run(tcpulse_cmd("serve", "--lang", "zh", "--port", str(port), "--db", "none"),
                           capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert _error_line(r) == (f"tcpulse: error: 127.0.0.1 上的端口 {port} 已被占用: 请停止另一个服务器, "
                              "或用 --port 选择其他端口 (0 自动选择空闲端口)")

    # A command without --lang follows a zh_* locale; --lang en still gives the English line.
    env = {**os.environ, "LANG": "zh_CN.UTF-8", "LC_ALL": "", "LC_MESSAGES": "", "LANGUAGE": ""}
    tokens = str(tmp_path / "tcpulse.tokens")
    r = subprocess.run(tcpulse_cmd("token", "revoke", "nobody", "--auth-file", tokens),
                       capture_output=True, text=True, timeout=30, env=env)
    assert _error_line(r) == (f"tcpulse: error: nobody 在 {tokens} 中没有令牌: "
                              f"请查看 'tcpulse token list --auth-file {tokens}'")
    r = subprocess.run(tcpulse_cmd("connect", "--lang", "en", "--port", str(closed), "--id", "x", "--no-reconnect",
                                   "--tls-key", "k.pem"), capture_output=True, text=True, timeout=30, env=env)
    assert _error_line(r) == "tcpulse: error: --tls-key needs --tls-cert (the client certificate it belongs to)"


def test_errors_raised_outside_the_cli_in_chinese(tmp_path: Path) -> None:
    """Errors the library raises (server/config.py, store/sqlite.py: English, with a kind) are
    printed in Chinese: the command line translates them (`cli.common.error_text`); and the
    command line's own lines (cli/history.py) too."""
    r = subprocess.run(tcpulse_cmd("serve", "--lang", "zh", "--heartbeat-interval", "5", "--heartbeat-timeout", "4"),
                       capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert _error_line(r) == "tcpulse: error: --heartbeat-timeout 必须大于 --heartbeat-interval (实际为 4.0 <= 5.0)"

    # An SQLite file some other program made: refused before listening, in one line.
    foreign = tmp_path / "other.db"
    with contextlib.closing(sqlite3.connect(foreign)) as con:
        con.execute("CREATE TABLE notes (t TEXT)")
    r = subprocess.run(tcpulse_cmd("serve", "--lang", "zh", "--port", "0", "--db", str(foreign)),
                       capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert _error_line(r) == (f"tcpulse: error: {foreign} 不是 tcpulse 数据库: 请选择其他 --db "
                              "(或用 --db none 不保存任何内容)")

    # A bad --since under a zh_* locale: one line naming the accepted forms, no click usage lines,
    # and before the database is looked at (there is none here).
    env = {**os.environ, "LANG": "zh_CN.UTF-8", "LC_ALL": "", "LC_MESSAGES": "", "LANGUAGE": ""}
    for cmd in ("history", "messages"):
        r = subprocess.run(tcpulse_cmd(cmd, "--db", str(tmp_path / "none.db"), "--since", "yesterday"),
                           capture_output=True, text=True, timeout=30, env=env)
        assert r.returncode == 2
        assert _error_line(r) == ("tcpulse: error: --since 'yesterday' 既不是时长 (30s, 10m, 2h, 7d) 也不是日期 "
                                  "(2025-04-10 或 2025-04-10T15:30): 请给出其中一种")
    r = subprocess.run(tcpulse_cmd("history", "--db", str(foreign), "--since", "yesterday"),
                       capture_output=True, text=True, timeout=30, env={**env, "LANG": "C.UTF-8"})
    assert _error_line(r) == ("tcpulse: error: --since 'yesterday' is neither a duration (30s, 10m, 2h, 7d) nor a date "
                              "(2025-04-10 or 2025-04-10T15:30): give one of these")


def test_every_help_text_is_translated() -> None:
    # Each option's and command's --help text (scripts/i18n.sh adds new ones to the catalog).
    from tcpulse.cli.click_i18n import help_texts
    from tcpulse.cli.main import main
    zh = catalog()
    texts = help_texts(main)
    assert len(texts) > 80  # every command and option: serve alone has dozens
    missing = [t for t in texts if not zh.get(t)]
    assert not missing, f"no zh translation (scripts/i18n.sh update): {missing}"


def test_help_and_usage_errors_in_chinese_then_english_again() -> None:
    from click.testing import CliRunner

    from tcpulse.cli.main import main
    env = {"LANG": "C.UTF-8", "LC_ALL": "", "LC_MESSAGES": "", "LANGUAGE": ""}
    r = CliRunner().invoke(main, ["serve", "--lang", "zh", "--help"], env=env, prog_name="tcpulse")
    assert r.exit_code == 0, r.output
    assert r.output.startswith("用法: tcpulse serve")
    assert "客户端静默多少秒后判定为失联。" in r.output and "[默认: 10.0]" in r.output
    assert "显示此帮助并退出。" in r.output
    # Click's own usage errors, before any other option is read.
    r = CliRunner().invoke(main, ["serve", "--lang", "zh", "--port", "abc"], env=env, prog_name="tcpulse")
    assert r.exit_code == 2
    assert "错误: '--port' 的值无效: 'abc' 不是有效的" in r.output
    assert "运行 'tcpulse serve --help' 查看帮助。" in r.output
    r = CliRunner().invoke(main, ["--lang", "zh", "history", "--limit", "x"], env=env, prog_name="tcpulse")
    assert r.exit_code == 2 and "'--limit' 的值无效" in r.output, r.output
    # The next command, in the same process, is in the locale's language again.
    r = CliRunner().invoke(main, ["serve", "--help"], env=env, prog_name="tcpulse")
    assert r.output.startswith("Usage: tcpulse serve") and "Seconds of silence after which" in r.output
    assert "Show this message and exit." in r.output and "显示此帮助并退出。" not in r.output
    # -h too, on a command of a sub-group, in both languages (the help option click keeps).
    r = CliRunner().invoke(main, ["--lang", "zh", "bench", "hold", "-h"], env=env, prog_name="tcpulse")
    assert r.exit_code == 0 and r.output.startswith("用法: tcpulse bench hold") and "显示此帮助并退出。" in r.output
    r = CliRunner().invoke(main, ["bench", "hold", "-h"], env=env, prog_name="tcpulse")
    assert r.exit_code == 0 and "-h, --help" in r.output and "Show this message and exit." in r.output
    r = CliRunner().invoke(main, ["serve", "--port", "abc"], env=env, prog_name="tcpulse")
    assert "Error: Invalid value for '--port'" in r.output


def test_help_follows_a_zh_locale() -> None:
    env = {**os.environ, "LANG": "zh_CN.UTF-8", "LC_ALL": "", "LC_MESSAGES": "", "LANGUAGE": ""}
    r = subprocess.run(tcpulse_cmd("--help"), capture_output=True, text=True, timeout=30, env=env)
    assert r.returncode == 0
    assert r.stdout.startswith("用法: ")
    assert "serve     运行服务器。" in r.stdout
    r = subprocess.run(tcpulse_cmd("--lang", "en", "connect", "--help"), capture_output=True, text=True,
                       timeout=30, env=env)
    assert r.stdout.startswith("Usage: ") and "Client id (default" in r.stdout
