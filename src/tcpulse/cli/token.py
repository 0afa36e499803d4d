"""`tcpulse token add|list|revoke`, and the security glue of `serve` and `connect`.

Registered by one import line at the bottom of cli.py.
"""

from __future__ import annotations

import asyncio
import json
import signal
from typing import Any

import click

from tcpulse.cli.common import error_text, fail
from tcpulse.cli.console import ConsoleLog
from tcpulse.errors import N_
from tcpulse.i18n import _
from tcpulse.i18n.display import iso_ts
from tcpulse.security.tls import SecurityConfigError, client_ssl_context
from tcpulse.security.tokens import AuthFile, AuthFileError
from tcpulse.server.guard import Capacity
from tcpulse.server.server import Server

__all__ = [
    "DEFAULT_AUTH_FILE",
    "auth_file_option",
    "connect_tls",
    "plain_hint",
    "serve_security_setup",
    "serve_security_start",
    "tls_hint",
    "token",
    "token_add",
    "token_list",
    "token_revoke",
]

DEFAULT_AUTH_FILE = "tcpulse.tokens"

auth_file_option = click.option(
    "--auth-file", default=DEFAULT_AUTH_FILE, show_default=True, metavar="FILE",
    envvar="TCPULSE_AUTH_FILE", help="The auth file (the server's --auth-file); env TCPULSE_AUTH_FILE.")


@click.group()
def token() -> None:
    """Manage per-client tokens (the file given to 'serve --auth-file')."""


@token.command("add")
@click.argument("client_id", metavar="ID")
@auth_file_option
@click.option("--replace", is_flag=True, help="Replace the token ID has already (the old one stops working).")
def token_add(client_id: str, auth_file: str, replace: bool) -> None:
    """Create a random 256-bit token for ID and print it once.

    Only its SHA-256 digest is stored: keep the token now (give it to the client with
    'connect --token' or TCPULSE_TOKEN); it cannot be shown again."""
    try:
        tok = AuthFile(auth_file).add(client_id, replace=replace)
    except (AuthFileError, OSError) as e:
        fail(error_text(e))
    click.echo(_("Token for {id} (shown once; {path} keeps only its SHA-256):").format(id=client_id, path=auth_file),
               err=True)
    click.echo(tok)


@token.command("list")
@auth_file_option
def token_list(auth_file: str) -> None:
    """List the ids that have a token (never the tokens: they are not kept)."""
    af = AuthFile(auth_file)
    try:
        af.load()
    except AuthFileError as e:
        fail(error_text(e))
    entries = af.entries()
    if not entries:
        click.echo(_("No tokens in {path}.").format(path=auth_file))
        return
    width = max(len(x.id) for x in entries)
    for x in entries:
        click.echo(f"{x.id:<{width}}  added {x.added or '?':<20}  sha256 {x.digest[:12]}...")


@token.command("revoke")
@click.argument("client_id", metavar="ID")
@auth_file_option
def token_revoke(client_id: str, auth_file: str) -> None:
    """Remove ID's token.  A running server notices within a second (it re-reads the file
    when it changes) and closes ID's connection with ERR 401."""
    try:
        gone = AuthFile(auth_file).revoke(client_id)
    except (AuthFileError, OSError) as e:
        fail(error_text(e))
    if not gone:
        fail(_("{id} has no token in {path}: see 'tcpulse token list --auth-file {path}'").format(
            id=client_id, path=auth_file))
    click.echo(_("Revoked the token of {id}.").format(id=client_id))


# ------------------------------------------------------------------------------ serve


def serve_security_setup(server: Server) -> None:
    """Load TLS certificates and the auth file before listening; one clear line on failure."""
    try:
        server.guard.prepare()
    except ValueError as e:
        fail(error_text(e), 2)


