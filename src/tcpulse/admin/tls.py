"""HTTPS for the admin endpoint: its certificate and key, checked before the server starts.

Imports nothing of aiohttp.  Beyond loopback the admin endpoint carries its bearer token and
every client's state: serve it over TLS there (docs/security.md, "The admin endpoint").
"""

from __future__ import annotations

import os
import ssl

from tcpulse.errors import N_, ConfigError

__all__ = ["admin_ssl_context"]


def admin_ssl_context(cert: str | None, key: str | None) -> ssl.SSLContext | None:
    """A TLS 1.2+ server context for the admin endpoint from a PEM certificate (chain) and its
    key; None when neither is given.  Raises ConfigError naming the setting (`admin_tls_cert`,
    `admin_tls_key`) when only one is given or a file cannot be used."""
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        cert_n, key_n = {"cert": "admin_tls_cert"}, {"key": "admin_tls_key"}
        names = {**key_n, **cert_n} if key is None else {**cert_n, **key_n}
        raise ConfigError("pair", N_("{cert} and {key} go together: give both, or neither"), names=names)
    for field, path in (("admin_tls_cert", cert), ("admin_tls_key", key)):
        if not os.path.isfile(path):
            raise ConfigError("no-file", N_("{option} {path}: no such file (give the PEM file's path)"),
                              names={"option": field}, path=path)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as e:
        raise ConfigError("bad-cert", N_("{cert_option} {cert} / {key_option} {key} cannot be used ({error}): "
                                         "give a PEM certificate and the PEM private key that belongs to it"),
                          names={"cert_option": "admin_tls_cert", "key_option": "admin_tls_key"},
                          cert=cert, key=key, error=e) from None
    return ctx
