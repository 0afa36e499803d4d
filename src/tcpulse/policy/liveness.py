"""Liveness policies: pure objects that are handed `now` and say what is due.

No clock, no timers, no I/O here (STYLE.md, "Clocks stay out of the core"): the asyncio layer asks
`next_due()`, sets one timer for that moment, and calls `poll(now)` when it fires.

`Tracker` serves every client of a server with one heap.  A frame from a client only stores a
timestamp (O(1)); the heap holds one entry per client and is touched only when an entry comes
due (O(log n)), when the entry is pushed again to the client's real next deadline.  No scan of
all clients ever happens.
"""

from __future__ import annotations

import enum
import heapq
import math
from array import array
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from statistics import NormalDist
from typing import Generic, TypeVar

__all__ = [
    "SUSPECT_RATIO",
    "Action",
    "ClientLiveness",
    "Detector",
    "PhiDetector",
    "PhiSettings",
    "ScheduledBeats",
    "State",
    "Tracker",
    "Verdict",
    "clamp_interval",
]

#: PROTOCOL.md, "Liveness": silent for longer than 1.5 intervals is suspect.
SUSPECT_RATIO = 1.5

K = TypeVar("K", bound=Hashable)


class State(enum.Enum):
    ALIVE = "alive"
    SUSPECT = "suspect"
    DEAD = "dead"


@dataclass(frozen=True, slots=True)
class Verdict(Generic[K]):
    """A change of state of one client, found by `Tracker.poll()`."""

    key: K
    state: State
    #: Seconds since the client was last heard, at `now`.
    silent_for: float
    #: For DEAD: how long after the deadline `poll()` was called (the announcement's lateness).
    late_by: float
    #: The moment the verdict became due (the deadline, for DEAD).
    due: float
    #: For DEAD under an accrual detector: its phi at `now` (None: fixed detector).
    phi: float | None = None


def clamp_interval(requested: float | None, default: float, lo: float, hi: float) -> float:
    """PROTOCOL.md, "Liveness": a client's stated interval, clamped to the server's bounds."""
    if requested is None:
        return default
    return min(max(requested, lo), hi)


class Detector:
    """Decides when a silent client is dead.  The fixed detector: at `last + timeout`.

    A subclass may declare death earlier (an adaptive detector), but `Tracker` never lets it
    act before 1.5 intervals of silence (PROTOCOL.md, "Liveness").
    """

    def on_heartbeat(self, gap: float) -> None:
        """One arrival `gap` seconds after the previous one (for detectors that learn)."""

    def dead_after(self, interval: float, timeout: float) -> float:
        """Seconds of silence after which the client is dead."""
        return timeout

    def phi(self, silent_for: float, interval: float) -> float | None:
        """The suspicion level after `silent_for` seconds of silence (None: not an accrual
        detector)."""
        return None


@dataclass(frozen=True, slots=True)
class PhiSettings:
    """Settings of the phi accrual detector, shared by all clients of a server.

    As in Akka and Cassandra: a `threshold` on phi (8: a live client would stay silent that long
    with probability 10^-8), a floor on the standard deviation so that a very regular client is
    not judged on noise, and an acceptable pause added to the mean.  Unlike Akka, whose interval
    is one per cluster, tcpulse clients each have their own interval, so `min_std` and
    `acceptable_pause` are fractions of the client's interval, not seconds.  `window`: how many
    recent arrival gaps each client's history keeps.
    """

    threshold: float = 8.0
    min_std: float = 0.1
    acceptable_pause: float = 0.0
    window: int = 100

    def __post_init__(self) -> None:
        if not self.threshold > 0:
            raise ValueError(f"--phi-threshold must be greater than 0 (got {self.threshold})")
        if not self.min_std > 0:
            raise ValueError(f"--phi-min-std must be greater than 0 (got {self.min_std})")
        if not self.acceptable_pause >= 0:
            raise ValueError(f"--phi-acceptable-pause must be 0 or more (got {self.acceptable_pause})")
        if not 2 <= self.window <= 10_000:
            raise ValueError(f"--phi-window must be 2-10000 (got {self.window})")

    @property
    def z(self) -> float:
        """Standard deviations above the mean at which phi reaches the threshold."""
        return _z_for(self.threshold)


