"""Operating-system limits a process that holds many sockets must raise first."""

from __future__ import annotations

import resource

__all__ = ["UNLIMITED_TARGET", "raise_open_file_limit"]

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
