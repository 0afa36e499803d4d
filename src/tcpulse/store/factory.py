"""Which store a server keeps: `open_store("tcpulse.db")` or `open_store("none")`."""

from __future__ import annotations

from tcpulse.store.base import Store
from tcpulse.store.memory import MemoryStore
from tcpulse.store.retention import parse_duration, parse_size
from tcpulse.store.sqlite import SQLiteStore

__all__ = ["NO_STORE", "open_store"]

#: The spec that keeps nothing (`serve --db none`).
NO_STORE = "none"


def open_store(spec: str | None, *, server_id: str = "", retain: str | float | None = None,
               max_db_size: str | int | None = None) -> Store:
    """The store for `spec`: an `SQLiteStore` on the file at that path, or, for None or "none"
    (any case), a `MemoryStore`, which keeps nothing durable: `INFO` then says
    `"durable":false` and `ACK` means handled, not stored (PROTOCOL.md, "Delivery").

    `retain` ("7d", seconds, None/"none": keep everything) and `max_db_size` ("4G", bytes,
    None/"none": no limit) are `serve --retain` and `--max-db-size` (docs/store.md, "Retention
    and size"); they are checked even for a `MemoryStore`, which keeps nothing to prune.  Raises
    `ConfigError` naming the setting for a value that cannot work.

    Nothing is opened yet: hand the store to the server (`Server(config, store=...)` or
    `server.use_store()`), which opens it in `start()` and raises StoreOpenError there if the
    file cannot be used.  `server_id` is recorded in the database's `runs` table."""
    keep = parse_duration(retain, setting="retain")
    size = parse_size(max_db_size, setting="max_db_size")
    if spec is None or spec.lower() == NO_STORE:
        return MemoryStore()
    return SQLiteStore(spec, server_id=server_id, retain=keep, max_size=size)
