"""Coverage-guided fuzzing of the sans-I/O core with atheris (run: `bash scripts/fuzz.sh`).

Each input is a configuration (role, caps, auth, how to answer HELLO) followed by a byte stream
and a way of splitting it into reads.  For every input the harness checks what PROTOCOL.md and
`Connection`'s docstring promise:

- `receive_data()` never raises: any bytes end in events or a protocol error (`.error`);
- the bytes held between reads stay within the caps (a control line, a payload), so memory is
  bounded whatever the peer sends ("Framing": it never buffers more than the caps);
- every way of splitting the stream gives the same events, the same error and the same output;
- once `.error` is set nothing more is parsed, and the server's output then ends in one `ERR`.

Any violation raises, which atheris reports as a crash and saves under fuzz/artifacts/.
"""

from __future__ import annotations

import itertools
import sys
from typing import Any

import atheris

with atheris.instrument_imports():
    from tcpulse.protocol.connection import Connection, Role
    from tcpulse.protocol.events import Err, Hello, Info, Ok


class Violation(AssertionError):
    """A broken promise of the core (reported as a crash)."""


def _check(cond: bool, what: str) -> None:
    if not cond:
        raise Violation(what)


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
    _check(len(c._pending) <= c.max_line + 1, f"held {len(c._pending)} bytes of a control line")
    if c._payload is not None:
        _check(len(c._payload) <= c.max_payload, f"held {len(c._payload)} bytes of a payload")


def _feed(cfg: dict[str, Any], chunks: list[bytes]) -> tuple[list[Any], str | None, bytes]:
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
    err = None if c.error is None else f"{int(c.error.code)} {c.error.text}"
    if c.error is not None and cfg["server"]:
        _check(bytes(out).rstrip(b"\n").rsplit(b"\n", 1)[-1].startswith(b"ERR "),
               "server output does not end in ERR after a protocol error")
    return events, err, bytes(out)


def TestOneInput(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    cfg = {
        "server": fdp.ConsumeBool(),
        "auth": fdp.ConsumeBool(),
        "hello_first": fdp.ConsumeBool(),
        "answer": "err" if fdp.ConsumeIntInRange(0, 7) == 0 else "ok",
        "acked": fdp.ConsumeIntInRange(0, 5),
        # Small caps, so that the fuzzer reaches the limits with short inputs.
        "max_line": fdp.ConsumeIntInRange(64, 300),
        "max_payload": fdp.ConsumeIntInRange(1, 2000),
    }
    nsplits = fdp.ConsumeIntInRange(0, 16)
    splits = [fdp.ConsumeIntInRange(0, 4096) for _ in range(nsplits)]
    stream = fdp.ConsumeBytes(fdp.remaining_bytes())
    cuts = [0, *sorted(s % (len(stream) + 1) for s in splits), len(stream)]
    chunks = [stream[a:b] for a, b in itertools.pairwise(cuts)]

    whole = _feed(cfg, [stream])
    split = _feed(cfg, chunks)
    _check(whole == split, f"splitting changed the result:\n whole={whole!r}\n split={split!r}")
    if len(stream) < 512:
        # One byte per read: the hardest split of all.
        bytewise = _feed(cfg, [stream[i:i + 1] for i in range(len(stream))])
        _check(whole == bytewise, f"byte-by-byte reads changed the result:\n whole={whole!r}\n bytes={bytewise!r}")


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