_Z_CACHE: dict[float, float] = {}


def _z_for(threshold: float) -> float:
    # phi = -log10(P(gap > t)) under a normal distribution of gaps, so phi crosses the
    # threshold where the upper tail holds 10^-threshold: z = -inv_cdf(10^-threshold).
    z = _Z_CACHE.get(threshold)
    if z is None:
        z = _Z_CACHE[threshold] = -NormalDist().inv_cdf(10.0 ** -threshold)
    return z


_LOG10_2 = math.log10(2.0)
#: phi beyond this is shown as this: the normal tail underflows past ~10^-300 anyway.
PHI_MAX = 300.0


class PhiDetector(Detector):
    """Phi accrual failure detector (Hayashibara et al., 2004), one per client.

    Learns the mean and standard deviation of the client's arrival gaps over a bounded window,
    with running sums, so `on_heartbeat` is O(1) (and allocates nothing).  `Tracker` schedules
    deadlines, not phi checks, so the detector answers `dead_after()`: the silence at which phi
    crosses the threshold, mean + acceptable pause + z * std.  Until the client has a history,
    the estimate starts from its stated interval with a deviation of a quarter of it, as Akka's
    first-heartbeat estimate does.
    """

    __slots__ = ("_count", "_gaps", "_min_gap", "_next", "_sum", "_sumsq", "settings")

    def __init__(self, interval: float, settings: PhiSettings | None = None) -> None:
        self.settings = settings or PhiSettings()
        # Any frame is proof of life, but only the gaps of a client with nothing to say tell how
        # long it stays silent: a burst of messages (gaps far below the interval) must not teach
        # the detector to expect the next heartbeat within milliseconds.
        self._min_gap = interval / 2
        self._gaps = array("d", bytes(8 * self.settings.window))
        self._next = 0
        self._count = 0
        self._sum = 0.0
        self._sumsq = 0.0
        # Two seed gaps: mean `interval`, standard deviation `interval / 4`.
        self.on_heartbeat(interval * 0.75)
        self.on_heartbeat(interval * 1.25)

    def on_heartbeat(self, gap: float) -> None:
        if gap < self._min_gap:
            return
        gaps = self._gaps
        i = self._next
        if self._count == len(gaps):
            old = gaps[i]
            self._sum -= old
            self._sumsq -= old * old
        else:
            self._count += 1
        gaps[i] = gap
        self._sum += gap
        self._sumsq += gap * gap
        i += 1
        if i == len(gaps):
            i = 0
            # Once per window, recompute the sums from scratch so that rounding errors of the
            # subtractions never pile up (amortised O(1)).
            self._sum = math.fsum(gaps)
            self._sumsq = math.fsum(g * g for g in gaps)
        self._next = i

    @property
    def mean(self) -> float:
        return self._sum / self._count

    @property
    def std(self) -> float:
        n = self._count
        m = self._sum / n
        return math.sqrt(max(0.0, self._sumsq / n - m * m))

    def _params(self, interval: float) -> tuple[float, float]:
        st = self.settings
        return self.mean + st.acceptable_pause * interval, max(self.std, st.min_std * interval)

    def dead_after(self, interval: float, timeout: float) -> float:
        mean, std = self._params(interval)
        return mean + self.settings.z * std

    def phi(self, silent_for: float, interval: float) -> float:
        mean, std = self._params(interval)
        # P(a live client's gap exceeds silent_for) = 1/2 erfc(y / sqrt 2); phi = -log10 of it.
        p = math.erfc((silent_for - mean) / (std * math.sqrt(2.0)))
        if p <= 0.0:
            return PHI_MAX
        return min(PHI_MAX, max(0.0, _LOG10_2 - math.log10(p)))


class _Entry:
    # `queued`: the tie-breaking number of this client's one live heap entry; any other heap
    # entry for the client is stale and dropped when it comes due, without a push.
    __slots__ = ("detector", "interval", "last", "queued", "state", "timeout")

    def __init__(self, now: float, interval: float, timeout: float, detector: Detector | None) -> None:
        self.last = now
        self.queued = 0
        self.interval = interval
        self.timeout = timeout
        self.state = State.ALIVE
        self.detector = detector


