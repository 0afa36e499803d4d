"""How text is shown to people: timestamps, and escaping of what clients sent.

Shared by the edges (the command line and the admin endpoint); the library below them never
formats for display.
"""

from __future__ import annotations

from datetime import UTC, datetime

__all__ = ["escape", "iso_ts", "local_ts"]

# Control characters (C0, DEL, C1) and Unicode line breaks are shown escaped, and so is the
# backslash itself, so that no payload can forge a log line or look like an escape.
_ESCAPES = {i: f"\\x{i:02x}" for i in [*range(0x20), 0x7F, *range(0x80, 0xA0)]}
_ESCAPES.update({0x5C: "\\\\", 0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t", 0x2028: "\\u2028", 0x2029: "\\u2029"})


def escape(text: str) -> str:
    """`text` with every control character and line break shown as an escape (one log line)."""
    return str(text.translate(_ESCAPES))


def iso_ts(t: float | None = None) -> str:
    """ISO 8601, UTC, milliseconds: `2025-04-10T07:32:44.123Z`."""
    dt = datetime.now(UTC) if t is None else datetime.fromtimestamp(t, UTC)
    return dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def local_ts() -> str:
    """Local time to the second, as the original exercise printed it: `2025-04-10 15:32:44`."""
    return datetime.now().strftime("%Y-%m-%d %H:%M:%S")
