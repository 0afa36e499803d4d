"""Reconnect policy, pure: how long to wait before the next attempt, and which failures are worth
retrying (compare websockets' `backoff()`).  No sleeping here; the client sleeps."""

from __future__ import annotations

import random
from collections.abc import Callable

__all__ = ["Backoff", "is_retryable"]


class Backoff:
    """Exponential backoff with full jitter ("Exponential Backoff and Jitter", AWS, 2015).

    The n-th delay is uniform in [0, min(cap, base * factor**n)]; `reset()` after a connection
    that got as far as `OK` starts again from `base`.  `rng` returns a float in [0, 1).
    """

    __slots__ = ("_rng", "attempt", "base", "cap", "factor")

    def __init__(self, base: float = 0.1, cap: float = 10.0, factor: float = 2.0,
                 rng: Callable[[], float] = random.random) -> None:
        if not 0 < base <= cap or factor < 1:
            raise ValueError("need 0 < base <= cap and factor >= 1")
        self.base = base
        self.cap = cap
        self.factor = factor
        self.attempt = 0
        self._rng = rng

    def ceiling(self) -> float:
        """The upper bound of the next delay."""
        # min() before the power would overflow: factor**attempt grows without bound.
        exp = min(self.attempt, 64)
        return min(self.cap, self.base * self.factor ** exp)

    def next(self) -> float:
        """The delay before the next attempt; each call counts one more failure."""
        d = self._rng() * self.ceiling()
        self.attempt += 1
        return d

    def reset(self) -> None:
        self.attempt = 0


def is_retryable(exc: BaseException | None = None, err_code: int | None = None) -> bool:
    """Whether a failure may go away by itself.  `ERR 401` (bad token), `400` (a bug in this
    client) and `413` (a message too large for this server) will come back on every attempt."""
    if err_code is not None:
        return err_code in (408, 429, 503)
    return exc is None or isinstance(exc, (OSError, EOFError, TimeoutError, ConnectionError))
