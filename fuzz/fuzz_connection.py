"""Coverage-guided fuzzing of the sans-I/O core with atheris (run: `bash scripts/fuzz.sh`).

Each input is a header (role, caps, auth, how to answer HELLO, how many digits a `~` stands for,
how to split the stream into reads; see `decode()`) followed by a byte stream.  Every `~` in the
stream becomes that many `9`s, so that short inputs reach JSON numbers no float can hold (issue
15: a 310-digit `heartbeat_interval` raised `OverflowError` out of `receive_data()`).  For every
input the harness checks what PROTOCOL.md and `Connection`'s docstring promise:

- `receive_data()` never raises: any bytes end in events or a protocol error (`.error`);
- every number in an event read off the wire is a finite positive float (seconds) or an integer
  of the protocol's range, so that nothing overflows later in the server or the client;
- the bytes held between reads stay within the caps (a control line, a payload), so memory is
  bounded whatever the peer sends ("Framing": it never buffers more than the caps);
- every way of splitting the stream gives the same events, the same error, the same output and
  the same states of both sides;
- once `.error` is set nothing more is parsed, their side is in ERROR, and the server's output
  then ends in one `ERR`.

Any violation raises, which atheris reports as a crash and saves under fuzz/artifacts/.  The
seeds (fuzz/seeds/) are written by fuzz/make_seeds.py with `encode()`; tests/protocol/
test_fuzz_seeds.py replays them through the same checks without atheris.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import sys
from collections.abc import Callable
from typing import Any

try:
    import atheris

    _instrumented: Callable[[], contextlib.AbstractContextManager[Any]] = atheris.instrument_imports
except ImportError:  # replaying the seeds without the fuzzer
    atheris = None
    _instrumented = contextlib.nullcontext

with _instrumented():
    from tcpulse.protocol.connection import Connection, ConnectionState, Role
    from tcpulse.protocol.events import INT_LIMIT, Err, Hello, Info, Ok

#: decode(): the fixed part of the header, then two bytes per split.
HEADER = 8
#: A `~` in the stream stands for up to 4 x 255 = 1020 digits: past a float (309) and past
#: nothing else (int() takes 4300).
INFLATE = b"~"


class Violation(AssertionError):
    """A broken promise of the core (reported as a crash)."""


def _check(cond: bool, what: str) -> None:
    if not cond:
        raise Violation(what)


def decode(data: bytes) -> tuple[dict[str, Any], list[int], bytes]:
    """The header and the stream of one input.

    byte 0: bit 0 server role, bit 1 auth required, bit 2 the client sends HELLO first, bits 3-5
            zero: the server answers HELLO with `ERR 401` (else with `OK`);
    byte 1: `acked` in that OK (mod 6);  byte 2: max_line (64 + 4 x b: up to 1084, room for a
            HELLO with a 400-digit number; the first harness stopped at 300 and so never could);
    bytes 3-4: max_payload (1 + big-endian mod 2000);  byte 5: digits per `~` (4 x b);
    byte 6: how many reads the stream is split at (mod 17);  byte 7: unused;
    then two bytes (big-endian) per split point, then the stream.
    """
    head = data[:HEADER].ljust(HEADER, b"\0")
    flags = head[0]
    cfg = {
        "server": bool(flags & 1),
        "auth": bool(flags & 2),
        "hello_first": bool(flags & 4),
        "answer": "err" if (flags >> 3) & 7 == 0 else "ok",
        "acked": head[1] % 6,
        # Small caps, so that the fuzzer reaches the limits with short inputs.
        "max_line": 64 + 4 * head[2],
        "max_payload": 1 + int.from_bytes(head[3:5], "big") % 2000,
        "digits": 4 * head[5],
    }
    nsplits = head[6] % 17
    rest = data[HEADER:]
    splits = [int.from_bytes(rest[2 * i:2 * i + 2].ljust(2, b"\0"), "big") for i in range(nsplits)]
    stream = rest[2 * nsplits:].replace(INFLATE, b"9" * cfg["digits"])
    return cfg, splits, stream


def encode(cfg: dict[str, Any], stream: bytes, splits: tuple[int, ...] = ()) -> bytes:
    """The input that `decode()` reads as `cfg`, `splits` and `stream` (for fuzz/make_seeds.py)."""
    flags = cfg.get("server", False) | cfg.get("auth", False) << 1 | cfg.get("hello_first", False) << 2
    flags |= 0 if cfg.get("answer", "ok") == "err" else 1 << 3
    head = bytes([flags, cfg.get("acked", 0), (cfg.get("max_line", 1024) - 64) // 4])
    head += ((cfg.get("max_payload", 2000) - 1) % 2000).to_bytes(2, "big")
    head += bytes([cfg.get("digits", 400) // 4, len(splits), 0])
    out = head + b"".join(s.to_bytes(2, "big") for s in splits) + stream
    got_cfg, got_splits, _ = decode(out)
    assert got_splits == list(splits) and all(got_cfg[k] == v for k, v in cfg.items()), (cfg, got_cfg)
    return out


def _new(cfg: dict[str, Any]) -> Connection:
    if cfg["server"]:
        c = Connection(Role.SERVER, max_line=cfg["max_line"], max_payload=cfg["max_payload"])
        c.send(Info(server_id="f", version="0", heartbeat_interval=1.0, heartbeat_timeout=2.0,
                    auth_required=cfg["auth"], durable=False, max_line=cfg["max_line"],
                    max_payload=cfg["max_payload"]))
    else:
        c = Connection(Role.CLIENT)
        if cfg["hello_first"]:
            c.send(Hello(id="fuzz", session="s1"))
    c.data_to_send()
    return c


def _bounded(c: Connection) -> None:
    # After a read, only a partial control line or a partial payload may be held back.
    if c.paused:
        return  # the shell stops reading while paused; the harness unpauses at once
    _check(c.buffered <= max(c.max_line + 1, c.max_payload), f"held {c.buffered} bytes")


_SECONDS = ("heartbeat_interval", "heartbeat_timeout")
_INTS = {"max_line": 1, "max_payload": 1, "proto": 1, "acked": 0, "seq": 1}


def _sane(ev: Any) -> None:
    # Numbers off the wire are finite positive floats, or integers of the protocol's range.
    slots = type(ev).__slots__
    for key in _SECONDS:
        v = getattr(ev, key) if key in slots else None
        if v is not None:
            _check(type(v) is float and math.isfinite(v) and v > 0, f"{type(ev).__name__}.{key} = {v!r}")
    for key, lo in _INTS.items():
        v = getattr(ev, key) if key in slots else None
        if v is not None:
            _check(type(v) is int and lo <= v < INT_LIMIT, f"{type(ev).__name__}.{key} = {v!r}")


def feed(cfg: dict[str, Any], chunks: list[bytes]) -> tuple[Any, ...]:
    c = _new(cfg)
    events: list[Any] = []
    out = bytearray()

    def step(data: bytes) -> None:
        events.extend(c.receive_data(data))
        while c.paused and c.error is None:
            # Server role after HELLO: answer as the server would, then parse what was held back.
            if cfg["answer"] == "err":
                c.send(Err(code=401, text="no"))
            else:
                c.send(Ok(id=c.hello.id if c.hello else "x", heartbeat_interval=1.0,
                          heartbeat_timeout=2.0, acked=cfg["acked"]))
            out.extend(c.data_to_send())
            events.extend(c.receive_data(b""))
        out.extend(c.data_to_send())
        _bounded(c)

    for ch in chunks:
        before = len(events)
        stopped = c.error is not None
        step(ch)
        if stopped:
            _check(len(events) == before, "events after a protocol error")
    c.receive_eof()
    for ev in events:
        _sane(ev)
    err = None if c.error is None else f"{int(c.error.code)} {c.error.text}"
    if c.error is not None:
        _check(c.their_state is ConnectionState.ERROR, f"error, but their side is {c.their_state}")
        _check(c.our_state is ConnectionState.CLOSED, f"error, but our side is {c.our_state}")
        if cfg["server"]:
            _check(bytes(out).rstrip(b"\n").rsplit(b"\n", 1)[-1].startswith(b"ERR "),
                   "server output does not end in ERR after a protocol error")
    return events, err, bytes(out), c.our_state, c.their_state


def TestOneInput(data: bytes) -> None:
    cfg, splits, stream = decode(data)
    cuts = [0, *sorted(s % (len(stream) + 1) for s in splits), len(stream)]
    chunks = [stream[a:b] for a, b in itertools.pairwise(cuts)]

    whole = feed(cfg, [stream])
    split = feed(cfg, chunks)
    _check(whole == split, f"splitting changed the result:\n whole={whole!r}\n split={split!r}")
    if len(stream) < 512:
        # One byte per read: the hardest split of all.
        bytewise = feed(cfg, [stream[i:i + 1] for i in range(len(stream))])
        _check(whole == bytewise, f"byte-by-byte reads changed the result:\n whole={whole!r}\n bytes={bytewise!r}")


def main() -> None:
    if atheris is None:
        sys.exit("atheris is not installed: run bash scripts/fuzz.sh")
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
