"""`MemoryStore`: the store of `--db none` and the library's default; keeps only what ACKs need."""

from __future__ import annotations

from tcpulse.protocol.events import Msg
from tcpulse.store.base import MessageRecord, SessionKey, Store

__all__ = ["MemoryStore"]


class MemoryStore(Store):
    """Keeps `(id, session) -> highest seq` in memory, so duplicates are dropped and `acked` is
    exact while the process lives (PROTOCOL.md, "Delivery": with `durable` false, `ACK` means
    handled).  Message bodies are not kept."""

    durable = False
    immediate = True
    keeps_unnumbered = False

    def __init__(self) -> None:
        super().__init__()
        self._high: dict[SessionKey, int] = {}

    async def acked(self, client_id: str, session: str) -> int:
        return self._high.get((client_id, session), 0)

    def add_message(self, rec: MessageRecord) -> None:
        if rec.seq is not None and rec.session is not None:
            key = (rec.client_id, rec.session)
            if rec.seq > self._high.get(key, 0):
                self._high[key] = rec.seq

    def add_messages(self, client_id: str, session: str | None, conn_id: int, received_at: float,
                     msgs: list[Msg]) -> None:
        if session is None:
            return
        for m in reversed(msgs):  # the last numbered one is the highest (seqs only grow)
            if m.seq is not None:
                key = (client_id, session)
                if m.seq > self._high.get(key, 0):
                    self._high[key] = m.seq
                return
