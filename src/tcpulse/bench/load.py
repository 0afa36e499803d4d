"""The load generator behind `tcpulse bench`: many cheap raw clients in one process.

Each simulated client is one small `asyncio.Protocol` that holds a connection (`HELLO`,
`HEARTBEAT`, `PONG`) or pushes messages; no `Client`, no task and no timer per client: one ticker
beats for everyone, spread evenly over the interval.  That keeps 10,000 clients affordable beside
the server on two cores.  It speaks through `tcpulse.protocol`: a client-role `Connection` per
client parses what the server sends and answers its PINGs, and every frame it writes was built
by `Connection.send()`, once, then written again and again (a heartbeat, a batch of messages).

`hold()` keeps N clients beating, measures the server's CPU and memory (when it is a local PID),
then makes M of them fall silent at the same moment and times each `BYE heartbeat-timeout` against
that client's deadline (its last frame sent + its timeout), from the client side.  `ingest()`
pushes messages from K clients and measures the rate up to a `PING` barrier (or the last `ACK`).

Other servers can be measured with the same workloads for comparison (`Kind`): the Python floor
server of the same framing, the original threaded server (raw `HEARTBEAT` strings, timeouts seen
as the server closing), and NATS (`PING` as heartbeat, `PUB` as message).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import math
import os
import resource
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from tcpulse.i18n import _, current_language
from tcpulse.policy.liveness import percentile
from tcpulse.protocol.connection import Connection, Role
from tcpulse.protocol.events import Ack, Bye, Err, Event, Heartbeat, Hello, Info, Msg, Ok, Ping, Pong
from tcpulse.security.limits import raise_open_file_limit

__all__ = [
    "HoldResult",
    "IngestResult",
    "Kind",
    "ProcStats",
    "SpawnedServer",
    "client_frames",
    "hold",
    "ingest",
    "proc_sample",
    "source_addresses",
]

#: Clients per loopback source address: well inside the 28,000 ephemeral ports of one address,
#: with room for connections still in TIME_WAIT from an earlier run.
PER_ADDRESS = 5000
#: Seconds between the beats of an ingest client that waits for its last ACK or PONG (half the
#: default interval: a server with the default timeout never takes it for silent).
WAIT_BEAT = 2.5
#: Connection attempts in flight at once (the listen backlog is 4096).
CONNECT_CONCURRENCY = 256
#: Beats are sent in this many slots per interval at most (one ticker for all clients).
TICK = 0.005


class Kind(enum.StrEnum):
    """Which server dialect the clients speak."""

    TCPULSE = "tcpulse"  # INFO, HELLO -> OK, HEARTBEAT, BYE heartbeat-timeout
    FLOOR = "floor"  # the floor server: INFO, frames counted, no HELLO answer, no timeouts
    SEED = "seed"  # the original threaded server: raw "HEARTBEAT", timeout = the server closes
    NATS = "nats"  # NATS: INFO, CONNECT, PING/PONG as heartbeat, PUB as message


# --------------------------------------------------------------------------- the server process

@dataclass(frozen=True)
class ProcStats:
    cpu: float  # user + system CPU seconds so far
    rss: int  # resident bytes
    threads: int


_TICKS = os.sysconf("SC_CLK_TCK")


def proc_sample(pid: int) -> ProcStats | None:
    """CPU seconds, resident memory and threads of a local process (None: not readable)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        with open(f"/proc/{pid}/status", "rb") as f:
            status = f.read()
    except OSError:
        return None
    fields = stat[stat.rindex(b")") + 2:].split()
    cpu = (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime
    rss = threads = 0
    for line in status.splitlines():
        if line.startswith(b"VmRSS:"):
            rss = int(line.split()[1]) * 1024
        elif line.startswith(b"Threads:"):
            threads = int(line.split()[1])
    return ProcStats(cpu, rss, threads)


class SpawnedServer:
    """`tcpulse serve --port 0 --db none -q --log-format json ...` as a child process.

    Its log goes to a temporary file (a pipe nobody reads would block it on 1,000 timeout lines);
    the port is read from its `listening` event.  Stop it with `stop()` (SIGTERM to its PID).
    """

    def __init__(self, args: list[str], host: str = "127.0.0.1") -> None:
        self.log = tempfile.NamedTemporaryFile(prefix="tcpulse-bench-", suffix=".log", delete=False)
        # The same language as this process: its error line is quoted in ours (wait_listening).
        cmd = [sys.executable, "-m", "tcpulse", "serve", "--host", host, "--port", "0", "--db", "none",
               "-q", "--log-format", "json", "--lang", current_language(), *args]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        self.pid = self.proc.pid
        self.port = 0

    def wait_listening(self, timeout: float = 20.0) -> int:
        """The port, once the server listens; raises RuntimeError with its stderr if it fails."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                # Its last line names the problem (click's usage lines come before it): one line.
                last = (err.strip().splitlines() or ["no message"])[-1].strip().removeprefix("tcpulse: error: ")
                raise RuntimeError(_("the server exited with {code}: {error}").format(
                    code=self.proc.returncode, error=last))
            with open(self.log.name, "rb") as f:
                for line in f:
                    with contextlib.suppress(ValueError):
                        ev = json.loads(line)
                        if ev.get("event") == "listening":
                            self.port = int(ev["port"])
                            return self.port
            time.sleep(0.05)
        raise RuntimeError(_("the server did not listen within {timeout:g} s").format(timeout=timeout))

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.proc.wait(5)
        with contextlib.suppress(OSError):
            os.unlink(self.log.name)


# --------------------------------------------------------------------------- one client

class _Conn(asyncio.Protocol):
    """One simulated client.  For tcpulse and the floor server (the same framing), `proto`, a
    client-role `Connection` of `tcpulse.protocol`, parses what the server sends and answers
    its PINGs: there is no second parser here.  NATS and the seed server speak other protocols
    and get the least handling that holds a connection (`_nats_data`; the seed server says
    nothing at all)."""

    __slots__ = (
        "ack_target",
        "acked",
        "barrier",
        "buf",
        "bye",
        "bye_at",
        "closed_at",
        "error",
        "hello",
        "idx",
        "interval",
        "kind",
        "last_sent",
        "lport",
        "paused",
        "proto",
        "ready",
        "resume",
        "silent",
        "timeout",
        "transport",
    )

    def __init__(self, idx: int, kind: Kind, hello: Hello | None, ready: asyncio.Future[None]) -> None:
        self.idx = idx
        self.kind = kind
        self.lport = 0
        self.hello = hello  # sent once INFO arrives (tcpulse only)
        self.proto = Connection(Role.CLIENT) if kind in (Kind.TCPULSE, Kind.FLOOR) else None
        self.transport: asyncio.Transport | None = None
        self.buf = b""  # NATS: a partial line
        self.ready = ready
        self.timeout = math.nan
        self.interval = math.nan
        self.last_sent = 0.0
        self.silent = False
        self.bye: str | None = None  # the BYE reason received
        self.bye_at = 0.0
        self.closed_at = 0.0
        self.error: str | None = None
        self.paused = False
        self.resume: asyncio.Future[None] | None = None
        self.barrier: asyncio.Future[float] | None = None
        self.acked = 0
        self.ack_target = 0

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sockname = transport.get_extra_info("sockname")
        self.lport = int(sockname[1]) if sockname else 0
        if self.kind is Kind.SEED:
            self._ready()

    def data_received(self, data: bytes) -> None:
        proto = self.proto
        if proto is None:
            if self.kind is Kind.NATS:
                self._nats_data(data)
            return
        events = proto.receive_data(data)
        if events:
            self._events(events)
        out = proto.data_to_send()  # the PONGs the protocol owes, the HELLO after INFO
        if out and not self.silent:
            self.send(out)
        if proto.error is not None and not self.closed_at:
            # The server broke the protocol: this client is done, and says why.
            self.error = f"bad frame from the server: {proto.error}"
            self.abort()

    def eof_received(self) -> bool | None:
        self._closed()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed()
        if self.resume is not None and not self.resume.done():
            self.resume.set_result(None)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self.resume is not None and not self.resume.done():
            self.resume.set_result(None)

    # -- what the server sent

    def _events(self, events: list[Event]) -> None:
        now = time.monotonic()
        for ev in events:
            if isinstance(ev, Ack):
                self.acked = ev.seq
                # `ack_target` is set only once the last message is written: an ACK that arrives
                # while the client still sends is not the barrier.
                if (self.ack_target and self.acked >= self.ack_target and self.barrier is not None
                        and not self.barrier.done()):
                    self.barrier.set_result(now)
            elif isinstance(ev, Pong):
                if self.barrier is not None and not self.barrier.done() and not self.ack_target:
                    self.barrier.set_result(now)
            elif isinstance(ev, Bye):
                self.bye = ev.reason or "-"
                self.bye_at = now
            elif isinstance(ev, Ok):
                self.timeout = float(ev.heartbeat_timeout)
                self.interval = float(ev.heartbeat_interval)
                self._ready()
            elif isinstance(ev, Info):
                self.timeout = float(ev.heartbeat_timeout)
                if self.kind is Kind.TCPULSE and self.hello is not None:
                    assert self.proto is not None
                    self.proto.send(self.hello)  # written by data_received, with any PONG due
                else:
                    self._ready()
            elif isinstance(ev, Err):
                self.error = f"ERR {ev.code} {ev.text}"
                if not self.ready.done():
                    self.ready.set_exception(ConnectionError(self.error))
            # PING: the protocol answers it (data_received writes the PONG unless silent).
            # MSG from the server's program: not part of any workload.

    def _nats_data(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        start = 0
        while True:
            nl = buf.find(b"\n", start)
            if nl < 0:
                break
            self._nats_line(buf[start:nl].rstrip(b"\r"))
            start = nl + 1
        self.buf = buf[start:]

    def _nats_line(self, line: bytes) -> None:
        # NATS: PING/PONG are its heartbeat and barrier; INFO asks for CONNECT; -ERR.
        if line.startswith(b"PING"):
            if not self.silent:
                self.send(b"PONG\r\n")
        elif line.startswith(b"PONG"):
            if self.barrier is not None and not self.barrier.done():
                self.barrier.set_result(time.monotonic())
            else:
                self._ready()
        elif line.startswith(b"INFO "):
            self.send(b'CONNECT {"verbose":false,"pedantic":false,"name":"tcpulse-bench"}\r\nPING\r\n')
        elif line.startswith(b"-ERR"):
            self.error = line.decode(errors="replace")
            if not self.ready.done():
                self.ready.set_exception(ConnectionError(self.error))

    def _ready(self) -> None:
        if not self.ready.done():
            self.ready.set_result(None)

    def _closed(self) -> None:
        if not self.closed_at:
            self.closed_at = time.monotonic()
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(self.error or "closed before it was ready"))
        if self.barrier is not None and not self.barrier.done():
            self.barrier.set_exception(ConnectionError(self.error or "closed before the barrier"))

    # -- sending

    def send(self, data: bytes) -> None:
        tr = self.transport
        if tr is not None and not self.closed_at:
            tr.write(data)
            self.last_sent = time.monotonic()

    def send_event(self, event: Event) -> None:
        """One frame through the protocol (tcpulse and floor only)."""
        assert self.proto is not None
        self.proto.send(event)
        self.send(self.proto.data_to_send())

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


def client_frames(*events: Event) -> bytes:
    """`events` as a client writes them, built by the protocol's own `Connection.send()`.  The
    workloads build their frames once and write the same bytes again and again: a heartbeat,
    a batch of unnumbered messages."""
    enc = Connection(Role.CLIENT)
    for ev in events:
        enc.send(ev)
    return enc.data_to_send()


def _beat_frame(kind: Kind) -> bytes:
    if kind is Kind.SEED:
        return b"HEARTBEAT"  # the seed server compares whole reads to this
    if kind is Kind.NATS:
        return b"PING\r\n"
    return client_frames(Heartbeat())


def source_addresses(n: int, per_address: int = PER_ADDRESS) -> list[str]:
    """Loopback source addresses for `n` clients: 127.0.0.1 alone while it has ports enough,
    else several of 127.0.0.x (a random run of them, so that back-to-back runs do not trip
    over each other's TIME_WAIT)."""
    k = max(1, math.ceil(n / per_address))
    if k == 1:
        return ["127.0.0.1"]
    base = 2 + secrets.randbelow(250 - k)
    return [f"127.0.0.{base + i}" for i in range(k)]


Progress = Callable[[str, int, int], None]  # phase, done, total


def _no_progress(phase: str, done: int, total: int) -> None:
    pass


async def _open_all(host: str, port: int, n: int, kind: Kind, hellos: Callable[[int], Hello],
                    progress: Progress, ready_timeout: float,
                    on_ready: Callable[[_Conn], None] | None = None) -> tuple[list[_Conn], list[str]]:
    loop = asyncio.get_running_loop()
    addrs = source_addresses(n) if host in ("127.0.0.1", "localhost") else [""]
    sem = asyncio.Semaphore(CONNECT_CONCURRENCY)
    conns: list[_Conn] = []
    errors: list[str] = []
    done = 0

    async def one(i: int) -> None:
        nonlocal done
        async with sem:
            fut: asyncio.Future[None] = loop.create_future()
            c = _Conn(i, kind, hellos(i), fut)
            local = addrs[i % len(addrs)]
            try:
                # Bounded: a server whose backlog is full drops SYNs, and the kernel would retry
                # for minutes.
                await asyncio.wait_for(loop.create_connection(lambda: c, host, port,
                                                              local_addr=(local, 0) if local else None),
                                       ready_timeout)
                await asyncio.wait_for(fut, ready_timeout)
                conns.append(c)
                if on_ready is not None:
                    on_ready(c)  # it beats from now on, while the others still connect
            except (TimeoutError, OSError, ConnectionError) as e:
                errors.append(f"{type(e).__name__}: {e}")
                c.abort()
            done += 1
            if done % 100 == 0 or done == n:
                progress("connecting", done, n)

    await asyncio.gather(*(one(i) for i in range(n)))
    conns.sort(key=lambda c: c.idx)
    return conns, errors


class _Ticker:
    """Beats every live client once per interval, spread over `slots` moments per interval."""

    def __init__(self, n: int, interval: float, kind: Kind) -> None:
        self.loop = asyncio.get_running_loop()
        self.frame = _beat_frame(kind)
        self.interval = interval
        self.slots = max(1, min(n, round(interval / TICK)))
        self.step = interval / self.slots
        self.groups: list[list[_Conn]] = [[] for _ in range(self.slots)]
        self.t0 = self.loop.time()
        self.k = 0
        self.handle: asyncio.TimerHandle | None = None
        self.late = 0.0  # the worst lateness of a tick, seconds

    def start(self) -> None:
        self.handle = self.loop.call_at(self.t0, self._tick)

    def stop(self) -> None:
        if self.handle is not None:
            self.handle.cancel()

    def add(self, c: _Conn) -> None:
        self.groups[c.idx % self.slots].append(c)

    def _tick(self) -> None:
        now = self.loop.time()
        # Catch up on any slot missed while the loop was busy, so no client beats late twice.
        while self.t0 + self.k * self.step <= now:
            self.late = max(self.late, now - (self.t0 + self.k * self.step))
            frame = self.frame
            for c in self.groups[self.k % self.slots]:
                if not c.silent and not c.closed_at:
                    c.send(frame)
            self.k += 1
        self.handle = self.loop.call_at(self.t0 + self.k * self.step, self._tick)


# --------------------------------------------------------------------------- hold

@dataclass
class HoldResult:
    kind: str
    loop: str
    clients: int
    connected: int
    connect_errors: list[str]
    source_addresses: int
    interval: float
    timeout: float
    silent: int
    timed_out: int  # silent clients that got the timeout (BYE, or the close for the seed server)
    missed: int  # silent clients still not told at the end
    false_timeouts: int  # beating clients timed out
    other_closes: int  # beating clients closed for another reason
    lateness_ms: dict[str, float] = field(default_factory=dict)  # min/p50/p90/p99/max
    early: int = 0  # timeouts more than 1 ms before the client-side deadline
    server_cpu: float | None = None  # fraction of one core while all clients beat
    server_rss_before: int | None = None
    server_rss: int | None = None
    server_threads: int | None = None
    rss_per_client: float | None = None  # bytes
    ticker_late_ms: float = 0.0  # the generator's worst beat lateness (is the load generator keeping up?)
    generator_cpu: float = 0.0  # fraction of one core used by this process over the run
    duration: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


async def hold(host: str, port: int, clients: int, interval: float, silent: int, *,
               kind: Kind = Kind.TCPULSE, server_pid: int | None = None, server_timeout: float | None = None,
               settle: float | None = None, measure: float = 5.0, grace: float | None = None,
               progress: Progress = _no_progress, loop_name: str = "",
               announced: dict[int, float] | None = None) -> HoldResult:
    """Open `clients`, beat every `interval`, measure, silence `silent` at once, collect the
    timeouts.  `server_timeout`: the timeout of a server that does not announce one (seed).
    `announced`: for a server that tells its clients nothing, when it announced each timeout
    (client port -> time.monotonic(), filled from its log by the caller)."""
    if not 0 <= silent <= clients:
        raise ValueError("--silent must be between 0 and --clients")
    t_start = time.monotonic()
    g0 = resource.getrusage(resource.RUSAGE_SELF)
    raise_open_file_limit(clients + 64)
    tag = secrets.token_hex(3)

    def hello(i: int) -> Hello:
        return Hello(id=f"bench-{tag}-{i}", heartbeat_interval=interval)

    before = proc_sample(server_pid) if server_pid else None
    ticker = _Ticker(clients, interval, kind)
    ticker.start()
    conns, errors = await _open_all(host, port, clients, kind, hello, progress, ready_timeout=30.0,
                                    on_ready=ticker.add)
    loop = asyncio.get_running_loop()
    timeout = server_timeout or next((c.timeout for c in conns if not math.isnan(c.timeout)), math.nan)
    if kind is Kind.TCPULSE and conns and not math.isnan(conns[0].timeout):
        timeout = conns[0].timeout
    settle = max(2.0, 2 * interval) if settle is None else settle
    end_settle = loop.time() + settle
    while loop.time() < end_settle:
        progress("settling", int(settle - (end_settle - loop.time())), int(settle))
        await asyncio.sleep(min(0.25, max(0.0, end_settle - loop.time())))
    s0 = proc_sample(server_pid) if server_pid else None
    end_measure = loop.time() + measure
    while loop.time() < end_measure:
        progress("measuring", int(measure - (end_measure - loop.time())), int(measure))
        await asyncio.sleep(min(0.25, max(0.0, end_measure - loop.time())))
    s1 = proc_sample(server_pid) if server_pid else None

    # Silence `silent` clients, spread evenly over all, at one moment: each sends one last beat
    # now, so all their deadlines fall together (the hardest case for the server).
    step = len(conns) / silent if silent else 0
    quiet = [conns[int(i * step)] for i in range(silent)] if conns else []
    frame = _beat_frame(kind)
    for c in quiet:
        c.send(frame)
        c.silent = True
    expect = timeout if not math.isnan(timeout) else 0.0
    grace = max(1.0, expect) if grace is None else grace
    end_wait = loop.time() + expect + grace
    while loop.time() < end_wait:
        told = sum(1 for c in quiet if c.bye is not None or c.closed_at or (announced and c.lport in announced))
        progress("waiting for timeouts", told, len(quiet))
        if told == len(quiet) and loop.time() > end_wait - grace + 0.5:
            break  # all told, and beating clients have been watched past the deadline
        await asyncio.sleep(0.1)
    ticker.stop()

    lateness: list[float] = []
    timed_out = missed = false = other = early = 0
    for c in conns:
        told_at = c.bye_at if c.bye == "heartbeat-timeout" else 0.0
        if kind is Kind.SEED:
            told_at = (announced or {}).get(c.lport, 0.0) or c.closed_at
        if c.silent:
            if told_at:
                timed_out += 1
                late = told_at - (c.last_sent + timeout)
                lateness.append(late)
                if late < -0.001:
                    early += 1
            else:
                missed += 1
        elif told_at:
            false += 1
        elif c.closed_at:
            other += 1
    for c in conns:
        c.abort()  # abort, not close: no TIME_WAIT left behind on our side
    await asyncio.sleep(0.05)
    g1 = resource.getrusage(resource.RUSAGE_SELF)
    duration = time.monotonic() - t_start
    res = HoldResult(
        kind=kind.value, loop=loop_name, clients=clients, connected=len(conns),
        connect_errors=sorted(set(errors))[:5], source_addresses=len(source_addresses(clients)),
        interval=interval, timeout=timeout, silent=len(quiet), timed_out=timed_out, missed=missed,
        false_timeouts=false, other_closes=other, early=early,
        ticker_late_ms=round(ticker.late * 1000, 1),
        generator_cpu=round((g1.ru_utime + g1.ru_stime - g0.ru_utime - g0.ru_stime) / duration, 3),
        duration=round(duration, 1),
    )
    if lateness:
        res.lateness_ms = {k: round(v * 1000, 2) for k, v in (
            ("min", min(lateness)), ("p50", percentile(lateness, 50)), ("p90", percentile(lateness, 90)),
            ("p99", percentile(lateness, 99)), ("max", max(lateness)))}
    if before is not None and s0 is not None and s1 is not None:
        res.server_cpu = round((s1.cpu - s0.cpu) / measure, 3)
        res.server_rss_before = before.rss
        res.server_rss = s1.rss
        res.server_threads = s1.threads
        if conns:
            res.rss_per_client = round((s1.rss - before.rss) / len(conns), 1)
    return res


# --------------------------------------------------------------------------- ingest

@dataclass
class IngestResult:
    kind: str
    loop: str
    clients: int
    connected: int
    messages: int  # per client
    size: int
    seq: bool
    elapsed: float  # seconds from the first write to the last barrier answer
    rate: float  # messages per second, all clients together
    mib_per_s: float
    server_cpu: float | None = None
    server_rss: int | None = None
    connect_errors: list[str] = field(default_factory=list)
    #: Fraction of one core this process used while sending: far below 1, or the rate is the
    #: generator's, not the server's.
    generator_cpu: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Batches:
    """The bytes each client writes, `count` messages at a time, numbered from `first`.

    tcpulse frames are built by the protocol (`client_frames`): unnumbered ones once, since every
    frame is the same; numbered ones once per batch for all the clients, since every client sends
    the same seqs with the same payload (a batch is dropped once all `users` have taken it, so
    what is held stays at the spread between the fastest client and the slowest).  NATS: `PUB`.
    """

    def __init__(self, kind: Kind, payload: bytes, batch: int, numbered: bool, users: int) -> None:
        self.payload = payload
        self.users = users
        self.numbered = numbered
        self.shared: dict[int, list[Any]] = {}  # first seq -> [bytes, clients yet to take them]
        if kind is Kind.NATS:
            frame = b"PUB bench %d\r\n" % len(payload) + payload + b"\r\n"
            self.full = frame * batch
        elif not numbered:
            self.full = client_frames(*[Msg(payload=payload)] * batch)
        else:
            self.full = b""
            # A numbered MSG needs a HELLO with a session on the connection that sends it.
            self.enc = Connection(Role.CLIENT)
            self.enc.send(Hello(id="bench", session="bench"))
            self.enc.data_to_send()
        self.frame_len = len(self.full) // batch
        self.batch = batch

    def take(self, first: int, count: int) -> bytes:
        if not self.numbered:
            return self.full if count == self.batch else self.full[:count * self.frame_len]
        got = self.shared.get(first)
        if got is None:
            enc, payload = self.enc, self.payload
            for seq in range(first, first + count):
                enc.send(Msg(payload=payload, seq=seq))
            got = self.shared[first] = [enc.data_to_send(), self.users]
        got[1] -= 1
        if not got[1]:
            del self.shared[first]
        data: bytes = got[0]
        return data


async def ingest(host: str, port: int, clients: int, messages: int, size: int, *, seq: bool = False,
                 kind: Kind = Kind.TCPULSE, server_pid: int | None = None, batch: int = 512,
                 progress: Progress = _no_progress, loop_name: str = "") -> IngestResult:
    """Every client sends `messages` of `size` bytes as fast as the server takes them, then a
    `PING` barrier (with `seq`: waits for the `ACK` of its last one).  The rate counts from the
    first write to the last barrier answer."""
    if seq and kind is not Kind.TCPULSE:
        raise ValueError("--seq needs a tcpulse server (numbered messages and ACK)")
    raise_open_file_limit(clients + 64)
    tag = secrets.token_hex(3)

    def hello(i: int) -> Hello:
        return Hello(id=f"ingest-{tag}-{i}", session=f"s{tag}" if seq else None)

    conns, errors = await _open_all(host, port, clients, kind, hello, progress, ready_timeout=30.0)
    if not conns:
        raise ConnectionError(f"no client could connect: {errors[0] if errors else '?'}")
    batches = _Batches(kind, b"x" * size, batch, seq, len(conns))
    loop = asyncio.get_running_loop()
    sent = [0]

    async def push(c: _Conn) -> float:
        tr = c.transport
        assert tr is not None
        c.barrier = loop.create_future()
        left = messages
        s = 1
        while left > 0 and not c.closed_at:
            k = min(batch, left)
            tr.write(batches.take(s, k))
            s += k
            left -= k
            sent[0] += k
            if c.paused:
                c.resume = loop.create_future()
                await c.resume
            elif left and (s // batch) % 8 == 0:
                await asyncio.sleep(0)  # let the other senders and the reader run
        if seq:
            c.ack_target = messages
            if c.acked >= messages and not c.barrier.done():
                c.barrier.set_result(time.monotonic())
        elif kind is Kind.NATS:
            tr.write(b"PING\r\n")
        else:
            c.send_event(Ping(ctx="end"))
        # From here on it beats (keep_alive), as a real client with nothing more to say does: a
        # sender done early must not be timed out while it waits for its ACK or for the slowest.
        idle.append(c)
        return await asyncio.wait_for(c.barrier, 120.0)

    idle: list[_Conn] = []
    beat = _beat_frame(kind) if kind in (Kind.TCPULSE, Kind.FLOOR) else None

    async def keep_alive() -> None:
        while beat is not None:
            await asyncio.sleep(WAIT_BEAT)
            for c in idle:
                if not c.closed_at and c.transport is not None:
                    c.transport.write(beat)

    async def report() -> None:
        total = messages * len(conns)
        while True:
            progress("sending", sent[0], total)
            await asyncio.sleep(0.25)

    s0 = proc_sample(server_pid) if server_pid else None
    reporter = asyncio.ensure_future(report())
    beater = asyncio.ensure_future(keep_alive())
    g0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.monotonic()
    try:
        ends = await asyncio.gather(*(push(c) for c in conns))
    finally:
        reporter.cancel()
        beater.cancel()
    t1 = max(ends)
    g1 = resource.getrusage(resource.RUSAGE_SELF)
    s1 = proc_sample(server_pid) if server_pid else None
    for c in conns:
        c.abort()
    elapsed = t1 - t0
    total = messages * len(conns)
    res = IngestResult(
        kind=kind.value, loop=loop_name, clients=clients, connected=len(conns), messages=messages,
        size=size, seq=seq, elapsed=round(elapsed, 4), rate=round(total / elapsed, 1),
        mib_per_s=round(total * size / elapsed / (1 << 20), 2), connect_errors=sorted(set(errors))[:5],
        generator_cpu=round((g1.ru_utime + g1.ru_stime - g0.ru_utime - g0.ru_stime) / elapsed, 3))
    if s0 is not None and s1 is not None:
        res.server_cpu = round((s1.cpu - s0.cpu) / elapsed, 3)
        res.server_rss = s1.rss
    return res
