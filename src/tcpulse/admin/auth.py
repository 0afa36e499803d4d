"""Who may use the admin endpoint: a bearer token, loopback only without one, and a `Host` that
names this endpoint when no token guards it.

Imports nothing of aiohttp, so that the command line can check an `--admin` setting before the
admin extra is needed.
"""

from __future__ import annotations

import hmac
import ipaddress
from typing import Any

from tcpulse.i18n import _

__all__ = [
    "STREAM_PATH",
    "admin_authorize",
    "admin_bind_error",
    "admin_token_ok",
    "host_allowed",
    "is_loopback_host",
]

#: The dashboard's event stream: the one path where a token may come as `?token=`, because a
#: browser's EventSource cannot send an `Authorization` header.  Everywhere else a token in the
#: URL is refused: URLs end up in browser history, proxy logs and `Referer` headers.
STREAM_PATH = "/api/events/stream"


def is_loopback_host(host: str) -> bool:
    """True if `host` (a name or an address, IPv6 with or without brackets) is this machine's
    loopback: `localhost`, 127.0.0.0/8 or ::1.  Any other name counts as reachable from elsewhere."""
    h = host.strip("[]")
    if h.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def admin_bind_error(host: str, token: str | None) -> str | None:
    """Why the admin endpoint must not listen on `host` (None: it may); the caller must refuse
    to start it and show this line.  Without a bearer token it may only listen on loopback:
    anyone who reaches it could read every client's state."""
    if token or is_loopback_host(host):
        return None
    return _("--admin {host} is reachable from other machines: set a bearer token with --admin-token "
             "(or TCPULSE_ADMIN_TOKEN), or listen on 127.0.0.1").format(host=host)


def _raw(text: str) -> bytes:
    # aiohttp hands header and query bytes that are not UTF-8 over as lone surrogates
    # (surrogateescape): give those bytes back as they came, never raise on them.
    return text.encode("utf-8", "surrogateescape")


def admin_token_ok(authorization: str | None, token: str | None) -> bool:
    """Check an HTTP `Authorization: Bearer <token>` header in constant time (True if no token is
    set).  Any header of any shape or encoding that is not the token is False, never an error."""
    if not token:
        return True
    prefix = "Bearer "
    got = authorization[len(prefix):] if authorization and authorization.startswith(prefix) else ""
    return hmac.compare_digest(_raw(got), _raw(token))


def admin_authorize(token: str | None, *, query_paths: frozenset[str] = frozenset({STREAM_PATH})) -> Any:
    """The admin endpoint's auth hook: `Authorization: Bearer <token>`, compared in constant time;
    `?token=` only on `query_paths` (the dashboard's EventSource, which cannot set headers).
    None when no token is set: then the endpoint is open, and only on loopback (admin_bind_error)
    and to requests whose `Host` names it (host_allowed)."""
    if not token:
        return None

    def authorize(request: Any) -> bool:
        if admin_token_ok(request.headers.get("Authorization"), token):
            return True
        if request.path not in query_paths:
            return False
        q = request.query.get("token")
        return q is not None and admin_token_ok(f"Bearer {q}", token)
    return authorize


def host_allowed(host_header: str | None, bound_host: str) -> bool:
    """Whether a request's `Host` header names this endpoint: its bound address, `localhost`, or
    a loopback address, with any port.  A DNS-rebinding page (a name of the attacker's that
    resolves to 127.0.0.1) sends its own name and is refused; a request without `Host` (HTTP/1.0
    tools; every browser sends one) passes.  Only asked when no token guards the endpoint."""
    if host_header is None:
        return True
    h = host_header.strip().lower()
    if h.startswith("["):
        end = h.find("]")
        if end < 0:
            return False
        name = h[1:end]
    else:
        name, sep, port = h.rpartition(":")
        if not sep or not port.isdigit():
            name = h
    if not name:
        return False
    if name in ("localhost", bound_host.strip("[]").lower()):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False
