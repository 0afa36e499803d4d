"""Who may use the admin endpoint: a bearer token, and loopback only without one.

Imports nothing of aiohttp, so that the command line can check an `--admin` setting before the
admin extra is needed.
"""

from __future__ import annotations

import hmac
import ipaddress
from typing import Any

from tcpulse.i18n import _

__all__ = ["admin_authorize", "admin_bind_error", "admin_token_ok", "is_loopback_host"]


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


def admin_token_ok(authorization: str | None, token: str | None) -> bool:
    """Check an HTTP `Authorization: Bearer <token>` header in constant time (True if no token is set)."""
    if not token:
        return True
    prefix = "Bearer "
    got = authorization[len(prefix):] if authorization and authorization.startswith(prefix) else ""
    return hmac.compare_digest(got.encode("utf-8"), token.encode("utf-8"))


def admin_authorize(token: str | None) -> Any:
    """The admin endpoint's auth hook: `Authorization: Bearer <token>` (or `?token=` for the
    dashboard's EventSource, which cannot set headers), compared in constant time.  None when no
    token is set: then the endpoint is open, and only on loopback (admin_bind_error)."""
    if not token:
        return None

    def authorize(request: Any) -> bool:
        if admin_token_ok(request.headers.get("Authorization"), token):
            return True
        q = request.query.get("token")
        return q is not None and admin_token_ok(f"Bearer {q}", token)
    return authorize
