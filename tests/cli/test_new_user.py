"""Tier 4: what a new user tripped on (issue 13, point 5), through real subprocesses: a database
that cannot be made is named (not blamed on the port), a failed start leaves no lock file, the
HEARTBEAT column says what it counts."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from tcpulse.cli.console import TERMINAL_ROWS, ConsoleLog
from tcpulse.server.events import Status
from tests.conftest import tcpulse_cmd


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(tcpulse_cmd(*args), capture_output=True, text=True, timeout=30,
                          stdin=subprocess.DEVNULL, cwd=cwd)


@pytest.mark.parametrize("db", ["/proc/x.db", "/sys/x.db"])
def test_a_database_that_cannot_be_made_is_named(db: str) -> None:
    r = run("serve", "--port", "0", "--db", db)
    assert r.returncode == 1 and r.stderr.count("\n") == 1, r.stderr
    assert f"cannot create the database {db}" in r.stderr and "--db" in r.stderr
    assert "port" not in r.stderr and "listen" not in r.stderr


def test_failed_starts_leave_no_lock_file(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = run("serve", "--port", str(port), "--db", "t.db", cwd=tmp_path)
    assert "already in use" in r.stderr
    # A directory given as the database: named, and no <dir>.lock beside it.
    (tmp_path / "data").mkdir()
    r = run("serve", "--port", "0", "--db", "data", cwd=tmp_path)
    assert r.returncode == 1 and "data is a directory: give --db a file in it, e.g. data/tcpulse.db" in r.stderr
    # A file that is not a database.
    (tmp_path / "notes.txt").write_text("not sqlite " * 100)
    r = run("serve", "--port", "0", "--db", "notes.txt", cwd=tmp_path)
    assert r.returncode == 1 and "notes.txt" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "notes.txt", "t.db"]


def test_a_second_server_on_the_same_database_is_refused_and_the_first_keeps_its_lock(
        tmp_path: Path, server_process) -> None:  # type: ignore[no-untyped-def]
    db = tmp_path / "one.db"
    first = server_process("--db", str(db))
    assert (tmp_path / "one.db.lock").exists()
    r = run("serve", "--port", "0", "--db", str(db))
    assert r.returncode == 1 and "in use by another tcpulse server" in r.stderr
    assert (tmp_path / "one.db.lock").exists()  # the refused one did not take it away
    assert first.terminate() == 0
    assert not (tmp_path / "one.db.lock").exists()  # and the first removes it when it stops


def test_the_table_says_what_proves_life_and_what_the_count_is(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # the rich table's width: no header wrapped
    row = {"client": "typist", "addr": "127.0.0.1:1", "connected_at": 0.0, "last_heard_ago": 0.4, "heartbeats": 0,
           "messages": 3, "state": "alive", "rtt": None}
    out = io.StringIO()
    ConsoleLog(out, rich_tables=False)(Status([row]))
    assert "last heard 0.4 s ago | HEARTBEAT frames 0 | messages 3" in out.getvalue()
    out = io.StringIO()
    ConsoleLog(out, rich_tables=True)(Status([row]))
    assert "HEARTBEAT frames" in out.getvalue() and "last heard (any frame)" in out.getvalue()


def test_a_terminal_table_is_bounded_and_shows_suspects_first() -> None:
    rows = [{"client": f"c{i}", "addr": f"127.0.0.1:{i}", "connected_at": 0.0, "last_heard_ago": 0.1,
             "heartbeats": 1, "messages": 0, "state": "alive", "rtt": None} for i in range(TERMINAL_ROWS + 5)]
    rows[-1] = {**rows[-1], "state": "suspect"}
    out = io.StringIO()
    log = ConsoleLog(out, rich_tables=False, changes_only=True)
    log(Status(rows))
    text = out.getvalue()
    assert f"Current client connections: {TERMINAL_ROWS + 5}" in text and "5 more not shown" in text
    assert text.count("Client c") == TERMINAL_ROWS and f"Client c{TERMINAL_ROWS + 4} " in text
    log(Status(rows))  # the same again: not printed
    assert out.getvalue() == text


def test_sighup_without_an_auth_file_does_not_stop_the_server(server_process) -> None:  # type: ignore[no-untyped-def]
    srv = server_process()
    os.kill(srv.proc.pid, signal.SIGHUP)  # what `systemctl reload` sends (docs/deploy.md)
    w = srv.wait_event("warning")
    assert "nothing to re-read" in w["text"] and srv.proc.poll() is None
    assert srv.terminate() == 0


def test_the_readme_set_up_installs_what_every_server_feature_needs() -> None:
    # `bash scripts/demo.sh` (the README's first command) sets up with these extras; `--admin` and
    # alerts must work right after it, without a second pip install.
    import re
    import tomllib
    root = Path(__file__).resolve().parents[2]
    demo = (root / "scripts" / "demo.sh").read_text()
    m = re.search(r"TCPULSE_EXTRAS=\$\{TCPULSE_EXTRAS:-([a-z,]+)\}", demo)
    assert m, demo
    extras = set(m.group(1).split(","))
    setup = (root / "scripts" / "setup.sh").read_text()
    assert "fonts-noto-cjk" in setup  # the zh dashboard in the tests' Chromium
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    installed = {d.split(">")[0].split("[")[0] for d in project["dependencies"]}
    for extra in extras:
        installed |= {d.split(">")[0] for d in project["optional-dependencies"][extra]}
    assert {"aiohttp", "prometheus_client", "uvloop"} <= installed, installed
    # ... which covers every third-party module the server's features import.
    import ast
    import sys
    pkg = root / "src" / "tcpulse"
    imported = set()
    for path in [*pkg.glob("admin/*.py"), *pkg.glob("alerts/*.py"), *pkg.glob("server/*.py"), *pkg.glob("cli/*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else []
            imported |= {n.split(".")[0] for n in names}
    third_party = {m for m in imported if m not in sys.stdlib_module_names and m != "tcpulse"}
    assert third_party <= installed | {"rich", "click"}, third_party - installed
