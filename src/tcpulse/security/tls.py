"""TLS contexts for the server and the client, and the identities in a peer's certificate."""

from __future__ import annotations

import os
import ssl
from typing import Any

from tcpulse.errors import N_, TcpulseError

__all__ = ["SecurityConfigError", "client_ssl_context", "peer_identities", "server_ssl_context"]


class SecurityConfigError(TcpulseError, ValueError):
    """A TLS setting that cannot work; the message names the flag and the fix.  `kind`: "no-file"
    (a server certificate, key or CA file is missing), "bad-cert" (the server's certificate and key
    cannot be used), "bad-client-ca", "no-ca" (the client's --ca is missing), "bad-ca",
    "bad-client-cert"."""


def server_ssl_context(cert: str, key: str, client_ca: str | None = None) -> ssl.SSLContext:
    """TLS 1.2+ server context; with `client_ca`, clients must present a certificate it signed."""
    for flag, path in (("--tls-cert", cert), ("--tls-key", key), ("--tls-client-ca", client_ca)):
        if path is not None and not os.path.isfile(path):
            raise SecurityConfigError("no-file", N_("{option} {path}: no such file (give the PEM file's path)"),
                                      option=flag, path=path)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as e:
        raise SecurityConfigError("bad-cert", N_("--tls-cert {cert} / --tls-key {key} cannot be used ({error}): "
                                                 "give a PEM certificate and the PEM private key that belongs to it"),
                                  cert=cert, key=key, error=e) from None
    if client_ca is not None:
        try:
            ctx.load_verify_locations(cafile=client_ca)
        except (ssl.SSLError, OSError) as e:
            raise SecurityConfigError("bad-client-ca", N_("--tls-client-ca {path} cannot be used ({error}): give a "
                                                          "PEM file of the CA certificates that sign client "
                                                          "certificates"), path=client_ca, error=e) from None
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
        raise SecurityConfigError("no-ca", N_("--ca {path} does not exist: give the PEM file of the CA that "
                                              "signed the server's certificate"), path=ca) from None
    except (ssl.SSLError, OSError) as e:
        raise SecurityConfigError("bad-ca", N_("--ca {path} cannot be used ({error}): give a PEM CA certificate"),
                                  path=ca, error=e) from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cert is not None:
        try:
            ctx.load_cert_chain(cert, key)
        except (ssl.SSLError, OSError) as e:
            raise SecurityConfigError("bad-client-cert", N_("--tls-cert {path} cannot be used ({error}): give a PEM "
                                                            "certificate and its key (--tls-key, unless the key is "
                                                            "in the same file)"), path=cert, error=e) from None
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
