"""Tier 4: settings from a TOML file (--config) and TCPULSE_<FLAG>, for serve and connect, through
real subprocesses: precedence (flag > environment > file > default), --print-config, and one
line for every bad file or value."""

from __future__ import annotations

import os
import subprocess
import tomllib
from pathlib import Path
from typing import Any

from tests.conftest import tcpulse_cmd


def run(*args: str, env: dict[str, str] | None = None, input: str | None = None,
        timeout: float = 30) -> subprocess.CompletedProcess[str]:
    # Only the variables a test sets: none of the caller's TCPULSE_* leaks in.
    base = {k: v for k, v in os.environ.items() if not k.startswith("TCPULSE_")}
    return subprocess.run(tcpulse_cmd(*args), capture_output=True, text=True, timeout=timeout,
                          env={**base, **(env or {})}, input=input,
                          stdin=None if input is not None else subprocess.DEVNULL)


def one_line(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("tcpulse: error: "), r.stderr
    assert "Traceback" not in r.stderr
    return r.stderr.strip()


def settings(text: str) -> dict[str, tuple[str, str]]:
    """--print-config's lines as key -> (value, origin)."""
    out = {}
    for line in text.splitlines():
        if line.startswith(("#", "[")) or " = " not in line:
            continue
        setting, origin = line.split("  # ", 1)
        k, v = setting.split(" = ", 1)
        out[k.strip()] = (v.strip(), origin.strip())
    return out


def test_flag_beats_environment_beats_file_beats_default(tmp_path: Path) -> None:
    cfg = tmp_path / "tcpulse.toml"
    cfg.write_text('port = 1111\nheartbeat-interval = 2\n[serve]\ndb = "none"\nwebhook = ["http://a/x", "http://b/y"]\n'
                   '[connect]\nid = "ignored-by-serve"\n')
    r = run("serve", "--config", str(cfg), "--heartbeat-interval", "3", "--print-config",
            env={"TCPULSE_PORT": "2222", "TCPULSE_ADMIN_TOKEN": "s3cr3t-token"})
    assert r.returncode == 0, r.stderr
    s = settings(r.stdout)
    assert s["port"] == ("2222", "environment TCPULSE_PORT")
    assert s["heartbeat_interval"] == ("3.0", "flag")
    assert s["db"] == ('"none"', f"file {cfg}")
    assert s["webhook"] == ('["http://a/x", "http://b/y"]', f"file {cfg}")
    assert s["heartbeat_timeout"] == ("10.0", "default")
    assert "s3cr3t-token" not in r.stdout and "# admin_token = (hidden)" in r.stdout
    # What it prints is a config file that gives the same settings.
    printed = tomllib.loads(r.stdout)["serve"]
    again = tmp_path / "again.toml"
    again.write_text(r.stdout)
    r2 = run("serve", "--config", str(again), "--print-config")
    s2 = settings(r2.stdout)
    assert {k: v for k, (v, _o) in s2.items()} == {k: v for k, (v, _o) in s.items()}
    assert printed["port"] == 2222 and printed["loop"] == "auto"


def test_every_flag_reads_its_variable_and_the_file_may_be_named_by_one(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[serve]\nmax-per-addr = 7\n')
    r = run("serve", "--print-config", env={"TCPULSE_CONFIG": str(cfg), "TCPULSE_QUIET": "true",
                                            "TCPULSE_LOG_FORMAT": "json", "TCPULSE_LOOP": "asyncio"})
    s = settings(r.stdout)
    assert s["max_per_addr"] == ("7", f"file {cfg}")
    assert s["quiet"] == ("true", "environment TCPULSE_QUIET")
    assert s["log_format"][0] == '"json"' and s["loop"] == ('"asyncio"', "environment TCPULSE_LOOP")


def test_connect_takes_its_settings_from_the_file_and_the_environment(tmp_path: Path, server_process: Any) -> None:
    srv = server_process()
    cfg = tmp_path / "both.toml"
    cfg.write_text('[serve]\nport = 1\n[connect]\nid = "from-file"\nno-reconnect = true\n')
    r = run("connect", "--config", str(cfg), env={"TCPULSE_PORT": str(srv.port)}, input="hi\n")
    assert r.returncode == 0, r.stderr
    assert srv.wait_event("hello")["client"] == "from-file"
    assert srv.wait_event("message")["text"] == "hi"
    r = run("connect", "--config", str(cfg), "--print-config", env={"TCPULSE_HOST": "::1"})
    s = settings(r.stdout)
    assert s["id"] == ('"from-file"', f"file {cfg}") and s["host"] == ('"::1"', "environment TCPULSE_HOST")
    assert s["no_reconnect"][0] == "true"
    srv.terminate()


def test_bad_values_from_the_environment_are_one_line() -> None:
    assert one_line(run("serve", env={"TCPULSE_PORT": "abc"})).endswith(
        "TCPULSE_PORT=abc: 'abc' is not a valid integer range (allowed: an integer from 0 to 65535)")
    line = one_line(run("serve", env={"TCPULSE_HEARTBEAT_INTERVAL": "-1"}))
    assert "TCPULSE_HEARTBEAT_INTERVAL=-1" in line and "greater than 0" in line
    line = one_line(run("serve", env={"TCPULSE_LOG_FORMAT": "xml"}))
    assert "TCPULSE_LOG_FORMAT=xml" in line and "one of text, json" in line
    line = one_line(run("serve", env={"TCPULSE_VERBOSE": "maybe"}))
    assert "TCPULSE_VERBOSE=maybe" in line and "true or false" in line
    line = one_line(run("connect", env={"TCPULSE_PORT": "0"}))
    assert "TCPULSE_PORT=0" in line and "1 to 65535" in line


def test_bad_files_are_one_line(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    for text, needles in [
        ("prot = 1\n", ["unknown key prot for tcpulse serve", "did you mean port?"]),
        ('port = "x"\n', ['port = "x": expected an integer from 0 to 65535']),
        ("port = 70000\n", ["port = 70000", "not in the range", "allowed: an integer from 0 to 65535"]),
        ("verbose = 1\n", ["verbose = 1: expected true or false"]),
        ('log_format = "xml"\n', ['log_format = "xml"', "one of text, json"]),
        ("heartbeat_interval = -2\n", ["heartbeat_interval = -2", "greater than 0"]),
        ("port = \n", ["is not valid TOML", "line 1"]),
        # A rule between two settings names where they came from.
        ("heartbeat_timeout = 1\n", ["--heartbeat-timeout must be longer than --heartbeat-interval",
                                     f"{cfg}: heartbeat_timeout = 1"]),
    ]:
        cfg.write_text(text)
        line = one_line(run("serve", "--config", str(cfg)))
        for n in needles:
            assert n in line, (text, line)
    assert "no such file" in one_line(run("serve", "--config", str(tmp_path / "nope.toml")))
    assert "is a directory" in one_line(run("serve", "--config", str(tmp_path)))


def test_unknown_language_is_rejected_with_the_known_ones(tmp_path: Path) -> None:
    for args, env in [(["--lang", "fr", "serve"], {}), (["serve", "--lang", "fr"], {}),
                      (["connect", "--lang", "fr"], {}), (["serve"], {"TCPULSE_LANG": "fr"})]:
        line = one_line(run(*args, env=env))
        assert "fr" in line and "unknown language" in line and "en, zh" in line, line
    r = run("--lang", "zh_CN.UTF-8", "serve", "--port", "70000")
    assert r.returncode == 2 and "--port" in r.stderr


def test_the_documented_config_files_are_taken(tmp_path: Path) -> None:
    import re
    root = Path(__file__).resolve().parents[2]
    for doc, commands in ((root / "README.md", ("serve", "connect")), (root / "docs" / "deploy.md", ("serve",))):
        blocks = re.findall(r"```toml\n(.*?)```", doc.read_text(), re.S)
        assert blocks, doc
        for i, block in enumerate(blocks):
            cfg = tmp_path / f"{doc.stem}-{i}.toml"
            cfg.write_text(block)
            for command in commands:
                r = run(command, "--config", str(cfg), "--print-config")
                assert r.returncode == 0, (doc.name, command, r.stderr)
                assert f"# file {cfg}" in r.stdout
