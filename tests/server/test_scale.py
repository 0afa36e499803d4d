"""Cost grows as it should: counted operations, not timings.

- a heartbeat touches no heap (O(1)); a deadline costs one pop and at most one push (O(log n));
- the heap holds one live entry per client, however often intervals change;
- the phi detector's running sums equal a recomputation, and its `dead_after()` is where its phi
  crosses the threshold.
"""

from __future__ import annotations

import heapq
import math
import random
import statistics
import types
from typing import Any

import pytest

from tcpulse.policy import liveness
from tcpulse.policy.liveness import PhiDetector, PhiSettings, State, Tracker


class CountingHeapq:
    """The real heapq, with a count of every call."""

    def __init__(self) -> None:
        self.pushes = 0
        self.pops = 0

    def heappush(self, heap: list[Any], item: Any) -> None:
        self.pushes += 1
        heapq.heappush(heap, item)

    def heappop(self, heap: list[Any]) -> Any:
        self.pops += 1
        return heapq.heappop(heap)


@pytest.fixture
def counting(monkeypatch: pytest.MonkeyPatch) -> CountingHeapq:
    c = CountingHeapq()
    monkeypatch.setattr(liveness, "heapq", types.SimpleNamespace(heappush=c.heappush, heappop=c.heappop))
    return c


def test_heartbeats_touch_no_heap(counting: CountingHeapq) -> None:
    t: Tracker[int] = Tracker()
    for k in range(1000):
        t.add(k, 0.0, 1.0, 2.0)
    assert counting.pushes == 1000
    pushes, pops = counting.pushes, counting.pops
    for step in range(1, 50):
        for k in range(1000):
            t.touch(k, step * 0.01)
    assert (counting.pushes, counting.pops) == (pushes, pops)


def test_each_due_entry_costs_one_pop_and_one_push(counting: CountingHeapq) -> None:
    n = 2000
    t: Tracker[int] = Tracker()
    for k in range(n):
        t.add(k, k / n, 1.0, 2.0)
    # Everyone beats every interval for ten intervals: each entry comes due once per interval
    # (1.5 intervals after its last beat), is popped, and pushed again for the new last beat.
    now = 0.0
    for step in range(1, 11):
        for k in range(n):
            now = step + k / n
            while (due := t.next_due()) is not None and due <= now:
                assert t.poll(due) == []
            t.touch(k, now)
    assert counting.pops <= counting.pushes <= n + 10 * n
    assert counting.pushes - n == counting.pops  # one push per pop, never more
    assert len(t._heap) == n  # one entry per client


def test_heap_keeps_one_live_entry_per_client_after_interval_changes(counting: CountingHeapq) -> None:
    t: Tracker[int] = Tracker()
    for k in range(100):
        t.add(k, 0.0, 5.0, 10.0)
        t.set_interval(k, 0.0, 1.0, 2.0)  # HELLO: the old entry goes stale
    out = t.poll(1.5)
    assert sorted(v.key for v in out) == list(range(100))
    assert all(v.state is State.SUSPECT for v in out)
    # The stale entries (at 7.5 s) are dropped without a push when they come due.
    pushes = counting.pushes
    dead = t.poll(2.0)
    assert len(dead) == 100 and all(v.state is State.DEAD for v in dead)
    assert t.next_due() is None
    assert counting.pushes == pushes
    assert t._heap == []


def test_recovered_suspect_is_judged_by_its_new_deadlines() -> None:
    # A suspect that comes back must not be left behind its old (dead-at) heap entry: its next
    # suspicion and its death are due from its new last beat.
    t: Tracker[str] = Tracker()
    t.add("a", 0.0, 1.0, 10.0)
    assert [v.state for v in t.poll(1.5)] == [State.SUSPECT]
    assert t.touch("a", 2.0)  # it was only slow
    assert t.next_due() == pytest.approx(3.5)
    assert [v.state for v in t.poll(3.5)] == [State.SUSPECT]
    assert [v.state for v in t.poll(12.0)] == [State.DEAD]


