"""The server's settings (`ServerConfig`) and the limits derived from them.

A setting that cannot work raises `ConfigError` (a ValueError) naming the field, in English:
`heartbeat_timeout must be longer than heartbeat_interval (got 4.0 <= 5.0)`; `e.field` is the
field to change, `e.kind` the rule it breaks.  The command line shows each field as its flag.
"""

from __future__ import annotations

from dataclasses import dataclass

from tcpulse.errors import N_, ConfigError
from tcpulse.policy.liveness import PhiSettings
from tcpulse.protocol.connection import DEFAULT_MAX_LINE, DEFAULT_MAX_PAYLOAD

__all__ = [
    "DEFAULT_MAX_BUFFERED",
    "DEFAULT_MAX_QUEUED",
    "FD_RESERVE",
    "ConfigError",
    "ServerConfig",
    "validate_limits",
    "write_buffer_cap",
]


@dataclass(slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 12345
    heartbeat_interval: float = 5.0
    heartbeat_timeout: float = 10.0
    min_heartbeat_interval: float = 0.1
    max_heartbeat_interval: float = 60.0
    max_line: int = DEFAULT_MAX_LINE
    max_payload: int = DEFAULT_MAX_PAYLOAD
    status_every: float = 3.0
    verbose: bool = False
    server_id: str | None = None
    backlog: int = 4096
    #: SO_REUSEPORT: several processes listen on one port and the kernel spreads connections
    #: over them (`serve --workers N`; their presence is shared through the cluster).
    reuse_port: bool = False
    # -- security and limits (docs/security.md; 0 turns a limit off) --
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    auth_file: str | None = None
    auth_timeout: float = 2.0
    #: Seconds a TLS handshake may take before the socket is closed (not the heartbeat timeout:
    #: a half-done handshake is not a client yet).
    tls_handshake_timeout: float = 5.0
    max_clients: int | None = None  # None: as many as the open-file limit allows
    max_per_addr: int = 0
    max_frames_per_sec: float = 10000.0
    max_pings_per_sec: float = 1000.0
    max_strikes: int = 3
    max_buffered: int | None = None  # None: security.DEFAULT_MAX_BUFFERED
    max_queued: int | None = None  # None: security.DEFAULT_MAX_QUEUED
    max_write_buffer: int | None = None  # None: 2 x (max_payload + max_line), at least 1 MiB
    #: Flow control: past this many bytes of messages taken and not yet stored, the server stops
    #: reading from the clients that send them, and reads again below a quarter of it.
    max_store_backlog: int = 32 << 20
    #: "fixed": dead at the timeout; "phi": phi accrual, dead when phi passes the threshold or
    #: at the timeout, whichever is first, never before 1.5 intervals (docs/detection.md).
    detector: str = "fixed"
    phi_threshold: float = 8.0
    phi_min_std: float = 0.1  # x the client's interval
    phi_acceptable_pause: float = 1.0  # x the client's interval
    phi_window: int = 100

    def phi_settings(self) -> PhiSettings | None:
        """The phi detector's settings, None with the fixed detector.  Raises ConfigError (or the
        ValueError of `PhiSettings`)."""
        if self.detector == "fixed":
            return None
        if self.detector != "phi":
            raise ConfigError("bad-choice", N_("{field} must be fixed or phi (got {value})"),
                              names={"field": "detector"}, value=repr(self.detector))
        return PhiSettings(threshold=self.phi_threshold, min_std=self.phi_min_std,
                           acceptable_pause=self.phi_acceptable_pause, window=self.phi_window)

    def validate(self) -> None:
        """Raise ConfigError naming the bad field and what would be right."""
        for name in ("heartbeat_interval", "heartbeat_timeout", "min_heartbeat_interval",
                     "max_heartbeat_interval", "max_line", "max_payload"):
            _positive(name, getattr(self, name))
        if self.heartbeat_timeout <= self.heartbeat_interval:
            raise ConfigError("not-longer", N_("{field} must be longer than {other} (got {timeout} <= {interval})"),
                              names={"field": "heartbeat_timeout", "other": "heartbeat_interval"},
                              timeout=self.heartbeat_timeout, interval=self.heartbeat_interval)
        if self.min_heartbeat_interval > self.max_heartbeat_interval:
            raise ConfigError("min-above-max", N_("{field} must not exceed {other}"),
                              names={"field": "min_heartbeat_interval", "other": "max_heartbeat_interval"})
        if not 0 <= self.port <= 65535:
            raise ConfigError("out-of-range", N_("{field} must be 0-65535 (got {port})"), names={"field": "port"},
                              port=self.port)
        if self.status_every < 0:
            raise ConfigError("negative", N_("{field} must be 0 (off) or a number of seconds"),
                              names={"field": "status_every"})
        if self.max_line < 64:
            raise ConfigError("too-small", N_("{field} must be at least 64 bytes (HELLO must fit)"),
                              names={"field": "max_line"})
        self.phi_settings()
        validate_limits(self)


#: File descriptors kept back from clients: about 21 for the process itself (stdio, listening
#: sockets, the store and its threads, a log file), 50 for sockets that are not clients (lingering
#: after their last frame, or in their TLS handshake: hub.MAX_LINGERING), 8 accepted in one turn
#: of the loop (server.ACCEPT_BATCH), 21 for the admin endpoint (admin.listener.FD_SHARE), and a
#: margin of 28.
FD_RESERVE = 128


#: Default global budget for bytes of partial frames held across all connections.  20,000
#: clients each holding half of a 1 MiB payload would be 10 GiB; with this budget the server
#: holds at most 256 MiB of them and refuses the client that would go past it (ERR 503).
DEFAULT_MAX_BUFFERED = 256 << 20


#: Default global budget for bytes queued to clients (not yet taken by their sockets), across
#: all connections.  The per-connection cap alone would let 20,000 clients that do not read pin
#: 20,000 x 2 MiB = 40 GiB; past this budget the client with the most queued is closed.
DEFAULT_MAX_QUEUED = 256 << 20


def _positive(name: str, value: float) -> None:
    if not value > 0:
        raise ConfigError("not-positive", N_("{field} must be greater than 0 (got {value})"), names={"field": name},
                          value=value)


def validate_limits(cfg: ServerConfig) -> None:
    """Raise ConfigError naming the bad security or limit field (called by `ServerConfig.validate`)."""
    if (cfg.tls_cert is None) != (cfg.tls_key is None):
        # The one missing is the field to change (`e.field`); the text names them in one order.
        cert, key = {"cert": "tls_cert"}, {"key": "tls_key"}
        names = {**key, **cert} if cfg.tls_key is None else {**cert, **key}
        raise ConfigError("pair", N_("{cert} and {key} go together: give both, or neither"), names=names)
    if cfg.tls_client_ca is not None and cfg.tls_cert is None:
        raise ConfigError("needs-tls", N_("{field} needs TLS: add {cert} and {key}"),
                          names={"field": "tls_client_ca", "cert": "tls_cert", "key": "tls_key"})
    _positive("auth_timeout", cfg.auth_timeout)
    _positive("tls_handshake_timeout", cfg.tls_handshake_timeout)
    for name in ("max_clients", "max_per_addr", "max_frames_per_sec", "max_pings_per_sec",
                 "max_strikes", "max_buffered", "max_write_buffer", "max_queued", "max_store_backlog"):
        v = getattr(cfg, name)
        if v is not None and v < 0:
            raise ConfigError("negative", N_("{field} must be 0 (off) or more (got {value})"), names={"field": name},
                              value=v)
    wb = cfg.max_write_buffer
    if wb is not None and 0 < wb < cfg.max_payload + cfg.max_line + 64:
        raise ConfigError("too-small", N_("{field} {value} cannot hold one message: make it at least "
                                          "{payload} + {line} + 64 ({least})"),
                          names={"field": "max_write_buffer", "payload": "max_payload", "line": "max_line"},
                          value=wb, least=cfg.max_payload + cfg.max_line + 64)


def write_buffer_cap(cfg: ServerConfig) -> int:
    """Bytes the server queues for a client that does not read, before it closes it."""
    if cfg.max_write_buffer == 0:
        return 1 << 62  # off: never taken for a slow consumer (memory is then unbounded)
    if cfg.max_write_buffer is not None:
        return cfg.max_write_buffer
    # Room for two maximal messages: a broadcast of a big payload must not look like a stall.
    return max(1 << 20, 2 * (cfg.max_payload + cfg.max_line))
