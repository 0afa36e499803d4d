"""What observers see of a client: a read-only view of one connection.

The console log, the admin API, the dashboard and your program receive a `ClientView` in every
server event (`event.client`) and from `Server.clients`.  It reads the live connection, so its
figures move while the client is connected and stay as they were at the end once it is gone;
`snapshot()` returns a frozen dict.  Observers cannot change a connection through it: what the
server lets a program do to a client (`send`, ...) is on `Server`.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any, Protocol

from tcpulse.policy.liveness import State, Tracker
from tcpulse.server.registry import Member

__all__ = ["ClientView", "DisconnectReason", "Record", "format_addr"]


class DisconnectReason(enum.StrEnum):
    """Why a connection ended (the `reason` of the JSON log's `disconnect` event)."""

    BYE = "bye"
    EOF = "eof"
    RESET = "reset"
    TIMEOUT = "timeout"
    REPLACED = "replaced"
    ERROR = "error"
    SHUTDOWN = "shutdown"
    SLOW_CONSUMER = "slow-consumer"
    REFUSED = "refused"


def format_addr(peer: Any) -> str:
    """`host:port`, or `[v6]:port` (PROTOCOL.md, "Verbs": how a client without HELLO is known)."""
    if isinstance(peer, tuple) and len(peer) >= 2:
        host, port = peer[0], peer[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(peer)


class Record(Member, Protocol):
    """What a `ClientView` reads of a connection (the server's per-connection object has it)."""

    @property
    def conn_id(self) -> int: ...
    @property
    def connected_at(self) -> float: ...
    @property
    def heartbeats(self) -> int: ...
    @property
    def messages(self) -> int: ...
    @property
    def bytes_in(self) -> int: ...
    @property
    def bytes_out(self) -> int: ...
    @property
    def rtt(self) -> float | None: ...
    @property
    def interval(self) -> float: ...
    @property
    def timeout(self) -> float: ...
    @property
    def high(self) -> int: ...
    @property
    def reason(self) -> DisconnectReason | None: ...
    @property
    def detail(self) -> str | None: ...
    @property
    def queued(self) -> int: ...
    @property
    def identities(self) -> frozenset[str]: ...


class ClientView:
    """One client as observers see it (read-only; see the module docstring)."""

    __slots__ = ("_clock", "_rec", "_tracker")

    def __init__(self, record: Record, tracker: Tracker[Any], clock: Callable[[], float]) -> None:
        self._rec = record
        self._tracker = tracker
        self._clock = clock

    def __repr__(self) -> str:
        return f"<ClientView {self.name} #{self.conn_id} {self.state.value}>"

    @property
    def conn_id(self) -> int:
        """The server's number for this connection (1, 2, ... in order of arrival)."""
        return self._rec.conn_id

    @property
    def name(self) -> str:
        """The HELLO id, else the address (how logs and tables name a client)."""
        rec = self._rec
        return rec.id if rec.id is not None else rec.addr

    @property
    def id(self) -> str | None:
        """The id the client gave in HELLO (None before, or without HELLO)."""
        return self._rec.id

    @property
    def addr(self) -> str:
        return self._rec.addr

    @property
    def session(self) -> str | None:
        return self._rec.session

    @property
    def connected_at(self) -> float:
        """Wall-clock time (`time.time()`) of the connection."""
        return self._rec.connected_at

    @property
    def heartbeats(self) -> int:
        return self._rec.heartbeats

    @property
    def messages(self) -> int:
        return self._rec.messages

    @property
    def bytes_in(self) -> int:
        return self._rec.bytes_in

    @property
    def bytes_out(self) -> int:
        return self._rec.bytes_out

    @property
    def rtt(self) -> float | None:
        """The round trip of the server's last answered PING, in seconds."""
        return self._rec.rtt

    @property
    def interval(self) -> float:
        """The heartbeat interval in force for this client (from OK)."""
        return self._rec.interval

    @property
    def timeout(self) -> float:
        """The heartbeat timeout in force for this client (from OK)."""
        return self._rec.timeout

    @property
    def acked(self) -> int:
        """The highest `seq` of this client's session the server has taken (0 without a session)."""
        return self._rec.high

    @property
    def queued_bytes(self) -> int:
        """Bytes the server has queued for this client that its socket has not taken yet (as last seen)."""
        return self._rec.queued

    @property
    def identities(self) -> frozenset[str]:
        """The identities in the client's verified TLS certificate (CN and SANs; empty without one)."""
        return self._rec.identities

    @property
    def reason(self) -> DisconnectReason | None:
        """Why the connection ended (None while it is open)."""
        return self._rec.reason

    @property
    def detail(self) -> str | None:
        return self._rec.detail

    @property
    def state(self) -> State:
        """alive, suspect, or dead (dead also once the connection is gone)."""
        st = self._tracker.state(self._rec)
        return st if st is not None else State.DEAD

    def last_heard_ago(self, now: float | None = None) -> float:
        """Seconds since the last complete frame from the client (`now`: the server's clock,
        `Server.now()`)."""
        last = self._tracker.last_heard(self._rec)
        if last is None:
            return 0.0
        return max(0.0, (self._clock() if now is None else now) - last)

    def phi(self, now: float | None = None) -> float | None:
        """The client's suspicion level under `--detector phi` (None with the fixed detector)."""
        phi = self._tracker.phi(self._rec, self._clock() if now is None else now)
        return None if phi is None else round(phi, 2)

    def snapshot(self, now: float | None = None) -> dict[str, Any]:
        """The client's figures now, as a plain dict (what the status table and the JSON log show)."""
        if now is None:
            now = self._clock()
        rec = self._rec
        rtt = rec.rtt
        return {
            "client": self.name,
            "id": rec.id,
            "addr": rec.addr,
            "session": rec.session,
            "connected_at": rec.connected_at,
            "last_heard_ago": round(self.last_heard_ago(now), 3),
            "heartbeats": rec.heartbeats,
            "messages": rec.messages,
            "bytes_in": rec.bytes_in,
            "bytes_out": rec.bytes_out,
            "state": self.state.value,
            "rtt": None if rtt is None else round(rtt, 6),
            "heartbeat_interval": rec.interval,
            "heartbeat_timeout": rec.timeout,
            "phi": self.phi(now),
        }