def serve_security_start(server: Server, log: ConsoleLog) -> None:
    """Say how many clients fit, and re-read the auth file on SIGHUP."""
    g = server.guard
    # Before the capacity line: whoever waits for that line may send SIGHUP at once.  Without an
    # auth file there is nothing to re-read, but SIGHUP (systemctl reload) must not kill the server.
    asyncio.get_running_loop().add_signal_handler(
        signal.SIGHUP, server.reload_auth if g.auth is not None else lambda: _nothing_to_reload(log))
    if log.json:
        obj: dict[str, Any] = {"ts": iso_ts(), "event": "capacity", "max_clients": g.max_clients,
                               "open_files": g.open_files[0], "tls": g.ssl is not None,
                               "auth_required": g.auth_required}
        log.write_line(json.dumps(obj, separators=(",", ":")))
    else:
        extra = []
        if g.ssl is not None:
            extra.append(_("TLS with client certificates") if server.config.tls_client_ca else "TLS")
        if g.auth is not None:
            extra.append(_("tokens for {n} ids from {path}").format(n=len(g.auth), path=g.auth.path))
        log.write_line(_("Capacity: {text}").format(text=_capacity_text(g.capacity()))
                       + (f"; {', '.join(extra)}" if extra else ""))


#: English in the JSON log (as every warning there), translated in the text log.
_NOTHING_TO_RELOAD = N_("SIGHUP: nothing to re-read (no --auth-file); settings change with a restart")


def _nothing_to_reload(log: ConsoleLog) -> None:
    if log.json:
        log.write_line(json.dumps({"ts": iso_ts(), "event": "warning", "text": _NOTHING_TO_RELOAD},
                                  separators=(",", ":")))
    else:
        log.write_line(_("Warning: {text}").format(text=_(_NOTHING_TO_RELOAD)))


def _capacity_text(cap: Capacity) -> str:
    if cap.lowered_from is not None:
        return _("this server can hold {n} clients (open-file limit {soft}; --max-clients {asked} lowered "
                 "to fit: raise 'ulimit -n' to hold more)").format(n=cap.clients, soft=cap.open_files,
                                                                    asked=cap.lowered_from)
    return _("this server can hold {n} clients (open-file limit {soft})").format(n=cap.clients, soft=cap.open_files)


# ------------------------------------------------------------------------------ connect


def connect_tls(tls: bool, ca: str | None, insecure: bool, cert: str | None, key: str | None) -> Any:
    """The client's SSL context for `connect` (None without TLS); one clear line on a bad flag."""
    if key is not None and cert is None:
        fail(_("--tls-key needs --tls-cert (the client certificate it belongs to)"), 2)
    if not (tls or ca or insecure or cert):
        return None
    try:
        return client_ssl_context(ca, insecure=insecure, cert=cert, key=key)
    except SecurityConfigError as e:
        fail(error_text(e), 2)


def plain_hint(message: str, kind: str = "") -> str:
    """A fix to add when a connection without TLS got no INFO: a TLS server says nothing first.
    `message` is the ConnectError's English text, `kind` its kind."""
    if kind.startswith("handshake"):
        return _(" (if the server uses TLS, add --tls)")
    return ""


def tls_hint(message: str, kind: str = "") -> str:
    """A fix to add to a failed TLS connection's error line (`message`, `kind`: the ConnectError's
    English text and kind)."""
    if "CERTIFICATE_VERIFY_FAILED" in message or "certificate verify failed" in message.lower() \
            or "Hostname mismatch" in message or "expired" in message:
        return _(" (check that --ca is the CA that signed the server's certificate, that HOST is a name "
                 "in it, and that it has not expired; --insecure skips the check, for testing only)")
    if "WRONG_VERSION_NUMBER" in message or "record layer failure" in message:
        return _(" (the server does not speak TLS here: drop --tls, or check the port)")
    if kind == "handshake-lost" or "CERTIFICATE_REQUIRED" in message:
        # With TLS 1.3 a server that requires a client certificate hangs up only after the handshake.
        return _(" (if the server requires a client certificate, give it with --tls-cert and --tls-key)")
    return ""
