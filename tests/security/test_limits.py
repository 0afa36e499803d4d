"""`raise_open_file_limit`, the one used by the server (`Guard.prepare`) and by `tcpulse bench`."""

from __future__ import annotations

import json
import resource
import subprocess
import sys

import pytest

from tcpulse.security import limits
from tcpulse.security.limits import UNLIMITED_TARGET, raise_open_file_limit

_PROBE = """
import json, resource
from tcpulse.security.limits import raise_open_file_limit
resource.setrlimit(resource.RLIMIT_NOFILE, (256, 1024))  # a child of its own: lowering is for good
out = [raise_open_file_limit(300), raise_open_file_limit(100), raise_open_file_limit(5000),
       raise_open_file_limit(), resource.getrlimit(resource.RLIMIT_NOFILE)]
print(json.dumps(out))
"""


def test_raises_to_what_is_wanted_never_lowers_never_passes_the_hard_limit() -> None:
    if resource.getrlimit(resource.RLIMIT_NOFILE)[1] < 1024:
        pytest.skip("the hard limit here is below 1024")
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    wanted_300, wanted_100, wanted_5000, as_high, in_force = json.loads(out.stdout)
    assert wanted_300 == [300, 1024]
    assert wanted_100 == [300, 1024]  # never lowered
    assert wanted_5000 == [1024, 1024]  # capped by the hard limit
    assert as_high == [1024, 1024]
    assert in_force == [1024, 1024]  # what it returns is what is in force


def test_unlimited_hard_limit_and_a_refusal(monkeypatch: pytest.MonkeyPatch) -> None:
    state = {"soft": 1024, "hard": resource.RLIM_INFINITY, "refuse": False}

    def getrlimit(which: int) -> tuple[int, int]:
        return state["soft"], state["hard"]

    def setrlimit(which: int, limits_: tuple[int, int]) -> None:
        if state["refuse"]:
            raise ValueError("not allowed")
        state["soft"] = limits_[0]

    monkeypatch.setattr(limits.resource, "getrlimit", getrlimit)
    monkeypatch.setattr(limits.resource, "setrlimit", setrlimit)
    # An unlimited hard limit means a finite target: the kernel refuses RLIM_INFINITY as soft.
    assert raise_open_file_limit(UNLIMITED_TARGET * 4) == (UNLIMITED_TARGET, resource.RLIM_INFINITY)
    state["soft"] = 1024
    assert raise_open_file_limit() == (UNLIMITED_TARGET, resource.RLIM_INFINITY)
    state["soft"], state["refuse"] = 1024, True
    assert raise_open_file_limit(4096) == (1024, resource.RLIM_INFINITY)  # refused: as it was
