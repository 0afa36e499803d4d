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
import hmac
import ipaddress
import os
import resource
import ssl
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._events import Err, ErrorCode, Hello, Pong
from ._i18n import _
from .auth import AuthFile, AuthFileError, FailureDelay
from .events import DisconnectReason, Warning_
from .ratelimit import FrameRate

if TYPE_CHECKING:
    from .server import ClientInfo, Server, ServerConfig

__all__ = [
    "Guard",
    "admin_bind_error",
    "admin_token_ok",
    "client_ssl_context",
    "peer_identities",
    "raise_open_file_limit",
    "server_ssl_context",
    "validate_limits",
]

#: File descriptors kept back from clients: listening sockets, the store, the admin endpoint,
#: stdio, and connections that are refused (they linger a moment to receive their ERR 503).
FD_RESERVE = 100
#: Default global budget for bytes of partial frames held across all connections.  20,000
#: clients each holding half of a 1 MiB payload would be 10 GiB; with this budget the server
#: holds at most 256 MiB of them and refuses the client that would go past it (ERR 503).
DEFAULT_MAX_BUFFERED = 256 << 20
#: Default global budget for bytes queued to clients (not yet taken by their sockets), across
#: all connections.  The per-connection cap alone would let 20,000 clients that do not read pin
#: 20,000 x 2 MiB = 40 GiB; past this budget the client with the most queued is closed.
DEFAULT_MAX_QUEUED = 256 << 20
#: Only a client whose bytes have been waiting this long (its buffer never empty in between) is
#: closed for the budget: a big broadcast queues bytes for every client at once, and healthy
#: clients take theirs within moments.
QUEUE_STALL = 2.0
#: Seconds between looks (one stat()) at the auth file: a revoked token ends its connection this
#: soon, without a SIGHUP and without waiting for another client's HELLO.
AUTH_WATCH_EVERY = 1.0


class SecurityConfigError(ValueError):
    """A TLS or auth setting that cannot work; the message names the flag and the fix."""


# ------------------------------------------------------------------------------ settings


def validate_limits(cfg: ServerConfig) -> None:
    """Raise ValueError naming the bad security or limit setting (called by `ServerConfig.validate`)."""
    if (cfg.tls_cert is None) != (cfg.tls_key is None):
        raise ValueError(_("--tls-cert and --tls-key go together: give both, or neither"))
    if cfg.tls_client_ca is not None and cfg.tls_cert is None:
        raise ValueError(_("--tls-client-ca needs TLS: add --tls-cert and --tls-key"))
    if not cfg.auth_timeout > 0:
        raise ValueError(_("{option} must be greater than 0 (got {value})").format(option="--auth-timeout",
                                                                                   value=cfg.auth_timeout))
    for name in ("max_clients", "max_per_addr", "max_frames_per_sec", "max_pings_per_sec",
                 "max_strikes", "max_buffered", "max_write_buffer", "max_queued"):
        v = getattr(cfg, name)
        if v is not None and v < 0:
            raise ValueError(_("{option} must be 0 (off) or more (got {value})").format(
                option="--" + name.replace("_", "-"), value=v))
    wb = cfg.max_write_buffer
    if wb is not None and 0 < wb < cfg.max_payload + cfg.max_line + 64:
        raise ValueError(_("--max-write-buffer {value} cannot hold one message: make it at least "
                           "--max-payload + --max-line + 64 ({least})").format(
            value=wb, least=cfg.max_payload + cfg.max_line + 64))


def write_buffer_cap(cfg: ServerConfig) -> int:
    """Bytes the server queues for a client that does not read, before it closes it."""
    if cfg.max_write_buffer == 0:
        return 1 << 62  # off: never taken for a slow consumer (memory is then unbounded)
    if cfg.max_write_buffer is not None:
        return cfg.max_write_buffer
    # Room for two maximal messages: a broadcast of a big payload must not look like a stall.
    return max(1 << 20, 2 * (cfg.max_payload + cfg.max_line))


def raise_open_file_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit; returns (soft, hard) in force after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard_target = 1 << 20
    else:
        hard_target = hard
    if soft != resource.RLIM_INFINITY and soft < hard_target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard_target, hard))
            soft = hard_target
        except (ValueError, OSError):
            pass
    return soft, hard


