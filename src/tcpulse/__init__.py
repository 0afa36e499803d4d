"""tcpulse: a TCP messaging server and client with heartbeat-based liveness detection."""

from __future__ import annotations

from tcpulse.client.client import Client, connect
from tcpulse.client.errors import ConnectError, ServerError
from tcpulse.client.events import ClientEvent
from tcpulse.protocol.connection import Connection, ConnectionState, Role
from tcpulse.protocol.errors import ErrorCode, LocalProtocolError, ProtocolError, RemoteProtocolError
from tcpulse.protocol.events import Ack, Bye, Err, Event, Heartbeat, Hello, Info, Msg, Ok, Ping, Pong
from tcpulse.server.config import ServerConfig
from tcpulse.server.connection import ClientInfo
from tcpulse.server.server import Server
from tcpulse.version import __version__

__all__ = [
    "Ack", "Bye", "Client", "ClientEvent", "ClientInfo", "ConnectError", "Connection", "ConnectionState", "Err",
    "ErrorCode", "Event", "Heartbeat", "Hello", "Info", "LocalProtocolError", "Msg", "Ok", "Ping", "Pong",
    "ProtocolError", "RemoteProtocolError", "Role", "Server", "ServerConfig", "ServerError", "__version__",
    "connect",
]
