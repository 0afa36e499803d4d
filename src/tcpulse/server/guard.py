"""TLS, authentication and limits: what keeps a tcpulse server up and its clients its own.

`Guard` is the server's gatekeeper (one per server).  The server calls it at a few points:
`prepare()` before listening, `admit()` for a new connection (before `INFO`), `check_hello()`
before it answers a `HELLO`, `rate()` for each batch of control frames, `held()` when the bytes
of partial frames a connection holds change, `queued()` after a write, and `lost()` when a
connection ends.  It knows connections only as `Peer`s, and the server only through the hooks
it is handed (`emit`, `clients`, `closing`).  The policies themselves are pure objects
(`policy.ratelimit`); this module wires them to the asyncio shell.  docs/security.md describes
the threat model and every default.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from tcpulse.policy.ratelimit import FailureDelay, FrameRate
from tcpulse.protocol.errors import ErrorCode
from tcpulse.protocol.events import Hello
from tcpulse.security.limits import raise_open_file_limit
from tcpulse.security.tls import peer_identities, server_ssl_context
from tcpulse.security.tokens import AuthFile, AuthFileError
from tcpulse.server.config import DEFAULT_MAX_BUFFERED, DEFAULT_MAX_QUEUED, FD_RESERVE, ServerConfig, write_buffer_cap
from tcpulse.server.events import ServerEvent, Warning_
from tcpulse.server.peer import ConnLimits, Peer
from tcpulse.server.view import DisconnectReason

__all__ = ["AUTH_WATCH_EVERY", "QUEUE_STALL", "Capacity", "Guard", "RateDecision",
           "raise_open_file_limit"]

#: Only a client whose bytes have been waiting this long (its buffer never empty in between) is
#: closed for the budget: a big broadcast queues bytes for every client at once, and healthy
#: clients take theirs within moments.
QUEUE_STALL = 2.0
#: Seconds between looks (one stat()) at the auth file: a revoked token ends its connection this
#: soon, without a SIGHUP and without waiting for another client's HELLO.
AUTH_WATCH_EVERY = 1.0




def _host(addr: str) -> str:
    # "host:port" or "[v6]:port" -> host
    return addr.rsplit(":", 1)[0].strip("[]") if ":" in addr else addr


@dataclass(frozen=True, slots=True)
class Capacity:
    """How many clients this server can hold, and why (`Guard.capacity()`)."""

    clients: int
    open_files: int
    #: The --max-clients asked for, when the open-file limit lowered it (else None).
    lowered_from: int | None = None


@dataclass(frozen=True, slots=True)
class RateDecision:
    """What to do with a batch of control frames (`Guard.rate()`)."""

    #: How many of the batch's PINGs to answer (in order).
    pongs: int
    #: Send `ERR 429`: the frames beyond the rate are dropped, the connection goes on.
    drop: bool = False
    #: Close with `ERR 429`: the client kept on.
    close: bool = False


#: Nothing to answer, nothing to drop: the decision for most batches (a HEARTBEAT), shared.
_PASS = RateDecision(0)


class Guard:
    """TLS, authentication and limits of one server (see the module docstring).

    `emit` reports a warning event; `clients()` gives the connections being served; `closing()`
    says whether the server is shutting down.
    """

    def __init__(self, config: ServerConfig, *, emit: Callable[[ServerEvent], None],
                 clients: Callable[[], Iterable[Peer]], closing: Callable[[], bool]) -> None:
        self.cfg = config
        self._emit = emit
        self._clients = clients
        self._closing = closing
        self.ssl: ssl.SSLContext | None = None
        self.auth: AuthFile | None = None
        self.failures = FailureDelay()
        self.per_addr: dict[str, int] = {}
        #: Bytes of partial frames held across all connections now.
        self.held_total = 0
        self.max_clients = config.max_clients or 0
        self.open_files = (0, 0)
        self.write_buffer = write_buffer_cap(config)
        self.max_buffered = DEFAULT_MAX_BUFFERED if config.max_buffered is None else config.max_buffered
        #: Bytes queued to clients across all connections, as last seen (see `queued()`).
        self.queued_total = 0
        self.max_queued = DEFAULT_MAX_QUEUED if config.max_queued is None else config.max_queued
        #: Connections last seen with bytes queued.
        self._queuing: set[Peer] = set()
        #: Clients closed because the global budget for queued bytes ran out.
        self.shed = 0
        self._shed_timer: asyncio.TimerHandle | None = None
        #: `ERR 429` sent for dropped frames (no event each: a flood would flood the log too);
        #: the admin's protocol-error counts add them.
        self.dropped_429 = 0
        self._prepared = False
        #: The (mtime, size, inode) of an auth file that failed to load, reported once.
        self._bad_stamp: tuple[int, int, int] | None = None

    @property
    def auth_required(self) -> bool:
        """PROTOCOL.md, "Verbs", INFO: a token or a client certificate must match the HELLO id."""
        return self.cfg.auth_file is not None or self.cfg.tls_client_ca is not None

    def prepare(self) -> None:
        """Load the TLS certificates and the auth file, raise the open-file limit, and work out
        how many clients fit.  Raises `SecurityConfigError` / `AuthFileError` (ValueErrors)."""
        if self._prepared:
            return
        cfg = self.cfg
        if cfg.tls_cert is not None and cfg.tls_key is not None:
            self.ssl = server_ssl_context(cfg.tls_cert, cfg.tls_key, cfg.tls_client_ca)
        if cfg.auth_file is not None:
            self.auth = AuthFile(cfg.auth_file)
            self.auth.load()
            with contextlib.suppress(RuntimeError):  # no running loop: HELLO and SIGHUP still reload
                asyncio.get_running_loop().call_later(AUTH_WATCH_EVERY, self._watch_auth)
        self.open_files = raise_open_file_limit()
        fit = max(1, self.open_files[0] - FD_RESERVE)
        if cfg.max_clients is None or cfg.max_clients == 0:
            self.max_clients = fit
        else:
            self.max_clients = min(cfg.max_clients, fit)
        self._prepared = True

    def capacity(self) -> Capacity:
        """How many clients fit (after `prepare()`)."""
        asked = self.cfg.max_clients
        lowered = asked if asked and asked > self.max_clients else None
        return Capacity(self.max_clients, self.open_files[0], lowered)

    # ---------------------------------------------------------------- the auth file

    def reload_auth(self) -> None:
        """Re-read the auth file now (SIGHUP)."""
        if self.auth is None:
            return
        try:
            n = self.auth.load()
        except AuthFileError as e:
            self._emit(Warning_(f"{e}; the tokens loaded before stay in force", {"audit": "auth-reload-failed"},
                                error=e))
            return
        self._emit(Warning_(f"auth file {self.auth.path} reloaded: {n} ids", {"audit": "auth-reloaded", "ids": n}))
        self._drop_revoked()

    def _watch_auth(self) -> None:
        if self._closing():
            return
        self.refresh_auth()
        asyncio.get_running_loop().call_later(AUTH_WATCH_EVERY, self._watch_auth)

    def refresh_auth(self) -> None:
        """Reload the auth file if it changed on disk (one stat()), and close the connections of
        ids it no longer holds.  A bad file is logged once; the tokens loaded before stay."""
        auth = self.auth
        if auth is None or not auth.changed():
            return
        stamp = auth.stamp()
        if stamp is not None and stamp == self._bad_stamp:
            return
        try:
            n = auth.load()
        except AuthFileError as e:
            self._bad_stamp = stamp
            self._emit(Warning_(f"{e}; the tokens loaded before stay in force", {"audit": "auth-reload-failed"},
                                error=e))
            return
        self._bad_stamp = None
        self._emit(Warning_(f"auth file {auth.path} changed: {n} ids", {"audit": "auth-reloaded", "ids": n}))
        self._drop_revoked()

    def _drop_revoked(self) -> None:
        # A revoked token ends the connection that used it, not only the next HELLO.
        auth = self.auth
        if auth is None:
            return
        for c in list(self._clients()):
            if c.id is not None and not c.closed and not auth.has(c.id):
                self._emit(Warning_(f"token of {c.id} revoked: closing its connection",
                                    {"audit": "auth-revoked", "id": c.id, "addr": c.addr}))
                c.fail(ErrorCode.UNAUTHORIZED, "token revoked", DisconnectReason.REFUSED)

    # ---------------------------------------------------------------- connections

    def admit(self, c: Peer, served: int) -> bool:
        """A new connection, before INFO, with `served` connections served now.  False: it was
        refused with `ERR 503` (the caller must do nothing more with it)."""
        cfg = self.cfg
        host = sys.intern(_host(c.addr))  # one string per address, not one per connection
        if self.max_clients and served >= self.max_clients:
            c.fail(ErrorCode.UNAVAILABLE, "server full, try again later", DisconnectReason.REFUSED)
            return False
        n = self.per_addr.get(host, 0)
        if cfg.max_per_addr and n >= cfg.max_per_addr:
            c.fail(ErrorCode.UNAVAILABLE, "too many connections from your address", DisconnectReason.REFUSED)
            return False
        self.per_addr[host] = n + 1
        rate = None
        if cfg.max_frames_per_sec or cfg.max_pings_per_sec:
            rate = FrameRate(time.monotonic(), frames_per_sec=cfg.max_frames_per_sec or 1e12,
                             pings_per_sec=cfg.max_pings_per_sec or 1e12, max_strikes=cfg.max_strikes)
        limits = ConnLimits(host, rate)
        c.limits = limits
        tr = c.transport
        if tr is not None:
            # Slow consumer: past this many unsent bytes pause_writing() fires and the server
            # closes the client instead of buffering for it without bound.
            tr.set_write_buffer_limits(high=self.write_buffer)
        if self.auth_required:
            # PROTOCOL.md, "Errors", 408: no HELLO within the auth timeout.
            limits.timer = asyncio.get_running_loop().call_later(cfg.auth_timeout, self._auth_timeout, c)
        return True

    def _auth_timeout(self, c: Peer) -> None:
        if c.limits is not None:
            c.limits.timer = None
        if not c.closed and not c.hello_seen:
            c.fail(ErrorCode.AUTH_TIMEOUT, "no HELLO within the auth timeout", DisconnectReason.REFUSED)

    def lost(self, c: Peer) -> None:
        """`c` ended: give back what it held of the budgets."""
        limits = c.limits
        if limits is None:
            return
        c.limits = None
        if limits.timer is not None:
            limits.timer.cancel()
        n = self.per_addr.get(limits.host, 0) - 1
        if n > 0:
            self.per_addr[limits.host] = n
        else:
            self.per_addr.pop(limits.host, None)
        self.held_total -= limits.held
        self.queued_total -= limits.queued
        self._queuing.discard(c)

    def held(self, c: Peer, now_held: int) -> None:
        """`c` now holds `now_held` bytes of partial frames.  Past the global budget, the client
        whose bytes push the total over is refused (`ERR 503`): the others keep their frames."""
        limits = c.limits
        if limits is None:
            return
        grew = now_held - limits.held
        self.held_total += grew
        limits.held = now_held
        if grew > 0 and self.max_buffered and self.held_total > self.max_buffered:
            c.fail(ErrorCode.UNAVAILABLE, "server memory for partial frames is exhausted, send again later",
                   DisconnectReason.REFUSED)

    def queued(self, c: Peer, size: int) -> None:
        """`c`'s transport holds `size` unsent bytes after a write.  Past the global budget, the
        clients with the most queued are closed as slow consumers until the rest fits."""
        limits = c.limits
        if limits is None or size == limits.queued:
            return
        if size and not limits.queued:
            limits.queued_since = time.monotonic()
        self.queued_total += size - limits.queued
        limits.queued = size
        if size:
            self._queuing.add(c)
        else:
            self._queuing.discard(c)
        if self.max_queued and self.queued_total > self.max_queued:
            self._shed()

    def recount_queued(self) -> int:
        """Bytes queued to clients now.  Buffers drain without telling us, so the figures recorded
        at write time only ever overstate: look again at each connection that had bytes queued.
        O(connections with bytes queued)."""
        total = 0
        for q in list(self._queuing):
            limits = q.limits
            tr = q.transport
            n = tr.get_write_buffer_size() if tr is not None and limits is not None else 0
            if limits is not None:
                limits.queued = n
            if n:
                total += n
            else:
                self._queuing.discard(q)
        self.queued_total = total
        return total

    def _shed(self) -> None:
        # Past the budget: count again, then close the biggest of the stalled clients (bytes
        # waiting for QUEUE_STALL seconds) until the rest fits.  If that is not enough yet, look
        # again when the next ones would be stalled: a burst that healthy clients take drains
        # by itself, a client that does not read is closed then.
        if self.recount_queued() <= self.max_queued:
            return
        now = time.monotonic()
        stalled = [q for q in self._queuing
                   if q.limits is not None and now - q.limits.queued_since >= QUEUE_STALL]
        stalled.sort(key=lambda q: q.limits.queued if q.limits is not None else 0)
        while self.queued_total > self.max_queued and stalled:
            worst = stalled.pop()
            limits = worst.limits
            n = limits.queued if limits is not None else 0
            if limits is not None:
                limits.queued = 0
            self._queuing.discard(worst)
            self.queued_total -= n
            self.shed += 1
            worst.close_slow(f"{n} bytes unread for {QUEUE_STALL:g} s or more when the budget for "
                             f"bytes queued to all clients ran out (--max-queued)")
        if self.queued_total > self.max_queued and self._shed_timer is None and self._queuing:
            first = min(q.limits.queued_since for q in self._queuing if q.limits is not None)
            self._shed_timer = asyncio.get_running_loop().call_later(
                max(0.01, first + QUEUE_STALL - now), self._recheck)

    def _recheck(self) -> None:
        self._shed_timer = None
        self._shed()

    def rate(self, c: Peer, now: float, frames: int, pings: int) -> RateDecision:
        """A batch of `frames` control frames from `c`, `pings` of them PINGs: how many PINGs to
        answer, and whether to drop (`ERR 429`) or close.  The caller acts on the decision."""
        limits = c.limits
        if limits is None or limits.rate is None:
            return _PASS if not pings else RateDecision(pings)
        v = limits.rate.admit(now, frames, pings)
        if not v.over:
            # The common case (a HEARTBEAT within the rate): no decision object made per frame.
            return _PASS if not v.pings_allowed else RateDecision(v.pings_allowed)
        if not v.close:
            self.dropped_429 += 1
        return RateDecision(v.pings_allowed, drop=not v.close, close=v.close)

    # ---------------------------------------------------------------- HELLO

    async def check_hello(self, c: Peer, hello: Hello) -> bool:
        """With auth required: does the token (and the client certificate) belong to the HELLO
        id?  If not, answers `ERR 401` after the failure delay, logs an audit event (never the
        token), and returns False: the caller must then do nothing more with `c`."""
        if not self.auth_required:
            return True
        limits = c.limits
        if limits is not None and limits.timer is not None:
            limits.timer.cancel()
            limits.timer = None
        why: str | None = None
        if self.cfg.tls_client_ca is not None:
            ids = peer_identities(c.transport)
            if hello.id not in ids:
                why = "client certificate is not for this id"
        if why is None and self.auth is not None:
            self.refresh_auth()
            why = self.auth.verify(hello.id, hello.token)
        if why is None:
            return True
        host = limits.host if limits is not None else _host(c.addr)
        delay = self.failures.failure(host, time.monotonic())
        self._emit(Warning_(f"authentication failed for id {hello.id} from {c.addr}: {why}",
                            {"audit": "auth-failed", "id": hello.id, "addr": c.addr, "why": why,
                             "delay": round(delay, 3)}))
        if delay > 0:
            await asyncio.sleep(delay)
        c.fail(ErrorCode.UNAUTHORIZED, "authentication failed", DisconnectReason.REFUSED)
        return False