# ------------------------------------------------------------------------------ TLS


def server_ssl_context(cert: str, key: str, client_ca: str | None = None) -> ssl.SSLContext:
    """TLS 1.2+ server context; with `client_ca`, clients must present a certificate it signed."""
    for flag, path in (("--tls-cert", cert), ("--tls-key", key), ("--tls-client-ca", client_ca)):
        if path is not None and not os.path.isfile(path):
            raise SecurityConfigError(_("{option} {path}: no such file (give the PEM file's path)").format(
                option=flag, path=path))
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as e:
        raise SecurityConfigError(_("--tls-cert {cert} / --tls-key {key} cannot be used ({error}): give a PEM "
                                    "certificate and the PEM private key that belongs to it").format(
            cert=cert, key=key, error=e)) from None
    if client_ca is not None:
        try:
            ctx.load_verify_locations(cafile=client_ca)
        except (ssl.SSLError, OSError) as e:
            raise SecurityConfigError(_("--tls-client-ca {path} cannot be used ({error}): give a PEM file "
                                        "of the CA certificates that sign client certificates").format(
                path=client_ca, error=e)) from None
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_ssl_context(ca: str | None = None, *, insecure: bool = False, cert: str | None = None,
                       key: str | None = None) -> ssl.SSLContext:
    """TLS 1.2+ client context that verifies the server (hostname included) against `ca`, or the
    system's CAs; `insecure` turns verification off (for testing only).  `cert`/`key`: this
    client's certificate, for a server that requires one (mutual TLS)."""
    try:
        ctx = ssl.create_default_context(cafile=ca)
    except FileNotFoundError:
        raise SecurityConfigError(_("--ca {path} does not exist: give the PEM file of the CA that "
                                    "signed the server's certificate").format(path=ca)) from None
    except (ssl.SSLError, OSError) as e:
        raise SecurityConfigError(_("--ca {path} cannot be used ({error}): give a PEM CA certificate").format(
            path=ca, error=e)) from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cert is not None:
        try:
            ctx.load_cert_chain(cert, key)
        except (ssl.SSLError, OSError) as e:
            raise SecurityConfigError(_("--tls-cert {path} cannot be used ({error}): give a PEM certificate "
                                        "and its key (--tls-key, unless the key is in the same file)").format(
                path=cert, error=e)) from None
    return ctx


def peer_identities(transport: Any) -> set[str]:
    """The identities in the peer's verified certificate: its subject CNs and its SANs (DNS
    names, e-mail addresses, URIs).  Empty when there is no certificate."""
    cert = transport.get_extra_info("peercert") if transport is not None else None
    if not cert:
        return set()
    ids: set[str] = set()
    for rdn in cert.get("subject", ()):
        for k, v in rdn:
            if k == "commonName":
                ids.add(v)
    for kind, v in cert.get("subjectAltName", ()):
        if kind in ("DNS", "email", "URI"):
            ids.add(v)
    return ids


# ------------------------------------------------------------------------------ admin endpoint


def admin_bind_error(host: str, token: str | None) -> str | None:
    """Why the admin endpoint must not listen on `host` (None: it may).  Without a bearer token
    it may only listen on loopback: anyone who reaches it could read every client's state."""
    if token:
        return None
    h = host.strip("[]")
    if h == "localhost":
        return None
    try:
        if ipaddress.ip_address(h).is_loopback:
            return None
    except ValueError:
        pass
    return _("--admin {host} is reachable from other machines: set a bearer token with --admin-token "
             "(or TCPULSE_ADMIN_TOKEN), or listen on 127.0.0.1").format(host=host)


def admin_token_ok(authorization: str | None, token: str | None) -> bool:
    """Check an HTTP `Authorization: Bearer <token>` header in constant time (True if no token is set)."""
    if not token:
        return True
    prefix = "Bearer "
    got = authorization[len(prefix):] if authorization and authorization.startswith(prefix) else ""
    return hmac.compare_digest(got.encode("utf-8"), token.encode("utf-8"))


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
