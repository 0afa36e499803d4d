"""TLS, authentication and limits: what keeps a tcpulse server up and its clients its own.

`Guard` is the server's gatekeeper (one per `Server`).  The server calls it at a few points:
`prepare()` before listening, `admit()` for a new connection (before `INFO`), `check_hello()`
before it answers a `HELLO`, `rate()` for each batch of control frames, `held()` when the bytes
of partial frames a connection holds change, and `lost()` when a connection ends.  The policies
themselves are pure objects (`ratelimit.FrameRate`, `auth.FailureDelay`); this module only
wires them to the asyncio shell.  docs/security.md describes the threat model and every default.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tcpulse.i18n import _
from tcpulse.policy.ratelimit import FailureDelay, FrameRate
from tcpulse.protocol.errors import ErrorCode
from tcpulse.protocol.events import Err, Hello, Pong
from tcpulse.security.limits import raise_open_file_limit
from tcpulse.security.tls import peer_identities, server_ssl_context
from tcpulse.security.tokens import AuthFile, AuthFileError
from tcpulse.server.config import DEFAULT_MAX_BUFFERED, DEFAULT_MAX_QUEUED, FD_RESERVE, write_buffer_cap
from tcpulse.server.events import DisconnectReason, Warning_

if TYPE_CHECKING:
    from tcpulse.server.connection import ClientInfo
    from tcpulse.server.server import Server

__all__ = ["AUTH_WATCH_EVERY", "QUEUE_STALL", "ConnLimits", "Guard", "env_token", "raise_open_file_limit"]

#: Only a client whose bytes have been waiting this long (its buffer never empty in between) is
#: closed for the budget: a big broadcast queues bytes for every client at once, and healthy
#: clients take theirs within moments.
QUEUE_STALL = 2.0
#: Seconds between looks (one stat()) at the auth file: a revoked token ends its connection this
#: soon, without a SIGHUP and without waiting for another client's HELLO.
AUTH_WATCH_EVERY = 1.0


# ------------------------------------------------------------------------------ settings


# ------------------------------------------------------------------------------ TLS


# ------------------------------------------------------------------------------ admin endpoint


# ------------------------------------------------------------------------------ the guard


def _host(addr: str) -> str:
    # "host:port" or "[v6]:port" -> host
    return addr.rsplit(":", 1)[0].strip("[]") if ":" in addr else addr


@dataclass(slots=True)
class ConnLimits:
    """What the guard keeps for one connection (`ClientInfo.sec`)."""

    host: str
    rate: FrameRate | None
    held: int = 0
    #: Bytes queued for the client as last seen (its transport's write buffer), and since when
    #: (monotonic) that buffer has not been empty.
    queued: int = 0
    queued_since: float = 0.0
    timer: asyncio.TimerHandle | None = None


class Guard:
    """TLS, authentication and limits of one server (see the module docstring)."""

    def __init__(self, server: Server) -> None:
        self.server = server
        cfg = server.config
        self.cfg = cfg
        self.ssl: ssl.SSLContext | None = None
        self.auth: AuthFile | None = None
        self.failures = FailureDelay()
        self.per_addr: dict[str, int] = {}
        #: Bytes of partial frames held across all connections now.
        self.held_total = 0
        self.max_clients = cfg.max_clients or 0
        self.open_files = (0, 0)
        self.write_buffer = write_buffer_cap(cfg)
        self.max_buffered = DEFAULT_MAX_BUFFERED if cfg.max_buffered is None else cfg.max_buffered
        #: Bytes queued to clients across all connections, as last seen (see `queued()`).
        self.queued_total = 0
        self.max_queued = DEFAULT_MAX_QUEUED if cfg.max_queued is None else cfg.max_queued
        #: Connections last seen with bytes queued.
        self._queuing: set[ClientInfo] = set()
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

    def capacity_text(self) -> str:
        soft, _hard = self.open_files
        if self.cfg.max_clients and self.cfg.max_clients > self.max_clients:
            return _("this server can hold {n} clients (open-file limit {soft}; --max-clients {asked} lowered "
                     "to fit: raise 'ulimit -n' to hold more)").format(n=self.max_clients, soft=soft,
                                                                        asked=self.cfg.max_clients)
        return _("this server can hold {n} clients (open-file limit {soft})").format(n=self.max_clients, soft=soft)

    def reload_auth(self) -> None:
        """Re-read the auth file now (SIGHUP)."""
        if self.auth is None:
            return
        try:
            n = self.auth.load()
        except AuthFileError as e:
            self.server._emit(Warning_(f"{e}; the tokens loaded before stay in force",
                                       {"audit": "auth-reload-failed"}))
            return
        self.server._emit(Warning_(f"auth file {self.auth.path} reloaded: {n} ids",
                                   {"audit": "auth-reloaded", "ids": n}))
        self._drop_revoked()

    def _watch_auth(self) -> None:
        if self.server._closing:
            return
        self.refresh_auth()
        asyncio.get_running_loop().call_later(AUTH_WATCH_EVERY, self._watch_auth)

    def refresh_auth(self) -> None:
        """Reload the auth file if it changed on disk (one stat()), and close the connections of
        ids it no longer holds.  A bad file is logged once; the tokens loaded before stay."""
        auth = self.auth
        if auth is None or not auth.changed():
            return
        stamp = auth._stat()
        if stamp is not None and stamp == self._bad_stamp:
            return
        try:
            n = auth.load()
        except AuthFileError as e:
            self._bad_stamp = stamp
            self.server._emit(Warning_(f"{e}; the tokens loaded before stay in force",
                                       {"audit": "auth-reload-failed"}))
            return
        self._bad_stamp = None
        self.server._emit(Warning_(f"auth file {auth.path} changed: {n} ids", {"audit": "auth-reloaded", "ids": n}))
        self._drop_revoked()

    def _drop_revoked(self) -> None:
        # A revoked token ends the connection that used it, not only the next HELLO.
        auth = self.auth
        if auth is None:
            return
        for c in self.server.clients:
            if c.id is not None and not c._closed and not auth.has(c.id):
                self.server._emit(Warning_(f"token of {c.id} revoked: closing its connection",
                                           {"audit": "auth-revoked", "id": c.id, "addr": c.addr}))
                c.fail(ErrorCode.UNAUTHORIZED, "token revoked", DisconnectReason.REFUSED)

    # ---------------------------------------------------------------- connections

    def admit(self, c: ClientInfo) -> bool:
        """A new connection, before INFO.  False: it was refused with `ERR 503` (do nothing more)."""
        cfg = self.cfg
        host = _host(c.addr)
        srv = self.server
        if self.max_clients and len(srv._clients) >= self.max_clients:
            c.fail(ErrorCode.UNAVAILABLE, "server full, try again later", DisconnectReason.REFUSED)
            return False
        n = self.per_addr.get(host, 0)
        if cfg.max_per_addr and n >= cfg.max_per_addr:
            c.fail(ErrorCode.UNAVAILABLE, "too many connections from your address", DisconnectReason.REFUSED)
            return False
        self.per_addr[host] = n + 1
        rate = None
        if cfg.max_frames_per_sec or cfg.max_pings_per_sec:
            rate = FrameRate(srv._loop.time(), frames_per_sec=cfg.max_frames_per_sec or 1e12,
                             pings_per_sec=cfg.max_pings_per_sec or 1e12, max_strikes=cfg.max_strikes)
        sec = ConnLimits(host, rate)
        c.sec = sec
        c.conn.auto_pong = False  # PINGs are answered by rate() below
        tr = c.transport
        if tr is not None:
            # Slow consumer: past this many unsent bytes pause_writing() fires and the server
            # closes the client instead of buffering for it without bound.
            tr.set_write_buffer_limits(high=self.write_buffer)
        if self.auth_required:
            # PROTOCOL.md, "Errors", 408: no HELLO within the auth timeout.
            sec.timer = srv._loop.call_later(cfg.auth_timeout, self._auth_timeout, c)
        return True

    def _auth_timeout(self, c: ClientInfo) -> None:
        if c.sec is not None:
            c.sec.timer = None
        if not c._closed and c.conn.hello is None:
            c.fail(ErrorCode.AUTH_TIMEOUT, "no HELLO within the auth timeout", DisconnectReason.REFUSED)

    def lost(self, c: ClientInfo) -> None:
        sec = c.sec
        if sec is None:
            return
        c.sec = None
        if sec.timer is not None:
            sec.timer.cancel()
        n = self.per_addr.get(sec.host, 0) - 1
        if n > 0:
            self.per_addr[sec.host] = n
        else:
            self.per_addr.pop(sec.host, None)
        self.held_total -= sec.held
        self.queued_total -= sec.queued
        self._queuing.discard(c)

    def held(self, c: ClientInfo, now_held: int) -> None:
        """`c` now holds `now_held` bytes of partial frames.  Past the global budget, the client
        whose bytes push the total over is refused (`ERR 503`): the others keep their frames."""
        sec = c.sec
        if sec is None:
            return
        grew = now_held - sec.held
        self.held_total += grew
        sec.held = now_held
        if grew > 0 and self.max_buffered and self.held_total > self.max_buffered:
            c.fail(ErrorCode.UNAVAILABLE, "server memory for partial frames is exhausted, send again later",
                   DisconnectReason.REFUSED)

    def queued(self, c: ClientInfo, size: int) -> None:
        """`c`'s transport holds `size` unsent bytes after a write.  Past the global budget, the
        clients with the most queued are closed as slow consumers until the rest fits."""
        sec = c.sec
        if sec is None or size == sec.queued:
            return
        if size and not sec.queued:
            sec.queued_since = time.monotonic()
        self.queued_total += size - sec.queued
        sec.queued = size
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
            qs = q.sec
            tr = q.transport
            n = tr.get_write_buffer_size() if tr is not None and qs is not None else 0
            if qs is not None:
                qs.queued = n
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
        stalled = [q for q in self._queuing if q.sec is not None and now - q.sec.queued_since >= QUEUE_STALL]
        stalled.sort(key=lambda q: q.sec.queued if q.sec is not None else 0)
        while self.queued_total > self.max_queued and stalled:
            worst = stalled.pop()
            ws = worst.sec
            n = ws.queued if ws is not None else 0
            if ws is not None:
                ws.queued = 0
            self._queuing.discard(worst)
            self.queued_total -= n
            self.shed += 1
            self.server._close_slow(worst, f"{n} bytes unread for {QUEUE_STALL:g} s or more when the budget for "
                                           f"bytes queued to all clients ran out (--max-queued)")
        if self.queued_total > self.max_queued and self._shed_timer is None and self._queuing:
            first = min(q.sec.queued_since for q in self._queuing if q.sec is not None)
            self._shed_timer = self.server._loop.call_later(max(0.01, first + QUEUE_STALL - now), self._recheck)

    def _recheck(self) -> None:
        self._shed_timer = None
        self._shed()

    def rate(self, c: ClientInfo, now: float, frames: int, pings: list[Any]) -> None:
        """A batch of `frames` control frames, with these `pings`: answer, drop, or close."""
        sec = c.sec
        if sec is None or sec.rate is None:
            for p in pings:
                c.conn.send(Pong(ctx=p.ctx))
            return
        v = sec.rate.admit(now, frames, len(pings))
        for p in pings[:v.pings_allowed]:
            c.conn.send(Pong(ctx=p.ctx))
        if v.close:
            c.fail(ErrorCode.TOO_MANY, "too many frames per second, closing", DisconnectReason.ERROR)
        elif v.over:
            self.dropped_429 += 1
            c.conn.send(Err(code=int(ErrorCode.TOO_MANY), text="too many frames per second, frame dropped"))

    # ---------------------------------------------------------------- HELLO

    async def check_hello(self, c: ClientInfo, hello: Hello) -> bool:
        """With auth required: does the token (and the client certificate) belong to the HELLO
        id?  If not, answers `ERR 401` after the failure delay, logs an audit event (never the
        token), and returns False: the caller must then do nothing more with `c`."""
        if not self.auth_required:
            return True
        srv = self.server
        if c.sec is not None and c.sec.timer is not None:
            c.sec.timer.cancel()
            c.sec.timer = None
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
        host = c.sec.host if c.sec is not None else _host(c.addr)
        delay = self.failures.failure(host, srv._loop.time())
        srv._emit(Warning_(f"authentication failed for id {hello.id} from {c.addr}: {why}",
                           {"audit": "auth-failed", "id": hello.id, "addr": c.addr, "why": why,
                            "delay": round(delay, 3)}))
        if delay > 0:
            await asyncio.sleep(delay)
        c.fail(ErrorCode.UNAUTHORIZED, "authentication failed", DisconnectReason.REFUSED)
        return False


def env_token(name: str) -> str | None:
    v = os.environ.get(name)
    return v or None
