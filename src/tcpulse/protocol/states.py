"""The state machine of a tcpulse connection: where each side stands, and what it may send there.

As in h11 (`our_state` / `their_state`), a `Connection` follows two sides: its own and its
peer's.  Each side is in one `ConnectionState`; every frame a side sends moves that side along
`TRANSITIONS`, and a few frames also move the other side (`EFFECTS`).  The same tables judge both
directions: a frame our program may not send raises `LocalProtocolError` from `send()`, and a
frame the peer may not send is a bad frame (`RemoteProtocolError`, `ERR 400`).

The client side (PROTOCOL.md, "Verbs": `HELLO`, if sent, is the client's first frame, and a client
may send frames right behind it, before the `OK` arrives):

    IDLE --HELLO--> HELLO --(the server's OK)--> OPEN --BYE--> CLOSED
    IDLE --MSG, HEARTBEAT, PING, PONG--> OPEN            (no HELLO: known by its address)

The server side (`INFO` first, or `ERR` instead of it; `OK` only in answer to a `HELLO`):

    IDLE --INFO--> OPEN --(the client's HELLO)--> ANSWER --OK--> OPEN --BYE or ERR--> CLOSED
    IDLE --ERR--> CLOSED                                   (refused: full, shutting down)

Either side reaches CLOSED at end of stream too; a peer that breaks the protocol is in ERROR.
"""

from __future__ import annotations

import enum

__all__ = ["EFFECTS", "TRANSITIONS", "ConnectionState", "Role", "sends"]


class Role(enum.Enum):
    """Which end of the connection a `Connection` is."""

    CLIENT = "client"
    SERVER = "server"


class ConnectionState(enum.Enum):
    """Where one side of a connection stands (`Connection.our_state`, `Connection.their_state`)."""

    #: Has sent no frame yet.  Seen from the server: waiting for the client's first frame.  Seen
    #: from the client: waiting for `INFO` (or an `ERR` instead of it).
    IDLE = "idle"
    #: Client side only: has sent `HELLO`, and its `OK` has not passed yet.  Seen from the server,
    #: the `HELLO` is held: nothing the client sent after it is parsed until the server answers.
    HELLO = "hello"
    #: Server side only: owes the answer (`OK`, or `ERR`) to the client's `HELLO`.
    ANSWER = "answer"
    #: The handshake is done (or was skipped): frames flow.
    OPEN = "open"
    #: Server side only, as our own state: the peer broke the protocol and our `ERR` is queued.
    #: `send()` still takes the `ACK`s owed for the frames before the bad one, which go out
    #: ahead of the `ERR` (PROTOCOL.md, "Errors"); `data_to_send()` then moves to CLOSED.
    CLOSING = "closing"
    #: Has ended the connection.  Our side: sent `BYE` or `ERR` (client role: or found the
    #: server's frames bad), and sends nothing more.  Their side: sent `BYE` (or a fatal `ERR`,
    #: from the server), or closed its stream (EOF).
    CLOSED = "closed"
    #: Their side only: sent a frame the protocol forbids (`Connection.error` says which).
    ERROR = "error"


_C, _S = Role.CLIENT, Role.SERVER
IDLE = ConnectionState.IDLE
HELLO = ConnectionState.HELLO
ANSWER = ConnectionState.ANSWER
OPEN = ConnectionState.OPEN
CLOSING = ConnectionState.CLOSING
CLOSED = ConnectionState.CLOSED

#: (the side that sends, its state, the verb it sends) -> that side's next state.  A triple that
#: is not here is a frame that side may not send in that state.  Two keys are not verbs: `ERR 429`
#: (frame dropped, the connection goes on: PROTOCOL.md, "Errors") is told apart from every other
#: `ERR`, which closes; and `EOF` is the end of the peer's stream (their side only).
#:
#: One move is left to the `Connection`, because it depends on what our side did: a client that
#: sent its `HELLO` before the server's `INFO` arrived sees the server go from IDLE straight to
#: ANSWER on that `INFO` (the `HELLO` effect below, applied late).
TRANSITIONS: dict[tuple[Role, ConnectionState, str], ConnectionState] = {
    # The client side.
    (_C, IDLE, "HELLO"): HELLO,
    **{(_C, IDLE, v): OPEN for v in ("MSG", "HEARTBEAT", "PING", "PONG")},
    **{(_C, HELLO, v): HELLO for v in ("MSG", "HEARTBEAT", "PING", "PONG")},
    **{(_C, OPEN, v): OPEN for v in ("MSG", "HEARTBEAT", "PING", "PONG")},
    **{(_C, s, "BYE"): CLOSED for s in (IDLE, HELLO, OPEN)},
    **{(_C, s, "EOF"): CLOSED for s in (IDLE, HELLO, OPEN)},
    # The server side.
    (_S, IDLE, "INFO"): OPEN,
    (_S, IDLE, "ERR"): CLOSED,  # instead of INFO, to a connection it will not take (503)
    (_S, ANSWER, "OK"): OPEN,
    **{(_S, s, v): s for s in (OPEN, ANSWER) for v in ("MSG", "PING", "PONG", "ACK", "ERR 429")},
    **{(_S, s, v): CLOSED for s in (OPEN, ANSWER) for v in ("ERR", "BYE")},
    # After a bad frame, the ACKs owed for the frames before it still go out, ahead of the ERR.
    **{(_S, CLOSING, v): CLOSING for v in ("MSG", "PING", "PONG", "ACK")},
    **{(_S, s, "EOF"): CLOSED for s in (IDLE, OPEN, ANSWER)},
}

#: (the side that sends, the verb, the other side's state) -> the other side's next state.
EFFECTS: dict[tuple[Role, str, ConnectionState], ConnectionState] = {
    # PROTOCOL.md, "Verbs": OK is the answer to HELLO, so a HELLO makes the server owe one...
    (_C, "HELLO", OPEN): ANSWER,
    # ...and the OK ends the client's handshake.
    (_S, "OK", HELLO): OPEN,
}


def sends(role: Role) -> frozenset[str]:
    """The verbs the `role` side ever sends (the direction column of PROTOCOL.md, "Verbs")."""
    return frozenset(v for (side, _, v) in TRANSITIONS if side is role and v not in ("EOF", "ERR 429"))
