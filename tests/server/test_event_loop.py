"""uvloop when installed, `--loop asyncio` to turn it off (issue 6, target 5).

What a running `tcpulse serve` uses is read from outside: uvloop's extension module appears in
the process's memory map only when it was imported, which `--loop asyncio` must never do.
"""

from __future__ import annotations

import asyncio
import importlib.util
import time

import pytest

from tcpulse.cli.common import loop_runner
from tcpulse.server.config import ServerConfig
from tcpulse.server.events import TimedOut
from tcpulse.server.server import Server
from tests.conftest import RawClient

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


def _monotonic_step(samples: int = 40, limit: float = 1.0) -> float:
    """The smallest step this machine's monotonic clock was seen to take (bounded in time)."""
    steps: list[float] = []
    t = start = time.monotonic()
    while len(steps) < samples and time.monotonic() - start < limit:
        n = time.monotonic()
        if n != t:
            steps.append(n - t)
            t = n
    return min(steps) if steps else limit


@pytest.mark.skipif(not HAVE_UVLOOP, reason="uvloop is not installed (pip install 'tcpulse[fast]')")
def test_timeout_figures_are_finer_than_uvloops_clock() -> None:
    # uvloop's clock ticks in whole milliseconds. Were deadlines kept on it, every silence and
    # lateness would be a whole number of milliseconds; they are kept on the monotonic clock.
    import uvloop
    step = _monotonic_step()
    if step >= 0.5e-3:
        pytest.skip(f"this machine's monotonic clock itself ticks every {step * 1e3:.2f} ms")
    timeout = 0.2

    async def scenario() -> list[TimedOut]:
        loop = asyncio.get_running_loop()
        assert all(abs(loop.time() * 1000 - round(loop.time() * 1000)) < 1e-6 for _ in range(3))
        srv = Server(ServerConfig(port=0, status_every=0, heartbeat_interval=timeout / 2,
                                  heartbeat_timeout=timeout))
        out: list[TimedOut] = []
        srv.subscribe(lambda ev: out.append(ev) if isinstance(ev, TimedOut) else None)
        await srv.start()
        try:
            cs = []
            for i in range(6):
                c = await RawClient.open(srv.port)
                await c.hello(f"fine{i}")
                cs.append(c)
                await asyncio.sleep(0.0037)
            for c in cs:
                await c.expect(b"BYE")
                c.close()
        finally:
            await srv.close(grace=1)
        return out

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        timeouts = runner.run(scenario())
    assert len(timeouts) == 6
    figures = [t.silent_for for t in timeouts] + [t.late_by for t in timeouts]
    assert all(t.silent_for >= timeout and t.late_by >= 0 for t in timeouts)

    def off_grid(x: float) -> bool:
        return abs(x * 1000 - round(x * 1000)) > 1e-6
    assert any(off_grid(f) for f in figures), figures
