"""Where alerts go: a webhook (`WebhookSink`, aiohttp) or a command (`CommandSink`, an asyncio
subprocess).  Each sink owns a bounded queue and its workers; `offer()` is all the event loop's
hot side ever calls, and it never waits.

Overflow policy: when a sink's queue holds `queue_size` items, the oldest is dropped to make room
(the newest state of a client matters more than an old one), counted in `dropped` and reported.
A webhook has one worker, so that a client's alerts arrive in order (a resolution never overtakes
its alert); its retries hold the queue meanwhile, which is what bounds them.  A command runs up to
`concurrency` copies at once, each in its own process group, killed at `timeout`.

Counters (plain attributes, for metrics): `sent`, `failed`, `dropped` (alerts), `queued` (items
waiting now).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from tcpulse.alerts.errors import AlertProblem
from tcpulse.alerts.payload import SIGNATURE_HEADER, alertmanager_body, dumps, event_json, signature
from tcpulse.alerts.rules import Alert
from tcpulse.policy.backoff import Backoff
from tcpulse.version import __version__

__all__ = ["FORMATS", "CommandSink", "Delivery", "DeliveryFailed", "Origin", "Sink", "WebhookSink", "safe_url"]

#: Webhook payload formats: tcpulse's own JSON, or Alertmanager's `POST /api/v2/alerts` body.
FORMATS = ("tcpulse", "alertmanager")
#: Alerts of one Alertmanager request at most (queued alerts are sent together up to this).
AM_BATCH = 64
#: Responses worth trying again: the receiver may be fine a moment later.
_RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
#: Bytes of a command's stderr kept for the report (the rest is read and thrown away).
_STDERR_KEEP = 1000


@dataclass(slots=True)
class Origin:
    """Who sends: the `server` (`instance`, host:port) and `server_id` in every payload, and the
    `generator_url` of Alertmanager alerts (the admin dashboard, when there is one)."""

    instance: str = ""
    server_id: str = ""
    generator_url: str | None = None


@dataclass(slots=True)
class Delivery:
    """One queue item: alerts to send together, with an id that stays the same across retries
    (`X-Tcpulse-Delivery`).  `resend`: alerts that still fire, sent again (Alertmanager only)."""

    alerts: list[Alert]
    resend: bool = False
    id: str = field(default_factory=lambda: uuid.uuid4().hex)


class DeliveryFailed(Exception):
    """A delivery that will not be tried again; the text says why (`HTTP 500`, `timed out`, ...)."""


def safe_url(url: str) -> str:
    """`url` without credentials, query or fragment: what logs and metrics may show of it."""
    u = urlsplit(url)
    host = u.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{u.port}" if u.port else "")
    return urlunsplit((u.scheme, netloc, u.path, "", ""))


class Sink:
    """A bounded queue of deliveries and the workers that empty it (module docstring).  Subclasses
    implement `deliver()`; call `start()` in the event loop, `close()` at the end."""

    #: Whether this sink wants alerts sent again while they fire (Alertmanager).
    wants_resend = False

    def __init__(self, name: str, *, queue_size: int = 1000, workers: int = 1) -> None:
        if queue_size < 1 or workers < 1:
            raise ValueError("queue_size and workers must be at least 1")
        self.name = name
        self.queue_size = queue_size
        self.workers = workers
        self.origin = Origin()
        self.sent = 0
        self.failed = 0
        self.dropped = 0
        #: Called with each problem (the Alerter throttles what it passes on).
        self.on_problem: Callable[[AlertProblem], None] | None = None
        self._queue: deque[Delivery] = deque()
        self._wake = asyncio.Event()
        self._busy = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False

    @property
    def queued(self) -> int:
        """Deliveries waiting now."""
        return len(self._queue)

    def offer(self, alerts: list[Alert], *, resend: bool = False) -> None:
        """Queue alerts for delivery; never waits.  A full queue drops its oldest item."""
        if self._closing:
            return
        if len(self._queue) >= self.queue_size:
            old = self._queue.popleft()
            self.dropped += len(old.alerts)
            self._problem(AlertProblem.dropped(self.name, len(old.alerts)))
        self._queue.append(Delivery(list(alerts), resend))
        self._wake.set()

    def _problem(self, p: AlertProblem) -> None:
        if self.on_problem is not None:
            self.on_problem(p)

    async def start(self) -> None:
        self._tasks = [asyncio.create_task(self._work(), name=f"tcpulse-alerts-{i}") for i in range(self.workers)]

    def _take(self) -> Delivery:
        return self._queue.popleft()

    async def _work(self) -> None:
        while True:
            while not self._queue:
                self._wake.clear()
                await self._wake.wait()
            item = self._take()
            self._busy += 1
            try:
                await self.deliver(item)
            except DeliveryFailed as e:
                self.failed += len(item.alerts)
                self._problem(AlertProblem.failed(self.name, len(item.alerts), str(e)))
            except asyncio.CancelledError:
                self.dropped += len(item.alerts)  # stopped before it was delivered
                raise
            else:
                self.sent += len(item.alerts)
            finally:
                self._busy -= 1

    async def deliver(self, item: Delivery) -> None:
        """Deliver `item`, or raise DeliveryFailed saying why."""
        raise NotImplementedError

    async def close(self, timeout: float = 5.0) -> None:
        """Take no more; give what is queued up to `timeout` seconds, then stop (what is left is
        counted as dropped)."""
        self._closing = True
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while (self._queue or self._busy) and loop.time() < end and any(not t.done() for t in self._tasks):
            await asyncio.sleep(0.02)
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks = []
        left = sum(len(d.alerts) for d in self._queue)
        self._queue.clear()
        self.dropped += left


class WebhookSink(Sink):
    """POST alerts to `url` (module docstring).  `fmt`: "tcpulse" (one event per request) or
    "alertmanager" (lists of up to AM_BATCH alerts).  `secret`: sign every body
    (`X-Tcpulse-Signature: sha256=...`).  A request that fails on the network, times out
    (`timeout` s) or gets 408/425/429/5xx is tried again up to `retries` times, after a backoff
    with full jitter from `backoff_base` to `backoff_cap` seconds (at least what `Retry-After`
    asks, up to the cap); any other answer but 2xx fails at once."""

    def __init__(self, url: str, *, fmt: str = "tcpulse", secret: str | None = None, timeout: float = 5.0,
                 retries: int = 3, backoff_base: float = 0.5, backoff_cap: float = 8.0,
                 queue_size: int = 1000) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"unknown webhook format {fmt!r}")
        super().__init__(safe_url(url), queue_size=queue_size, workers=1)
        self.url = url
        self.fmt = fmt
        self.secret = secret
        self.timeout = timeout
        self.retries = retries
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.wants_resend = fmt == "alertmanager"
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        # Proxies from the environment, as any HTTP client honours them; never for this machine.
        host = urlsplit(self.url).hostname or ""
        loopback = host in ("localhost", "::1") or host.startswith("127.")
        self._session = aiohttp.ClientSession(
            trust_env=not loopback, headers={"User-Agent": f"tcpulse/{__version__}"},
            timeout=aiohttp.ClientTimeout(total=self.timeout))
        await super().start()

    async def close(self, timeout: float = 5.0) -> None:
        await super().close(timeout)
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _take(self) -> Delivery:
        item = self._queue.popleft()
        if self.fmt != "alertmanager" or item.resend:
            return item
        # Alertmanager takes lists: send what else is queued along, in order.
        while self._queue and not self._queue[0].resend and len(item.alerts) + len(self._queue[0].alerts) <= AM_BATCH:
            item.alerts.extend(self._queue.popleft().alerts)
        return item

    def body(self, item: Delivery) -> bytes:
        """The bytes of the request for `item` (what is signed)."""
        o = self.origin
        if self.fmt == "alertmanager":
            return dumps(alertmanager_body(item.alerts, instance=o.instance, now=time.time(),
                                           generator_url=o.generator_url, resend=item.resend))
        assert len(item.alerts) == 1
        return dumps(event_json(item.alerts[0], instance=o.instance, server_id=o.server_id))

    async def deliver(self, item: Delivery) -> None:
        if self.fmt == "alertmanager":
            chunks = [item.alerts[i:i + AM_BATCH] for i in range(0, len(item.alerts), AM_BATCH)]
        else:
            chunks = [[a] for a in item.alerts]
        for chunk in chunks:
            part = Delivery(chunk, item.resend, item.id if len(chunks) == 1 else uuid.uuid4().hex)
            body = self.body(part)
            if body == b"[]":
                continue  # nothing Alertmanager would know (a `back` with nothing firing)
            headers = {"Content-Type": "application/json", "X-Tcpulse-Delivery": part.id,
                       "X-Tcpulse-Event": ",".join(sorted({a.kind.value for a in chunk}))}
            if self.secret:
                headers[SIGNATURE_HEADER] = signature(self.secret, body)
            await self._post(body, headers)

    async def _post(self, body: bytes, headers: dict[str, str]) -> None:
        assert self._session is not None, "start() first"
        backoff = Backoff(self.backoff_base, self.backoff_cap)
        attempt = 0
        while True:
            retry_after = 0.0
            try:
                async with self._session.post(self.url, data=body, headers=headers, allow_redirects=False) as resp:
                    await resp.read()
                    if 200 <= resp.status < 300:
                        return
                    why = f"HTTP {resp.status}"
                    if resp.status not in _RETRY_STATUS:
                        raise DeliveryFailed(why)
                    with contextlib.suppress(ValueError):
                        retry_after = float(resp.headers.get("Retry-After", "0"))
            except (aiohttp.ClientError, TimeoutError, OSError) as e:
                why = (f"timed out after {self.timeout:g} s" if isinstance(e, TimeoutError)
                       else str(e) or type(e).__name__)
            if attempt >= self.retries:
                raise DeliveryFailed(why if attempt == 0 else f"{why} ({attempt + 1} attempts)")
            attempt += 1
            await asyncio.sleep(max(backoff.next(), min(retry_after, self.backoff_cap)))


class CommandSink(Sink):
    """Run `command` (through the shell) once per alert with the alert's JSON on stdin, and
    `TCPULSE_EVENT`, `TCPULSE_STATUS` and `TCPULSE_CLIENT` in its environment.  Up to
    `concurrency` run at once; one that runs longer than `timeout` seconds is killed with its
    process group; a non-zero exit is a failure (reported with the first line of its stderr).
    Not retried: a command may have done half its work."""

    def __init__(self, command: str, *, timeout: float = 10.0, concurrency: int = 4, queue_size: int = 1000) -> None:
        super().__init__("command", queue_size=queue_size, workers=concurrency)
        self.command = command
        self.timeout = timeout

    async def deliver(self, item: Delivery) -> None:
        for alert in item.alerts:
            await self._run(alert)

    async def _run(self, alert: Alert) -> None:
        o = self.origin
        body = dumps(event_json(alert, instance=o.instance, server_id=o.server_id)) + b"\n"
        env = {**os.environ, "TCPULSE_EVENT": alert.kind.value,
               "TCPULSE_STATUS": "firing" if alert.firing else "resolved", "TCPULSE_CLIENT": alert.client}
        try:
            proc = await asyncio.create_subprocess_shell(
                self.command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE, env=env, start_new_session=True)
        except OSError as e:
            raise DeliveryFailed(f"cannot run it: {e.strerror or e}") from None
        try:
            async with asyncio.timeout(self.timeout):
                err = await self._talk(proc, body)
                code = await proc.wait()
        except TimeoutError:
            self._kill(proc)
            await proc.wait()
            raise DeliveryFailed(f"killed after {self.timeout:g} s") from None
        except asyncio.CancelledError:
            self._kill(proc)
            raise
        if code != 0:
            first = err.decode(errors="replace").strip().splitlines()[:1]
            what = f"killed by signal {-code}" if code < 0 else f"exit status {code}"
            raise DeliveryFailed(what + (f": {first[0][:200]}" if first else ""))

    @staticmethod
    async def _talk(proc: asyncio.subprocess.Process, body: bytes) -> bytes:
        """Write `body` to the command's stdin and read its stderr (keeping the first bytes)."""
        assert proc.stdin is not None and proc.stderr is not None
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            proc.stdin.write(body)
            await proc.stdin.drain()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            proc.stdin.close()
        kept = b""
        while chunk := await proc.stderr.read(4096):
            if len(kept) < _STDERR_KEEP:
                kept += chunk[: _STDERR_KEEP - len(kept)]
        return kept

    @staticmethod
    def _kill(proc: asyncio.subprocess.Process) -> None:
        # The command's own process group (start_new_session): the shell and what it started.
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
