"""tcpulse: a TCP messaging server and client with heartbeat-based liveness detection."""

from __future__ import annotations

__version__ = "0.1.0"

from ._connection import Connection, ProtocolError, Role
from ._events import Ack, Bye, Err, ErrorCode, Event, Heartbeat, Hello, Info, Msg, Ok, Ping, Pong
from .client import Client, ClientEvent, ConnectError, ServerError, connect
from .server import ClientInfo, Server, ServerConfig

__all__ = [
    "Ack", "Bye", "Client", "ClientEvent", "ClientInfo", "ConnectError", "Connection", "Err",
    "ErrorCode", "Event", "Heartbeat", "Hello", "Info", "Msg", "Ok", "Ping", "Pong",
    "ProtocolError", "Role", "Server", "ServerConfig", "ServerError", "__version__", "connect",
]
