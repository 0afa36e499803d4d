"""Frame-rate policy: pure objects that are handed `now` (no clock, no I/O; STYLE.md).

PROTOCOL.md, "Errors", 429: a client sending too many frames or PINGs per second gets
`ERR 429`, the frame is dropped, and a client that keeps on is closed.  This is gRPC's "ping
strikes" idea with token buckets: each connection has a bucket for PINGs (each one costs the
server a PONG, so a PING flood is an amplifier) and one for all control frames (`HEARTBEAT`,
`PING`, `PONG`).  `MSG` is never limited here: messages are the payload of the service, bounded
by TCP back-pressure and the buffer caps, and a numbered `MSG` must never be dropped silently.

`FailureDelay` slows down repeated authentication failures from one address (401).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

__all__ = ["FailureDelay", "FrameRate", "RateVerdict", "TokenBucket"]


class TokenBucket:
    """`rate` tokens per second, holding at most `burst`; starts full."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = now

    def take(self, now: float, n: int = 1) -> int:
        """Take up to `n` tokens at `now`; returns how many were there (0..n)."""
        if now > self.stamp:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
        got = min(n, int(self.tokens))
        self.tokens -= got
        return got


@dataclass(frozen=True, slots=True)
class RateVerdict:
    """What the shell must do with one batch of frames."""

    #: How many of the batch's PINGs to answer (the rest are dropped).
    pings_allowed: int
    #: True when frames were dropped: send `ERR 429` (once for the batch).
    over: bool
    #: True when the client kept on past its strikes: close it with `ERR 429`.
    close: bool


_OK = RateVerdict(0, False, False)


@dataclass(frozen=True, slots=True)
class _Limits:
    # The settings of FrameRate, shared by every connection with the same ones: a server holds
    # one, not one per client (memory per idle client is a figure that matters at 10,000).
    frames_per_sec: float
    frames_burst: float
    pings_per_sec: float
    pings_burst: float
    max_strikes: int
    strike_window: float
    forgive: float


_SHARED: dict[_Limits, _Limits] = {}


class FrameRate:
    """One connection's frame-rate limits and strikes.

    Call `admit(now, frames, pings)` for every batch of complete control frames read, where
    `frames` counts `HEARTBEAT`/`PING`/`PONG` and `pings` the `PING`s among them; answer only
    `pings_allowed` PINGs, send `ERR 429` when `over`, and close when `close`.

    A strike is counted at most once per `strike_window` seconds (a burst that spans several
    reads is one offence, not several), and strikes are forgiven after `forgive` seconds without
    an offence.  The connection is closed on the strike after `max_strikes`.

    Two token buckets (all control frames; PINGs), kept as four numbers here rather than two
    objects: this is per connection state, and the settings are shared.
    """

    __slots__ = ("_f_stamp", "_f_tokens", "_limits", "_p_stamp", "_p_tokens", "last_strike", "strikes")

    def __init__(self, now: float, *, frames_per_sec: float, pings_per_sec: float, max_strikes: int = 3,
                 strike_window: float = 1.0, forgive: float = 10.0) -> None:
        # Burst of one second's worth: a client may catch up after a stall without a strike.
        limits = _Limits(frames_per_sec, max(1.0, frames_per_sec), pings_per_sec, max(1.0, pings_per_sec),
                         max_strikes, strike_window, forgive)
        self._limits = _SHARED.setdefault(limits, limits)
        self._f_tokens = self._limits.frames_burst
        self._p_tokens = self._limits.pings_burst
        self._f_stamp = self._p_stamp = now
        self.strikes = 0
        self.last_strike = -1e18

    @property
    def max_strikes(self) -> int:
        return self._limits.max_strikes

    def admit(self, now: float, frames: int, pings: int = 0) -> RateVerdict:
        lim = self._limits
        if now - self.last_strike > lim.forgive:
            self.strikes = 0
        # The frames bucket (the same arithmetic as TokenBucket.take).
        if now > self._f_stamp:
            self._f_tokens = min(lim.frames_burst, self._f_tokens + (now - self._f_stamp) * lim.frames_per_sec)
            self._f_stamp = now
        got_frames = min(frames, int(self._f_tokens))
        self._f_tokens -= got_frames
        got_pings = 0
        if pings:
            if now > self._p_stamp:
                self._p_tokens = min(lim.pings_burst, self._p_tokens + (now - self._p_stamp) * lim.pings_per_sec)
                self._p_stamp = now
            got_pings = min(pings, int(self._p_tokens))
            self._p_tokens -= got_pings
        # PINGs also use frame tokens: answer only those both buckets allow.
        allowed = min(got_pings, got_frames)
        if got_frames == frames and allowed == pings:
            return _OK if not pings else RateVerdict(pings, False, False)
        if now - self.last_strike >= lim.strike_window:
            self.strikes += 1
            self.last_strike = now
        return RateVerdict(allowed, True, self.strikes > lim.max_strikes)


class FailureDelay:
    """Slows down repeated authentication failures from one address (pure: `now` is passed in).

    The n-th failure in a row is answered after `base * 2**(n-2)` seconds (the first at once),
    at most `cap`; an address is forgiven `forget` seconds after its last failure.  At most
    `max_addrs` addresses are remembered (the oldest are dropped), so a scan from many
    addresses cannot grow the table without bound.
    """

    #: Doublings of `base` at most: 2.0 ** 1000 is a float (2.0 ** 1024 is not).
    MAX_DOUBLINGS = 1000

    def __init__(self, *, base: float = 0.1, cap: float = 2.0, forget: float = 60.0,
                 max_addrs: int = 10000) -> None:
        self.base = base
        self.cap = cap
        self.forget = forget
        self.max_addrs = max_addrs
        self._fails: OrderedDict[str, tuple[int, float]] = OrderedDict()

    def failure(self, addr: str, now: float) -> float:
        """Record a failure from `addr` at `now`; returns the delay before answering it."""
        n, last = self._fails.pop(addr, (0, now))
        if now - last > self.forget:
            n = 0
        n += 1
        self._fails[addr] = (n, now)
        while len(self._fails) > self.max_addrs:
            self._fails.popitem(last=False)
        if n == 1:
            return 0.0
        # The doubling is capped before it is computed: 2 ** (n - 2) as an int grows without
        # bound, and from n = 1026 on it no longer fits a float (OverflowError).  A thousand
        # doublings pass any cap from any sane base; a float product past the largest float is
        # inf, never an error, and min() then gives the cap.
        return min(self.cap, self.base * 2.0 ** min(n - 2, self.MAX_DOUBLINGS))

    def count(self, addr: str) -> int:
        return self._fails.get(addr, (0, 0.0))[0]
