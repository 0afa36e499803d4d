"""Who is connected: the clients a server serves, by connection, by id and by session.

PROTOCOL.md, "Identity and takeover": one live connection per id.  The registry is where that
rule is kept (`owner()`, `claim()`), and the seam where a cluster backend plugs in: a registry
that also knows other nodes' clients answers the same questions for the whole cluster.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, Protocol, TypeVar

from tcpulse.store.base import SessionKey

__all__ = ["Member", "Registry"]


class Member(Protocol):
    """What the registry needs to know of a connection."""

    @property
    def id(self) -> str | None: ...
    @property
    def session(self) -> str | None: ...
    @property
    def addr(self) -> str: ...


M = TypeVar("M", bound=Member)


class Registry(Generic[M]):
    """The connections being served now (INFO sent, not ended), their ids and sessions.

    Lookups by id and by session are O(1); by address O(n) (addresses name clients without HELLO).
    """

    __slots__ = ("_by_id", "_by_session", "_members")

    def __init__(self) -> None:
        self._members: set[M] = set()
        self._by_id: dict[str, M] = {}
        self._by_session: dict[SessionKey, M] = {}

    def __len__(self) -> int:
        return len(self._members)

    def __iter__(self) -> Iterator[M]:
        return iter(self._members)

    def __contains__(self, c: object) -> bool:
        return c in self._members

    def add(self, c: M) -> None:
        """A connection is served from now on (before its HELLO, known by its address)."""
        self._members.add(c)

    def remove(self, c: M) -> bool:
        """`c` ended.  Frees its id and session if it still holds them; False if it was not here."""
        if c not in self._members:
            return False
        self._members.discard(c)
        if c.id is not None:
            if self._by_id.get(c.id) is c:
                del self._by_id[c.id]
            if c.session is not None and self._by_session.get((c.id, c.session)) is c:
                del self._by_session[(c.id, c.session)]
        return True

    def owner(self, client_id: str) -> M | None:
        """The connection that holds `client_id` now."""
        return self._by_id.get(client_id)

    def session_owner(self, key: SessionKey) -> M | None:
        """The connection that holds the session `(id, session)` now."""
        return self._by_session.get(key)

    def claim(self, c: M) -> None:
        """`c` holds its id (and session) from now on.  The caller has made sure the previous
        owner is gone (takeover: PROTOCOL.md, "Identity and takeover")."""
        assert c.id is not None and c in self._members
        self._by_id[c.id] = c
        if c.session is not None:
            self._by_session[(c.id, c.session)] = c

    def find(self, name: str) -> M | None:
        """The connection with this HELLO id, else with this address (`host:port`)."""
        c = self._by_id.get(name)
        if c is not None:
            return c
        return next((m for m in self._members if m.addr == name), None)
