"""tcpulse: a TCP messaging server and client with heartbeat-based liveness detection.

The client (docs/library.md):

    async with tcpulse.connect("127.0.0.1", 12345, id="sensor-7", session="s1") as client:
        await client.send("hello", wait_ack=True)

Its events are in `tcpulse.client.events` (one dataclass per kind, `ClientEvent` their union),
its failures below `tcpulse.ClientError` (`ConnectionClosed` with a `kind`, ...).  The server is
`tcpulse.Server` with its events in `tcpulse.server.events`.
"""

from __future__ import annotations

from tcpulse.client.client import Client, connect
from tcpulse.client.errors import (
    ClientError,
    CloseReason,
    ConnectError,
    ConnectionClosed,
    ConnectionLost,
    NotConnected,
    OutboxError,
    OutboxFull,
    PingTimeout,
    ServerClosed,
    ServerDead,
    ServerError,
)
from tcpulse.client.events import ClientEvent
from tcpulse.client.outbox import MemoryOutbox, Outbox, SQLiteOutbox
from tcpulse.errors import ConfigError, TcpulseError
from tcpulse.protocol.connection import Connection, ConnectionState, Role
from tcpulse.protocol.errors import ErrorCode, LocalProtocolError, ProtocolError, RemoteProtocolError
from tcpulse.protocol.events import Ack, Bye, Err, Event, Heartbeat, Hello, Info, Msg, Ok, Ping, Pong
from tcpulse.server.config import ServerConfig
from tcpulse.server.server import Server
from tcpulse.server.view import ClientView
from tcpulse.version import __version__

#: The name of `ClientView` in earlier versions, kept so that programs written for them still run.
ClientInfo = ClientView

__all__ = [
    "Ack", "Bye", "Client", "ClientError", "ClientEvent", "ClientInfo", "ClientView", "CloseReason", "ConfigError",
    "ConnectError",
    "Connection", "ConnectionClosed", "ConnectionLost", "ConnectionState", "Err", "ErrorCode", "Event", "Heartbeat",
    "Hello", "Info", "LocalProtocolError", "MemoryOutbox", "Msg", "NotConnected", "Ok", "Outbox", "OutboxError",
    "OutboxFull", "Ping", "PingTimeout", "Pong", "ProtocolError", "RemoteProtocolError", "Role", "SQLiteOutbox",
    "Server", "ServerClosed", "ServerConfig", "ServerDead", "ServerError", "TcpulseError", "__version__", "connect",
]
