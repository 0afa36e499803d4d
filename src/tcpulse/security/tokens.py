"""Per-client tokens (PROTOCOL.md, "Identity and takeover": with auth, the token must belong to the id).

The auth file holds one line per client: `ID SHA256-HEX [ADDED]`, `#` starts a comment.  Only the
digest of each token is stored.  Tokens are 256 random bits, so a plain SHA-256 is as strong as
any slow password hash would be, and costs nothing during a reconnect storm of thousands of
clients.  Digests are compared in constant time, also for ids that do not exist.

    tcpulse token add sensor-7 --auth-file tokens.txt   # prints the token once
    tcpulse serve --auth-file tokens.txt

The server re-reads the file when it changes (one `stat()` every second and on every HELLO) or on
SIGHUP.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import re
import secrets
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime

from tcpulse.errors import N_, TcpulseError
from tcpulse.protocol.events import ID_RE

__all__ = ["AuthFile", "AuthFileError", "Entry", "new_token", "parse", "token_digest"]

_HEX64 = re.compile(r"[0-9a-f]{64}")
#: Compared against when the id is unknown, so that an unknown id takes as long as a wrong token.
_DUMMY = bytes(32)


class AuthFileError(TcpulseError, ValueError):
    """The auth file cannot be read or has a bad line; the message names the file and the fix.
    `kind`: "missing", "unreadable", "bad-line", "duplicate-id" (reading); "bad-id",
    "has-token" (`add`)."""


def new_token() -> str:
    """A random 256-bit token, URL-safe text (43 characters)."""
    return secrets.token_urlsafe(32)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _digest(token: object) -> bytes | None:
    """The SHA-256 of `token` as UTF-8; None when it has none (not text, or text UTF-8 cannot
    encode: a lone surrogate).  Every token `new_token()` makes is ASCII, so None is never a match."""
    if not isinstance(token, str):
        return None
    try:
        return hashlib.sha256(token.encode("utf-8")).digest()
    except UnicodeEncodeError:
        return None


@dataclass(frozen=True, slots=True)
class Entry:
    id: str
    digest: str
    added: str = ""


class AuthFile:
    """The token digests of one auth file.  `load()` first; then `verify()` per HELLO."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._digests: dict[str, bytes] = {}
        self._entries: list[Entry] = []
        self._stamp: tuple[int, int, int] | None = None

    # ---------------------------------------------------------------- reading

    def stamp(self) -> tuple[int, int, int] | None:
        """(mtime, size, inode) of the file on disk now; None if it cannot be seen."""
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def load(self) -> int:
        """Read the file; returns how many ids it holds.  Raises `AuthFileError`."""
        stamp = self.stamp()
        try:
            with open(self.path, encoding="utf-8") as f:
                text = f.read()
        except FileNotFoundError:
            raise AuthFileError("missing", N_("auth file {path} does not exist: create it with "
                                              "'tcpulse token add ID --auth-file {path}'"), path=self.path) from None
        except (OSError, UnicodeDecodeError) as e:
            raise AuthFileError("unreadable", N_("cannot read auth file {path}: {error}"), path=self.path,
                                error=e) from None
        entries = parse(text, self.path)
        self._entries = entries
        self._digests = {e.id: bytes.fromhex(e.digest) for e in entries}
        self._stamp = stamp
        return len(entries)

    def changed(self) -> bool:
        """True when the file on disk is not the one last loaded (mtime, size or inode)."""
        return self.stamp() != self._stamp

    def entries(self) -> list[Entry]:
        return list(self._entries)

    def __len__(self) -> int:
        return len(self._digests)

    def has(self, client_id: str) -> bool:
        return client_id in self._digests

    def verify(self, client_id: str, token: str | None) -> str | None:
        """None when `token` belongs to `client_id`; else why not, for the audit log (never the
        token itself): "no token", "unknown id", "wrong token".  Never raises: a token of any
        shape (a lone surrogate, which JSON may carry and UTF-8 cannot, a number, ...) is a
        wrong token."""
        want = self._digests.get(client_id)
        got = _digest(token)
        same = hmac.compare_digest(got if got is not None else _DUMMY, want if want is not None else _DUMMY)
        if token is None:
            return "no token"
        if want is None:
            return "unknown id"
        return None if same and got is not None else "wrong token"

    # ---------------------------------------------------------------- writing (tcpulse token ...)

    def add(self, client_id: str, *, replace: bool = False) -> str:
        """Create a token for `client_id`, store its digest, and return the token (show it once)."""
        if ID_RE.fullmatch(client_id) is None:
            raise AuthFileError("bad-id", N_("{id} is not a valid id: use 1-128 characters of A-Z a-z 0-9 . _ @ -"),
                                id=repr(client_id))
        entries = self._read_for_update()
        if any(e.id == client_id for e in entries) and not replace:
            raise AuthFileError("has-token", N_("{id} already has a token in {path}: revoke it first, or use "
                                                "--replace"), id=client_id, path=self.path)
        token = new_token()
        added = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        entries = [e for e in entries if e.id != client_id]
        entries.append(Entry(client_id, token_digest(token), added))
        self._write(entries)
        return token

    def revoke(self, client_id: str) -> bool:
        """Remove `client_id`'s token; False if it had none."""
        entries = self._read_for_update()
        kept = [e for e in entries if e.id != client_id]
        if len(kept) == len(entries):
            return False
        self._write(kept)
        return True

    def _read_for_update(self) -> list[Entry]:
        try:
            self.load()
        except AuthFileError:
            if os.path.exists(self.path):
                raise
            return []
        return self.entries()

    def _write(self, entries: list[Entry]) -> None:
        # Write a new file and rename it over the old one, so the server never reads half a file.
        lines = ["# tcpulse auth file: ID SHA256(token) ADDED  (written by 'tcpulse token'; tokens are not kept)"]
        lines += [f"{e.id} {e.digest} {e.added}".rstrip() for e in entries]
        d = os.path.dirname(os.path.abspath(self.path))
        fd, tmp = tempfile.mkstemp(prefix=".tcpulse-auth-", dir=d)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write("\n".join(lines) + "\n")
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        self.load()


def parse(text: str, path: str = "<auth file>") -> list[Entry]:
    entries: list[Entry] = []
    seen: set[str] = set()
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) not in (2, 3) or ID_RE.fullmatch(parts[0]) is None or _HEX64.fullmatch(parts[1]) is None:
            raise AuthFileError("bad-line", N_("{path}, line {n}: expected 'ID SHA256-HEX [ADDED]'; "
                                               "fix the line or rewrite the file with 'tcpulse token add'"),
                                path=path, n=n)
        if parts[0] in seen:
            raise AuthFileError("duplicate-id", N_("{path}, line {n}: id {id} appears twice; remove one line"),
                                path=path, n=n, id=parts[0])
        seen.add(parts[0])
        entries.append(Entry(parts[0], parts[1], parts[2] if len(parts) == 3 else ""))
    return entries


