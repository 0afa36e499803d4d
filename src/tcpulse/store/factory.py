"""Which store a server keeps: `open_store("tcpulse.db")`, `open_store("postgresql://...")` or
`open_store("none")`."""

from __future__ import annotations

from tcpulse.errors import N_
from tcpulse.store.base import Store, StoreOpenError
from tcpulse.store.dsn import is_postgres_url, redact
from tcpulse.store.memory import MemoryStore
from tcpulse.store.retention import parse_duration, parse_size
from tcpulse.store.sqlite import SQLiteStore

__all__ = ["NO_STORE", "is_shared", "open_store"]

#: The spec that keeps nothing (`serve --db none`).
NO_STORE = "none"


def is_shared(spec: str | None) -> bool:
    """Whether `spec` names a store that several processes may write at once (PostgreSQL)."""
    return is_postgres_url(spec)


def open_store(spec: str | None, *, server_id: str = "", retain: str | float | None = None,
               max_db_size: str | int | None = None) -> Store:
    """The store for `spec`: a `PostgresStore` for a `postgresql://` URL (the `cluster` extra),
    an `SQLiteStore` on the file at that path, or, for None or "none" (any case), a
    `MemoryStore`, which keeps nothing durable: `INFO` then says `"durable":false` and `ACK`
    means handled, not stored (PROTOCOL.md, "Delivery").

    `retain` ("7d", seconds, None/"none": keep everything) and `max_db_size` ("4G", bytes,
    None/"none": no limit) are `serve --retain` and `--max-db-size` (docs/store.md, "Retention
    and size"); they are checked for every store, and applied by the SQLite store only
    (PostgreSQL is pruned and sized by its operator: docs/cluster.md).  Raises `ConfigError`
    naming the setting for a value that cannot work, and `StoreOpenError` ("no-driver") for a
    PostgreSQL URL without psycopg installed.

    Nothing is opened yet: hand the store to the server (`Server(config, store=...)` or
    `server.use_store()`), which opens it in `start()` and raises StoreOpenError there if it
    cannot be used.  `server_id` is recorded in the database's `runs` table."""
    keep = parse_duration(retain, setting="retain")
    size = parse_size(max_db_size, setting="max_db_size")
    if spec is None or spec.lower() == NO_STORE:
        return MemoryStore()
    if is_shared(spec):
        try:
            from tcpulse.store.postgres import PostgresStore
        except ImportError as e:
            raise StoreOpenError("no-driver", N_("--db {url} needs psycopg ({missing} is not installed): pip install "
                                                 "'tcpulse[cluster]'"), url=redact(spec),
                                 missing=e.name or e) from e
        return PostgresStore(spec, server_id=server_id)
    return SQLiteStore(spec, server_id=server_id, retain=keep, max_size=size)
