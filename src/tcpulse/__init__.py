"""tcpulse: a TCP messaging server and client with heartbeat-based liveness detection."""

from __future__ import annotations

from tcpulse.client.client import Client, connect
from tcpulse.client.errors import ConnectError, ServerError
from tcpulse.client.events import ClientEvent
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
    "Ack", "Bye", "Client", "ClientEvent", "ClientInfo", "ClientView", "ConnectError", "Connection",
    "ConnectionState", "Err", "ErrorCode", "Event", "Heartbeat", "Hello", "Info", "LocalProtocolError", "Msg",
    "Ok", "Ping", "Pong", "ProtocolError", "RemoteProtocolError", "Role", "Server", "ServerConfig",
    "ServerError", "__version__", "connect",
]
