"""Tier 1: liveness policies with a fake clock (numbers, not sleeps), and the purity of the core."""

from __future__ import annotations

import heapq

import pytest

from tcpulse.policy.backoff import Backoff, is_retryable
from tcpulse.policy.liveness import Action, ClientLiveness, ScheduledBeats, State, Tracker, clamp_interval, percentile


def test_silent_client_goes_suspect_then_dead_at_its_deadline() -> None:
    t: Tracker[str] = Tracker()
    t.add("a", now=100.0, interval=5, timeout=10)
    assert t.next_due() == 107.5  # 1.5 intervals
    assert t.poll(107.4) == []
    (v,) = t.poll(107.5)
    assert v.state is State.SUSPECT and v.key == "a" and v.silent_for == pytest.approx(7.5)
    assert t.state("a") is State.SUSPECT
    assert t.next_due() == 110.0
    (v,) = t.poll(110.003)
    assert v.state is State.DEAD and v.late_by == pytest.approx(0.003) and v.due == 110.0
    assert "a" not in t and t.next_due() is None


def test_any_frame_moves_the_deadline_and_clears_suspicion() -> None:
    t: Tracker[str] = Tracker()
    t.add("a", 0.0, 5, 10)
    t.poll(7.5)
    assert t.touch("a", 8.0) is True  # was suspect
    assert t.state("a") is State.ALIVE
    assert t.deadline("a") == 18.0
    assert t.poll(10.0) == []  # old deadline passes harmlessly
    (v,) = t.poll(15.5)
    assert v.state is State.SUSPECT
    assert t.touch("b", 1.0) is False  # unknown keys are ignored


def test_touch_is_constant_time_no_heap_work() -> None:
    t: Tracker[int] = Tracker()
    for k in range(1000):
        t.add(k, 0.0, 1, 2)
    size = len(t._heap)
    for i in range(10000):
        t.touch(i % 1000, i * 0.0001)
    assert len(t._heap) == size  # heartbeats never touch the heap


def test_deadline_work_is_logarithmic(monkeypatch: pytest.MonkeyPatch) -> None:
    # Count heap operations: one pop and at most one push per due entry, never a scan.
    ops = {"push": 0, "pop": 0}
    real_push, real_pop = heapq.heappush, heapq.heappop

    def push(h: list[object], x: object) -> None:
        ops["push"] += 1
        real_push(h, x)  # type: ignore[type-var]

    def pop(h: list[object]) -> object:
        ops["pop"] += 1
        return real_pop(h)  # type: ignore[type-var]
    import tcpulse.policy.liveness as lv
    monkeypatch.setattr(lv.heapq, "heappush", push)
    monkeypatch.setattr(lv.heapq, "heappop", pop)
    t: Tracker[int] = Tracker()
    n = 5000
    for k in range(n):
        t.add(k, 0.0, 1, 2)
    ops.update(push=0, pop=0)
    for k in range(n):
        t.touch(k, 1.0)
    assert t.poll(1.49) == []
    assert ops == {"push": 0, "pop": 0}  # nothing due: no work at all
    verdicts = t.poll(2.4)  # every entry comes due once (suspect-check), is re-queued
    assert verdicts == []
    assert ops["pop"] == n and ops["push"] == n


def test_many_clients_die_in_deadline_order() -> None:
    t: Tracker[int] = Tracker()
    for k in range(100):
        t.add(k, k * 0.01, 1, 2)
    dead = [v for v in t.poll(10) if v.state is State.DEAD]
    assert [v.key for v in dead] == list(range(100))
    assert all(v.due == pytest.approx(v.key * 0.01 + 2) for v in dead)


def test_set_interval_earlier_deadline_is_honoured() -> None:
    t: Tracker[str] = Tracker()
    t.add("a", 0.0, 5, 10)
    t.set_interval("a", 1.0, 0.5, 1.0)
    assert t.next_due() == pytest.approx(1.75)
    assert [v.state for v in t.poll(1.8)] == [State.SUSPECT]
    assert [v.state for v in t.poll(2.0)] == [State.DEAD]
    # Polled late, a client past its deadline is reported dead at once (no suspect first).
    t.add("b", 0.0, 1, 2)
    assert [v.state for v in t.poll(5.0)] == [State.DEAD]


def test_remove_drops_stale_entries() -> None:
    t: Tracker[str] = Tracker()
    t.add("a", 0.0, 5, 10)
    t.remove("a")
    assert t.next_due() is None and t.poll(100) == []


def test_clamp_interval() -> None:
    assert clamp_interval(None, 5, 0.1, 60) == 5
    assert clamp_interval(0.01, 5, 0.1, 60) == 0.1
    assert clamp_interval(600, 5, 0.1, 60) == 60
    assert clamp_interval(2, 5, 0.1, 60) == 2


def test_client_beats_when_quiet_pings_when_deaf_and_judges_the_server() -> None:
    c = ClientLiveness(0.0, interval=5, timeout=10)
    assert c.next_due() == 5
    c.on_received(4.0)
    assert c.poll(5.0) is Action.HEARTBEAT  # sent nothing for an interval, heard recently
    c.on_sent(6.0)  # the user typed something
    assert c.poll(10.0) is Action.NONE
    assert c.next_due() == 11.0
    assert c.poll(11.0) is Action.PING  # heard nothing since 4.0
    assert c.poll(16.0) is Action.HEARTBEAT  # PING outstanding: beat, no second PING
    assert c.next_due() == 21.0
    assert c.poll(21.0) is Action.DEAD  # nothing within the timeout after the PING
    c2 = ClientLiveness(0.0, 5, 10)
    c2.poll(5.0)
    c2.on_received(5.1)  # the PONG
    assert c2.ping_sent_at is None and c2.poll(10.0) is Action.HEARTBEAT


def test_seed_demo_schedule() -> None:
    s = ScheduledBeats(0.0, [5, 5], 100)
    beats = []
    now = 0.0
    while now < 300:
        now = s.next_due()
        assert s.poll(now) is Action.HEARTBEAT
        beats.append(now)
    assert beats[:5] == [0, 5, 10, 110, 210]


def test_backoff_grows_is_capped_jittered_and_resets() -> None:
    b = Backoff(base=0.1, cap=2.0, factor=2, rng=lambda: 1.0)
    assert [round(b.next(), 3) for _ in range(7)] == [0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0]
    b.reset()
    assert b.next() == pytest.approx(0.1)
    vals = iter([0.5, 0.0, 0.25])
    j = Backoff(base=1, cap=100, rng=lambda: next(vals))
    assert [j.next(), j.next(), j.next()] == [0.5, 0.0, 1.0]  # full jitter: uniform in [0, ceiling]
    big = Backoff(base=1, cap=30, rng=lambda: 1.0)
    for _ in range(2000):
        assert big.next() <= 30  # no overflow after many failures
    with pytest.raises(ValueError):
        Backoff(base=0)


def test_retry_predicate() -> None:
    assert is_retryable(ConnectionRefusedError())
    assert is_retryable(err_code=503) and is_retryable(err_code=408)
    assert not is_retryable(err_code=401) and not is_retryable(err_code=400)
    assert not is_retryable(ValueError())


def test_percentile() -> None:
    assert percentile([3, 1, 2], 50) == 2
    assert percentile(list(range(1, 101)), 99) == 99
