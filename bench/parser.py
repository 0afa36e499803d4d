"""Parser throughput of the sans-I/O core: frames per second through `Connection.receive_data()`.

    .venv/bin/python bench/parser.py                 # 200,000 frames per case, best of 5
    .venv/bin/python bench/parser.py --frames 50000 --rounds 3

No sockets and no event loop: each case builds one byte stream (unnumbered 64-byte `MSG`s,
numbered ones after a `HELLO` with a session, `HEARTBEAT`s, and an even mix of the three) and
feeds it in 64 KiB reads to a fresh server-role `Connection`, as the server's `data_received`
does.  Prints the best of `--rounds` runs per case in frames per second.  The hot path of
STYLE.md ("Hot paths stay cheap"): measure before and after any change to the parser.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from tcpulse.protocol.connection import Connection, Role
from tcpulse.protocol.events import Info, Ok

CHUNK = 64 * 1024
PAYLOAD = bytes(range(64))
INFO = Info(server_id="bench", version="0", heartbeat_interval=5.0, heartbeat_timeout=10.0, auth_required=False,
            durable=False, max_line=4096, max_payload=1 << 20)


def plain(n: int) -> bytes:
    return (b"MSG 64\n" + PAYLOAD + b"\n") * n


def numbered(n: int) -> bytes:
    return b"".join(b"MSG 64 %d\n" % (i + 1) + PAYLOAD + b"\n" for i in range(n))


def heartbeats(n: int) -> bytes:
    return b"HEARTBEAT\n" * n


def mixed(n: int) -> bytes:
    parts = []
    seq = 0
    for i in range(n):
        k = i % 3
        if k == 0:
            parts.append(b"MSG 64\n" + PAYLOAD + b"\n")
        elif k == 1:
            seq += 1
            parts.append(b"MSG 64 %d\n" % seq + PAYLOAD + b"\n")
        else:
            parts.append(b"HEARTBEAT\n")
    return b"".join(parts)


def ready() -> Connection:
    """A server-role connection past its handshake: INFO sent, HELLO with a session answered."""
    c = Connection(Role.SERVER)
    c.send(INFO)
    c.receive_data(b'HELLO {"id":"bench","session":"s1"}\n')
    c.send(Ok(id="bench", heartbeat_interval=5.0, heartbeat_timeout=10.0, acked=0))
    c.data_to_send()
    return c


def run(stream: bytes, frames: int) -> float:
    chunks = [stream[i:i + CHUNK] for i in range(0, len(stream), CHUNK)]
    c = ready()
    receive = c.receive_data
    got = 0
    t0 = time.perf_counter()
    for ch in chunks:
        got += len(receive(ch))
    dt = time.perf_counter() - t0
    if got != frames or c.error is not None:
        raise SystemExit(f"parsed {got} of {frames} frames (error: {c.error})")
    return frames / dt


CASES: dict[str, Callable[[int], bytes]] = {
    "MSG 64 B, unnumbered": plain,
    "MSG 64 B, numbered": numbered,
    "HEARTBEAT": heartbeats,
    "mixed (1/3 each)": mixed,
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=200_000, help="frames per case")
    ap.add_argument("--rounds", type=int, default=5, help="runs per case; the best is shown")
    args = ap.parse_args()
    for name, make in CASES.items():
        stream = make(args.frames)
        best = max(run(stream, args.frames) for _ in range(args.rounds))
        print(f"{name:24} {best:11,.0f} frames/s  (best of {args.rounds}, {args.frames:,} frames, "
              f"{len(stream) / 1e6:.1f} MB in 64 KiB reads)")


if __name__ == "__main__":
    main()