class Tracker(Generic[K]):
    """Deadlines of many clients.  Every method is O(1) but `poll`, O(log n) per due entry."""

    def __init__(self) -> None:
        self._entries: dict[K, _Entry] = {}
        self._heap: list[tuple[float, int, K]] = []
        self._counter = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def add(self, key: K, now: float, interval: float, timeout: float,
            detector: Detector | None = None) -> None:
        """Start watching `key`, last heard at `now`.  Replaces an earlier entry for `key`."""
        e = _Entry(now, interval, timeout, detector)
        self._entries[key] = e
        self._push(key, e)

    def set_interval(self, key: K, now: float, interval: float, timeout: float,
                     detector: Detector | None = None) -> None:
        """Change the interval and timeout in force (after HELLO); counts as hearing from it.
        A `detector` given replaces the one in use (an adaptive one learns from the new interval)."""
        e = self._entries.get(key)
        if e is None:
            return
        if detector is not None:
            e.detector = detector
        e.interval = interval
        e.timeout = timeout
        e.last = now
        # Heard from now: a client that turned suspect while its HELLO was being accepted is
        # alive again (else its next frame would report a recovery, and no new suspicion).
        e.state = State.ALIVE
        # The new deadline may be earlier than the queued entry: queue it (the old one goes
        # stale and is skipped when it comes due).
        self._push(key, e)

    def touch(self, key: K, now: float) -> bool:
        """`key` was heard from at `now`.  O(1).  Returns True when it had been suspect."""
        e = self._entries.get(key)
        if e is None:
            return False
        det = e.detector
        if det is not None:
            det.on_heartbeat(now - e.last)
        e.last = now
        if e.state is State.SUSPECT:
            e.state = State.ALIVE
            # Rare (a suspect came back): its queued entry is for its old deadline, which an
            # adaptive detector may now put after the new suspect moment; queue that instead.
            self._push(key, e)
            return True
        return False

    def remove(self, key: K) -> None:
        """Stop watching `key`; its heap entry goes stale and is dropped when it comes due."""
        self._entries.pop(key, None)

    def state(self, key: K) -> State | None:
        e = self._entries.get(key)
        return None if e is None else e.state

    def last_heard(self, key: K) -> float | None:
        e = self._entries.get(key)
        return None if e is None else e.last

    def phi(self, key: K, now: float) -> float | None:
        """The accrual detector's suspicion level of `key` at `now` (None: fixed detector)."""
        e = self._entries.get(key)
        if e is None or e.detector is None:
            return None
        return e.detector.phi(now - e.last, e.interval)

    def deadline(self, key: K) -> float | None:
        """When `key` will be declared dead if nothing arrives."""
        e = self._entries.get(key)
        return None if e is None else e.last + self._dead_after(e)

    def next_due(self) -> float | None:
        """The earliest moment `poll()` may have something to report (None: nothing watched)."""
        heap = self._heap
        entries = self._entries
        while heap:
            _, n, key = heap[0]
            e = entries.get(key)
            if e is not None and e.queued == n:
                return heap[0][0]
            heapq.heappop(heap)  # stale: the client is gone or has a newer entry
        return None

    def poll(self, now: float, spoke: Callable[[K], bool] | None = None) -> list[Verdict[K]]:
        """Every change of state due at `now`: clients turning suspect, and dead ones.

        A dead client is no longer watched; the caller must close its connection.  `spoke(key)`,
        if given, is asked before a client is declared dead: True means the client did speak
        (its bytes are waiting, unread by the caller), and it counts as heard at `now`.  A client
        is judged only by what it did, never by what its server did not read.
        """
        out: list[Verdict[K]] = []
        heap = self._heap
        entries = self._entries
        while heap and heap[0][0] <= now:
            _due, n, key = heapq.heappop(heap)
            e = entries.get(key)
            if e is None or e.queued != n:
                continue  # stale
            dead_at = e.last + self._dead_after(e)
            if now >= dead_at and spoke is not None and spoke(key):
                if self.touch(key, now):
                    out.append(Verdict(key, State.ALIVE, 0.0, 0.0, now))
                else:
                    self._push(key, e)
                continue
            if now >= dead_at:
                del entries[key]
                det = e.detector
                phi = None if det is None else det.phi(now - e.last, e.interval)
                out.append(Verdict(key, State.DEAD, now - e.last, max(0.0, now - dead_at), dead_at, phi))
                continue
            suspect_at = e.last + SUSPECT_RATIO * e.interval
            if e.state is State.ALIVE and now >= suspect_at:
                e.state = State.SUSPECT
                out.append(Verdict(key, State.SUSPECT, now - e.last, max(0.0, now - suspect_at), suspect_at))
            self._push(key, e)
        return out

    # ------------------------------------------------------------------ internals

    def _dead_after(self, e: _Entry) -> float:
        if e.detector is None:
            return e.timeout
        # An adaptive detector may act earlier than the timeout, never before 1.5 intervals.
        return max(SUSPECT_RATIO * e.interval, min(e.timeout, e.detector.dead_after(e.interval, e.timeout)))

    def _next_for(self, e: _Entry) -> float:
        dead_at = e.last + self._dead_after(e)
        if e.state is State.ALIVE:
            return min(e.last + SUSPECT_RATIO * e.interval, dead_at)
        return dead_at

    def _push(self, key: K, e: _Entry) -> None:
        self._counter += 1
        e.queued = self._counter
        heapq.heappush(self._heap, (self._next_for(e), self._counter, key))


