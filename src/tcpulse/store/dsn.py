"""What a `--db` spec names, without importing a database driver: `is_postgres_url()` for the
choice of store, `redact()` for a URL fit for a log line (no password)."""

from __future__ import annotations

__all__ = ["is_postgres_url", "redact"]


def is_postgres_url(spec: str | None) -> bool:
    """Whether a `--db` spec names a PostgreSQL database rather than an SQLite file."""
    return spec is not None and spec.split("://", 1)[0].lower() in ("postgresql", "postgres")


def redact(url: str) -> str:
    """`url` without its password, fit for a log line or an error."""
    head, sep, rest = url.partition("://")
    if not sep or "@" not in rest.split("/", 1)[0]:
        return url
    creds, _, host = rest.partition("@")
    user = creds.split(":", 1)[0]
    return f"{head}://{user}{':***' if ':' in creds else ''}@{host}"
