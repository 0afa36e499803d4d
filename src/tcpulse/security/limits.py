"""Operating-system limits a process that holds many sockets must raise first, and what the
kernel holds for a socket that the process has not read yet."""

from __future__ import annotations

import fcntl
import resource
import struct
import termios
from typing import Any

__all__ = ["UNLIMITED_TARGET", "raise_open_file_limit", "unread_bytes"]

#: What "as many as allowed" means when the hard limit is unlimited: a finite number, since the
#: kernel refuses RLIM_INFINITY for a soft RLIMIT_NOFILE (it caps open files at fs.nr_open).
UNLIMITED_TARGET = 1 << 20


def raise_open_file_limit(want: int | None = None) -> tuple[int, int]:
    """Raise this process's soft limit on open files (RLIMIT_NOFILE) to `want`, or, with None,
    as high as the hard limit allows; never lower it, never above the hard limit.  A refusal
    (a container's cap below the hard limit) leaves it as it was.  Returns `(soft, hard)` in
    force afterwards: compare `soft` with what you need and say so if it falls short."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    top = UNLIMITED_TARGET if hard == resource.RLIM_INFINITY else hard
    target = top if want is None else min(want, top)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft, hard


def unread_bytes(transport: Any) -> int:
    """Bytes the kernel holds for `transport`'s socket that have not been read (FIONREAD); 0 if
    it has no socket or is closed meanwhile.  A peer whose bytes wait here did speak: the server
    judges it by that, not by what it has not read yet."""
    sock = None if transport is None else transport.get_extra_info("socket")
    if sock is None:
        return 0
    try:
        return int(struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0])
    except (OSError, ValueError):  # closed meanwhile
        return 0
