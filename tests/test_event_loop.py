"""uvloop when installed, `--loop asyncio` to turn it off (issue 6, target 5).

What a running `tcpulse serve` uses is read from outside: uvloop's extension module appears in
the process's memory map only when it was imported, which `--loop asyncio` must never do.
"""

from __future__ import annotations

import asyncio
import importlib.util

import pytest

from tcpulse.cli import loop_runner

HAVE_UVLOOP = importlib.util.find_spec("uvloop") is not None


def _maps_uvloop(pid: int) -> bool:
    with open(f"/proc/{pid}/maps") as f:
        return "uvloop" in f.read()


def test_loop_runner_runs_on_the_loop_it_names() -> None:
    async def which() -> str:
        return type(asyncio.get_running_loop()).__module__

    run, name = loop_runner("asyncio")
    assert name == "asyncio" and run(which()).startswith("asyncio")
    run, name = loop_runner("auto")
    assert name == ("uvloop" if HAVE_UVLOOP else "asyncio")
    assert run(which()).startswith(name)


@pytest.mark.skipif(not HAVE_UVLOOP, reason="uvloop is not installed (pip install 'tcpulse[fast]')")
def test_serve_uses_uvloop_by_default_and_not_with_loop_asyncio(server_process) -> None:  # type: ignore[no-untyped-def]
    auto = server_process()
    plain = server_process("--loop", "asyncio")
    assert _maps_uvloop(auto.proc.pid)
    assert not _maps_uvloop(plain.proc.pid)