class Action(enum.Enum):
    """What `ClientLiveness.poll()` asks the client to do now."""

    NONE = "none"
    HEARTBEAT = "heartbeat"
    PING = "ping"
    DEAD = "dead"


class ClientLiveness:
    """The client's side of PROTOCOL.md, "Liveness".

    It beats when it has sent nothing for one interval, PINGs when it has also heard nothing for
    that long, and declares the server dead when nothing arrives within `timeout` of that PING.
    Call `on_sent(now)` after writing any frame, `on_received(now)` after reading any frame,
    and `poll(now)` at `next_due()`.
    """

    __slots__ = ("interval", "last_received", "last_sent", "ping_sent_at", "timeout")

    def __init__(self, now: float, interval: float, timeout: float) -> None:
        self.interval = interval
        self.timeout = timeout
        self.last_sent = now
        self.last_received = now
        self.ping_sent_at: float | None = None

    def on_sent(self, now: float) -> None:
        self.last_sent = now

    def on_received(self, now: float) -> None:
        self.last_received = now
        self.ping_sent_at = None

    def next_due(self) -> float:
        due = self.last_sent + self.interval
        if self.ping_sent_at is not None:
            due = min(due, self.ping_sent_at + self.timeout)
        return due

    def poll(self, now: float) -> Action:
        if self.ping_sent_at is not None and now >= self.ping_sent_at + self.timeout:
            return Action.DEAD
        if now < self.last_sent + self.interval:
            return Action.NONE
        self.last_sent = now
        if now >= self.last_received + self.interval and self.ping_sent_at is None:
            self.ping_sent_at = now
            return Action.PING
        return Action.HEARTBEAT


class ScheduledBeats:
    """The original exercise's client: beats at fixed moments, never PINGs, never judges the
    server.  `intervals` are the gaps after each beat (the seed demo: 5, 5, then 100 for ever)."""

    __slots__ = ("_gaps", "_next", "_then", "count")

    def __init__(self, now: float, gaps: list[float], then: float) -> None:
        self._gaps = list(gaps)
        self._then = then
        self._next = now
        self.count = 0

    def on_sent(self, now: float) -> None:
        pass  # the schedule does not move when the user types

    def on_received(self, now: float) -> None:
        pass

    def next_due(self) -> float:
        return self._next

    def poll(self, now: float) -> Action:
        if now < self._next:
            return Action.NONE
        gap = self._gaps[self.count] if self.count < len(self._gaps) else self._then
        self.count += 1
        self._next = now + gap
        return Action.HEARTBEAT


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) by nearest rank; NaN for no values."""
    if not values:
        return math.nan
    s = sorted(values)
    k = max(0, min(len(s) - 1, math.ceil(q / 100 * len(s)) - 1))
    return s[k]