def test_hello_accepted_while_suspect_makes_the_client_alive_again() -> None:
    # HELLO counts as hearing from the client: a suspect whose HELLO is accepted late (slow auth
    # or store) is alive, turns suspect again 1.5 new intervals later, and its next frame is not
    # a "recovery".
    t: Tracker[str] = Tracker()
    t.add("a", 0.0, 5.0, 10.0)
    assert [v.state for v in t.poll(7.5)] == [State.SUSPECT]
    t.set_interval("a", 8.0, 1.0, 2.0)
    assert t.state("a") is State.ALIVE
    assert [(v.state, v.due) for v in t.poll(9.5)] == [(State.SUSPECT, 9.5)]
    assert t.touch("a", 9.6) is True  # a real recovery now
    assert t.touch("a", 9.7) is False


def test_phi_running_sums_match_a_recomputation() -> None:
    rng = random.Random(3)
    st = PhiSettings(window=50)
    d = PhiDetector(1.0, st)
    gaps = [0.75, 1.25]
    for _ in range(1234):
        g = rng.uniform(0.5, 3.0)
        d.on_heartbeat(g)
        gaps.append(g)
    last = gaps[-50:]
    assert d.mean == pytest.approx(statistics.fmean(last), rel=1e-9)
    assert d.std == pytest.approx(statistics.pstdev(last), rel=1e-6)


def test_phi_crosses_its_threshold_at_dead_after() -> None:
    d = PhiDetector(1.0, PhiSettings(threshold=8.0, min_std=0.1, acceptable_pause=0.5))
    for g in (1.0, 1.1, 0.9, 1.05, 0.95) * 20:
        d.on_heartbeat(g)
    t = d.dead_after(1.0, 100.0)
    assert d.phi(t, 1.0) == pytest.approx(8.0, abs=1e-6)
    assert d.phi(t - 0.1, 1.0) < 8.0 < d.phi(t + 0.1, 1.0)
    assert d.phi(0.0, 1.0) < 0.01
    # mean 1.0 + acceptable pause 0.5, std floored to 0.1: z(8) = 5.612
    assert t == pytest.approx(1.0 + 0.5 + 5.612 * 0.1, abs=1e-3)
    assert math.isfinite(d.phi(1e6, 1.0))


def test_tracker_clamps_phi_between_one_and_a_half_intervals_and_the_timeout() -> None:
    t: Tracker[str] = Tracker()
    eager = PhiDetector(1.0, PhiSettings(threshold=0.1, acceptable_pause=0.0))
    lazy = PhiDetector(1.0, PhiSettings(threshold=30.0, acceptable_pause=5.0))
    t.add("eager", 0.0, 1.0, 4.0, eager)
    t.add("lazy", 0.0, 1.0, 4.0, lazy)
    assert t.deadline("eager") == pytest.approx(1.5)
    assert t.deadline("lazy") == pytest.approx(4.0)
    assert t.phi("eager", 1.0) is not None
    t.add("plain", 0.0, 1.0, 4.0)
    assert t.phi("plain", 1.0) is None


def test_phi_settings_name_the_flag_when_wrong() -> None:
    with pytest.raises(ValueError, match="--phi-threshold"):
        PhiSettings(threshold=0)
    with pytest.raises(ValueError, match="--phi-window"):
        PhiSettings(window=1)


def test_hello_gives_a_fresh_detector_for_the_new_interval() -> None:
    t: Tracker[str] = Tracker()
    t.add("a", 0.0, 5.0, 10.0, PhiDetector(5.0))
    fresh = PhiDetector(1.0, PhiSettings(acceptable_pause=0.0))
    t.set_interval("a", 0.0, 1.0, 20.0, fresh)
    # Learned from the 1 s interval, not the 5 s default: dead long before the 20 s backstop.
    deadline = t.deadline("a")
    assert deadline is not None and deadline < 3.0
    verdicts = t.poll(deadline)
    assert [v.state for v in verdicts] == [State.DEAD]
    assert verdicts[0].phi is not None and verdicts[0].phi >= 8.0 - 1e-6
