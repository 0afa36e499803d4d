"""The fuzzer's seeds (fuzz/seeds/, written by fuzz/make_seeds.py), replayed through the
harness's own checks (fuzz/fuzz_connection.py) without atheris: every promise it checks holds for
them, and the seeds of issue 15 do reach the number checks they are there for.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from types import ModuleType
from unittest import mock

import pytest

import tcpulse.protocol.fields

FUZZ = Path(__file__).resolve().parents[2] / "fuzz"
SEEDS = sorted(p.name for p in (FUZZ / "seeds").iterdir())


def _load_harness() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fuzz_connection", FUZZ / "fuzz_connection.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    with mock.patch.dict(sys.modules, {"atheris": None}):  # replay only: no instrumentation
        spec.loader.exec_module(module)
    return module


harness = _load_harness()
#: The seeds that are all good frames; every other one ends in a bad frame (ERR 400, or 413 for caps_).
#: (A HELLO token with a lone surrogate escape is a token, refused by the guard, not a bad frame.)
CLEAN = {"anon-server", "numbers_ok_limits-client", "server_frames-client", "server_frames-client_hello",
         "session-server", "session_refused-server", "strings_hello_surrogate-server"}


def _seed(name: str) -> bytes:
    return (FUZZ / "seeds" / name).read_bytes()


@pytest.mark.parametrize("name", SEEDS)
def test_every_seed_keeps_the_promises_the_harness_checks(name: str) -> None:
    data = _seed(name)
    harness.TestOneInput(data)  # raises Violation for a broken promise
    cfg, _, stream = harness.decode(data)
    events, err, _, _, _ = harness.feed(cfg, [stream])
    if name in CLEAN:
        assert err is None and events, (name, err)
    else:
        assert err is not None and err.startswith("413 " if name.startswith("caps_") else "400 "), (name, err)


def test_the_seeds_cover_both_roles_and_every_json_frame() -> None:
    streams = [harness.decode(_seed(n)) for n in SEEDS]
    assert {cfg["server"] for cfg, _, _ in streams} == {True, False}
    for verb in (b"HELLO {", b"INFO {", b"OK {"):
        assert any(verb in s and b"9" * 309 in s for _, _, s in streams), verb


def test_decode_reads_what_encode_wrote() -> None:
    cfg = {"server": True, "auth": True, "hello_first": False, "answer": "err", "acked": 3, "max_line": 1084,
           "max_payload": 17, "digits": 312}
    got_cfg, splits, stream = harness.decode(harness.encode(cfg, b"HELLO {\"heartbeat_interval\":~}\n", (5, 9)))
    assert got_cfg == cfg and splits == [5, 9]
    assert stream == b'HELLO {"heartbeat_interval":' + b"9" * 312 + b"}\n"


@pytest.mark.parametrize("name", ["numbers_hello-server", "numbers_info_seconds-client", "numbers_ok_seconds-client"])
def test_the_issue_15_seeds_catch_the_bug(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # The check as it was before the fix: math.isfinite() of a 400-digit integer overflows.
    def old(v: object) -> float | None:
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        return v if ok else None  # type: ignore[return-value]

    monkeypatch.setattr(tcpulse.protocol.fields, "as_float", old)
    with pytest.raises(OverflowError):
        harness.TestOneInput(_seed(name))
