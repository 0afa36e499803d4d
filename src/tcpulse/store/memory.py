"""`MemoryStore`: the store of `--db none` and the library's default; keeps only what ACKs need."""

from __future__ import annotations

from collections import OrderedDict

from tcpulse.errors import N_, ConfigError
from tcpulse.protocol.events import Msg
from tcpulse.store.base import MessageRecord, SessionKey, Store

__all__ = ["MAX_SESSIONS", "MemoryStore"]

#: Sessions whose high a `MemoryStore` remembers (about 250 bytes each: some 12 MB at most).
MAX_SESSIONS = 50_000


class MemoryStore(Store):
    """Keeps `(id, session) -> highest seq` in memory, so duplicates are dropped and `acked` is
    exact while the process lives (PROTOCOL.md, "Delivery": with `durable` false, `ACK` means
    handled).  Message bodies are not kept.

    At most `max_sessions` sessions are remembered: beyond, the one that sent a message least
    recently is forgotten, as a server without a store forgets everything when it restarts, which
    the protocol allows for `"durable":false`.  A client that signs in again with a forgotten
    session gets `acked` 0 and numbers what it still holds from 1 on (PROTOCOL.md, "Delivery");
    while its connection lives, the connection itself keeps dropping duplicates."""

    durable = False
    immediate = True
    keeps_unnumbered = False

    def __init__(self, *, max_sessions: int = MAX_SESSIONS) -> None:
        super().__init__()
        if max_sessions < 1:
            raise ConfigError("too-small", N_("{field} must be at least 1 (got {value})"),
                              names={"field": "max_sessions"}, value=max_sessions)
        self.max_sessions = max_sessions
        #: Sessions forgotten so far.
        self.evicted = 0
        self._high: OrderedDict[SessionKey, int] = OrderedDict()

    async def acked(self, client_id: str, session: str) -> int:
        return self._high.get((client_id, session), 0)

    def add_message(self, rec: MessageRecord) -> None:
        if rec.seq is not None and rec.session is not None:
            self._handled((rec.client_id, rec.session), rec.seq)

    def add_messages(self, client_id: str, session: str | None, conn_id: int, received_at: float,
                     msgs: list[Msg]) -> None:
        if session is None:
            return
        for m in reversed(msgs):  # the last numbered one is the highest (seqs only grow)
            if m.seq is not None:
                self._handled((client_id, session), m.seq)
                return

    def _handled(self, key: SessionKey, seq: int) -> None:
        high = self._high
        if seq > high.get(key, 0):
            high[key] = seq
            high.move_to_end(key)
            if len(high) > self.max_sessions:
                high.popitem(last=False)
                self.evicted += 1
