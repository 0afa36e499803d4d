"""Which store a server keeps: `open_store("tcpulse.db")` or `open_store("none")`."""

from __future__ import annotations

from tcpulse.store.base import Store
from tcpulse.store.memory import MemoryStore
from tcpulse.store.sqlite import SQLiteStore

__all__ = ["NO_STORE", "open_store"]

#: The spec that keeps nothing (`serve --db none`).
NO_STORE = "none"


def open_store(spec: str | None, *, server_id: str = "") -> Store:
    """The store for `spec`: an `SQLiteStore` on the file at that path, or, for None or "none"
    (any case), a `MemoryStore`, which keeps nothing durable: `INFO` then says
    `"durable":false` and `ACK` means handled, not stored (PROTOCOL.md, "Delivery").

    Nothing is opened yet: hand the store to the server (`Server(config, store=...)` or
    `server.use_store()`), which opens it in `start()` and raises StoreOpenError there if the
    file cannot be used.  `server_id` is recorded in the database's `runs` table."""
    if spec is None or spec.lower() == NO_STORE:
        return MemoryStore()
    return SQLiteStore(spec, server_id=server_id)
