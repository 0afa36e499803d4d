"""The schema of a tcpulse database (docs/store.md, "Schema"): its `application_id`, and the
migrations that take a file from any older `user_version` to `SCHEMA_VERSION`."""

from __future__ import annotations

import sqlite3

__all__ = ["APPLICATION_ID", "MIGRATIONS", "SCHEMA_VERSION", "statements"]

#: `PRAGMA application_id` of a tcpulse database ("tcpu"), so that a foreign file is recognised.
APPLICATION_ID = 0x74637075

#: Migrations, in order: MIGRATIONS[i] takes a database from `user_version` i to i + 1.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE runs (
        id          INTEGER PRIMARY KEY,
        server_id   TEXT NOT NULL,
        pid         INTEGER NOT NULL,
        started_at  REAL NOT NULL,
        ended_at    REAL                      -- NULL: still running, or the process was killed
    );
    CREATE TABLE connections (
        id           INTEGER PRIMARY KEY,
        run_id       INTEGER NOT NULL REFERENCES runs(id),
        client_id    TEXT,                    -- the HELLO id; NULL for a client without HELLO
        addr         TEXT NOT NULL,
        connected_at REAL NOT NULL,
        ended_at     REAL,
        end_reason   TEXT,                    -- bye, eof, reset, timeout, replaced, error, ...
        detail       TEXT,
        heartbeats   INTEGER NOT NULL DEFAULT 0,
        messages     INTEGER NOT NULL DEFAULT 0,
        rtt          REAL
    );
    CREATE INDEX connections_client ON connections(client_id, connected_at);
    CREATE INDEX connections_at ON connections(connected_at);
    CREATE TABLE timeouts (
        id            INTEGER PRIMARY KEY,
        connection_id INTEGER REFERENCES connections(id),
        client_id     TEXT,
        at            REAL NOT NULL,
        silent_for    REAL NOT NULL,
        late_by       REAL NOT NULL,
        phi           REAL
    );
    CREATE INDEX timeouts_connection ON timeouts(connection_id);
    CREATE TABLE sessions (
        id        INTEGER PRIMARY KEY,
        client_id TEXT NOT NULL,
        session   TEXT NOT NULL,              -- '' for messages sent without a session
        high      INTEGER NOT NULL DEFAULT 0, -- highest stored seq: the OK's acked
        UNIQUE (client_id, session)
    );
    CREATE TABLE messages (
        id            INTEGER PRIMARY KEY,
        session_id    INTEGER NOT NULL REFERENCES sessions(id),
        seq           INTEGER,                -- NULL: an unnumbered (fire-and-forget) message
        connection_id INTEGER REFERENCES connections(id),
        received_at   REAL NOT NULL,
        payload       BLOB NOT NULL
    );
    -- No index on (session_id, seq): the one writer stores a seq only above the session's high,
    -- and an index would cost as much as the insert itself.
    """,
    # 2: when each session last stored a message, so that retention can forget idle sessions
    # (those of schema 1 count from the migration).
    """
    ALTER TABLE sessions ADD COLUMN last_at REAL;
    UPDATE sessions SET last_at = (julianday('now') - 2440587.5) * 86400.0;
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)


def statements(script: str) -> list[str]:
    """Split a migration into statements (executescript() would commit the open transaction)."""
    out: list[str] = []
    buf = ""
    for line in script.splitlines(keepends=True):
        buf += line.split("--", 1)[0].rstrip() + "\n" if "--" in line else line
        if sqlite3.complete_statement(buf):
            out.append(buf.strip())
            buf = ""
    return [s for s in out if s]
